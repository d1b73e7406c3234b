"""Shared fixtures: a tiny demo dataset and a tiny trained run, made once per test session."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import demo  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent

# Small enough to train in seconds on 2 CPU cores: 32 px photos give 1×1×512 pool5 features.
TINY = ["--image-size", "32", "--units", "16", "--batch-size", "16", "--vgg-weights", "none", "--quiet"]
# Epochs of the tiny run. At 4 the model mostly ends every caption at once (the end class pads each target, so it is
# the commonest class); at 30 a learning rate of 0.01 gave non-empty captions for 3 to 6 of the 6 held-out photos
# with every seed tried (0-7).
TINY_EPOCHS = 30


def train_argv(dataset, out, cache, *options):
    """train.py's command line at the tiny size, with ``options`` after.

    ``dataset`` is a demo-layout folder (captions_train.json, train2014/) or
    an ``(annotation file, image folder)`` pair.
    """
    annotations, images = (dataset / "captions_train.json", dataset / "train2014") if hasattr(dataset, "is_dir") \
        else dataset
    return ["--annotations", str(annotations), "--images", str(images), "--out", str(out), "--cache-dir", str(cache),
            *TINY, *map(str, options)]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A 24 + 6 photo demo dataset in the exact STAIR/COCO layout."""
    return demo.generate(tmp_path_factory.mktemp("demo"), seed=3, num_train=24, num_val=6)


@pytest.fixture(scope="session")
def tiny_run(tiny_demo, tmp_path_factory):
    """A run folder trained for TINY_EPOCHS epochs on the tiny demo; returns (out, cache_dir).

    Long enough, at a learning rate of 0.01, to write non-empty captions for some held-out photos, so tests can check them.
    """
    import train

    root = tmp_path_factory.mktemp("run")
    out, cache = root / "out", root / "cache"
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", TINY_EPOCHS, "--learning-rate", 0.01,
                                       "--patience", TINY_EPOCHS)) == 0
    return out, cache
