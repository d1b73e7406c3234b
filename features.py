"""Images -> frozen VGG16 features (pool5, or conv5 before its pooling), computed once per image and cached on disk.

The cache is a folder per (weights, image size, precision, layer, image list):

    features.npy  float16 (num_images, 4, 4, 512) for pool5 at 150 px, memory-mapped
    status.npy    uint8 (num_images,): 1 once an image's row is complete
    paths.json    the image paths, in row order

A row is marked complete only after it is flushed, so an interrupted
extraction resumes where it stopped and never reads a half-written row.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

import runtime
from fileio import DiskFull, atomic_path, read_json, write_json
from recolour import RECOLOURINGS, recolour_pixels

VGG16_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / "cache"  # train.py's and evaluate.py's --cache-dir
# --vgg-weights synthetic: shipped in the repository (float16, 28 MiB), made by pretrain.py's three-step recipe
SYNTHETIC_WEIGHTS = Path(__file__).resolve().parent / "weights" / "vgg16-synthetic.weights.h5"
RANDOM_VGG16_SEED = 1234  # --vgg-weights none: the same random network everywhere
# Images are bounded by the pixels decoded, not by the pixels in the header: a JPEG is decoded at up to 1/8 scale
# (draft mode), so a 200-megapixel phone photo is read at 3 megapixels; any other image is decoded whole.
MAX_DECODED_PIXELS = 64_000_000
MAX_HEADER_PIXELS = 1_000_000_000
Image.MAX_IMAGE_PIXELS = MAX_HEADER_PIXELS // 2  # Pillow refuses headers over twice this at open (a bomb)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# The grid the captioner reads: pool5 (the card's; 4×4 at 150 px) or conv5_3 before that pooling (9×9 at 150 px,
# 14×14 at 224 px: the grid Show, Attend and Tell attends over), 512 channels each.
FEATURE_LAYERS = {"pool5": "block5_pool", "conv5": "block5_conv3"}


class ImageError(ValueError):
    """An image file that cannot be used; the message says why."""


class WeightsUnavailable(RuntimeError):
    """The ImageNet VGG16 weights could not be loaded."""


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, keeping what the picture looks like."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and float greyscale: stretch to 0..255 rather than clip.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are shown on white, as image viewers do.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Scales ``image`` to fit in ``size``×``size`` and pads the rest with black, centred."""
    width, height = image.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def load_image(source, size: int, name: str | None = None) -> np.ndarray:
    """Reads an image as a letterboxed ``(size, size, 3)`` uint8 RGB array.

    EXIF orientation is applied; JPEGs are decoded at a reduced scale when they
    are much larger than ``size`` (Pillow's draft mode), which is faster and
    looks the same after letterboxing.

    Args:
        source: a path, or a binary file object (an upload held in memory).
        size: the letterboxed side.
        name: what messages call a file object (a path is called by itself).

    Raises:
        ImageError: the file is missing, empty, not an image, truncated, or too
            large to decode safely.
    """
    is_path = isinstance(source, (str, os.PathLike))
    name = str(source) if is_path else name or "the upload"
    if is_path and Path(source).exists() and not Path(source).is_file():
        raise ImageError(f"{name}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # bounded below by decoded pixels
            with Image.open(source) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (size, size))  # DCT scaling to no less than size × size
                width, height = image.size
                if width * height > MAX_DECODED_PIXELS:
                    raise Image.DecompressionBombError(
                        f"{width}×{height} pixels to decode; the limit is {MAX_DECODED_PIXELS / 1e6:.0f} megapixels")
                image.load()
                image = ImageOps.exif_transpose(image)
                return np.asarray(letterbox(_to_rgb(image), size))
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: too many pixels to decode safely ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        reason = "empty file" if _is_empty(source) else error
        raise ImageError(f"{name}: not a readable image ({reason})") from None


def load_images(source, sizes, name: str | None = None) -> list[np.ndarray]:
    """``load_image`` at each of ``sizes``, each read as load_image reads it alone (a file object is read again
    from its start), so a photo letterboxed for a second model is the one that model's cache holds."""
    images = []
    for size in sizes:
        if images and not isinstance(source, (str, os.PathLike)):
            source.seek(0)
        images.append(load_image(source, size, name))
    return images


def _is_empty(source) -> bool:
    """Whether a path names an empty regular file, or a file object holds no bytes."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).is_file() and Path(source).stat().st_size == 0
    return hasattr(source, "getbuffer") and source.getbuffer().nbytes == 0


def preprocess(images: np.ndarray) -> np.ndarray:
    """VGG16's own input convention (Caffe): BGR, ImageNet mean subtracted, float32."""
    return images[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


# ---------------------------------------------------------------------------
# VGG16
# ---------------------------------------------------------------------------


def weights_file(weights: str) -> Path | None:
    """The local file a ``--vgg-weights`` value names (``synthetic`` names pretrain.py's), or None for imagenet/none.

    Raises:
        WeightsUnavailable: ``synthetic``, and its file is missing (deleted, or not checked out).
        FileNotFoundError: a weights path that does not exist.
    """
    if weights in ("imagenet", "none"):
        return None
    path = SYNTHETIC_WEIGHTS if weights == "synthetic" else Path(weights)
    if weights == "synthetic" and not path.is_file():
        raise WeightsUnavailable(
            f"The project's synthetic VGG16 weights are not at {path}.\n"
            f"They come with the repository: git checkout -- weights/{path.name}\n"
            f"or make them again with the three python pretrain.py commands in docs/hard-benchmark.md")
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights file not found: {weights}")
    return path


def weights_tag(weights: str) -> str:
    """A short name for a ``--vgg-weights`` value, used in cache folder names."""
    if weights in ("imagenet", "none"):
        return "imagenet" if weights == "imagenet" else f"random{RANDOM_VGG16_SEED}"
    path = weights_file(weights)
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return f"{'synthetic' if weights == 'synthetic' else 'file'}-{digest[:10]}"


def build_vgg16(weights: str, image_size: int, precision: str = "float32", layer: str = "pool5"):
    """The frozen VGG16 convolutional base (no top), ending at pool5 (or, ``layer="conv5"``, at conv5_3).

    Args:
        weights: ``"imagenet"`` (Keras' download and cache), ``"synthetic"``
            (the project's own, trained on its scenes by pretrain.py), a path
            to a local ``.h5`` weights file, or ``"none"`` for a randomly
            initialised network, the same one on every machine and backend.
        image_size: the side of the square input.
        precision: ``float32``, or ``bfloat16`` (Keras' mixed_bfloat16: float32
            weights, bfloat16 arithmetic) where the hardware does it natively.
        layer: a key of FEATURE_LAYERS.

    Raises:
        WeightsUnavailable: ImageNet or synthetic weights were asked for and cannot be had.
        FileNotFoundError: a weights path that does not exist.
    """
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"VGG16 precision must be float32 or bfloat16, not {precision!r}")
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"the feature layer must be one of {', '.join(FEATURE_LAYERS)}, not {layer!r}")
    with runtime.dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32"):
        model = _build_vgg16(weights, image_size)
        if layer != "pool5":
            model = keras.Model(model.input, model.get_layer(FEATURE_LAYERS[layer]).output, name=f"vgg16_{layer}")
            model.trainable = False
    return model


def _build_vgg16(weights: str, image_size: int):
    shape = (image_size, image_size, 3)
    if weights == "none":
        model = keras.applications.VGG16(weights=None, include_top=False, input_shape=shape)
        _randomise(model)
    elif weights == "imagenet":
        try:
            model = keras.applications.VGG16(weights="imagenet", include_top=False, input_shape=shape)
        except Exception as error:  # keras raises bare Exceptions for failed downloads
            raise WeightsUnavailable(
                f"Could not load the ImageNet VGG16 weights ({type(error).__name__}: {error}).\n"
                f"Keras downloads them once into ~/.keras/models/. On a machine without internet:\n"
                f"  1. download {VGG16_NOTOP_URL}\n"
                f"  2. put it at ~/.keras/models/{VGG16_NOTOP_FILE}, or pass --vgg-weights PATH/TO/{VGG16_NOTOP_FILE}\n"
                f"Or pass --vgg-weights none to use a randomly initialised frozen VGG16 (demo quality only)."
            ) from None
    else:
        path = weights_file(weights)
        model = keras.applications.VGG16(weights=None, include_top=False, input_shape=shape)
        try:
            model.load_weights(path)
        except Exception as error:  # h5py and Keras raise many types for a file that is not VGG16's weights
            raise ValueError(f"{path} is not a VGG16 (no top) weights file ({type(error).__name__}: {error})") from None
    model.trainable = False
    return model


def _randomise(model) -> None:
    """He-normal kernels from NumPy, so every backend builds the same random VGG16."""
    rng = np.random.default_rng(RANDOM_VGG16_SEED)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:-1])
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=kernel.shape).astype(np.float32)
            layer.set_weights([kernel, np.zeros_like(bias)])


def feature_shape(image_size: int, layer: str = "pool5") -> tuple[int, int, int]:
    """The features' shape: after five 2×2 poolings for pool5 (150 px -> 4×4×512), four for conv5 (150 px -> 9×9×512)."""
    side = image_size
    for _ in range(5 if layer == "pool5" else 4):
        side //= 2
    return (side, side, 512)


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------


VARIANTS = ("mirrored", *RECOLOURINGS)  # the photos changed for training: train.py --flip, --recolour


def transformed(images: np.ndarray, variant: str | None) -> np.ndarray:
    """Letterboxed ``(n, size, size, 3)`` RGB images as VARIANTS changes them (None: as they are)."""
    if variant is None:
        return images
    return images[:, :, ::-1] if variant == "mirrored" else recolour_pixels(images, variant)


def _file_stamp(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def reserve(path) -> None:
    """Allocates a sparse file's blocks now, so that a full disk is an error here, not a crash (SIGBUS) mid-extraction.

    Raises:
        DiskFull: the disk cannot hold the file; the message says how much it needs.
    """
    size = os.path.getsize(path)
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the disk is checked while writing instead
        return
    try:
        with open(path, "r+b") as file:
            os.posix_fallocate(file.fileno(), 0, size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(Path(path).parent).free
            raise DiskFull(f"The feature cache needs {size / 2**20:,.0f} MiB in {Path(path).parent.parent} "
                           f"and the disk has {free / 2**20:,.0f} MiB free; free some space or pass "
                           f"--cache-dir on another disk") from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


@dataclasses.dataclass
class FeatureCache:
    """Memory-mapped features of a fixed list of images.

    Attributes:
        folder: where the cache lives.
        paths: the images, one row each.
        features: float16 ``(num_images, *feature_shape)``, memory-mapped.
        status: uint8 ``(num_images,)``, 1 where the row is complete.
    """

    folder: Path
    paths: list[str]
    features: np.ndarray
    status: np.ndarray

    @classmethod
    def open(cls, root, paths, weights: str, image_size: int, precision: str = "float32",
             layer: str = "pool5", variant: str | None = None) -> "FeatureCache":
        """Opens (or creates) the cache of ``paths`` under ``root``.

        There is one cache per weights, size, precision and layer, and one more
        per VARIANTS of the same photos (``variant``: train.py --flip and --recolour).
        """
        paths = [str(Path(path).resolve()) for path in paths]
        # Each file's size and modification time are in the name too: a photo rewritten in place (a dataset
        # generated again) gets a new cache rather than the old photo's features.
        digest = hashlib.sha1("\n".join(f"{path}\t{_file_stamp(path)}" for path in paths).encode()).hexdigest()[:12]
        tag = (f"{weights_tag(weights)}-{image_size}px" + ("-bf16" if precision == "bfloat16" else "")
               + ("" if layer == "pool5" else f"-{layer}") + (f"-{variant}" if variant else ""))
        folder = Path(root) / f"vgg16-{tag}-{len(paths)}-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = (len(paths), *feature_shape(image_size, layer))
        features_file, status_file = folder / "features.npy", folder / "status.npy"
        if not (folder / "paths.json").exists() or not status_file.exists():
            # A new cache: the arrays are made under temporary names first, so a
            # cache folder with paths.json always has both arrays whole.
            for file, dtype, file_shape in ((features_file, np.float16, shape), (status_file, np.uint8, shape[:1])):
                with atomic_path(file, suffix=".npy") as temporary:
                    np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=file_shape).flush()
                    reserve(temporary)
            write_json(folder / "paths.json", paths)
        elif read_json(folder / "paths.json", "Cache index") != paths:
            raise ValueError(f"Feature cache {folder} belongs to other images; delete the folder to rebuild it.")
        features = np.load(features_file, mmap_mode="r+", allow_pickle=False)
        status = np.load(status_file, mmap_mode="r+", allow_pickle=False)
        if features.shape != shape or status.shape != shape[:1]:
            raise ValueError(f"Feature cache {folder} is damaged (shape {features.shape}); delete the folder.")
        return cls(folder, paths, features, status)

    @property
    def complete(self) -> np.ndarray:
        return np.asarray(self.status) == 1


def extract_features(
    cache: FeatureCache,
    vgg,
    image_size: int,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    variant: str | None = None,
) -> dict[str, str]:
    """Fills the cache rows that are not complete yet (``variant``: of each photo so changed, VARIANTS).

    Images are decoded by a thread pool while VGG16 works on the previous
    batch; each finished batch is flushed before its rows are marked complete.

    Returns:
        ``{path: reason}`` for every image that could not be read.
    """
    pending = np.flatnonzero(~cache.complete)
    failures: dict[str, str] = {}
    if len(pending) == 0:
        return failures
    bar = _progress_bar(len(pending), "VGG16 features", progress)
    for chunk, rows, images, errors, _ in decode_batches(cache.paths, pending, image_size, batch_size, num_workers):
        failures.update({cache.paths[row]: reason for row, reason in errors.items()})
        if len(rows):
            output = vgg.predict_on_batch(preprocess(transformed(images, variant)))
            cache.features[rows] = np.asarray(output, dtype=np.float32).astype(np.float16)
            cache.features.flush()
            cache.status[rows] = 1
            cache.status.flush()
        bar.update(len(chunk))
    bar.close()
    return failures


def cached_features(paths, weights: str, image_size: int, cache_root, progress: bool = True, log=print,
                    precision: str = "float32", layer: str = "pool5", variant: str | None = None):
    """Opens the cache of ``paths`` and extracts whatever it lacks (VGG16 is built only then).

    ``variant``: the features of the photos so changed (VARIANTS), in a cache of their own.

    Returns:
        ``(cache, failures)``: the cache, and ``{path: reason}`` for images
        that could not be read (their rows stay incomplete).
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"Unknown photo variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    cache = FeatureCache.open(cache_root, paths, weights, image_size, precision, layer, variant)
    missing = int((~cache.complete).sum())
    if not missing:
        log(f"All {len(paths)} images' features are cached in {cache.folder}.")
        return cache, {}
    vgg = build_vgg16(weights, image_size, precision, layer)
    log(f"Extracting VGG16 features of {missing} {variant + ' ' if variant else ''}images into {cache.folder} "
        f"(resumable).")
    failures = extract_features(cache, vgg, image_size, progress=progress, variant=variant)
    for reason in list(failures.values())[:10]:
        log(f"  skipped image: {reason}")
    if failures:
        log(f"Skipped {len(failures)} unreadable images{' (first 10 listed)' if len(failures) > 10 else ''}.")
    return cache, failures


def decode_batches(paths, rows, image_size: int, batch_size: int, num_workers: int | None = None, also_sizes=()):
    """Decodes ``paths[row]`` for ``rows`` in batches, up to two batches ahead, on a thread pool.

    Yields:
        ``(chunk, good_rows, images, errors, also)``: the rows of this batch,
        those that decoded, their letterboxed images ``(n, size, size, 3)``
        uint8, ``{row: reason}`` for the others, and the same photos
        letterboxed at each of ``also_sizes`` (a list of such arrays).
    """
    num_workers = num_workers or min(8, os.cpu_count() or 1)
    sizes = (image_size, *also_sizes)
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        queue = collections.deque()

        def finish(chunk, futures):
            good_rows, images, errors = [], [], {}
            for row, future in zip(chunk, futures):
                try:
                    images.append(future.result())
                    good_rows.append(row)
                except ImageError as error:
                    errors[int(row)] = str(error)
            stacked = [np.stack([each[index] for each in images]) if images else
                       np.zeros((0, size, size, 3), np.uint8) for index, size in enumerate(sizes)]
            return chunk, np.array(good_rows, dtype=np.int64), stacked[0], errors, stacked[1:]

        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            queue.append((chunk, [pool.submit(load_images, paths[row], sizes) for row in chunk]))
            if len(queue) > 2:
                yield finish(*queue.popleft())
        while queue:
            yield finish(*queue.popleft())


def _progress_bar(total: int, description: str, enabled: bool):
    return tqdm(total=total, desc=description, unit="img", disable=not enabled, dynamic_ncols=True)
