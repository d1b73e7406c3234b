"""Trains the VGG16 convolutional base on the project's own scenes, so that offline features see objects.

    $ python pretrain.py                                  # writes weights/vgg16-synthetic.weights.h5
    $ python train.py --vgg-weights synthetic --annotations data/hard/captions_train.json \\
          --images data/hard/train2014 --out runs/hard-synthetic

A randomly initialised VGG16 tells colours and positions apart but not the
kinds of objects. Here the same architecture (keras.applications.VGG16, no
top) learns from scenes drawn by hard.py with another seed than the
benchmark's, letterboxed to 150 px, the size the captioner reads: from
64-pixel squares cut from them (``--crop``), three in four near an object
and new ones every epoch, it learns which colours, kinds and colour–kind
pairs each square shows, through one linear layer on pool5's maximum over
its grid. An object cut so that less than half of it is inside the square
is left out of the loss. Squares show objects as big as the captioner sees
them, for a fifth of the arithmetic of whole scenes. Its weights are then
frozen like the ImageNet ones and read by train.py as a local weights file.
By default greyscale photos are never drawn; the colour–kind pairs the
benchmark holds out (hard.UNSEEN_PAIRS) never are; nor are two kinds
(hard.FEATURE_HELD_OUT_KINDS) and one background, the sky, so that probe.py
can show whether the features see shapes and scenes they never trained on.
``--hues`` draws a share of the objects in random colours (their kind is a
target, their colour is not) and ``--greyscale`` a share of the scenes in
grey, so that no kind is learnt through the colours it comes in; at the
default's steps that recipe learns kinds far more slowly
(docs/hard-benchmark.md). ``--init`` starts from existing VGG16 weights
instead of from scratch (each normalisation set to undo itself, so training
starts from what those weights compute): e.g. the default's weights
fine-tuned with ``--hues``.

It trains VGG16 with batch normalisation after each convolution (plain VGG16
learns slowly from scratch), with Adam and a cosine-decaying learning rate,
then folds each normalisation into its convolution: the file holds plain
VGG16 weights. ``--crop 0`` trains on whole scenes instead: for each third
of the photo, which colours and kinds are in it (``--targets thirds``; with
``pairs`` also which colour each kind is) and how many objects there are;
``--presence-head`` also asks it of pool5's grid cells directly. That recipe
saw kinds less well (docs/hard-benchmark.md measures both). Afterwards it
probes the features as probe.py does, on new scenes that include what
training never draws, beside the random VGG16's (``--probe-scenes``).

Scenes are drawn in parallel processes, and batches go to the device as
uint8 (the trainer preprocesses them there), so a GPU is not kept waiting:

    $ KERAS_BACKEND=jax python pretrain.py --num-images 40000 --batch-size 128 --precision auto
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402
from tqdm import tqdm  # noqa: E402

import hard  # noqa: E402
import runtime  # noqa: E402
from cli import HelpFormatter, bounded_float, bounded_int, file_path, positive_float, positive_int  # noqa: E402
from features import (CAFFE_MEAN_BGR, SYNTHETIC_WEIGHTS, WeightsUnavailable, build_vgg16, letterbox,  # noqa: E402
                      preprocess, weights_file)
from fileio import atomic_path, write_json  # noqa: E402
import probe  # noqa: E402
from model import LIMITS, CaptionerConfig  # noqa: E402

KINDS = tuple(kind for kind in hard.KINDS if kind not in hard.FEATURE_HELD_OUT_KINDS)
BACKGROUNDS = tuple(name for name in hard.BACKGROUNDS if name not in hard.FEATURE_HELD_OUT_BACKGROUNDS)
MAX_SCENE_BYTES = 8 * 2**30  # the drawn scenes are held in memory
PRETRAIN_SEED = 1_000_003  # not a benchmark seed: the benchmark's photos are never trained on
PROBE_SEED = 2_000_003  # the generalisation probe's scenes: every kind and background, some greyscale
POSITIONS = list(hard.POSITIONS)
TARGETS = {
    "thirds": "per third of the photo, which colours and which kinds are in it",
    "pairs": "as thirds, and which colour-kind pairs (which colour each kind is)",
}
CHUNK = 250  # scenes a drawing process draws per task


def target_names(targets: str) -> list[str]:
    """What the photo-wide targets name: colours, kinds and, for ``pairs``, ``colour-kind`` pairs."""
    pairs = [f"{color}-{kind}" for color in hard.COLORS for kind in KINDS] if targets == "pairs" else []
    return [*hard.COLORS, *KINDS, *pairs]


def target_labels(targets: str) -> list[str]:
    """The ``where`` output's labels: ``position:name`` for each third of the photo and each of ``target_names``."""
    return [f"{position}:{name}" for position in POSITIONS for name in target_names(targets)]


def scene_targets(scenes: list[dict], targets: str = "thirds") -> dict[str, np.ndarray]:
    """Training targets: ``where`` (multi-hot per third), ``present`` (multi-hot, photo-wide) and ``count`` (objects - 1)."""
    names = {name: index for index, name in enumerate(target_names(targets))}
    where = np.zeros((len(scenes), len(POSITIONS) * len(names)), np.float32)
    present = np.zeros((len(scenes), len(names)), np.float32)
    for row, scene in enumerate(scenes):
        for obj in scene["objects"]:
            offset = POSITIONS.index(obj["position"]) * len(names)
            for name in (obj["color"], obj["kind"], f"{obj['color']}-{obj['kind']}"):
                if name in names:
                    where[row, offset + names[name]] = present[row, names[name]] = 1.0
    counts = np.array([len(scene["objects"]) - 1 for scene in scenes], np.int32)
    return {"where": where, "present": present, "count": counts}


def nearest_colors(rgb, count: int = 1) -> list[str]:
    """The ``count`` palette colours (hard.COLORS) nearest to ``rgb``, nearest first."""
    return sorted(hard.COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(hard.COLORS[name][0], rgb)))[:count]


def recolor(scene: dict, rng: np.random.Generator, share: float) -> dict:
    """``scene`` with a ``share`` of its objects drawn in a random colour (an ``rgb`` of their own).

    A kind then cannot be learnt through the palette colours it comes in. No
    object is given a colour nearest to one that a held-out pair
    (hard.UNSEEN_PAIRS) gives its kind: the pairs stay unseen.
    """
    for obj in scene["objects"]:
        if rng.random() < share:
            while (nearest_colors(rgb := [int(v) for v in rng.integers(0, 256, 3)])[0], obj["kind"]) in hard.UNSEEN_PAIRS:
                pass
            obj["rgb"] = rgb
    return scene


def draw_scenes(seeds: range, image_size: int, held_out: bool = False, hues: float = 0.0,
                greyscale: float = 0.0) -> tuple[np.ndarray, list[dict]]:
    """Scenes letterboxed to ``image_size``: uint8 images and their scene descriptions.

    Training scenes (``held_out`` False) never show the kinds, backgrounds and
    colour-kind pairs held out; a ``hues`` share of their objects is drawn in
    random colours (``recolor``) and a ``greyscale`` share of them in grey. The
    probe's scenes (``held_out`` True) draw every kind and background, one in
    ten greyscale, in the palette's colours.
    """
    images = np.zeros((len(seeds), image_size, image_size, 3), np.uint8)
    scenes = []
    for index, seed in enumerate(seeds):
        rng = np.random.default_rng([PROBE_SEED if held_out else PRETRAIN_SEED, seed])
        if held_out:
            scene = hard.random_scene(rng)
        else:
            scene = {**hard.random_scene(rng, kinds=KINDS, backgrounds=BACKGROUNDS), "greyscale": False}
            if greyscale:  # only then: the default recipe's scenes stay the ones it was measured on
                scene["greyscale"] = bool(rng.random() < greyscale)
            if hues:
                recolor(scene, rng, hues)
        images[index] = np.asarray(letterbox(hard.draw_scene(scene, rng), image_size))
        scenes.append(scene)
    return images, scenes


def make_scenes(num_images: int, image_size: int, first_seed: int = 0, progress: bool = True,
                held_out: bool = False, hues: float = 0.0, greyscale: float = 0.0) -> tuple[np.ndarray, list[dict]]:
    """``num_images`` scenes (see ``draw_scenes``), drawn in parallel processes when there are many.

    The workers start by importing the main module, as Python's own do: a
    script that calls this needs an ``if __name__ == "__main__":`` guard.
    """
    chunks = [range(start, min(start + CHUNK, first_seed + num_images))
              for start in range(first_seed, first_seed + num_images, CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks))
    if workers == 1:
        return draw_scenes(range(first_seed, first_seed + num_images), image_size, held_out, hues, greyscale)
    images = np.zeros((num_images, image_size, image_size, 3), np.uint8)
    scenes: list[dict] = []
    # forkserver: the workers are not forked from a process whose backend may already run threads
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        repeat = lambda value: [value] * len(chunks)  # noqa: E731
        drawn = pool.map(draw_scenes, chunks, repeat(image_size), repeat(held_out), repeat(hues), repeat(greyscale))
        for chunk, (chunk_images, chunk_scenes) in zip(chunks, tqdm(drawn, total=len(chunks), unit="chunk",
                                                                     desc="drawing", disable=not progress)):
            images[chunk.start - first_seed : chunk.stop - first_seed] = chunk_images
            scenes.extend(chunk_scenes)
    return images, scenes


class SceneBatches(keras.utils.PyDataset):
    """Batches of scenes (uint8: the trainer preprocesses them on its device) and their targets, reshuffled every epoch."""

    def __init__(self, images, targets: dict, batch_size: int, shuffle: bool, seed: int = 0):
        super().__init__()
        self.images, self.targets, self.batch_size, self.shuffle = images, targets, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self):
        return len(self.images) // self.batch_size  # whole batches only: one compiled step

    def __getitem__(self, index):
        chosen = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.images[chosen], {name: values[chosen] for name, values in self.targets.items()}

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.images))


def object_boxes(scene: dict, image_size: int) -> list[tuple[float, float, float, float]]:
    """Each object's bounding square ``(left, top, right, bottom)`` in the scene letterboxed to ``image_size`` (pixels)."""
    width, height = scene["width"], scene["height"]
    scale = image_size / max(width, height)
    left = (image_size - max(1, round(width * scale))) // 2  # as features.letterbox places the photo
    top = (image_size - max(1, round(height * scale))) // 2
    boxes = []
    for obj in scene["objects"]:
        x, y, radius = left + obj["x"] * width * scale, top + obj["y"] * height * scale, obj["size"] * width * scale / 2
        boxes.append((x - radius, y - radius, x + radius, y + radius))
    return boxes


def crop_targets(scene: dict, image_size: int, crop: tuple[int, int, int], targets: str = "pairs") -> np.ndarray:
    """What a ``(left, top, side)`` crop of the letterboxed scene shows: 1, 0, or -1 (unknown) per ``target_names``.

    A name is shown (1) when at least half of some object's bounding square
    that carries it is inside the crop, absent (0) when no object that carries
    it reaches into the crop; an object cut by the crop's edge makes its names
    unknown, and the loss skips them. In a greyscale scene every colour and
    pair is unknown. An object drawn in a random colour (``recolor``) shows
    its kind; the two palette colours nearest to its colour (and their pairs
    with its kind) are unknown, and it shows no other colour.
    """
    names = {name: index for index, name in enumerate(target_names(targets))}
    values = np.zeros(len(names), np.float32)
    left, top, side = crop
    for obj, (x0, y0, x1, y1) in zip(scene["objects"], object_boxes(scene, image_size)):
        inside = max(0.0, min(x1, left + side) - max(x0, left)) * max(0.0, min(y1, top + side) - max(y0, top))
        shown = inside / max((x1 - x0) * (y1 - y0), 1e-6)
        if shown <= 0:
            continue
        if "rgb" in obj:
            near = [name for color in nearest_colors(obj["rgb"], 2) for name in (color, f"{color}-{obj['kind']}")]
            for name in near:
                if name in names and values[names[name]] != 1:
                    values[names[name]] = -1.0
            shows = (obj["kind"],)
        else:
            shows = (obj["color"], obj["kind"], f"{obj['color']}-{obj['kind']}")
        for name in shows:
            if name in names:
                values[names[name]] = 1.0 if shown >= 0.5 or values[names[name]] == 1 else -1.0
    if scene.get("greyscale"):
        values[[index for name, index in names.items() if name not in KINDS]] = -1.0
    return values


class CropBatches(keras.utils.PyDataset):
    """Batches of ``crop``-pixel squares cut from scenes at their full letterboxed size, with ``crop_targets``.

    The network learns at the scale the captioner reads (a 64-pixel crop of a
    150-pixel scene shows objects as big as the captioner sees them) for a
    fifth of the arithmetic of the whole scene. Three crops in four are
    centred near an object, the rest anywhere. With ``shuffle``, every epoch
    draws new crops of reshuffled scenes; without, the crops are the same
    every time (validation).
    """

    def __init__(self, images, scenes: list[dict], crop: int, batch_size: int, targets: str, shuffle: bool,
                 seed: int = 0):
        super().__init__()
        self.images, self.scenes, self.crop, self.batch_size = images, scenes, crop, batch_size
        self.targets, self.shuffle, self.seed, self.epoch = targets, shuffle, seed, 0
        self.order = np.random.default_rng([seed, 0]).permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self):
        return len(self.images) // self.batch_size

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0, index])
        size, side = self.images.shape[1], self.crop
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        crops = np.zeros((len(chosen), side, side, 3), np.uint8)
        present = np.zeros((len(chosen), len(target_names(self.targets))), np.float32)
        for row, scene_index in enumerate(chosen):
            scene = self.scenes[scene_index]
            boxes = object_boxes(scene, size)
            if boxes and rng.random() < 0.75:
                x0, y0, x1, y1 = boxes[int(rng.integers(len(boxes)))]
                jitter = rng.uniform(-side / 4, side / 4, 2)
                left, top = (x0 + x1) / 2 - side / 2 + jitter[0], (y0 + y1) / 2 - side / 2 + jitter[1]
            else:
                left, top = rng.uniform(0, size - side, 2)
            left, top = (int(np.clip(round(value), 0, size - side)) for value in (left, top))
            crops[row] = self.images[scene_index, top : top + side, left : left + side]
            present[row] = crop_targets(scene, size, (left, top, side), self.targets)
        return crops, {"present": present}

    def on_epoch_end(self):
        if self.shuffle:
            self.epoch += 1
            self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))


def masked_binary_crossentropy(y_true, logits):
    """Binary cross-entropy from logits over the targets that are known (not -1), averaged per crop."""
    known = ops.cast(ops.greater_equal(y_true, 0), logits.dtype)
    losses = ops.binary_crossentropy(ops.maximum(y_true, 0), logits, from_logits=True)
    return ops.sum(losses * known, axis=-1) / ops.maximum(ops.sum(known, axis=-1), 1.0)


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # conv widths per block


def build_batch_norm_vgg16(image_size: int) -> keras.Model:
    """VGG16's convolutional base with batch normalisation after every convolution, for training only.

    Trained from scratch, plain VGG16 learns slowly (its activations are in
    the hundreds on Caffe-scaled pixels); with batch normalisation it learns
    in a few epochs. ``fold_batch_norm`` then turns it into plain VGG16
    weights, exactly: each normalisation is an affine map that folds into its
    convolution's kernel and bias.
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for block, widths in enumerate(VGG16_BLOCKS, 1):
        for index, width in enumerate(widths, 1):
            x = layers.Conv2D(width, 3, padding="same", name=f"block{block}_conv{index}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{index}")(x)  # stats settle in ~50 steps
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="vgg16_bn")


def fold_batch_norm(trained: keras.Model, image_size: int) -> keras.Model:
    """Plain VGG16 (``keras.applications.VGG16``, no top) computing what ``trained`` computes in inference mode."""
    plain = build_vgg16("none", image_size)
    for block, widths in enumerate(VGG16_BLOCKS, 1):
        for index in range(1, len(widths) + 1):
            kernel, bias = (np.asarray(w, np.float64) for w in trained.get_layer(f"block{block}_conv{index}").get_weights())
            norm = trained.get_layer(f"block{block}_bn{index}")
            gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights())
            scale = gamma / np.sqrt(variance + norm.epsilon)
            plain.get_layer(f"block{block}_conv{index}").set_weights(
                [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)])
    return plain


def unfold_batch_norm(trained: keras.Model, weights: str, calibration: np.ndarray) -> None:
    """Starts the batch-normalised VGG16 ``trained`` from plain VGG16 ``weights`` (the inverse of ``fold_batch_norm``).

    Each convolution takes the plain one's kernel and bias; each
    normalisation is set to undo itself on ``calibration`` (uint8 images the
    size of ``trained``'s input): its statistics are those of the
    convolution's outputs there, and its scale and shift put them back, so
    the network computes what the plain one does, and training from there
    moves it as training from scratch would (with batch statistics).
    """
    plain = build_vgg16(weights, trained.input_shape[1])
    x = preprocess(calibration)
    for block, widths in enumerate(VGG16_BLOCKS, 1):
        for index in range(1, len(widths) + 1):
            conv = trained.get_layer(f"block{block}_conv{index}")
            conv.set_weights(plain.get_layer(f"block{block}_conv{index}").get_weights())
            y = np.asarray(conv(x), np.float64)
            mean, variance = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
            norm = trained.get_layer(f"block{block}_bn{index}")
            scale = np.sqrt(variance + norm.epsilon)
            norm.set_weights([w.astype(np.float32) for w in (scale, mean, mean, variance)])
            x = np.maximum(y, 0.0).astype(np.float32)
        x = np.asarray(trained.get_layer(f"block{block}_pool")(x))


def save_half(vgg: keras.Model, out: Path) -> None:
    """Writes ``vgg``'s weights in float16 under VGG16's own layer names: 28 MiB instead of 56.

    Keras loads them into the float32 network that train.py builds; the
    features move by about 1e-3 of their spread, below what the feature
    cache's own float16 keeps.
    """
    with runtime.dtype_policy("float16"):
        half = keras.applications.VGG16(weights=None, include_top=False, input_shape=vgg.input_shape[1:])
    half.set_weights([np.asarray(weight, np.float16) for weight in vgg.get_weights()])
    with atomic_path(out, suffix=".weights.h5") as temporary:
        half.save_weights(temporary)


def build_trainer(image_size: int, learning_rate, steps: int, targets: str = "thirds",
                  presence_head: bool = False) -> tuple[keras.Model, keras.Model]:
    """VGG16 with batch normalisation and a small head; returns (trainer, the VGG16 to fold).

    The head reads the flattened pool5 grid (which objects are in which third,
    and how many); ``presence_head`` adds a linear read of pool5's maximum over
    the grid (which colours, kinds and pairs are anywhere in the photo), which
    asks each grid cell's features to say plainly what is in it: what a
    captioner attending over the grid reads.
    """
    vgg, inputs, grid = _vgg16_on_uint8(image_size)
    x = layers.Dense(512, activation="relu")(layers.Flatten()(grid))
    outputs = {"where": layers.Dense(len(target_labels(targets)), activation="sigmoid", dtype="float32", name="where")(x),
               "count": layers.Dense(4, activation="softmax", dtype="float32", name="count")(x)}
    losses = {"where": "binary_crossentropy", "count": "sparse_categorical_crossentropy"}
    if presence_head:
        outputs["present"] = layers.Dense(len(target_names(targets)), activation="sigmoid", dtype="float32",
                                          name="present")(layers.GlobalMaxPooling2D()(grid))
        losses["present"] = "binary_crossentropy"
    trainer = keras.Model(inputs, outputs)
    trainer.compile(optimizer=_adam(learning_rate, steps), loss=losses,
                    metrics={"where": [keras.metrics.AUC(name="auc")], "count": ["accuracy"]})
    return trainer, vgg


def build_crop_trainer(crop: int, learning_rate, steps: int, targets: str = "pairs") -> tuple[keras.Model, keras.Model]:
    """VGG16 with batch normalisation read by one linear layer on pool5's maximum over the grid (``CropBatches``).

    It says which ``target_names`` a crop shows (logits; ``masked_binary_crossentropy``
    skips what the crop cuts): each grid cell's features must say plainly
    what is in it, which is what a probe or an attending captioner reads.
    Returns (trainer, the VGG16 to fold).
    """
    vgg, inputs, grid = _vgg16_on_uint8(crop)
    logits = layers.Dense(len(target_names(targets)), dtype="float32", name="present")(layers.GlobalMaxPooling2D()(grid))
    trainer = keras.Model(inputs, {"present": logits})
    trainer.compile(optimizer=_adam(learning_rate, steps), loss={"present": masked_binary_crossentropy})
    return trainer, vgg


def _vgg16_on_uint8(image_size: int):
    """The batch-normalised VGG16, and a uint8 input preprocessed on the device: (vgg, inputs, pool5 grid)."""
    vgg = build_batch_norm_vgg16(image_size)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    grid = vgg(ops.flip(ops.cast(inputs, "float32"), axis=-1) - CAFFE_MEAN_BGR)  # features.preprocess, on the device
    return vgg, inputs, grid


def _adam(learning_rate: float, steps: int) -> keras.optimizers.Adam:
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.02))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", type=file_path, default=str(SYNTHETIC_WEIGHTS), help="the weights file to write (Keras .weights.h5); the default is what --vgg-weights synthetic reads")
    parser.add_argument("--num-images", type=bounded_int(1, 10_000_000), default=8000, help="training scenes")
    parser.add_argument("--num-val", type=bounded_int(1, 1_000_000), default=1000, help="held-out scenes")
    parser.add_argument("--image-size", type=bounded_int(*LIMITS["image_size"]), default=150, help="scenes are letterboxed to this size to train (the captioner's)")
    parser.add_argument("--epochs", type=bounded_int(1, 10_000), default=6)
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536), default=32)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3, help="Adam's, at the start (it decays to 2%%)")
    parser.add_argument("--targets", choices=tuple(TARGETS), default="pairs",
                        help="what the network learns to say about each scene: " + "; ".join(f"{name}: {text}" for name, text in TARGETS.items()))
    parser.add_argument("--crop", type=bounded_int(0, LIMITS["image_size"][1]), default=64,
                        help="train on random squares of this many pixels cut from the scenes at --image-size (objects "
                             "as big as at that size, for less arithmetic), learning what each shows through the "
                             "presence head; 0: whole scenes (the 96 px recipe, --crop 0 --image-size 96 --targets thirds "
                             "--learning-rate 3e-4 --epochs 4, saw kinds less well: docs/hard-benchmark.md)")
    parser.add_argument("--hues", type=bounded_float(0, 1), default=0.0, metavar="SHARE",
                        help="draw this share of the training objects in random colours (never one nearest a colour "
                             "that a held-out pair gives the kind), so that no kind is learnt through its colours; "
                             "their colour is not a target (crops only)")
    parser.add_argument("--greyscale", type=bounded_float(0, 1), default=0.0, metavar="SHARE",
                        help="draw this share of the training scenes in grey, where only kinds are targets (crops only)")
    parser.add_argument("--presence-head", action="store_true", help="also learn, linearly from pool5's maximum over the grid, what is anywhere in the photo")
    parser.add_argument("--precision", choices=runtime.TRAINING_PRECISIONS, default="float32",
                        help="as train.py's; float32 by default: mixed bfloat16 trained this network 2.2x slower "
                             "on a CPU with bfloat16 instructions")
    parser.add_argument("--probe-scenes", type=bounded_int(0, 100_000), default=2000,
                        help="afterwards, probe.py's feature ceiling on this many new scenes of every kind and background "
                             "(ones the network never trained on among them), read at --probe-size; 0: none")
    parser.add_argument("--probe-size", type=bounded_int(*LIMITS["image_size"]), default=CaptionerConfig.image_size,
                        help="the letterbox size the probe reads features at (the captioner's)")
    parser.add_argument("--json", metavar="FILE", type=file_path, help="also write the recipe, timings and probe results here")
    parser.add_argument("--steps", type=positive_int, help="stop each epoch after this many steps (for timing)")
    parser.add_argument("--init", metavar="WEIGHTS",
                        help="start from these VGG16 weights (a .weights.h5 file, or synthetic: the default --out, "
                             "which is replaced only once the new weights are written) instead of from scratch, "
                             "e.g. to fine-tune them with --hues; --learning-rate 3e-4 suits")
    args = parser.parse_args(argv)
    if args.num_images < args.batch_size:
        parser.error("--num-images must be at least --batch-size (training uses whole batches)")
    if args.crop and not 32 <= args.crop <= args.image_size:
        parser.error(f"--crop ({args.crop}) must be from 32 (pool5's cell) to --image-size ({args.image_size}) pixels, "
                     "or 0 for whole scenes")
    if (args.hues or args.greyscale) and not args.crop:
        parser.error("--hues and --greyscale need crops (--crop above 0): whole scenes' targets always name colours")
    if args.init is not None:
        try:
            if weights_file(args.init) is None:
                parser.error("--init takes a weights file or synthetic, not imagenet or none")
            build_vgg16(args.init, 32)  # loads it: a file that is not VGG16's weights is refused before any drawing
        except (FileNotFoundError, ValueError, WeightsUnavailable) as error:
            parser.error("--init: " + " ".join(str(error).split()))  # one line
    out = Path(args.out)
    if not out.name.endswith(".weights.h5"):
        parser.error("--out must end in .weights.h5 (Keras' weights-only format)")
    scene_bytes = (args.num_images + args.num_val) * args.image_size**2 * 3 + args.probe_scenes * args.probe_size**2 * 3
    if scene_bytes > MAX_SCENE_BYTES:
        parser.error(f"the scenes would take {scene_bytes / 2**30:.0f} GiB of memory (the limit is "
                     f"{MAX_SCENE_BYTES / 2**30:.0f} GiB): use fewer --num-images or a smaller --image-size")
    try:
        return pretrain(args, out)
    except OSError as error:  # a full disk, an unwritable folder
        print(f"error: {error}", file=sys.stderr)
        return 2


def pretrain(args: argparse.Namespace, out: Path) -> int:
    """Draws the scenes, trains, folds and writes the weights file; then probes the features on new scenes."""
    runtime.keep_freed_memory()
    start = time.perf_counter()
    print(f"Drawing {args.num_images} + {args.num_val} scenes at {args.image_size} px...", flush=True)
    drawing = {"hues": args.hues, "greyscale": args.greyscale}
    train_images, train_scenes = make_scenes(args.num_images, args.image_size, **drawing)
    val_images, val_scenes = make_scenes(args.num_val, args.image_size, first_seed=args.num_images, progress=False,
                                         **drawing)
    drawn = time.perf_counter()
    keras.utils.set_random_seed(0)
    with runtime.dtype_policy(runtime.training_precision(args.precision)):
        if args.crop:
            batches = CropBatches(train_images, train_scenes, args.crop, args.batch_size, args.targets, shuffle=True)
            val = CropBatches(val_images, val_scenes, args.crop, min(64, args.num_val), args.targets, shuffle=False)
            trainer, vgg = build_crop_trainer(args.crop, args.learning_rate, args.epochs * (args.steps or len(batches)),
                                              args.targets)
        else:
            batches = SceneBatches(train_images, _outputs(scene_targets(train_scenes, args.targets), args),
                                   args.batch_size, shuffle=True)
            val = SceneBatches(val_images, _outputs(scene_targets(val_scenes, args.targets), args),
                               min(64, args.num_val), False)
            trainer, vgg = build_trainer(args.image_size, args.learning_rate,
                                         args.epochs * (args.steps or len(batches)), args.targets, args.presence_head)
        if args.init is not None:
            calibration = np.concatenate([batches[index][0] for index in range(min(4, len(batches)))])
            unfold_batch_norm(vgg, args.init, calibration)
    history = trainer.fit(batches, validation_data=val, epochs=args.epochs, steps_per_epoch=args.steps,
                          verbose=1 if sys.stdout.isatty() else 2)  # a line per epoch in a log
    del train_images
    plain = fold_batch_norm(vgg, args.crop or args.image_size)
    save_half(plain, out)
    done = time.perf_counter()
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.0f} MiB). Drawing took {drawn - start:.0f} s, "
          f"training {done - drawn:.0f} s ({keras.backend.backend()}, {runtime.compute_device()}).", flush=True)
    report = {"recipe": {name: value for name, value in vars(args).items() if name not in ("out", "json")},
              "backend": keras.backend.backend(), "device": runtime.compute_device(),
              "drawing_seconds": round(drawn - start, 1), "training_seconds": round(done - drawn, 1),
              "held_out": {name: round(float(values[-1]), 4) for name, values in history.history.items()
                           if name.startswith("val_")}}
    if args.probe_scenes:
        scenes = make_scenes(args.probe_scenes, args.probe_size, progress=False, held_out=True)  # drawn once, read twice
        report["probe"] = probe_generalisation(out, *scenes)
        report["probe_random"] = probe_generalisation("none", *scenes)
        print(f"Probe on {args.probe_scenes} new scenes at {args.probe_size} px (random VGG16 in brackets):")
        for name, value in report["probe"].items():
            print(f"  {name:<28}{value:>8.3f}  ({report['probe_random'][name]:.3f})" if isinstance(value, float)
                  else f"  {name:<28}{value:>8d}")
    if args.json:
        write_json(args.json, report)
    return 0


def _outputs(targets: dict, args: argparse.Namespace) -> dict:
    """The targets the trainer's outputs learn."""
    return {name: values for name, values in targets.items() if name != "present" or args.presence_head}


def probe_generalisation(weights, images: np.ndarray, scenes: list[dict]) -> dict:
    """probe.py's scores for a VGG16's pool5 features of ``images``: new scenes of every kind and background.

    The scenes (``make_scenes(..., held_out=True)``) include the kinds and the
    background that training never draws, so the probe's held-out rows say
    whether the features generalise.
    """
    vgg = build_vgg16(str(weights), images.shape[1])
    features = np.concatenate([np.asarray(vgg(preprocess(images[start : start + 100]), training=False), np.float32)
                               for start in range(0, len(images), 100)])
    return probe.probe(features, scenes)


if __name__ == "__main__":
    sys.exit(main())
