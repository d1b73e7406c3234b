"""Trains the VGG16 convolutional base on the project's own scenes, so that offline features see objects.

    $ python pretrain.py                                  # writes weights/vgg16-synthetic.weights.h5
    $ python train.py --vgg-weights synthetic --annotations data/hard/captions_train.json \\
          --images data/hard/train2014 --out runs/hard-synthetic

A randomly initialised VGG16 tells colours and positions apart but not the
kinds of objects. Here the same architecture (keras.applications.VGG16, no
top) learns from scenes drawn by hard.py with another seed than the
benchmark's: for each third of the photo (left, middle, right), which
colours and which kinds of object are in it, and how many objects there are.
Its weights are then frozen like the ImageNet ones and read by train.py as a
local weights file. Greyscale photos and the colour–kind pairs the benchmark
holds out (hard.UNSEEN_PAIRS) are never drawn; nor are two kinds
(hard.FEATURE_HELD_OUT_KINDS) and one background, the sky, so that probe.py
can show whether the features see shapes and scenes they never trained on.

It trains VGG16 with batch normalisation after each convolution (plain VGG16
learns slowly from scratch), with Adam and a cosine-decaying learning rate,
then folds each normalisation into its convolution: the file holds plain
VGG16 weights.
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
from cli import HelpFormatter, bounded_int, file_path, positive_float, positive_int  # noqa: E402
from features import SYNTHETIC_WEIGHTS, build_vgg16, letterbox, preprocess  # noqa: E402
from fileio import atomic_path  # noqa: E402
from model import LIMITS  # noqa: E402

KINDS = tuple(kind for kind in hard.KINDS if kind not in hard.FEATURE_HELD_OUT_KINDS)
BACKGROUNDS = tuple(name for name in hard.BACKGROUNDS if name not in hard.FEATURE_HELD_OUT_BACKGROUNDS)
MAX_SCENE_BYTES = 8 * 2**30  # the drawn scenes are held in memory
PRETRAIN_SEED = 1_000_003  # not a benchmark seed: the benchmark's photos are never trained on
POSITIONS = list(hard.POSITIONS)
NAMES = (*hard.COLORS, *KINDS)
LABELS = [f"{position}:{name}" for position in POSITIONS for name in NAMES]


def scene_targets(scene: dict) -> tuple[np.ndarray, int]:
    """Per third of the photo, which colours and kinds are in it (multi-hot ``(len(LABELS),)``); and the object count - 1."""
    target = np.zeros(len(LABELS), np.float32)
    for obj in scene["objects"]:
        offset = POSITIONS.index(obj["position"]) * len(NAMES)
        target[offset + NAMES.index(obj["color"])] = target[offset + NAMES.index(obj["kind"])] = 1.0
    return target, len(scene["objects"]) - 1


def make_scene(seed: int, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One colour scene, letterboxed to ``image_size``: ``(image, multi-hot, count - 1)``."""
    rng = np.random.default_rng([PRETRAIN_SEED, seed])
    scene = {**hard.random_scene(rng, kinds=KINDS, backgrounds=BACKGROUNDS), "greyscale": False}
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


def build_trainer(image_size: int, learning_rate, steps: int) -> tuple[keras.Model, keras.Model]:
    """VGG16 with batch normalisation and a small head; returns (trainer, the VGG16 to fold)."""
    vgg = build_batch_norm_vgg16(image_size)
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Flatten()(vgg(inputs))
    x = layers.Dense(512, activation="relu")(x)
    where = layers.Dense(len(LABELS), activation="sigmoid", dtype="float32", name="where")(x)
    count = layers.Dense(4, activation="softmax", dtype="float32", name="count")(x)
    trainer = keras.Model(inputs, {"where": where, "count": count})
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.02)
    trainer.compile(optimizer=keras.optimizers.Adam(schedule),
                    loss={"where": "binary_crossentropy", "count": "sparse_categorical_crossentropy"},
                    metrics={"where": [keras.metrics.AUC(name="auc")], "count": ["accuracy"]})
    return trainer, vgg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", type=file_path, default=str(SYNTHETIC_WEIGHTS), help="the weights file to write (Keras .weights.h5); the default is what --vgg-weights synthetic reads")
    parser.add_argument("--num-images", type=bounded_int(1, 10_000_000), default=8000, help="training scenes")
    parser.add_argument("--num-val", type=bounded_int(1, 1_000_000), default=1000, help="held-out scenes")
    parser.add_argument("--image-size", type=bounded_int(*LIMITS["image_size"]), default=96, help="scenes are letterboxed to this size to train")
    parser.add_argument("--epochs", type=bounded_int(1, 10_000), default=4)
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536), default=32)
    parser.add_argument("--learning-rate", type=positive_float, default=3e-4, help="Adam's, at the start (it decays to 2%%)")
    parser.add_argument("--precision", choices=runtime.TRAINING_PRECISIONS, default="float32",
                        help="as train.py's; float32 by default: mixed bfloat16 trained this network 2.2x slower "
                             "on a CPU with bfloat16 instructions")
    parser.add_argument("--steps", type=positive_int, help="stop each epoch after this many steps (for timing)")
    args = parser.parse_args(argv)
    if args.num_images < args.batch_size:
        parser.error("--num-images must be at least --batch-size (training uses whole batches)")
    out = Path(args.out)
    if not out.name.endswith(".weights.h5"):
        parser.error("--out must end in .weights.h5 (Keras' weights-only format)")
    scene_bytes = (args.num_images + args.num_val) * args.image_size**2 * 3
    if scene_bytes > MAX_SCENE_BYTES:
        parser.error(f"the scenes would take {scene_bytes / 2**30:.0f} GiB of memory (the limit is "
                     f"{MAX_SCENE_BYTES / 2**30:.0f} GiB): use fewer --num-images or a smaller --image-size")
    try:
        return pretrain(args, out)
    except OSError as error:  # a full disk, an unwritable folder
        print(f"error: {error}", file=sys.stderr)
        return 2


def pretrain(args: argparse.Namespace, out: Path) -> int:
    """Draws the scenes, trains, folds and writes the weights file."""
    runtime.keep_freed_memory()
    start = time.perf_counter()
    print(f"Drawing {args.num_images} + {args.num_val} scenes at {args.image_size} px...", flush=True)
    train = make_scenes(args.num_images, args.image_size)
    val = make_scenes(args.num_val, args.image_size, first_seed=args.num_images, progress=False)
    drawn = time.perf_counter()
    keras.utils.set_random_seed(0)
    with runtime.dtype_policy(runtime.training_precision(args.precision)):
        batches = SceneBatches(*train, args.batch_size, shuffle=True)
        trainer, vgg = build_trainer(args.image_size, args.learning_rate, args.epochs * (args.steps or len(batches)))
    trainer.fit(batches, validation_data=SceneBatches(*val, min(64, args.num_val), False),
                epochs=args.epochs, steps_per_epoch=args.steps, verbose="auto")
    save_half(fold_batch_norm(vgg, args.image_size), out)
    done = time.perf_counter()
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.0f} MiB). Drawing took {drawn - start:.0f} s, "
          f"training {done - drawn:.0f} s ({keras.backend.backend()}, {runtime.compute_device()}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
