"""A training process killed with SIGKILL leaves a run folder that loads and resumes."""

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
