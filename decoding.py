"""Turning model outputs into captions.

Non-autoregressive models (``image2text``) give all 50 steps' probabilities at once.
Trained with cross-entropy, the caption is the likeliest class per step up to
the end class (``decode_parallel``); trained with CTC, it is what remains of
the steps' classes after merging repeats and removing the end class, CTC's
blank (``decode_ctc``: ``keras.ops.ctc_decode``, greedy or beam search), or
the same with the run's language model of the training captions beside it
(``decode_ctc_lm``: a prefix beam search, lm.py).

Autoregressive models (``showtell``, ``attention``, ``transformer``) are run
one character at a time (``model.StepModels``, ``model.PrefixSteps``) with a
batched beam search: every image keeps ``beam_size`` partial captions, each
extended by its likeliest next characters; a caption is finished when it
writes the end class, and finished captions are ranked by log-probability per
character (length-normalised, so short captions are not favoured). With a
prior weight, the steps' probabilities are first divided by the training
captions' own (``PriorSubtracted``): what the photo adds to what is usually
written next. With a no-repeat size, no run of that many characters is written
twice in a caption (``NoRepeat``). Several runs decode as one by averaging
their steps' probabilities (``Averaged``, an ensemble). With samples, captions
are also drawn from the softmax and the likeliest of all is kept
(``sample_and_rank``); another run may choose among them instead
(``captioner.Captioner.judge``).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from kana import END, TIMESTEPS, Vocabulary
from lm import END_MARK


MAX_BEAM = 64  # --beam-size and --n-best: the work per photo grows with it
MAX_SAMPLES = 64  # --samples: captions drawn per photo (the work per photo grows with it)
MAX_JUDGES = 4  # --judge: each adds a model (and, in predict.py, a VGG16 at its image size)
JUDGE_HELP = ("with --samples: a run folder (knowing the run's characters, of its timesteps; any image size, layer or VGG16 weights) "
              "that ranks the candidates instead, by its probability of each caption given the photo read its own "
              "way; give it once per judge, up to " + str(MAX_JUDGES) + " (their log-probabilities add up)")
MAX_DRAWN = 512  # sample_and_rank draws this many captions at once (a transformer keeps each one's keys and values)
SAMPLES_HELP = ("autoregressive runs: also draw this many captions per photo from the model's softmax and keep "
                "the likeliest of them and of beam search's (0 = beam search alone; 16 measured in "
                "docs/hard-benchmark.md)")
DECODE_METHODS = ("argmax", "collapse", "ctc", "ctc-lm")  # how a non-autoregressive model's outputs may be read
CTC_LM_BEAM = 8  # ctc-lm searches at least this many partial captions per photo
CTC_LM_FLOOR = 1e-3  # ctc-lm extends a partial caption only by characters at least this likely at a step
BEAM_HELP = f"beams per image, for autoregressive runs and CTC decoding (1 = greedy; ctc-lm searches at least {CTC_LM_BEAM})"
LM_WEIGHT_HELP = ("ctc-lm decoding: the weight of the run's language model beside CTC's (0 = CTC alone) "
                  "[default: the run's, from train.py --lm-weight]")
# Prior subtraction (PriorSubtracted) chooses among the characters at least PRIOR_PLAUSIBLE times as likely as the
# likeliest, and its prior reads the last PRIOR_CONTEXT characters: chosen on a tuning set of the hard benchmark
# (docs/hard-benchmark.md), where longer contexts also take out the order of the clauses, and cost seen photos more.
PRIOR_PLAUSIBLE = 0.01
PRIOR_CONTEXT = 4
MAX_NO_REPEAT = 80  # --no-repeat: the longest run of characters checked (a caption's most, at the largest timesteps)
NO_REPEAT_HELP = ("autoregressive runs: never write the same this many characters twice in a caption, so that a "
                  "clause once written is not written again; 0 = no such constraint")
MAX_ENSEMBLE = 8  # runs averaged at most: each adds its model's memory and a model call per step
ENSEMBLE_HELP = ("autoregressive runs: another run folder, trained on the same features and characters (e.g. with "
                 "another --seed), whose next-character probabilities are averaged with --model's at every step; "
                 f"give it once per run, up to {MAX_ENSEMBLE - 1} (no attention maps)")
PRIOR_WEIGHT_HELP = ("divide each next character's probability by that of the run's language model (lm.json, the "
                     f"training captions' characters; after the last {PRIOR_CONTEXT}) to this power, among the "
                     f"characters at least {PRIOR_PLAUSIBLE:g}× as likely as the likeliest, so that the photo rather "
                     "than the usual wording decides what comes next (0.3 measured best on new colour–kind pairs, "
                     "at a cost on seen ones: docs/hard-benchmark.md); 0 = the model's own probabilities")


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


def decode_ctc(probabilities: np.ndarray, vocabulary: Vocabulary, beam_size: int = 1,
               n_best: int = 1) -> list[list[Caption]]:
    """CTC decoding with the end class as the blank: greedy at ``beam_size`` 1, else beam search.

    Returns, per image, up to ``n_best`` captions (at most ``beam_size``),
    best first. A CTC caption has no end mark to miss, so every one is
    ``ended``; its probability is the best path's (greedy) or the beam
    search's estimate of the caption's (beam).
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)  # (batch, timesteps, classes)
    batch, steps, _ = probabilities.shape
    if batch == 0:
        return []
    logits = np.log(np.maximum(probabilities, 1e-7))  # softmax(log p) = p: what ctc_decode expects
    lengths = np.full(batch, steps, dtype=np.int32)
    n_best = min(n_best, beam_size)
    if beam_size == 1:
        decoded, scores = keras.ops.ctc_decode(logits, lengths, strategy="greedy", mask_index=END)
        log_probabilities = -keras.ops.convert_to_numpy(scores)  # (batch, 1): the best path's negated sum
    else:
        decoded, log_probabilities = keras.ops.ctc_decode(logits, lengths, strategy="beam_search",
                                                          beam_width=beam_size, top_paths=n_best, mask_index=END)
        log_probabilities = keras.ops.convert_to_numpy(log_probabilities)  # (batch, n_best)
    decoded = keras.ops.convert_to_numpy(decoded)  # (paths, batch, timesteps), -1 after the caption
    captions = []
    for image in range(batch):
        ranked = []
        for path in range(decoded.shape[0]):
            indices = [int(i) for i in decoded[path, image] if i > END]
            ranked.append(Caption(vocabulary.decode([*indices, END])[0], True,
                                  float(np.exp(log_probabilities[image, path]))))
        captions.append(ranked)
    return captions


def decode_ctc_lm(probabilities: np.ndarray, vocabulary: Vocabulary, language_model, weight: float,
                  beam_size: int = CTC_LM_BEAM, n_best: int = 1) -> list[list[Caption]]:
    """CTC prefix beam search with a character language model (shallow fusion).

    Each partial caption keeps two log-probabilities over the steps read so
    far: of the alignments that end in the blank (the end class) and of those
    that end in its last character. A step extends it by a blank, by its last
    character again (the same caption), or by any character at least
    ``CTC_LM_FLOOR`` likely there, which adds ``weight`` times the language
    model's log-probability of that character after the caption so far. The
    ``beam_size`` best partial captions survive each step; at the end, the
    language model's probability of ending there is added too.

    Returns, per image, up to ``n_best`` captions, best first; a caption's
    probability is CTC's alone (its alignments found by the search), without
    the language model's share.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)  # (batch, timesteps, classes)
    log_probabilities = np.log(np.maximum(probabilities, 1e-30)).tolist()  # Python floats: the search is scalar work
    characters = [vocabulary.index_to_char.get(index, "") for index in range(probabilities.shape[-1])]
    captions = []
    for steps, candidates in zip(log_probabilities, probabilities >= CTC_LM_FLOOR):
        beams = {"": (0.0, -math.inf, 0.0)}  # caption: (log p ending in blank, log p ending in its last character, lm)
        for step, ok in zip(steps, candidates):
            # the classes worth extending by at this step: (index, character), blanks and unknown classes left out
            extensions = [(index, characters[index]) for index in np.flatnonzero(ok).tolist() if characters[index]]
            extended: dict[str, list[float]] = {}
            for text, (blank, last, lm_score) in beams.items():
                both = _log_add(blank, last)
                entry = extended.setdefault(text, [-math.inf, -math.inf, lm_score])
                entry[0] = _log_add(entry[0], both + step[END])
                if text:
                    entry[1] = _log_add(entry[1], last + step[vocabulary.char_to_index[text[-1]]])
                for index, char in extensions:
                    added = weight * language_model.log_probability(text, char)
                    entry = extended.setdefault(text + char, [-math.inf, -math.inf, lm_score + added])
                    source = blank if text and char == text[-1] else both  # a repeat needs a blank between
                    entry[1] = _log_add(entry[1], source + step[index] + added)
            ranked = sorted(extended.items(), key=lambda item: -_log_add(item[1][0], item[1][1]))[:beam_size]
            beams = {text: tuple(entry) for text, entry in ranked}
        final = sorted(((_log_add(blank, last) + weight * language_model.log_probability(text, END_MARK), text,
                         _log_add(blank, last) - lm_score) for text, (blank, last, lm_score) in beams.items()),
                       reverse=True)[:n_best]
        captions.append([Caption(text, True, math.exp(ctc)) for _, text, ctc in final])
    return captions


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), for Python floats (numpy's is slower on scalars)."""
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


def class_order(vocabulary: Vocabulary, other: Vocabulary, num_classes: int) -> np.ndarray:
    """``other``'s class of each of ``vocabulary``'s ``num_classes`` classes (the end class, each character, unused).

    Runs number their characters by frequency in their own training split, so
    two runs of the same captions may number them differently.

    Raises:
        ValueError: the two write different characters.
    """
    if set(vocabulary.characters) != set(other.characters):
        raise ValueError("the runs write different characters (their vocab.json differ): an ensemble averages "
                         "runs trained on the same captions")
    used = len(vocabulary.characters) + 1
    return np.array([END, *(other.char_to_index[char] for char in vocabulary.characters),
                     *range(used, num_classes)], dtype=np.int64)


class Averaged:
    """The step models of several runs as one: their next-character probabilities averaged (an ensemble).

    Runs trained with other seeds make some different mistakes (on the hard
    benchmark most are the same: docs/hard-benchmark.md); at each step beam
    search reads the mean of their distributions, each run fed the same
    characters so far. ``orders[i]`` is run i's class of each class of the
    first run (``class_order``): its probabilities are put in the first run's
    order, and the characters written are handed to it in its own. The
    states are the runs' states one after another.
    """

    attention = None  # no one map per character: predict.py --attention refuses an ensemble

    def __init__(self, steps: list, orders: list[np.ndarray]):
        self.members, self.orders = steps, orders
        self.sizes: list[int] = []  # how many states each run keeps, once start has run

    def start(self, features: np.ndarray) -> list[np.ndarray]:
        states = [member.start(features) for member in self.members]
        self.sizes = [len(part) for part in states]
        return [state for part in states for state in part]

    def next(self, tokens: np.ndarray, states: list[np.ndarray]):
        total, new_states, first = 0.0, [], 0
        tokens = np.asarray(tokens, dtype=np.int64)
        for member, order, size in zip(self.members, self.orders, self.sizes):
            probabilities, member_states = member.next(order[tokens], states[first : first + size])
            total = total + np.asarray(probabilities, dtype=np.float64)[:, order]
            new_states.extend(member_states)
            first += size
        return total / len(self.members), new_states


class Reweighted:
    """Step models whose next-character distribution is changed by what each beam has written (``adjusted``).

    The wrapper keeps each beam's characters as one more state (beam search
    reorders it with the others) and reads the wrapped steps' attention.
    """

    def __init__(self, steps):
        self.steps = steps

    @property
    def attention(self):
        return self.steps.attention

    def attention_maps(self, features: np.ndarray, captions: list[list[int]]) -> list[np.ndarray]:
        return self.steps.attention_maps(features, captions)

    def start(self, features: np.ndarray) -> list[np.ndarray]:
        return [*self.steps.start(features), np.zeros((len(features), 0), dtype=np.int64)]

    def next(self, tokens: np.ndarray, states: list[np.ndarray]):
        *states, written = states
        written = np.concatenate([written, np.asarray(tokens, dtype=np.int64)[:, None]], axis=1)  # END first
        probabilities, states = self.steps.next(tokens, states)
        return self.adjusted(np.array(probabilities, dtype=np.float64), written[:, 1:]), [*states, written]

    def adjusted(self, probabilities: np.ndarray, written: np.ndarray) -> np.ndarray:
        """The step's distributions ``(beams, classes)``, given each beam's characters so far (after the start)."""
        raise NotImplementedError


class PriorSubtracted(Reweighted):
    """Step models whose next-character distribution has the captions' prior taken out (contrastive decoding).

    A captioner trained on photos where red goes with stars writes a star
    after "red" even when the photo shows a red heart: its next-character
    probability mixes what the photo shows with what the captions usually
    say next. This divides that probability by the language model's (lm.py,
    of the training captions alone) to the power ``weight``:

        log P(next | photo, caption so far) - weight * log P_lm(next | caption so far)

    but only among the characters at least ``plausible`` times as likely as
    the model's likeliest, so that a character the photo does not support is
    never chosen for being rare (the adaptive plausibility constraint of
    Li et al. 2023, "Contrastive Decoding"). The prior reads only the last
    ``context`` characters: enough to know the colour just written, too few
    to know the order in which a caption lists its clauses, a convention
    worth keeping. The result is renormalised and handed to beam search as
    the step's probabilities; a caption's ``probability`` is then of these
    corrected steps.
    """

    def __init__(self, steps, language_model, vocabulary: Vocabulary, weight: float,
                 plausible: float = PRIOR_PLAUSIBLE, context: int = PRIOR_CONTEXT):
        super().__init__(steps)
        self.language_model, self.weight, self.plausible = language_model, weight, plausible
        self.vocabulary, self.context = vocabulary, context
        self.symbols, self.known = [], np.zeros(0, dtype=bool)  # per class, once the model's width is seen

    def adjusted(self, probabilities: np.ndarray, written: np.ndarray) -> np.ndarray:
        if len(self.symbols) != probabilities.shape[1]:  # what each class writes: a character, the end, or nothing
            self.symbols = [END_MARK if index == END else self.vocabulary.index_to_char.get(index, "")
                            for index in range(probabilities.shape[1])]
            self.known = np.array([bool(symbol) for symbol in self.symbols])
        plausible = self.known & (probabilities >= self.plausible * probabilities.max(axis=1, keepdims=True))
        log_prior = np.zeros_like(probabilities)
        texts: dict[int, str] = {}
        for row, index in zip(*np.nonzero(plausible)):
            if row not in texts:
                caption = written[row]
                texts[row] = "".join(self.symbols[token] for token in caption[max(len(caption) - self.context, 0) :])
            log_prior[row, index] = self.language_model.log_probability(texts[row], self.symbols[index],
                                                                        self.context)
        scores = np.where(plausible, np.log(np.maximum(probabilities, 1e-30)) - self.weight * log_prior, -np.inf)
        scores[~plausible.any(axis=1)] = np.log(np.maximum(probabilities[~plausible.any(axis=1)], 1e-30))
        corrected = np.exp(scores - scores.max(axis=1, keepdims=True))
        return corrected / corrected.sum(axis=1, keepdims=True)


class NoRepeat(Reweighted):
    """Step models that never write the same ``size`` characters twice in a caption (no repeated n-gram).

    A decoder fed its own caption can name an object, then name it again
    where the next one belongs: the caption so far looks like one that has
    that clause still to come. This sets to zero each character that would
    end a run of ``size`` characters the caption has already written, and
    renormalises (the no-repeat n-gram constraint of Paulus et al. 2018,
    beam search's ``no_repeat_ngram_size`` elsewhere). Where every character
    is blocked the step is left as it is.
    """

    def __init__(self, steps, size: int):
        if size < 2:
            raise ValueError(f"a repeated run must be at least 2 characters long; got {size}")
        super().__init__(steps)
        self.size = size

    def adjusted(self, probabilities: np.ndarray, written: np.ndarray) -> np.ndarray:
        for row, blocked in enumerate(repeat_endings(written, self.size)):
            if blocked and probabilities[row].sum() > probabilities[row, blocked].sum():
                probabilities[row, blocked] = 0.0
        return probabilities / probabilities.sum(axis=1, keepdims=True)


def repeat_endings(captions: np.ndarray, size: int) -> list[list[int]]:
    """Per caption (a row of characters written so far), the characters that would end a run of ``size`` of them
    that it already holds."""
    length = captions.shape[1]
    if length < size:
        return [[] for _ in captions]
    endings = []
    for caption in captions.tolist():
        tail = caption[length - size + 1 :]
        endings.append(sorted({caption[start + size - 1] for start in range(length - size + 1)
                               if caption[start : start + size - 1] == tail}))
    return endings


@dataclasses.dataclass
class Samples:
    """Captions drawn from a model's softmax, one character at a time: self-critical training's targets, and the
    candidates ``sample_and_rank`` chooses among."""

    targets: np.ndarray  # (num_captions, timesteps) class indices, END-padded after the caption
    lengths: np.ndarray  # (num_captions,) characters before the end
    ended: np.ndarray  # (num_captions,) bool: the model wrote the end class within timesteps - 1 characters
    log_probabilities: np.ndarray | None = None  # (num_captions,) of the characters drawn, the end class included

    def texts(self, vocabulary: Vocabulary) -> list[str]:
        return [vocabulary.decode(row)[0] for row in self.targets]

    def weights(self, advantages: np.ndarray) -> np.ndarray:
        """Per character ``(num_captions, timesteps)``: the sample's advantage up to its end class (included
        where the model wrote it), 0 on the padding after."""
        steps = np.arange(self.targets.shape[1])[None, :]
        written = steps < (self.lengths + self.ended)[:, None]
        return (advantages[:, None] * written).astype(np.float32)


def sample_captions(steps, features: np.ndarray, num_samples: int, timesteps: int,
                    rng: np.random.Generator, num_classes: int | None = None) -> Samples:
    """``num_samples`` captions per image, image by image, each character drawn from the model's softmax.

    A caption that has not ended after ``timesteps - 1`` characters is cut
    there, unended, as beam search cuts one. ``num_classes``: draw only the
    first this many classes (the vocabulary's; a model has spare ones, which
    no character decodes to); a caption's probability is the softmax's.
    """
    states = [np.repeat(state, num_samples, axis=0) for state in steps.start(features)]
    num_captions = len(features) * num_samples
    targets = np.full((num_captions, timesteps), END, dtype=np.int64)
    lengths = np.zeros(num_captions, dtype=np.int64)
    log_probabilities = np.zeros(num_captions)
    alive, ended = np.ones(num_captions, dtype=bool), np.zeros(num_captions, dtype=bool)
    tokens = np.full(num_captions, END, dtype=np.int64)
    for step in range(timesteps):
        probabilities, states = steps.next(tokens, states)
        probabilities = np.asarray(probabilities, dtype=np.float64)[:, :num_classes]
        cumulative = np.cumsum(probabilities, axis=1)
        drawn = np.minimum((cumulative < rng.random((num_captions, 1)) * cumulative[:, -1:]).sum(axis=1),
                           cumulative.shape[1] - 1)
        chosen = probabilities[np.arange(num_captions), drawn]  # as beam search counts it: not renormalised
        log_probabilities += np.where(alive, np.log(np.maximum(chosen, 1e-12)), 0.0)
        ended |= alive & (drawn == END)
        alive &= drawn != END
        if step == timesteps - 1 or not alive.any():
            break
        targets[alive, step] = drawn[alive]
        lengths += alive
        tokens = np.where(alive, drawn, END)
    return Samples(targets, lengths, ended, log_probabilities)


def sample_and_rank(steps, features: np.ndarray, vocabulary: Vocabulary, num_samples: int, rng: np.random.Generator,
                    beam_size: int = 1, n_best: int = 1, max_length: int = TIMESTEPS - 1) -> list[list[Caption]]:
    """Beam search's captions and ``num_samples`` more drawn from the softmax, per image, ranked by the model's
    probability of the whole caption (not per character); ended captions before unended ones.

    Drawing explores captions that differ from the likeliest path early on, which
    beam search prunes: on the hard benchmark's held-out sets one of 16 draws or
    the greedy caption names every object right in 77–87% of photos, the greedy
    caption in 54–58% (docs/hard-benchmark.md). Images are drawn for in groups of
    at most ``MAX_DRAWN`` captions, to bound the memory of the model's states.
    """
    searched = beam_search(steps, features, vocabulary, beam_size, beam_size, max_length)
    group = max(1, MAX_DRAWN // num_samples)
    results = []
    for start in range(0, len(features), group):
        drawn = sample_captions(steps, features[start : start + group], num_samples, max_length + 1, rng,
                                vocabulary.num_classes)
        texts = drawn.texts(vocabulary)
        for image, found in enumerate(searched[start : start + group]):
            candidates = {caption.text: caption for caption in found}
            for index in range(image * num_samples, (image + 1) * num_samples):
                caption = Caption(texts[index], bool(drawn.ended[index]), float(np.exp(drawn.log_probabilities[index])))
                if caption.text not in candidates or caption.probability > candidates[caption.text].probability:
                    candidates[caption.text] = caption
            results.append(sorted(candidates.values(), key=lambda c: (not c.ended, -c.probability))[:n_best])
    return results


def beam_search(
    steps,
    features: np.ndarray,
    vocabulary: Vocabulary,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: int = TIMESTEPS - 1,
) -> list[list[Caption]]:
    """Batched beam search; ``beam_size=1`` is greedy decoding.

    Args:
        steps: the model's per-step pieces (``model.StepModels``, or anything with ``start`` and ``next``).
        features: ``(batch, ...)`` image features.
        vocabulary: the vocabulary the model was trained with.
        beam_size: partial captions kept per image.
        n_best: how many captions to return per image (at most ``beam_size``).
        max_length: characters before a caption is cut off (unended): the config's timesteps - 1.

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
