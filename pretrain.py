"""Trains the VGG16 convolutional base on the project's own scenes, so that offline features see objects.

    $ python pretrain.py                                  # writes weights/vgg16-synthetic.weights.h5
    $ python train.py --vgg-weights weights/vgg16-synthetic.weights.h5 --annotations data/hard/captions_train.json \\
          --images data/hard/train2014 --out runs/hard-synthetic

A randomly initialised VGG16 tells colours and positions apart but not the
kinds of objects. Here the same architecture (keras.applications.VGG16, no
top) learns from scenes drawn by hard.py with another seed than the
benchmark's: for each third of the photo (left, middle, right), which
colours and which kinds of object are in it, and how many objects there are.
Its weights are then frozen like the ImageNet ones and read by train.py as a
local weights file. Greyscale photos and the colour–kind pairs the benchmark
holds out (hard.UNSEEN_PAIRS) are never drawn.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

import hard  # noqa: E402
import runtime  # noqa: E402
from cli import HelpFormatter  # noqa: E402
from features import build_vgg16, letterbox, preprocess  # noqa: E402
from fileio import atomic_path  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "weights" / "vgg16-synthetic.weights.h5"
PRETRAIN_SEED = 1_000_003  # not a benchmark seed: the benchmark's photos are never trained on
POSITIONS = list(hard.POSITIONS)
LABELS = [f"{position}:{name}" for position in POSITIONS for name in (*hard.COLORS, *hard.KINDS)]


def scene_targets(scene: dict) -> tuple[np.ndarray, int]:
    """Per third of the photo, which colours and kinds are in it (multi-hot ``(len(LABELS),)``); and the object count - 1."""
    names = [*hard.COLORS, *hard.KINDS]
    target = np.zeros(len(LABELS), np.float32)
    for obj in scene["objects"]:
        offset = POSITIONS.index(obj["position"]) * len(names)
        target[offset + names.index(obj["color"])] = target[offset + names.index(obj["kind"])] = 1.0
    return target, len(scene["objects"]) - 1


def make_scene(seed: int, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One colour scene, letterboxed to ``image_size``: ``(image, multi-hot, count - 1)``."""
    rng = np.random.default_rng([PRETRAIN_SEED, seed])
    scene = {**hard.random_scene(rng), "greyscale": False}
    image = np.asarray(letterbox(hard.draw_scene(scene, rng), image_size))
    return (image, *scene_targets(scene))


def make_scenes(num_images: int, image_size: int, first_seed: int = 0, progress: bool = True):
    """``num_images`` scenes drawn on a thread pool: uint8 images, multi-hot targets, counts."""
    images = np.zeros((num_images, image_size, image_size, 3), np.uint8)
    targets = np.zeros((num_images, len(LABELS)), np.float32)
    counts = np.zeros(num_images, np.int32)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for index, (image, target, count) in enumerate(
                pool.map(lambda seed: make_scene(seed, image_size), range(first_seed, first_seed + num_images))):
            images[index], targets[index], counts[index] = image, target, count
            if progress and (index + 1) % 2000 == 0:
                print(f"  drew {index + 1} scenes", flush=True)
    return images, targets, counts


class SceneBatches(keras.utils.PyDataset):
    """Batches of preprocessed scenes (VGG16's Caffe convention), reshuffled every epoch."""

    def __init__(self, images, targets, counts, batch_size: int, shuffle: bool, seed: int = 0):
        super().__init__()
        self.images, self.targets, self.counts, self.batch_size, self.shuffle = images, targets, counts, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self):
        return len(self.images) // self.batch_size  # whole batches only: one compiled step

    def __getitem__(self, index):
        chosen = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return preprocess(self.images[chosen]), {"where": self.targets[chosen], "count": self.counts[chosen]}

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.images))


def build_trainer(image_size: int, learning_rate: float) -> tuple[keras.Model, keras.Model]:
    """VGG16 (starting from the project's seeded random weights) with a small head; returns (trainer, vgg)."""
    bfloat16 = keras.config.dtype_policy().compute_dtype == "bfloat16"
    vgg = build_vgg16("none", image_size, "bfloat16" if bfloat16 else "float32")
    vgg.trainable = True
    inputs = keras.Input((image_size, image_size, 3))
    grid = vgg(inputs)  # (batch, rows, cols, 512), in the hundreds: Caffe-scaled pixels through unnormalised convolutions
    x = layers.BatchNormalization()(grid)  # so the head starts unsaturated; the frozen base never sees it
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    where = layers.Dense(len(LABELS), activation="sigmoid", dtype="float32", name="where")(x)
    count = layers.Dense(4, activation="softmax", dtype="float32", name="count")(x)
    trainer = keras.Model(inputs, {"where": where, "count": count})
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss={"where": "binary_crossentropy", "count": "sparse_categorical_crossentropy"},
                    metrics={"where": [keras.metrics.AUC(name="auc")], "count": ["accuracy"]})
    return trainer, vgg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the weights file to write (Keras .weights.h5)")
    parser.add_argument("--num-images", type=int, default=12000, help="training scenes")
    parser.add_argument("--num-val", type=int, default=1000, help="held-out scenes")
    parser.add_argument("--image-size", type=int, default=96, help="scenes are letterboxed to this size to train")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="Adam's")
    parser.add_argument("--precision", choices=runtime.TRAINING_PRECISIONS, default="auto", help="as train.py's")
    parser.add_argument("--steps", type=int, help="stop each epoch after this many steps (for timing)")
    args = parser.parse_args(argv)
    for name in ("num_images", "num_val", "image_size", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.num_images < args.batch_size:
        parser.error("--num-images must be at least --batch-size (training uses whole batches)")
    out = Path(args.out)
    if not out.name.endswith(".weights.h5"):
        parser.error("--out must end in .weights.h5 (Keras' weights-only format)")
    runtime.keep_freed_memory()
    start = time.perf_counter()
    print(f"Drawing {args.num_images} + {args.num_val} scenes at {args.image_size} px...", flush=True)
    train = make_scenes(args.num_images, args.image_size)
    val = make_scenes(args.num_val, args.image_size, first_seed=args.num_images, progress=False)
    drawn = time.perf_counter()
    keras.utils.set_random_seed(0)
    with runtime.dtype_policy(runtime.training_precision(args.precision)):
        trainer, vgg = build_trainer(args.image_size, args.learning_rate)
    trainer.fit(SceneBatches(*train, args.batch_size, shuffle=True), validation_data=SceneBatches(*val, min(64, args.num_val), False),
                epochs=args.epochs, steps_per_epoch=args.steps, verbose="auto")
    # The frozen base is saved in float32, whatever it trained in, under VGG16's own layer names.
    plain = build_vgg16("none", args.image_size)
    plain.set_weights([np.asarray(weight, np.float32) for weight in vgg.get_weights()])
    with atomic_path(out, suffix=".weights.h5") as temporary:
        plain.save_weights(temporary)
    done = time.perf_counter()
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.0f} MiB). Drawing took {drawn - start:.0f} s, "
          f"training {done - drawn:.0f} s ({keras.backend.backend()}, {runtime.compute_device()}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
