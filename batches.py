"""Training data: photos split for validation, captions encoded, batches read from the feature cache.

A caption becomes a row of ``timesteps`` class indices (``CaptionData``);
``CaptionBatches`` pairs each with its photo's row of the memory-mapped
feature cache, batch by batch, so that no more than a batch of features is
ever in memory.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from kana import END, Vocabulary
from model import CaptionerConfig, model_inputs, previous_chars


@dataclasses.dataclass
class CaptionData:
    """Encoded captions and the feature-cache row of each caption's photo."""

    rows: np.ndarray  # (num_captions,) int64
    targets: np.ndarray  # (num_captions, timesteps) uint8 (up to 256 classes): a quarter of int32's memory
    mirrored_targets: np.ndarray | None = None  # the same captions with left and right swapped (train.py --flip)


def split_by_image(num_images: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/validation photo indices; at least one photo in each."""
    if num_images < 2:
        raise ValueError(f"Training needs at least 2 usable photos; found {num_images}.")
    order = np.random.default_rng(seed).permutation(num_images)
    num_val = min(num_images - 1, max(1, round(num_images * val_fraction)))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


@dataclasses.dataclass
class EncodingReport:
    """What encoding left out."""

    num_unknown: int = 0  # characters outside the vocabulary
    num_truncated: int = 0  # captions longer than timesteps - 1 characters, cut


def encode_captions(readings, image_indices, vocabulary: Vocabulary, timesteps: int) -> tuple[CaptionData, EncodingReport]:
    """Encodes the captions of the given photos (a photo's index is its cache row).

    Args:
        readings: per photo, its katakana captions.
        image_indices: the photos to encode.
        vocabulary: the characters the model writes.
        timesteps: characters per encoded caption, end class included.
    """
    rows, targets, report = [], [], EncodingReport()
    for image in image_indices:
        for katakana in readings[image]:
            encoded, unknown, truncated = vocabulary.encode(katakana, timesteps)
            rows.append(image)
            targets.append(encoded)
            report.num_unknown += unknown
            report.num_truncated += truncated
    dtype = np.uint8 if vocabulary.num_classes <= 256 else np.int32
    return CaptionData(np.array(rows, dtype=np.int64), np.array(targets, dtype=dtype).reshape(-1, timesteps)), report


MAX_REFERENCES = 16  # likeliest-reference training: a photo's first this many captions are its targets


def with_all_references(data: CaptionData) -> tuple[CaptionData, int]:
    """Each caption's target becomes all its photo's captions ``(num_captions, references, timesteps)``.

    For likeliest-reference training (model.CaptionCTC): an epoch still
    takes a step per caption, each against the caption of the photo the
    model finds likeliest. Photos with fewer captions than the most repeat
    their first; more than MAX_REFERENCES are not targets. Returns the data
    and the number of captions left out that way.
    """
    photos, counts = np.unique(data.rows, return_counts=True)
    order = np.argsort(data.rows, kind="stable")  # the captions grouped by photo, each photo's in their order
    references = min(int(counts.max()), MAX_REFERENCES) if len(counts) else 1
    table = np.empty((len(photos), references, data.targets.shape[1]), dtype=data.targets.dtype)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for photo, (start, count) in enumerate(zip(starts, counts)):
        own = data.targets[order[start : start + min(count, references)]]
        table[photo] = own[np.arange(references) % len(own)]
    photo_of_caption = np.searchsorted(photos, data.rows)
    dropped = int(np.maximum(counts - references, 0).sum())
    return CaptionData(data.rows, table[photo_of_caption]), dropped


class CaptionBatches(keras.utils.PyDataset):
    """A Keras dataset reading feature rows from the memory-mapped cache, batch by batch.

    Args:
        config: the model's config (autoregressive models are also fed the previous characters).
        features: the cache's float16 features, ``(num_images, rows, cols, 512)``.
        data: the captions to serve.
        batch_size: captions per batch.
        shuffle: a new order every epoch.
        seed: the order's seed.
        workers: > 1 reads the next batches in that many threads while the model trains.
        mirrored_features: the features of the photos mirrored left to right. With them (and
            ``data.mirrored_targets``), each caption of a shuffled epoch is, at random, one of
            its mirrored photo half the time.
        recoloured: ``(features, data)`` pairs, more captions to serve, each with its row of
            those features (train.py --recolour: recoloured photos). They are never mirrored.
        length_weighting: with shuffle, above 0: each epoch draws as many captions as there are, with
            replacement, each with odds of its length (characters before the end class) to this power.
        weighted_length: with length_weighting: "caption" (each caption's own length) or "photo" (the mean length of
            its photo's captions, so that every wording of a photo is drawn alike).

    Scheduled sampling (training.OwnChars) sets ``guesses``, the model's own next character at each step of each
    caption served (``served`` order), and ``own_share``: each previous character fed is, with that chance, the
    model's guess of it rather than the caption's. The choice is seeded by ``seed``, the epoch and the batch.
    """

    def __init__(self, config: CaptionerConfig, features, data: CaptionData, batch_size: int, shuffle: bool,
                 seed: int, workers: int = 1, mirrored_features=None, recoloured=(), length_weighting: float = 0.0,
                 weighted_length: str = "caption"):
        super().__init__(workers=workers, use_multiprocessing=False)
        self.config, self.batch_size, self.shuffle = config, batch_size, shuffle
        self.sources = [features, *(more_features for more_features, _ in recoloured)]
        self.source = np.repeat(np.arange(len(self.sources), dtype=np.int64),
                                [len(data.rows), *(len(more.rows) for _, more in recoloured)])
        self.data = _joined(data, [more for _, more in recoloured]) if recoloured else data
        self.mirrored_features = mirrored_features if data.mirrored_targets is not None and shuffle else None
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.data.rows))
        self.mirrored = np.zeros(len(self.data.rows), dtype=bool)
        self.seed, self.epoch = seed, 0
        self.guesses: np.ndarray | None = None
        self.own_share = 0.0
        photos = None
        if weighted_length == "photo":  # a recoloured photo is a photo of its own: number photos by source and row
            photos = self.source * (int(self.data.rows.max(initial=0)) + 1) + self.data.rows
        self.odds = caption_odds(self.data.targets, length_weighting, photos) if shuffle and length_weighting else None
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(len(self.data.rows) / self.batch_size)

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch_features, targets = self.served(chosen, self.mirrored[chosen])
        if self.guesses is None or not self.own_share:
            return model_inputs(self.config, batch_features, targets), targets
        rng = np.random.default_rng([self.seed, self.epoch, index])
        own = (rng.random(targets.shape) < self.own_share) & ~self.mirrored[chosen, None]
        own[:, 0] = False  # the start token
        fed = np.where(own, previous_chars(self.guesses[chosen].astype(np.int32)), previous_chars(targets))
        return (batch_features, fed), targets

    def served(self, chosen: np.ndarray, mirrored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The features and targets (int32) of the captions ``chosen`` (indices into all served), those ``mirrored``
        of their photos mirrored."""
        rows = self.data.rows[chosen]
        if len(self.sources) == 1:
            batch_features = read_rows(self.sources[0], rows)
        else:
            source = self.source[chosen]
            batch_features = np.empty((len(rows), *self.sources[0].shape[1:]), dtype=self.sources[0].dtype)
            for kind in np.unique(source):
                batch_features[source == kind] = read_rows(self.sources[kind], rows[source == kind])
        targets = self.data.targets[chosen].astype(np.int32)
        if mirrored.any():
            batch_features[mirrored] = read_rows(self.mirrored_features, rows[mirrored])
            targets[mirrored] = self.data.mirrored_targets[chosen[mirrored]]
        return batch_features, targets

    def on_epoch_end(self):
        self.epoch += 1
        if self.odds is not None:
            self.order = self.rng.choice(len(self.data.rows), size=len(self.data.rows), p=self.odds)
        elif self.shuffle:
            self.order = self.rng.permutation(len(self.data.rows))
        if self.mirrored_features is not None:
            self.mirrored = (self.rng.random(len(self.data.rows)) < 0.5) & (self.source == 0)


def caption_odds(targets: np.ndarray, power: float, photos: np.ndarray | None = None) -> np.ndarray:
    """Each caption's chance of being drawn: its length (its characters, every class but the end class) to
    ``power``, normalised. An empty caption counts as one character; a row of several references (--references
    likeliest) counts all of theirs. With ``photos`` (each caption's photo, any integer labels), a caption's
    length is the mean of its photo's captions' lengths."""
    lengths = np.maximum((targets != END).reshape(len(targets), -1).sum(axis=1), 1).astype(np.float64)
    if photos is not None:
        _, photo = np.unique(photos, return_inverse=True)
        lengths = (np.bincount(photo, lengths) / np.bincount(photo))[photo]
    return length_odds(lengths, power)


def length_odds(lengths: np.ndarray, power: float) -> np.ndarray:
    """Odds of drawing each item: its length to ``power``, normalised."""
    weights = np.asarray(lengths, dtype=np.float64) ** power
    return weights / weights.sum()


def _joined(data: CaptionData, more: list[CaptionData]) -> CaptionData:
    """``data`` followed by the captions of ``more`` (whose mirrored targets, never served, are their own)."""
    targets = np.concatenate([data.targets, *(part.targets for part in more)])
    mirrored = None if data.mirrored_targets is None else np.concatenate(
        [data.mirrored_targets, *(part.targets for part in more)])
    return CaptionData(np.concatenate([data.rows, *(part.rows for part in more)]), targets, mirrored)


def read_rows(features, rows: np.ndarray) -> np.ndarray:
    """``features[rows]`` as a new array, read in row order (kinder to a memory-mapped cache's page cache).

    The rows stay float16, half the bytes to copy and send: the model's first layer casts them on the device.
    """
    sorted_rows, inverse = np.unique(rows, return_inverse=True)
    return features[sorted_rows][inverse]


def feature_sample(features, rows: np.ndarray, seed: int, size: int = 2000) -> np.ndarray:
    """Up to ``size`` training photos' features, in float32, for the model's input standardisation."""
    unique = np.unique(rows)
    chosen = np.sort(np.random.default_rng(seed).choice(unique, size=min(size, len(unique)), replace=False))
    return np.asarray(features[chosen], dtype=np.float32)
