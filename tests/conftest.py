"""Shared fixtures: a tiny demo dataset and a tiny trained run, made once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

import demo

# Small enough to train in seconds on 2 CPU cores: 32 px photos give 1×1×512 pool5 features.
TINY = ["--image-size", "32", "--units", "16", "--batch-size", "16", "--vgg-weights", "none", "--quiet"]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A 24 + 6 photo demo dataset in the exact STAIR/COCO layout."""
    return demo.generate(tmp_path_factory.mktemp("demo"), seed=3, num_train=24, num_val=6)


@pytest.fixture(scope="session")
def tiny_run(tiny_demo, tmp_path_factory):
    """A run folder trained for 2 epochs on the tiny demo; returns (out, cache_dir)."""
    import train

    root = tmp_path_factory.mktemp("run")
    out, cache = root / "out", root / "cache"
    argv = ["--annotations", str(tiny_demo / "captions_train.json"), "--images", str(tiny_demo / "train2014"),
            "--out", str(out), "--cache-dir", str(cache), "--epochs", "2", *TINY]
    assert train.main(argv) == 0
    return out, cache
