"""Trains the katakana captioner on STAIR Captions / YJ Captions (or the embedded demo).

    $ python train.py                                   # the demo dataset, on a CPU
    $ python train.py --annotations stair_captions_v1.2_train.json yjcaptions26k_clean.json \\
          --images train2014/ val2014/ --out runs/stair
    $ python train.py ... --out runs/stair --resume     # continue after an interruption

Steps: captions -> katakana -> vocabulary; photos -> frozen VGG16 pool5
features, computed once and cached on disk; then Keras ``fit`` on the cached
features. ``--out`` ends up holding everything predict.py needs.
"""

from __future__ import annotations

import argparse
import os
import csv
import dataclasses
import io
import math
import sys
from pathlib import Path

import numpy as np

from cli import HelpFormatter
import demo
from dataset import load_caption_files
from features import ImageError, WeightsUnavailable, cached_features, feature_shape, resolve_precision
from fileio import atomic_path, read_json, remove_stale_temporaries, write_json, write_text
from kana import NUM_CLASSES, TIMESTEPS, Vocabulary, convert_captions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULTS = dict(epochs=30, batch_size=64, units=768, vgg_weights="imagenet", out="runs/stair")
# The demo fits a laptop CPU: a random VGG16 (no download) and a narrower model.
DEMO_DEFAULTS = dict(epochs=15, batch_size=128, units=256, vgg_weights="none", out="runs/demo")

# Files in --out.
MODEL_FILE = "model.keras"  # the weights with the best validation loss
CHECKPOINT_FILE = "checkpoint.keras"  # the last epoch, with optimizer state, for --resume
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
STATE_FILE = "state.json"  # epochs done, early-stopping counters, history


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the katakana image captioner. With no --annotations it trains on the embedded demo dataset.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--annotations", nargs="+", metavar="JSON",
                      help="STAIR/YJ/COCO caption files (e.g. stair_captions_v1.2_train.json); none = the demo dataset")
    data.add_argument("--images", nargs="+", metavar="DIR",
                      help="folders holding the photos the annotations name (e.g. train2014/ val2014/)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of the photos held out for validation (split by photo, never by caption)")
    data.add_argument("--image-size", type=int, default=150, help="photos are letterboxed to this square size")
    data.add_argument("--cache-dir", default=str(PROJECT_DIR / "cache"),
                      help="where VGG16 features are cached, reused across epochs and runs")
    data.add_argument("--vgg-weights", metavar="WEIGHTS",
                      help="'imagenet' (Keras download/cache), a local .h5 file, or 'none' for a randomly "
                           "initialised frozen VGG16 [default: imagenet; the demo uses none]")
    data.add_argument("--vgg-precision", choices=["auto", "float32", "bfloat16"], default="auto",
                      help="arithmetic of the one-time feature extraction; auto = bfloat16 where the CPU does it "
                           "natively (TensorFlow on CPUs with AVX512-BF16/AMX: about 2x faster, features within "
                           "1%%), else float32")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=["seed", "showtell", "attention"], default="attention",
                       help="seed: the original keras-image2text design, all 50 characters at once; "
                            "showtell: Show and Tell, one character at a time from the image-initialised LSTM; "
                            "attention: Show, Attend and Tell, showtell plus attention over the VGG16 grid")
    model.add_argument("--distill-from", metavar="RUN",
                       help="train on the captions a trained (autoregressive) run writes for each photo instead of "
                            "the human captions: sequence-level distillation, one consistent target per photo")
    model.add_argument("--units", type=int, help="LSTM/Dense width [default: 768; the demo uses 256]")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, help="the total number of epochs [default: 30]")
    training.add_argument("--batch-size", type=int, help="captions per step [default: 64]")
    training.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's learning rate")
    training.add_argument("--patience", type=int, default=5,
                          help="stop after this many epochs without a better validation loss")
    training.add_argument("--seed", type=int, default=0, help="seed for the split, the shuffling and the weights")
    training.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], default="auto",
                          help="mixed_bfloat16 is Keras' mixed precision: arithmetic in bfloat16, weights in float32. "
                               "auto = mixed_bfloat16 where bench.py measured it faster (JAX on a GPU; TensorFlow on "
                               "CPUs with AVX512-BF16/AMX), else float32")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="run folder: model, vocabulary, config, history [default: runs/stair; demo: runs/demo]")
    output.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    output.add_argument("--overwrite", action="store_true", help="start over even if --out holds a run")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.images and not args.annotations:
        parser.error("--images needs --annotations (the caption files that name the photos)")
    if args.annotations and not args.images:
        parser.error("--annotations needs --images (the folders holding the photos, e.g. train2014/)")
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be between 0 and 1")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other")
    defaults = DEMO_DEFAULTS if args.annotations is None else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def log(message: str = "") -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CaptionData:
    """Encoded captions and the feature-cache row of each caption's photo."""

    rows: np.ndarray  # (num_captions,) int64
    targets: np.ndarray  # (num_captions, timesteps) uint8 (up to 256 classes): a quarter of int32's memory


def split_by_image(num_images: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/validation photo indices; at least one photo in each."""
    if num_images < 2:
        raise ValueError(f"Training needs at least 2 usable photos; found {num_images}.")
    order = np.random.default_rng(seed).permutation(num_images)
    num_val = min(num_images - 1, max(1, round(num_images * val_fraction)))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def encode_captions(readings, image_indices, vocabulary: Vocabulary, timesteps: int):
    """Encodes the captions of the given photos (a photo's index is its cache row).

    Returns the data and the counts of unknown characters and truncated captions.
    """
    rows, targets, num_unknown, num_truncated = [], [], 0, 0
    for image in image_indices:
        for katakana in readings[image]:
            encoded, unknown, truncated = vocabulary.encode(katakana, timesteps)
            rows.append(image)
            targets.append(encoded)
            num_unknown += unknown
            num_truncated += truncated
    data = CaptionData(np.array(rows, dtype=np.int64), np.array(targets, dtype=np.uint8 if vocabulary.num_classes <= 256 else np.int32).reshape(-1, timesteps))
    return data, num_unknown, num_truncated


def keep_freed_memory(pad_bytes: int = 64 << 20) -> bool:
    """Asks glibc's malloc to keep ``pad_bytes`` free at the top of each heap rather than hand it back at once.

    A training step allocates and frees the same large buffers every time (the
    LSTMs' saved states, tens of MB per layer). TensorFlow's generator
    dataset, which ``fit`` reads a PyDataset through, sets glibc's
    ``M_TRIM_THRESHOLD`` to 128 KB (it logs "Memory patch applied"), so the
    heaps holding those buffers shrank after each step and grew again in the
    next, and every fresh page faulted in: on 2 CPU cores the card's design
    trained 1.4× slower through ``fit`` than through ``train_on_batch``
    (1.5M page faults in 6 steps instead of 0.6M). The pad keeps 64 MiB
    whenever the heap is trimmed. Returns whether the setting took (False on
    a C library without ``mallopt``, e.g. macOS, where this does not apply).
    """
    import ctypes

    M_TOP_PAD = -2  # from glibc's malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TOP_PAD, pad_bytes))


def read_ahead_workers() -> int:
    """Threads that read batches while the model trains: 4 on a GPU, where a step is quicker than reading its batch."""
    from model import compute_device

    return 4 if compute_device() == "gpu" else 1


def make_batches(config, features, data: CaptionData, batch_size: int, shuffle: bool, seed: int, workers: int = 1):
    """A Keras PyDataset reading feature rows from the memory-mapped cache, batch by batch.

    ``workers`` > 1 reads the next batches in that many threads while the model trains.
    """
    import keras

    from model import model_inputs

    class CaptionBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(data.rows)) if shuffle else np.arange(len(data.rows))

        def __len__(self):
            return math.ceil(len(data.rows) / batch_size)

        def __getitem__(self, index):
            chosen = self.order[index * batch_size : (index + 1) * batch_size]
            rows = data.rows[chosen]
            # Read in row order (kinder to the page cache), then restore the batch order. The rows stay
            # float16, half the bytes to copy and send: the model's first layer casts them on the device.
            sorted_rows, inverse = np.unique(rows, return_inverse=True)
            batch_features = features[sorted_rows][inverse]
            targets = data.targets[chosen].astype(np.int32)
            return model_inputs(config, batch_features, targets), targets

        def on_epoch_end(self):
            if shuffle:
                self.order = self.rng.permutation(len(data.rows))

    return CaptionBatches()


def feature_sample(features, rows: np.ndarray, seed: int, size: int = 2000) -> np.ndarray:
    """Up to ``size`` training photos' features, in float32, for the model's input standardisation."""
    unique = np.unique(rows)
    chosen = np.sort(np.random.default_rng(seed).choice(unique, size=min(size, len(unique)), replace=False))
    return np.asarray(features[chosen], dtype=np.float32)


# ---------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------


def make_checkpointer(out: Path, state: dict, patience: int):
    """A callback that, after each epoch, saves the run atomically and applies early stopping.

    Saves checkpoint.keras (last epoch, with optimizer state), model.keras
    (best validation loss), state.json, history.csv and loss.png. An epoch
    whose loss is not finite is not saved, and training stops.
    """
    import keras

    class Checkpointer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {key: float(value) for key, value in (logs or {}).items()}
            if not all(math.isfinite(value) for value in logs.values()):
                log(f"\nThe loss became {logs.get('loss')} in epoch {epoch + 1}: stopping without saving this "
                    f"epoch. Try a lower --learning-rate; --resume restarts from the last good epoch.")
                self.model.stop_training = True
                state["diverged"] = True
                return
            state["history"].append({"epoch": epoch + 1, **logs})
            if logs["val_loss"] < state["best_val_loss"]:
                state["best_val_loss"], state["best_epoch"], state["wait"] = logs["val_loss"], epoch + 1, 0
                save_model(self.model, out / MODEL_FILE)
            else:
                state["wait"] += 1
            save_model(self.model, out / CHECKPOINT_FILE)
            state["epoch"] = epoch + 1
            if state["wait"] >= patience:
                log(f"\nNo better validation loss for {patience} epochs: stopping early.")
                self.model.stop_training = True
                state["stopped_early"] = True
            write_json(out / STATE_FILE, state)
            write_history(out, state["history"])

    return Checkpointer()


def save_model(model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def write_history(out: Path, history: list[dict]) -> None:
    """history.csv and loss.png from the per-epoch logs."""
    if not history:
        return
    columns = list(history[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(out / "history.csv", text.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        axis.plot(epochs, [row[key] for row in history], marker="o", markersize=3, label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("cross-entropy per character")
    axis.set_title("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(out / "loss.png", suffix=".png") as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def prepare_out(args) -> tuple[dict | None, bool]:
    """Checks --out against --resume/--overwrite; returns the saved state when resuming."""
    out = Path(args.out)
    if out.is_dir():
        for path in remove_stale_temporaries(out):
            log(f"Removed {path.name}, left by an interrupted run.")
    has_run = (out / STATE_FILE).exists()
    if args.resume:
        if not has_run or not (out / CHECKPOINT_FILE).exists():
            raise FileNotFoundError(f"--resume: {out} holds no checkpoint to resume from (no {STATE_FILE}).")
        return read_json(out / STATE_FILE, "Run state"), True
    if has_run and not args.overwrite:
        raise FileExistsError(
            f"{out} already holds a training run. Pass --resume to continue it, --overwrite to start over, "
            f"or choose another --out."
        )
    for name in (STATE_FILE, CHECKPOINT_FILE, MODEL_FILE, "history.csv", "loss.png", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    return None, False


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def train(args) -> int:
    import keras

    from model import CaptionerConfig, build_model, dtype_policy, load_model, training_precision

    out = Path(args.out)
    saved_state, resuming = prepare_out(args)
    if args.annotations is None:
        demo_dir = demo.ensure_demo()
        args.annotations = [str(demo_dir / "captions_train.json")]
        args.images = [str(demo_dir / "train2014")]
        log(f"No --annotations given: training on the demo dataset in {demo_dir}.")
    if args.vgg_weights == "none":
        log("Using a randomly initialised frozen VGG16 (--vgg-weights none): fine for the demo's shapes, "
            "not for photos.")

    # 1. Captions -> katakana.
    records, report = load_caption_files(args.annotations, args.images)
    log(f"Read {report.num_annotations} annotations: {sum(len(r.captions) for r in records)} captions "
        f"of {len(records)} photos.")
    for line in report.lines():
        log(f"  {line}")
    readings, num_dropped, num_empty = convert_captions([r.captions for r in records], progress=not args.quiet)
    log(f"Katakana: {num_dropped} characters without a reading were dropped; "
        f"{num_empty} captions had no reading at all and were skipped.")

    # 2. Photos -> cached VGG16 features (once per photo).
    if resuming:
        config = CaptionerConfig.load(out / CONFIG_FILE)
        if config.image_size != args.image_size or config.vgg_weights != args.vgg_weights:
            log(f"Resuming with the run's own image size ({config.image_size}) and VGG16 weights "
                f"({config.vgg_weights}).")
        args.image_size, args.vgg_weights = config.image_size, config.vgg_weights
        args.vgg_precision = config.vgg_precision
        if args.precision not in ("auto", config.precision):
            log(f"Resuming in the run's own precision ({config.precision}).")
        args.precision = config.precision
    args.vgg_precision = resolve_precision(args.vgg_precision)
    args.precision = training_precision(args.precision)
    cache, _ = cached_features([record.path for record in records], args.vgg_weights, args.image_size,
                               args.cache_dir, progress=not args.quiet, log=log, precision=args.vgg_precision)
    usable = np.flatnonzero(cache.complete & np.array([bool(r) for r in readings]))

    # 3. Split by photo, build the vocabulary from training captions, encode.
    train_images, val_images = split_by_image(len(usable), args.val_fraction, args.seed)
    train_images, val_images = usable[train_images], usable[val_images]
    references = readings  # the human captions: validation metrics are always against these
    if args.distill_from:
        readings = distilled_readings(args, cache.features, readings, np.concatenate([train_images, val_images]))
    if resuming:
        vocabulary = Vocabulary.load(out / VOCAB_FILE)
    else:
        vocabulary = Vocabulary.build((k for image in train_images for k in readings[image]), NUM_CLASSES)
    train_data, unknown, truncated = encode_captions(readings, train_images, vocabulary, TIMESTEPS)
    val_data, val_unknown, val_truncated = encode_captions(readings, val_images, vocabulary, TIMESTEPS)
    log(f"Vocabulary: {vocabulary.num_classes} classes (end class + {len(vocabulary.characters)} characters).")
    log(f"Training on {len(train_data.rows)} captions of {len(train_images)} photos; validating on "
        f"{len(val_data.rows)} captions of {len(val_images)} photos.")
    log(f"Captions longer than {TIMESTEPS - 1} characters were truncated: {truncated + val_truncated}; "
        f"characters outside the vocabulary left out: {unknown + val_unknown}.")

    # 4. The model.
    if resuming:
        model = load_model(out / CHECKPOINT_FILE)
        state = saved_state
        if state.get("stopped_early") or state["epoch"] >= args.epochs:
            log(f"The run in {out} is already finished ({state['epoch']} epochs); nothing to resume.")
            return 0
        log(f"Resuming {out} after epoch {state['epoch']}.")
    else:
        keras.utils.set_random_seed(args.seed)
        config = CaptionerConfig(
            arch=args.arch,
            units=args.units,
            timesteps=TIMESTEPS,
            num_classes=NUM_CLASSES,
            image_size=args.image_size,
            feature_shape=feature_shape(args.image_size),
            vgg_weights=args.vgg_weights,
            vgg_precision=args.vgg_precision,
            precision=args.precision,
            learning_rate=args.learning_rate,
        )
        with dtype_policy(config.precision):  # the layers keep it, and the model file records it
            model = build_model(config, feature_sample(cache.features, train_data.rows, args.seed))
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / CONFIG_FILE)
        vocabulary.save(out / VOCAB_FILE)
        state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "wait": 0, "history": []}
        log(f"Model {config.arch}: {model.count_params():,} parameters, backend {keras.backend.backend()}, "
            f"{config.precision}.")

    # 5. Fit on cached features.
    workers = read_ahead_workers()
    model.fit(
        make_batches(config, cache.features, train_data, args.batch_size, shuffle=True,
                     seed=args.seed + state["epoch"], workers=workers),
        validation_data=make_batches(config, cache.features, val_data, args.batch_size, shuffle=False, seed=0),
        epochs=args.epochs,
        initial_epoch=state["epoch"],
        callbacks=[keras.callbacks.TerminateOnNaN(), make_checkpointer(out, state, args.patience)],
        verbose=0 if args.quiet else "auto",
    )
    if state.get("diverged") and not state["history"]:
        log("Training diverged before the first epoch ended; no model was saved.")
        return 1
    log(f"Best validation loss {state['best_val_loss']:.4f} at epoch {state['best_epoch']}.")

    # 6. Caption metrics of the best model on the validation photos.
    result = evaluate_validation(out, cache.features, val_images, [references[i] for i in val_images],
                                 [records[i].scene for i in val_images])
    log(f"Validation metrics ({len(val_images)} photos, character-level):\n{result}")
    log(f"The run is in {out}/ ({MODEL_FILE}, {CONFIG_FILE}, {VOCAB_FILE}, metrics.json, history.csv, loss.png).")
    return 0


def distilled_readings(args, features, readings, images) -> list[list[str]]:
    """Sequence-level knowledge distillation: each photo's one target is the teacher's best caption.

    A non-autoregressive decoder cannot pick one of several wordings per
    image; a teacher's single consistent caption removes that ambiguity.
    """
    from evaluate import caption_cached
    from predict import Captioner

    teacher = Captioner(args.distill_from, with_vgg=False)
    if (teacher.config.vgg_weights, teacher.config.image_size, teacher.config.vgg_precision) != (
            args.vgg_weights, args.image_size, args.vgg_precision):
        raise ValueError(
            f"--distill-from {args.distill_from} was trained on other features (VGG16 weights "
            f"{teacher.config.vgg_weights}, {teacher.config.image_size} px); pass the same --vgg-weights and --image-size."
        )
    log(f"Captioning {len(images)} photos with the teacher {args.distill_from} (greedy) as training targets.")
    distilled = [[] for _ in readings]
    for image, (text, _) in zip(images, caption_cached(teacher, features, images)):
        distilled[image] = [text] if text else []
    return distilled


def evaluate_validation(out: Path, features, rows, references, scenes) -> str:
    """Scores the saved best model on cached validation features; writes metrics.json."""
    from evaluate import caption_cached, format_table, score
    from predict import Captioner

    captions = caption_cached(Captioner(out, with_vgg=False), features, rows)
    result = score(captions, references, scenes)
    result.pop("CIDEr-D per image")
    write_json(out / "metrics.json", {"split": "validation", **result})
    return format_table(result)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    try:
        return train(args)
    except (FileNotFoundError, FileExistsError, ValueError, ImageError, WeightsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command with --resume to continue from the last finished epoch "
              "(features already extracted are kept).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
