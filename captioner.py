"""A run folder and the captioner it makes: what train.py writes, and what predict.py and evaluate.py read.

A run folder holds:

    model.keras       the model of the best epoch (by validation loss, or its captions' CIDEr-D: train.py --keep-best)
    config.json       the CaptionerConfig it was built from
    vocab.json        the classes it writes, end class first
    lm.json           the language model of the training captions (lm.py): CTC runs' decoding reads it beside
                      the model; autoregressive runs' can take it out of the model's steps (--prior-weight)
    checkpoint.keras  the last epoch with optimizer state (training only, for --resume)
    state.json        epochs done, early-stopping counters, history (training only)
    metrics.json, history.csv, loss.png

The first three (and lm.json, for runs read with it) are all ``Captioner`` needs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from decoding import (CTC_LM_BEAM, Averaged, Caption, NoRepeat, PriorSubtracted, beam_search, class_order,
                      decode_ctc, decode_ctc_lm, decode_parallel, sample_and_rank)
from features import build_vgg16, decode_batches, load_image, load_images, preprocess
from kana import Vocabulary
from lm import LM_FILE, CharNgram
from model import ATTRIBUTES, CaptionerConfig, architecture, load_model, model_inputs, save_model, step_models

DEFAULT_RUN = "runs/demo"  # what python train.py makes and predict.py reads when no run is named
MODEL_FILE = "model.keras"  # the weights of the best epoch (train.py --keep-best)
CHECKPOINT_FILE = "checkpoint.keras"  # the last epoch, with optimizer state, for --resume
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
STATE_FILE = "state.json"  # epochs done, early-stopping counters, history
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
LOSS_PLOT_FILE = "loss.png"
RUN_FILES = (MODEL_FILE, CONFIG_FILE, VOCAB_FILE)  # what captioning needs


def save_run(folder, model, config: CaptionerConfig, vocabulary: Vocabulary) -> None:
    """Writes the files a Captioner loads (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / CONFIG_FILE)
    vocabulary.save(folder / VOCAB_FILE)
    save_model(model, folder / MODEL_FILE)


def _language_model(model_dir: Path, reader: str, remedy: str) -> CharNgram:
    """The run's lm.json, or a FileNotFoundError saying what reads it and how to do without it."""
    if not (model_dir / LM_FILE).is_file():
        raise FileNotFoundError(f"{model_dir / LM_FILE} not found: {reader} reads the run's language model of its "
                                f"training captions, {remedy}.")
    return CharNgram.load(model_dir / LM_FILE)


def load_run(model_dir: Path, option: str = "--model"):
    """A run folder's model, config and vocabulary, checked to belong together (``option`` named it).

    Raises:
        FileNotFoundError: a file of the run is missing.
        ValueError: the files do not belong together.
    """
    for name in RUN_FILES:
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} not found: {option} must be a run folder written by train.py.")
    config = CaptionerConfig.load(model_dir / CONFIG_FILE)
    vocabulary = Vocabulary.load(model_dir / VOCAB_FILE, config.vocabulary, config.num_classes)
    model = load_model(model_dir / MODEL_FILE)
    num_classes = model.output_shape[-1]
    attributes = next((layer.units for layer in model.layers if layer.name == ATTRIBUTES), 0)
    if (num_classes, tuple(model.inputs[0].shape[1:]), attributes) != (
            config.num_classes, config.feature_shape, config.attributes):
        raise ValueError(
            f"{model_dir}: the model does not match config.json (classes {num_classes} vs "
            f"{config.num_classes}, attributes {attributes} vs {config.attributes}, or another image size); "
            f"these files are not from the same run."
        )
    return model, config, vocabulary


ENSEMBLE_MATCH = ("vgg_weights", "vgg_precision", "image_size", "feature_layer", "timesteps", "num_classes")


def _check_member(model_dir: Path, config: CaptionerConfig, other_dir: Path, other: CaptionerConfig) -> None:
    """Raises ValueError unless ``other_dir``'s run can be averaged with ``model_dir``'s: an autoregressive run
    reading the same features (the cache of the first serves both) and writing as many steps of as many classes."""
    if not architecture(other).autoregressive:
        raise ValueError(f"--ensemble averages the steps of autoregressive runs; {other_dir} is {other.arch}.")
    differ = [name for name in ENSEMBLE_MATCH if getattr(config, name) != getattr(other, name)]
    if differ:
        raise ValueError(f"{other_dir} cannot be averaged with {model_dir}: their " + ", ".join(
            f"{name} ({getattr(config, name)} against {getattr(other, name)})" for name in differ)
            + " differ; an ensemble's runs read the same features and write as many steps.")


def _same_features(config: CaptionerConfig, other: CaptionerConfig) -> bool:
    return all(getattr(config, name) == getattr(other, name)
               for name in ("vgg_weights", "vgg_precision", "image_size", "feature_layer"))


def _check_judge(model_dir: Path, config: CaptionerConfig, vocabulary: Vocabulary, judge_dir: Path,
                 judge: CaptionerConfig, judge_vocabulary: Vocabulary) -> None:
    """Raises ValueError unless ``judge_dir``'s run can score ``model_dir``'s captions: an autoregressive run that
    knows the run's characters (in any order) and writes as many steps (its features may differ: another image
    size, layer or weights)."""
    if not architecture(judge).autoregressive:
        raise ValueError(f"--judge scores captions one character after another; {judge_dir} is {judge.arch}, whose "
                         f"steps are written all at once.")
    missing = "".join(sorted(set(vocabulary.characters) - set(judge_vocabulary.characters)))
    if missing or judge.timesteps != config.timesteps:
        raise ValueError(f"{judge_dir} cannot judge {model_dir}'s captions: a judge knows every character the run "
                         f"writes (not {missing or 'missing none'}) and writes as many steps (timesteps "
                         f"{judge.timesteps} against {config.timesteps}).")


def caption_log_probabilities(model, config: CaptionerConfig, vocabulary: Vocabulary, features: np.ndarray,
                              texts: list[str], ended=None, photos=None, batch_size: int = 512) -> np.ndarray:
    """log P(text, then the end class | features) of each caption under an autoregressive run, fed the caption's
    own characters (one model call per batch, not one per character). ``features[photos[i]]`` is ``texts[i]``'s
    photo's (``photos`` None: ``features[i]``), gathered batch by batch; where ``ended[i]`` is False (a caption cut
    unended) the end class is not counted, as beam search counts it."""
    ended = np.ones(len(texts), dtype=bool) if ended is None else np.asarray(ended, dtype=bool)
    photos = np.arange(len(texts)) if photos is None else np.asarray(photos)
    scores = np.zeros(len(texts))
    steps = np.arange(config.timesteps)[None, :]
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        targets = np.stack([vocabulary.encode(text, config.timesteps)[0] for text in chunk]).astype(np.int64)
        written = np.array([min(len(text), config.timesteps - 1) for text in chunk])
        written += ended[start : start + batch_size]  # the characters, then the end class where it was written
        batch = np.asarray(features[photos[start : start + batch_size]], dtype=np.float32)
        inputs = model_inputs(config, batch, targets)
        probabilities = np.asarray(model.predict_on_batch(inputs), dtype=np.float64)
        chosen = np.take_along_axis(probabilities, targets[:, :, None], axis=2)[:, :, 0]
        scores[start : start + batch_size] = (np.log(np.maximum(chosen, 1e-12)) * (steps < written[:, None])).sum(1)
    return scores


@dataclasses.dataclass
class Captioned:
    """One photo's result from ``Captioner.caption_photo``."""

    image: np.ndarray  # the letterboxed photo the model saw, (size, size, 3) uint8
    captions: list[Caption]  # best first
    attention: np.ndarray | None  # attention models: the weights behind each character of the best caption
    seconds: float  # reading, VGG16 and decoding


class Captioner:
    """A trained run folder, ready to caption images.

    Args:
        model_dir: a folder written by train.py (model.keras, config.json, vocab.json).
        vgg_weights: overrides the VGG16 weights the run was trained with
            (e.g. a local copy of the same ImageNet weights file).
        with_vgg: False to caption cached features only (no VGG16 built).
        decode: how a non-autoregressive model's outputs are read (decoding.DECODE_METHODS);
            None reads them as config.json says the run was trained to be read.
        beam_size: beams per image for autoregressive models and CTC decoding (1 = greedy;
            with the language model, CTC decoding searches at least decoding.CTC_LM_BEAM).
        lm_weight: overrides the language model's weight (ctc-lm decoding; 0 = CTC alone).
        prior_weight: overrides the share of the language model taken out of an autoregressive
            model's steps (decoding.PriorSubtracted; 0 = the model's own probabilities).
        ensemble: more autoregressive run folders, of the same features and characters, whose
            next-character probabilities are averaged with this run's (decoding.Averaged); the
            prior, if taken out, is this run's lm.json.
        no_repeat: autoregressive models: never write the same this many characters twice in a
            caption (decoding.NoRepeat); 0 = no such constraint.
        samples: autoregressive models: also draw this many captions per image from the softmax
            and keep the likeliest of them and of beam search's (decoding.sample_and_rank).
        judges: with samples: autoregressive run folders of the same characters and length, each reading the
            photo with its own features (image size, layer, weights), which rank the candidates
            instead, by the sum of their log-probabilities of each (``judge``).
        seed: the draws' random seed (the same captions for the same images, call by call).

    Raises:
        FileNotFoundError: a file of the run is missing.
        ValueError: the files do not belong together.
    """

    def __init__(self, model_dir, vgg_weights: str | None = None, with_vgg: bool = True, decode: str | None = None,
                 beam_size: int = 1, lm_weight: float | None = None, prior_weight: float | None = None,
                 ensemble=(), no_repeat: int = 0, samples: int = 0, seed: int = 0, judges=()):
        model_dir = Path(model_dir)
        model, config, vocabulary = load_run(model_dir)
        autoregressive = architecture(config).autoregressive
        if decode is not None and autoregressive:
            raise ValueError(f"--decode is for image2text runs; {model_dir} is {config.arch}, read by beam search.")
        if prior_weight and not autoregressive:
            raise ValueError(f"--prior-weight is for autoregressive runs; {model_dir} is {config.arch}, whose "
                             f"steps are written all at once ({config.decoding} decoding).")
        if no_repeat and not autoregressive:
            raise ValueError(f"--no-repeat is for autoregressive runs; {model_dir} is {config.arch}, whose "
                             f"steps are written all at once.")
        if samples and not autoregressive:
            raise ValueError(f"--samples draws captions from autoregressive runs; {model_dir} is {config.arch}, "
                             f"whose steps are written all at once.")
        if ensemble and not autoregressive:
            raise ValueError(f"--ensemble averages the steps of autoregressive runs; {model_dir} is {config.arch}, "
                             f"whose steps are written all at once.")
        if judges and not samples:
            raise ValueError("--judge ranks the captions drawn for a photo: give --samples N too.")
        self.judges = []  # (model, config, vocabulary) of each judging run
        for judge_dir in map(Path, judges):
            self.judges.append(load_run(judge_dir, "--judge"))
            _check_judge(model_dir, config, vocabulary, judge_dir, self.judges[-1][1], self.judges[-1][2])
        members = []
        for other_dir in map(Path, ensemble):
            members.append(load_run(other_dir, "--ensemble"))
            _check_member(model_dir, config, other_dir, members[-1][1])
        language_model = None
        if (decode or config.decoding) == "ctc-lm":
            language_model = _language_model(model_dir, "ctc-lm decoding", "which train.py writes for CTC runs; "
                                             "--decode ctc reads the run without it")
        elif (config.prior_weight if prior_weight is None else prior_weight) and autoregressive:
            language_model = _language_model(model_dir, "--prior-weight", "which train.py writes with every run it "
                                             "starts (and with --resume, if missing); --prior-weight 0 reads the "
                                             "run without it")
        self._bind(model, config, vocabulary, language_model, decode, beam_size, lm_weight, prior_weight, members,
                   no_repeat)
        self.samples, self.rng = samples, np.random.default_rng(seed)
        self.vgg = build_vgg16(vgg_weights or config.vgg_weights, config.image_size,
                               config.vgg_precision, config.feature_layer) if with_vgg else None
        self.judge_vggs = [self.vgg if self.vgg is not None and _same_features(config, judge) else
                           build_vgg16(vgg_weights or judge.vgg_weights, judge.image_size, judge.vgg_precision,
                                       judge.feature_layer) for _, judge, _ in self.judges] if with_vgg else []

    @classmethod
    def of_model(cls, model, config: CaptionerConfig, vocabulary: Vocabulary,
                 language_model: CharNgram | None = None) -> "Captioner":
        """A captioner of cached features from a model in memory (training's per-epoch validation captions)."""
        captioner = cls.__new__(cls)
        captioner._bind(model, config, vocabulary, language_model)
        captioner.vgg, captioner.samples, captioner.judges = None, 0, []
        return captioner

    def _bind(self, model, config: CaptionerConfig, vocabulary: Vocabulary, language_model: CharNgram | None,
              decode: str | None = None, beam_size: int = 1, lm_weight: float | None = None,
              prior_weight: float | None = None, ensemble=(), no_repeat: int = 0) -> None:
        self.model, self.config, self.vocabulary, self.language_model = model, config, vocabulary, language_model
        self.decode, self.beam_size = decode or config.decoding, beam_size
        self.lm_weight = config.lm_weight if lm_weight is None else lm_weight
        autoregressive = architecture(config).autoregressive
        self.prior_weight = (config.prior_weight if prior_weight is None else prior_weight) if autoregressive else 0.0
        if self.decode == "ctc-lm" and language_model is None:
            raise ValueError("ctc-lm decoding needs the run's language model.")
        if self.prior_weight and language_model is None:
            raise ValueError("--prior-weight needs the run's language model.")
        self.steps = step_models(model, config) if autoregressive else None
        if ensemble:  # the runs' steps averaged, each run's classes put in this run's order
            steps = [self.steps, *(step_models(other, other_config) for other, other_config, _ in ensemble)]
            orders = [np.arange(config.num_classes), *(class_order(vocabulary, other_vocabulary, config.num_classes)
                                                       for _, _, other_vocabulary in ensemble)]
            self.steps = Averaged(steps, orders)
        if self.prior_weight:
            self.steps = PriorSubtracted(self.steps, language_model, vocabulary, self.prior_weight)
        self.no_repeat = no_repeat if autoregressive else 0
        if self.no_repeat:
            self.steps = NoRepeat(self.steps, self.no_repeat)

    @property
    def judge_sizes(self) -> list[int]:
        """The image size each judge reads photos at."""
        return [judge.image_size for _, judge, _ in self.judges]

    @property
    def has_attention(self) -> bool:
        return self.steps is not None and self.steps.attention is not None

    def caption_features(self, features: np.ndarray, n_best: int = 1,
                         beam_size: int | None = None) -> list[list[Caption]]:
        """Up to ``n_best`` captions per image, best first, from VGG16 features (pool5 at 150 px: ``(batch, 4, 4, 512)``).

        ``beam_size`` overrides the captioner's for this call (at least ``n_best``, unless captions are also
        drawn: ``samples``).
        """
        features = np.asarray(features, dtype=np.float32)
        if self.steps is not None and self.samples:  # the draws are candidates too: no wider beam for n_best
            return sample_and_rank(self.steps, features, self.vocabulary, self.samples, self.rng,
                                   beam_size or self.beam_size, n_best, self.config.timesteps - 1)
        beam_size = max(beam_size or self.beam_size, n_best)
        if self.steps is not None:
            return beam_search(self.steps, features, self.vocabulary, beam_size, n_best, self.config.timesteps - 1)
        probabilities = self.model.predict_on_batch(features)  # (batch, 50, 128)
        if self.decode == "ctc-lm":
            return decode_ctc_lm(probabilities, self.vocabulary, self.language_model, self.lm_weight,
                                 max(beam_size, CTC_LM_BEAM), n_best)
        if self.decode == "ctc":
            return decode_ctc(probabilities, self.vocabulary, beam_size, n_best)
        return decode_parallel(probabilities, self.vocabulary, collapse_repeats=self.decode == "collapse")

    def caption_cached(self, features, rows, batch_size: int = 256) -> list[tuple[str, bool]]:
        """``(caption, ended)`` of the cache rows ``rows``, batch by batch (features are read as they are needed)."""
        return [(best[0].text, best[0].ended) for best in self.candidates_cached(features, rows, batch_size)]

    def candidates_cached(self, features, rows, batch_size: int = 256, n_best: int = 1) -> list[list[Caption]]:
        """Up to ``n_best`` captions, best first, of each of the cache rows ``rows``, batch by batch."""
        captions = []
        for start in range(0, len(rows), batch_size):
            batch = np.asarray(features[np.asarray(rows[start : start + batch_size])], dtype=np.float32)
            captions.extend(self.caption_features(batch, n_best))
        return captions

    def judge(self, candidates: list[list[Caption]], features: list[np.ndarray]) -> list[list[Caption]]:
        """Each photo's candidates ranked by the judges: ended ones first, then by the sum of the judges'
        log-probabilities; a caption's probability becomes the judges' (their geometric mean).

        ``features[j][i]``: judge ``j``'s features of photo ``i``.
        """
        texts = [caption.text for captions in candidates for caption in captions]
        ended = [caption.ended for captions in candidates for caption in captions]
        photo = np.repeat(np.arange(len(candidates)), [len(captions) for captions in candidates])
        scores = sum(caption_log_probabilities(model, config, vocabulary, np.asarray(judged), texts, ended, photo)
                     for (model, config, vocabulary), judged in zip(self.judges, features))
        judged, start = [], 0
        for captions in candidates:
            rescored = [dataclasses.replace(caption, probability=float(np.exp(score / len(self.judges))))
                        for caption, score in zip(captions, scores[start : start + len(captions)])]
            judged.append(sorted(rescored, key=lambda caption: (not caption.ended, -caption.probability)))
            start += len(captions)
        return judged

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """VGG16 features (the run's layer) of letterboxed uint8 images ``(batch, size, size, 3)``."""
        return self.vgg.predict_on_batch(preprocess(images))

    def attention_maps(self, features: np.ndarray, texts: list[str]) -> list[np.ndarray]:
        """Attention models: per caption, the weights over the VGG16 grid behind each character ``(len(text), rows, cols)``."""
        if not self.has_attention:
            raise ValueError(f"The model is {self.config.arch!r}, which draws no attention maps; "
                             f"train with --arch attention.")
        indices = [self.vocabulary.encode(text, len(text) + 1)[0][: len(text)].tolist() for text in texts]
        rows, cols, _ = self.config.feature_shape
        maps = self.steps.attention_maps(np.asarray(features, dtype=np.float32), indices)
        return [weights.reshape(len(weights), rows, cols) for weights in maps]

    def attention_of_file(self, path, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The letterboxed photo ``(size, size, 3)`` and the attention behind each character of ``text`` over it."""
        image = load_image(path, self.config.image_size)
        (maps,) = self.attention_maps(self.image_features(image[None]), [text])  # (characters, rows, cols)
        return image, maps

    def caption_photo(self, source, n_best: int = 1, name: str | None = None) -> Captioned:
        """One photo, from a path or a binary file object (an upload): its captions and, for attention models, maps.

        ``n_best`` is also the beam size (at least the captioner's). With judges, the photo is read again at each
        judge's size and they rank the candidates, as caption_files does.

        Raises:
            ImageError: the photo cannot be read (features.load_image's checks, the pixel bound included).
        """
        started = time.perf_counter()
        image, *judged = load_images(source, [self.config.image_size, *self.judge_sizes], name)
        judged = [judged_image[None] for judged_image in judged]
        features = self.image_features(image[None])
        captions = self._captions(features, n_best, judged)[0]
        seconds = time.perf_counter() - started  # what captioning took; the attention maps are extra
        maps = self.attention_maps(features, [captions[0].text])[0] if self.has_attention else None
        return Captioned(image, captions, maps, seconds)

    def caption_images(self, images: np.ndarray, n_best: int = 1, judged_images=()) -> list[list[Caption]]:
        """Captions from letterboxed uint8 images ``(batch, size, size, 3)``; with judges, ``judged_images`` are
        the same photos letterboxed at each judge's size."""
        return self._captions(self.image_features(images), n_best, judged_images)

    def _captions(self, features: np.ndarray, n_best: int, judged_images=()) -> list[list[Caption]]:
        """Captions from the run's features of some photos; with judges, ``judged_images`` as caption_images'."""
        if not self.judges:
            return self.caption_features(features, n_best)
        candidates = self.caption_features(features, self.samples + self.beam_size)
        judged = [vgg.predict_on_batch(preprocess(images)) for vgg, images in zip(self.judge_vggs, judged_images)]
        return [captions[:n_best] for captions in self.judge(candidates, judged)]

    def caption_files(self, paths, batch_size: int = 32, n_best: int = 1):
        """Yields ``(path, captions, error)`` for each file, in order, batch by batch.

        ``captions`` (a best-first list of ``Caption``) is None where the file
        could not be read, and ``error`` says why.
        """
        paths = [str(path) for path in paths]
        for chunk, rows, images, errors, judged in decode_batches(paths, np.arange(len(paths)), self.config.image_size,
                                                                  batch_size, also_sizes=self.judge_sizes):
            captions = dict(zip(rows.tolist(), self.caption_images(images, n_best, judged))) if len(rows) else {}
            for row in chunk.tolist():
                yield paths[row], captions.get(row), errors.get(row)
