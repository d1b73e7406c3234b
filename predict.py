"""Captions photos in katakana with a trained run folder.

    $ python predict.py photo.jpg more/*.jpg --model runs/stair
    photo.jpg: アカイシャツヲキタダンセイガフリスビーヲシテイマス。
    $ python predict.py photos/ --model runs/demo --json          # one JSON object per line
    $ python predict.py a.jpg b.jpg --model runs/demo --plot captions.png

Folders are captioned file by file, streaming, so any number of photos fits in
memory. A file that cannot be read gets an error line on stderr, the others
are captioned, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

from cli import HelpFormatter  # noqa: E402
from dataset import IMAGE_SUFFIXES  # noqa: E402
from features import WeightsUnavailable, build_vgg16, decode_batches, load_image, preprocess  # noqa: E402
from decoding import DECODE_METHODS, Caption, StepModels, beam_search, decode_parallel  # noqa: E402
from kana import Vocabulary  # noqa: E402

DEFAULT_MODEL = "runs/demo"


class Captioner:
    """A trained run folder, ready to caption images.

    Args:
        model_dir: a folder written by train.py (model.keras, config.json, vocab.json).
        vgg_weights: overrides the VGG16 weights the run was trained with
            (e.g. a local copy of the same ImageNet weights file).
        with_vgg: False to caption cached features only (no VGG16 built).
        decode: how a non-autoregressive model's outputs are read (see decoding.DECODE_METHODS).
        beam_size: beams per image for autoregressive models (1 = greedy).

    Raises:
        FileNotFoundError: a file of the run is missing.
        ValueError: the files do not belong together.
    """

    def __init__(self, model_dir, vgg_weights: str | None = None, with_vgg: bool = True, decode: str = "argmax",
                 beam_size: int = 1):
        from model import AUTOREGRESSIVE, CaptionerConfig, load_model

        model_dir = Path(model_dir)
        for name in ("model.keras", "config.json", "vocab.json"):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(
                    f"{model_dir / name} not found: --model must be a run folder written by train.py."
                )
        self.config = CaptionerConfig.load(model_dir / "config.json")
        self.vocabulary = Vocabulary.load(model_dir / "vocab.json")
        self.model = load_model(model_dir / "model.keras")
        num_classes = self.model.output_shape[-1]
        if num_classes != self.config.num_classes or self.vocabulary.num_classes > num_classes:
            raise ValueError(
                f"{model_dir}: the model writes {num_classes} classes, config.json says "
                f"{self.config.num_classes} and vocab.json has {self.vocabulary.num_classes}; "
                f"these files are not from the same run."
            )
        self.decode, self.beam_size = decode, beam_size
        self.steps = StepModels(self.model) if self.config.arch in AUTOREGRESSIVE else None
        self.vgg = build_vgg16(vgg_weights or self.config.vgg_weights, self.config.image_size,
                               self.config.vgg_precision) if with_vgg else None

    def caption_features(self, features: np.ndarray, n_best: int = 1) -> list[list[Caption]]:
        """Up to ``n_best`` captions per image, best first, from pool5 features ``(batch, 4, 4, 512)``."""
        features = np.asarray(features, dtype=np.float32)
        if self.steps is not None:
            return beam_search(self.steps, features, self.vocabulary, self.beam_size, n_best, self.config.timesteps - 1)
        probabilities = self.model.predict_on_batch(features)  # (batch, 50, 128)
        return decode_parallel(probabilities, self.vocabulary, collapse_repeats=self.decode == "collapse")

    def attention_maps(self, features: np.ndarray, texts: list[str]) -> list[np.ndarray]:
        """Attention models: per caption, the weights over the VGG16 grid behind each character ``(len(text), rows, cols)``."""
        if self.steps is None or self.steps.attention is None:
            raise ValueError(f"The model is {self.config.arch!r}, which has no attention; train with --arch attention.")
        indices = [self.vocabulary.encode(text, len(text) + 1)[0][: len(text)].tolist() for text in texts]
        rows, cols, _ = self.config.feature_shape
        maps = self.steps.attention_maps(np.asarray(features, dtype=np.float32), indices)
        return [weights.reshape(len(weights), rows, cols) for weights in maps]

    def caption_images(self, images: np.ndarray, n_best: int = 1) -> list[list[Caption]]:
        """Captions from letterboxed uint8 images ``(batch, size, size, 3)``."""
        return self.caption_features(self.vgg.predict_on_batch(preprocess(images)), n_best)

    def caption_files(self, paths, batch_size: int = 32, n_best: int = 1):
        """Yields ``(path, captions, error)`` for each file, in order, batch by batch.

        ``captions`` (a best-first list of ``Caption``) is None where the file
        could not be read, and ``error`` says why.
        """
        paths = [str(path) for path in paths]
        for chunk, rows, images, errors in decode_batches(paths, np.arange(len(paths)), self.config.image_size, batch_size):
            captions = dict(zip(rows.tolist(), self.caption_images(images, n_best))) if len(rows) else {}
            for row in chunk.tolist():
                yield paths[row], captions.get(row), errors.get(row)


def expand_inputs(inputs) -> tuple[list[Path], list[str]]:
    """Files as given and the images inside given folders (sorted); returns (paths, problems)."""
    paths, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            problems.append(f"{path}: file not found")
    return paths, problems


def plot_captions(results, out_file, columns: int = 4) -> None:
    """A grid of the photos with their katakana captions (Japanese font from matplotlib-fontja)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401  (registers a font with kana)

    from fileio import atomic_path
    from PIL import Image

    columns = min(columns, len(results))
    num_rows = -(-len(results) // columns)
    figure, axes = plt.subplots(num_rows, columns, figsize=(4 * columns, 3.6 * num_rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (path, caption) in zip(axes.flat, results):
        with Image.open(path) as image:
            axis.imshow(image.convert("RGB"))
        axis.set_title(_wrap(caption, 16), fontsize=10)
        axis.text(0.5, -0.04, Path(path).name, transform=axis.transAxes, ha="center", va="top", fontsize=7)
    figure.tight_layout()
    with atomic_path(out_file, suffix=Path(out_file).suffix or ".png") as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def plot_attention(captioner: Captioner, path, text: str, out_file, columns: int = 10) -> None:
    """Draws where an attention model looked for each character of ``text``, over the letterboxed photo.

    Each pool5 cell sees about 32×32 pixels of the letterboxed image (its
    stride), so the map is drawn over the top-left ``rows*32 × cols*32`` pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401  (registers a font with kana)

    from fileio import atomic_path

    image = load_image(path, captioner.config.image_size)  # (size, size, 3) uint8
    features = captioner.vgg.predict_on_batch(preprocess(image[None]))
    (maps,) = captioner.attention_maps(features, [text])  # (characters, rows, cols)
    rows, cols = maps.shape[1:]
    num_panels = len(text) + 1
    columns = min(columns, num_panels)
    figure, axes = plt.subplots(-(-num_panels // columns), columns, figsize=(1.6 * columns, 1.8 * -(-num_panels // columns)),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title(Path(path).name, fontsize=7)
    for axis, char, weights in zip(axes.flat[1:], text, maps):
        axis.imshow(image)
        axis.imshow(weights, cmap="inferno", alpha=0.6, extent=(0, cols * 32, rows * 32, 0), interpolation="nearest",
                    vmin=0, vmax=1)
        axis.set_title(char, fontsize=14)
    figure.suptitle(text, fontsize=10)
    figure.tight_layout()
    with atomic_path(out_file, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)


def _wrap(text: str, width: int) -> str:
    """Breaks every line of ``text`` into lines of at most ``width`` characters."""
    lines = [line[start : start + width] for line in text.split("\n") for start in range(0, max(len(line), 1), width)]
    return "\n".join(lines) if text else "(empty)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Caption photos in katakana with a model trained by train.py.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="run folder written by train.py")
    parser.add_argument("--json", action="store_true", help='print one JSON object per image: {"file": ..., "caption": ...}')
    parser.add_argument("--plot", metavar="PNG", help="also draw the photos with their captions into this PNG")
    parser.add_argument("--attention", metavar="DIR",
                        help="attention models: draw the attention map behind each character, one PNG per photo "
                             "(the first 16) into DIR")
    parser.add_argument("--batch-size", type=int, default=32, help="photos per VGG16/model call")
    parser.add_argument("--vgg-weights", help="override the run's VGG16 weights (imagenet, a .h5 file, or none)")
    parser.add_argument("--decode", choices=DECODE_METHODS, default="argmax",
                        help="seed models: argmax = the likeliest character per step; collapse = also write "
                             "repeated characters once")
    parser.add_argument("--beam-size", type=int, default=1,
                        help="autoregressive models: beams per image (1 = greedy, the best CIDEr-D on the demo)")
    parser.add_argument("--n-best", type=int, default=1, help="autoregressive models: print this many captions per image")
    args = parser.parse_args(argv)

    paths, problems = expand_inputs(args.images)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        print("error: no images to caption", file=sys.stderr)
        return 1
    try:
        captioner = Captioner(args.model, args.vgg_weights, decode=args.decode, beam_size=max(args.beam_size, args.n_best))
    except (FileNotFoundError, ValueError, WeightsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.attention and (captioner.steps is None or captioner.steps.attention is None):
        print(f"error: --attention needs an attention model; {args.model} is {captioner.config.arch!r}", file=sys.stderr)
        return 2
    if args.attention:
        Path(args.attention).mkdir(parents=True, exist_ok=True)
    results, num_failed, num_maps = [], len(problems), 0
    for path, captions, error in captioner.caption_files(paths, args.batch_size, args.n_best):
        if error is not None:
            num_failed += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        if args.json:
            record = {"file": path, "caption": captions[0].text}
            if args.n_best > 1:
                record["captions"] = [{"caption": c.text, "probability": c.probability} for c in captions]
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif args.n_best > 1:
            print(f"Captions for {path}:", flush=True)
            for rank, caption in enumerate(captions, start=1):
                print(f"  {rank}) {caption.text} (p={caption.probability:.4f})", flush=True)
        else:
            print(f"{path}: {captions[0].text}", flush=True)
        if args.plot and len(results) < 64:
            results.append((path, captions[0].text))
        if args.attention and num_maps < 16:
            out_file = Path(args.attention) / f"{Path(path).stem}.png"
            plot_attention(captioner, path, captions[0].text, out_file)
            print(f"Drew the attention behind each character into {out_file}", file=sys.stderr)
            num_maps += 1
    if args.plot and results:
        plot_captions(results, args.plot)
        print(f"Drew {len(results)} captioned photos into {args.plot}", file=sys.stderr)
    return 1 if num_failed else 0


if __name__ == "__main__":
    sys.exit(main())
