"""Turning model outputs into captions.

Non-autoregressive models (``seed``) give all 50 steps' probabilities at once:
the caption is the likeliest class per step up to the end class.

Autoregressive models (``showtell``, ``attention``) are run one character at a time with a
batched beam search: every image keeps ``beam_size`` partial captions, each
extended by its likeliest next characters; a caption is finished when it
writes the end class, and finished captions are ranked by log-probability per
character (length-normalised, so short captions are not favoured).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kana import END, Vocabulary


DECODE_METHODS = ("argmax", "collapse")  # how a non-autoregressive model's outputs are read


@dataclasses.dataclass(frozen=True)
class Caption:
    """One decoded caption.

    Attributes:
        text: the katakana caption, without the end class.
        ended: False when the model never wrote the end class.
        probability: the model's probability of the whole caption.
    """

    text: str
    ended: bool
    probability: float


def decode_parallel(probabilities: np.ndarray, vocabulary: Vocabulary, collapse_repeats: bool = False) -> list[list[Caption]]:
    """The likeliest class per step, up to the first end class; one caption per image."""
    probabilities = np.asarray(probabilities)  # (batch, timesteps, classes)
    best = probabilities.argmax(axis=-1)  # (batch, timesteps)
    captions = []
    for row, steps in zip(best, probabilities):
        text, ended = vocabulary.decode(row, collapse_repeats=collapse_repeats)
        length = min(int(np.argmax(row == END)) + 1 if ended else len(row), len(row))
        probability = float(np.prod(steps[np.arange(length), row[:length]]))
        captions.append([Caption(text, ended, probability)])
    return captions


class StepModels:
    """The pieces of a trained autoregressive model that beam search calls, found by layer name.

    ``start(features)`` gives the initial per-image decoder states (h and c;
    for ``attention`` also the projected grid); ``next(tokens, states)`` gives
    the next character's probabilities and the new states. Beam search treats
    states as opaque per-beam arrays.
    """

    def __init__(self, model):
        import keras

        from model import INITIAL_STATES

        initial = [model.get_layer(name).output for name in INITIAL_STATES[model.name]]
        token = keras.Input(shape=(1,), dtype="int32", name="token")  # (batch, 1)
        states = [keras.Input(shape=tuple(state.shape[1:]), name=f"state_{i}") for i, state in enumerate(initial)]
        embedded = model.get_layer("char_embedding")(token)  # (batch, 1, E)
        decoder = model.get_layer("decoder_lstm")
        output, *next_states = decoder(embedded, initial_state=states)
        probabilities = model.get_layer("next_char")(output)  # (batch, 1, classes)
        self.initial = keras.Model(model.inputs[0], initial)
        self.step = keras.Model([token, *states], [probabilities, *next_states])
        # Attention models: which grid cells the next character looks at, given the states before it.
        attention = getattr(getattr(decoder, "cell", None), "attention", None)
        self.attention = None if attention is None else keras.Model(states, attention(states[0], states[2], states[3])[1])

    def start(self, features: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(state) for state in self.initial.predict_on_batch(features)]

    def next(self, tokens: np.ndarray, states: list[np.ndarray]):
        probabilities, *states = self.step.predict_on_batch([tokens[:, None].astype("int32"), *states])
        return np.asarray(probabilities)[:, 0], [np.asarray(state) for state in states]

    def attention_maps(self, features: np.ndarray, captions: list[list[int]]) -> list[np.ndarray]:
        """Per image, the attention weights ``(characters, cells)`` behind each character of its caption.

        The captions (class indices, without the end class) are fed back one
        character at a time, as when they were written.
        """
        if self.attention is None:
            raise ValueError("This model has no attention (train with --arch attention).")
        states = self.start(features)
        longest = max((len(caption) for caption in captions), default=0)
        padded = np.zeros((len(captions), longest + 1), dtype=np.int64)  # END first: the start token
        for row, caption in enumerate(captions):
            padded[row, 1 : len(caption) + 1] = caption
        maps = []
        for step in range(longest):
            maps.append(np.asarray(self.attention.predict_on_batch(states)))  # (batch, cells)
            _, states = self.next(padded[:, step], states)
        stacked = np.stack(maps, axis=1) if maps else np.zeros((len(captions), 0, 0))  # (batch, longest, cells)
        return [stacked[row, : len(caption)] for row, caption in enumerate(captions)]


def beam_search(
    steps: StepModels,
    features: np.ndarray,
    vocabulary: Vocabulary,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: int = 49,
) -> list[list[Caption]]:
    """Batched beam search; ``beam_size=1`` is greedy decoding.

    Args:
        steps: the model's per-step pieces (or anything with ``start`` and ``next``).
        features: ``(batch, ...)`` image features.
        vocabulary: the vocabulary the model was trained with.
        beam_size: partial captions kept per image.
        n_best: how many captions to return per image (at most ``beam_size``).
        max_length: characters before a caption is cut off (unended).

    Returns:
        Per image, up to ``n_best`` captions, best first.
    """
    n_best = min(n_best, beam_size)
    num_images = len(features)
    states = [np.repeat(state, beam_size, 0) for state in steps.start(features)]  # (batch * beam, ...) each
    scores = np.full((num_images, beam_size), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive so the first step does not pick duplicates
    sequences = np.zeros((num_images, beam_size, 0), dtype=np.int64)
    tokens = np.full(num_images * beam_size, END, dtype=np.int64)
    finished: list[list[tuple[float, float, list[int], bool]]] = [[] for _ in range(num_images)]
    for length in range(1, max_length + 2):
        probabilities, states = steps.next(tokens, states)  # (batch * beam, classes)
        log_probabilities = np.log(np.maximum(probabilities, 1e-12)).reshape(num_images, beam_size, -1)
        totals = scores[:, :, None] + log_probabilities  # (batch, beam, classes)
        num_classes = totals.shape[-1]
        best = np.argsort(-totals.reshape(num_images, -1), axis=1)[:, : 2 * beam_size]  # (batch, 2 * beam)
        new_scores = np.full_like(scores, -np.inf)
        parents = np.zeros((num_images, beam_size), dtype=np.int64)
        new_tokens = np.full((num_images, beam_size), END, dtype=np.int64)
        for image in range(num_images):
            kept = 0
            for flat in best[image]:
                beam, token = divmod(int(flat), num_classes)
                total = totals[image, beam, token]
                if not np.isfinite(total):
                    continue
                if token == END:
                    finished[image].append((total / length, total, sequences[image, beam].tolist(), True))
                    continue
                if kept < beam_size and length <= max_length:
                    new_scores[image, kept], parents[image, kept], new_tokens[image, kept] = total, beam, token
                    kept += 1
        if length > max_length:
            # Out of room: the live beams become unended captions of max_length characters.
            for image, beam in zip(*np.nonzero(np.isfinite(scores))):
                total = scores[image, beam]
                finished[image].append((total / max_length, total, sequences[image, beam].tolist(), False))
            break
        if all(_settled(done, best_alive, beam_size, max_length)
               for done, best_alive in zip(finished, new_scores.max(axis=1))):
            break
        rows = (np.arange(num_images)[:, None] * beam_size + parents).reshape(-1)
        states = [state[rows] for state in states]
        sequences = np.concatenate([np.take_along_axis(sequences, parents[:, :, None], 1), new_tokens[:, :, None]], axis=2)
        scores, tokens = new_scores, new_tokens.reshape(-1)
    results = []
    for image in range(num_images):
        ranked = sorted(finished[image], key=lambda item: -item[0])[:n_best]
        results.append([Caption(vocabulary.decode(seq + [END])[0], ended, float(np.exp(total)))
                        for _, total, seq, ended in ranked])
    return results


def _settled(finished, best_alive: float, beam_size: int, max_length: int) -> bool:
    """True when no live beam can still enter an image's top ``beam_size`` finished captions.

    A live beam's log-probability only falls as it grows, so its best possible
    length-normalised score is its current total spread over the longest length.
    """
    if not np.isfinite(best_alive):
        return True
    if len(finished) < beam_size:
        return False
    worst_kept = sorted((item[0] for item in finished), reverse=True)[beam_size - 1]
    return best_alive / (max_length + 1) <= worst_kept
