"""Every figure the captioner draws, with a font that has kana (matplotlib-fontja), saved atomically.

    plot_captions   photos with their captions, in a grid (predict.py --plot, evaluate.py's samples.png)
    plot_attention  where an attention model looked for each character (predict.py --attention; app.py
                    draws the same attention_figure on the page)
    plot_samples    the best and worst photos by CIDEr-D (evaluate.py)
    plot_loss       training and validation loss per epoch (train.py's loss.png)
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window: before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib_fontja  # noqa: E402, F401  (registers a font with kana)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fileio import atomic_path  # noqa: E402


def save_figure(figure, path, dpi: int = 100) -> None:
    """Writes ``figure`` to ``path`` atomically (PNG unless the name says otherwise) and closes it."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".png") as temporary:
        figure.savefig(temporary, dpi=dpi)  # the format follows the temporary's suffix
    plt.close(figure)


def figure_png(figure, dpi: int = 80) -> bytes:
    """``figure`` as PNG bytes (for a web page), and closes it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def plot_captions(results, out_file, columns: int = 4) -> None:
    """A grid of the photos with their katakana captions.

    Args:
        results: ``(image path, caption)`` pairs.
        out_file: the PNG to write.
        columns: photos per row.
    """
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
    save_figure(figure, out_file)


def plot_attention(image: np.ndarray, text: str, maps: np.ndarray, title: str, out_file, columns: int = 10) -> None:
    """Writes ``attention_figure`` to the PNG ``out_file``."""
    save_figure(attention_figure(image, text, maps, title, columns), out_file, dpi=80)


def attention_figure(image: np.ndarray, text: str, maps: np.ndarray, title: str, columns: int = 10):
    """Draws where an attention model looked for each character of ``text``, over the letterboxed photo.

    Each grid cell stands for stride × stride pixels of the letterboxed image
    (32 for pool5, 16 for conv5), so the map is drawn over the top-left
    ``rows*stride × cols*stride`` pixels.

    Args:
        image: the letterboxed photo, ``(size, size, 3)`` uint8.
        text: the caption.
        maps: the weights behind each character, ``(len(text), rows, cols)``.
        title: the first panel's title (the file name).
        columns: panels per row.

    Returns:
        The matplotlib figure (the caller saves or shows it, and closes it).
    """
    rows, cols = maps.shape[1:]
    stride = 2 ** int(np.log2(image.shape[0] / rows))  # VGG16 pools by 2: 150 px / 4 cells -> 32, / 9 cells -> 16
    num_panels = len(text) + 1
    columns = min(columns, num_panels)
    num_rows = -(-num_panels // columns)
    figure, axes = plt.subplots(num_rows, columns, figsize=(1.6 * columns, 1.8 * num_rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title(title, fontsize=7)
    for axis, char, weights in zip(axes.flat[1:], text, maps):
        axis.imshow(image)
        axis.imshow(weights, cmap="inferno", alpha=0.6, extent=(0, cols * stride, rows * stride, 0), interpolation="nearest",
                    vmin=0, vmax=1)
        axis.set_title(char, fontsize=14)
    figure.suptitle(text, fontsize=10)
    figure.tight_layout()
    return figure


def plot_samples(paths, captions, references, per_image, out_file, count: int = 4) -> None:
    """The ``count`` best and worst photos by CIDEr-D, with predicted and reference captions."""
    order = np.argsort(per_image)
    chosen = [*order[::-1][:count], *order[:count]] if len(order) > 2 * count else order[::-1]
    panels = []
    for index in chosen:
        label = "best" if per_image[index] >= np.median(per_image) else "worst"
        text = f"[{label}, CIDEr-D {per_image[index]:.2f}]\n予測: {captions[index]}\n正解: {references[index][0]}"
        panels.append((paths[index], text))
    plot_captions(panels, out_file)


def plot_loss(history: list[dict], out_file) -> None:
    """Training and validation loss per epoch, and the validation captions' CIDEr-D where it was measured."""
    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        axis.plot(epochs, [row[key] for row in history], marker="o", markersize=3, label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss per character step")
    axis.set_title("loss")
    lines, labels = axis.get_legend_handles_labels()
    if all("val_cider" in row for row in history):  # runs that keep the best epoch by it
        cider = axis.twinx()
        cider.plot(epochs, [row["val_cider"] for row in history], color="tab:green", marker="s", markersize=3,
                   label="validation CIDEr-D")
        cider.set_ylabel("CIDEr-D")
        more, more_labels = cider.get_legend_handles_labels()
        lines, labels = lines + more, labels + more_labels
    axis.legend(lines, labels)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, out_file)


def _wrap(text: str, width: int) -> str:
    """Breaks every line of ``text`` into lines of at most ``width`` characters."""
    lines = [line[start : start + width] for line in text.split("\n") for start in range(0, max(len(line), 1), width)]
    return "\n".join(lines) if text else "(empty)"
