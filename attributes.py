"""Attributes: which of the captions' commonest character n-grams a photo's captions use, read off its features.

Semantic attributes (You et al. 2016, "Image Captioning with Semantic
Attention"; Yao et al. 2017, "Boosting Image Captioning with Attributes")
give the decoder, at every step, a summary of what captions of such a photo
name, so that naming a kind does not hang on the colour it has just written.
Here an attribute is one of the ``count`` character n-grams (2 or 3
katakana) that the most training photos' captions use, among those that at
most half of them use (アリマス says nothing about a photo); a photo's target
for it is the share of its captions that use it. A ridge regression (the
probe's, probe.py) reads the targets off the grid's mean and maximum, as the
model normalises the grid; it is fitted once, before training, on the
training photos, and the model holds it as a frozen Dense layer
(``model.ATTRIBUTES``), so a saved model needs nothing else.
"""

from __future__ import annotations

import keras
import numpy as np

import probe
from batches import CaptionData, read_rows
from model import ATTRIBUTE_SUMMARY, ATTRIBUTES

NGRAM_LENGTHS = (2, 3)
MAX_SHARE = 0.5  # n-grams in more of the training photos' captions than this say nothing about a photo
BATCH = 256  # photos whose features are summarised at once


def ngram_codes(targets: np.ndarray, length: int, num_classes: int) -> np.ndarray:
    """Each caption's character n-grams as numbers, ``(captions, timesteps - length + 1)``; -1 where one ends.

    ``targets`` are encoded captions (class indices, the end class 0 after the
    caption). Codes of different lengths differ (``decode`` reads them back).
    """
    targets = np.asarray(targets, dtype=np.int64)
    windows = [targets[:, start : targets.shape[1] - length + 1 + start] for start in range(length)]
    codes = np.full_like(windows[0], (length - NGRAM_LENGTHS[0]) * num_classes**NGRAM_LENGTHS[-1])
    for power, window in enumerate(reversed(windows)):
        codes += window * num_classes**power
    codes[np.any([window == 0 for window in windows], axis=0)] = -1
    return codes


def decode(code: int, characters: list[str], num_classes: int) -> str:
    """An n-gram code as katakana (``characters[i]`` is class i's character)."""
    length = NGRAM_LENGTHS[0] + code // num_classes**NGRAM_LENGTHS[-1]
    code %= num_classes**NGRAM_LENGTHS[-1]
    chars = []
    for _ in range(length):
        code, index = divmod(code, num_classes)
        chars.append(characters[index])
    return "".join(reversed(chars))


def photo_ngrams(data: CaptionData, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which captions use which n-grams.

    Returns ``images`` (the photos' feature-cache rows, in order), each
    caption's position among them, and every (caption, n-gram code) that
    occurs, once each, as two arrays of equal length.
    """
    images, caption_image = np.unique(data.rows, return_inverse=True)
    pairs = []
    for length in NGRAM_LENGTHS:
        codes = ngram_codes(data.targets, length, num_classes)
        row, column = np.nonzero(codes >= 0)
        pairs.append(np.stack([row, codes[row, column]]))
    pairs = np.unique(np.concatenate(pairs, axis=1), axis=1)
    return images, caption_image, pairs[0], pairs[1]


def choose(ngrams: tuple, count: int) -> np.ndarray:
    """The ``count`` (or fewer) n-grams that the most photos' captions use, among those at most MAX_SHARE of them use.

    ``ngrams``: ``photo_ngrams`` of the captions.
    """
    images, caption_image, caption_of, code_of = ngrams
    photo_pairs = np.unique(np.stack([caption_image[caption_of], code_of]), axis=1)
    codes, photos = np.unique(photo_pairs[1], return_counts=True)
    usable = photos <= MAX_SHARE * len(images)
    return codes[usable][np.lexsort((codes[usable], -photos[usable]))[:count]]  # most photos first, ties by code


def shares(ngrams: tuple, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo (``images``, in order), the share of its captions that use each n-gram of ``codes``.

    ``ngrams``: ``photo_ngrams`` of the captions.
    """
    images, caption_image, caption_of, code_of = ngrams
    column = {code: index for index, code in enumerate(np.asarray(codes).tolist())}
    keep = np.isin(code_of, codes)
    counts = np.zeros((len(images), len(column)), np.float32)
    np.add.at(counts, (caption_image[caption_of[keep]], [column[code] for code in code_of[keep].tolist()]), 1.0)
    return images, counts / np.bincount(caption_image, minlength=len(images))[:, None]


def summaries(model: keras.Model, features, images: np.ndarray) -> np.ndarray:
    """What the attribute layer reads for each photo: the normalised grid's mean and maximum, ``(images, 2 * 512)``."""
    reader = keras.Model(model.inputs[0], model.get_layer(ATTRIBUTE_SUMMARY).output)
    return np.concatenate([  # called directly: predict_on_batch would compile again for the last, shorter batch
        keras.ops.convert_to_numpy(reader(read_rows(features, images[start : start + BATCH]).astype(np.float32),
                                          training=False)).astype(np.float32)
        for start in range(0, len(images), BATCH)])


def fit(model: keras.Model, features, train: CaptionData, val: CaptionData, num_classes: int) -> dict:
    """Chooses the attributes on the training captions and sets the model's attribute layer to read them.

    Returns what the log reports: the n-gram codes, the ridge penalty, and the
    mean AUC of the attributes on the validation photos (how well the
    features show them: the attributes' own ceiling; NaN without validation photos).
    """
    layer = model.get_layer(ATTRIBUTES)
    ngrams = photo_ngrams(train, num_classes)  # counted once, for the choice and the targets
    codes = choose(ngrams, layer.units)
    images, y = shares(ngrams, codes)
    x = summaries(model, features, images)
    mean, spread = x.mean(0), x.std(0) + 1e-6
    standardised = (x - mean) / spread
    weights = np.zeros((x.shape[1] + 1, layer.units), np.float32)  # columns past the n-grams found read nothing
    penalty = probe.choose_penalty(standardised, y)
    weights[:, : len(codes)] = probe.fit_ridge(standardised, y, penalty)
    kernel = weights[:-1] / spread[:, None]  # the standardisation folded in: the layer reads the summary as it is
    bias = weights[-1] - mean @ kernel
    layer.set_weights([kernel, bias])
    aucs = []
    if len(val.rows):
        val_images, present = shares(photo_ngrams(val, num_classes), codes)
        scores = summaries(model, features, val_images) @ kernel + bias
        aucs = [probe.auc(scores[:, column], present[:, column]) for column in range(len(codes))]
    aucs = [value for value in aucs if value is not None]
    return {"codes": codes, "penalty": penalty, "auc": float(np.mean(aucs)) if aucs else float("nan")}
