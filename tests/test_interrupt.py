"""Processes killed with SIGKILL: feature extraction resumes with a valid cache; a run folder loads and resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import train
from conftest import TINY
from model import load_model

PROJECT = Path(__file__).resolve().parent.parent


def test_sigkill_during_training_then_resume(tiny_demo, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    data = ["--annotations", str(tiny_demo / "captions_train.json"), "--images", str(tiny_demo / "train2014"),
            "--out", str(out), "--cache-dir", str(cache), *TINY]
    process = subprocess.Popen([sys.executable, "train.py", *data, "--epochs", "200", "--patience", "200"],
                               cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "state.json").exists():  # wait for the first finished epoch
            assert process.poll() is None and time.time() < deadline, "training ended or stalled before epoch 1"
            time.sleep(0.05)
        # Kill at a moment that is not lined up with the epoch boundaries.
        time.sleep(np.random.default_rng().uniform(0.0, 1.5))
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()

    # Every file is whole: no temporary leftovers are read, and each loads.
    state = json.loads((out / "state.json").read_text())
    load_model(out / "model.keras")
    load_model(out / "checkpoint.keras")
    json.loads((out / "config.json").read_text())
    json.loads((out / "vocab.json").read_text())
    done = state["epoch"]
    assert [row["epoch"] for row in state["history"]] == list(range(1, done + 1))

    assert train.main([*data, "--epochs", str(done + 2), "--resume"]) == 0
    state = json.loads((out / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == list(range(1, done + 3))
    assert not list(out.glob(".*.tmp*"))


EXTRACT = """
import sys
from features import cached_features
paths = sys.argv[2:]
cached_features(paths, "none", 32, sys.argv[1], progress=False, log=lambda message: None)
"""


def test_sigkill_during_feature_extraction_then_resume(tmp_path):
    from PIL import Image

    from features import FeatureCache, cached_features

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(400):
        path = folder / f"COCO_train2014_{index:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    cache_root = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", EXTRACT, str(cache_root), *paths], cwd=PROJECT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        deadline = time.time() + 120
        while True:  # wait until some rows, not all, are complete
            assert process.poll() is None and time.time() < deadline, "extraction ended or stalled before the kill"
            status = next(cache_root.glob("*/status.npy"), None)
            if status is not None:
                try:
                    done = int(np.load(status).sum())
                except (ValueError, OSError):  # the header is being written
                    done = 0
                if done >= 32:
                    break
            time.sleep(0.01)
        time.sleep(np.random.default_rng().uniform(0.0, 0.3))
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()

    cache = FeatureCache.open(cache_root, paths, "none", 32)
    killed_at = int(cache.complete.sum())
    assert 32 <= killed_at < len(paths), "the kill came after the extraction finished"
    resumed, failures = cached_features(paths, "none", 32, cache_root, progress=False, log=lambda message: None)
    assert failures == {} and resumed.complete.all()
    fresh, _ = cached_features(paths, "none", 32, tmp_path / "fresh", progress=False, log=lambda message: None)
    # Every row, including those written just before the kill, holds exactly what a clean run computes.
    # (Batches differ between the runs, so allow float16 rounding; a half-written row would be far off.)
    expected = np.asarray(fresh.features, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(resumed.features, dtype=np.float32), expected,
                               rtol=1e-2, atol=1e-3 * np.abs(expected).max())
