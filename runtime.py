"""Where and in what arithmetic the work runs: device, precision, LSTM implementation, allocator.

Every choice ``auto`` makes is read from a table of what ``bench.py``
measured faster, kept together here (figures in docs/bench/README.md):

    TRAINING_BFLOAT16_FASTER   (backend, device) pairs where mixed_bfloat16 trains faster than float32
    EXTRACTION_BFLOAT16_FASTER the same for VGG16 feature extraction in bfloat16
    LSTM_FASTEST               (backend, device) -> RepeatedInputLSTM's faster implementation
    LSTM_UNROLL                (backend, device) -> steps its projected scan runs per loop iteration

Pairs never measured get the conservative choice: float32, the stock LSTM,
no unrolling. A "cpu" pair counts only on a CPU that computes in bfloat16
itself (AVX512-BF16 or AMX); other CPUs emulate it, slowly.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path

import keras

TRAINING_PRECISIONS = ("auto", "float32", "mixed_bfloat16")  # train.py --precision: Keras dtype policies, or auto
EXTRACTION_PRECISIONS = ("auto", "float32", "bfloat16")  # train.py --vgg-precision

# On a bfloat16 CPU, TensorFlow trained every architecture 1.6× faster in mixed_bfloat16; on an H100, JAX
# 1.1-1.8×. Keras' torch backend on the H100 trained the default architecture 0.93× as fast, so not there.
TRAINING_BFLOAT16_FASTER = {("tensorflow", "bf16-cpu"), ("jax", "gpu")}
# VGG16 on a bfloat16 CPU with TensorFlow: about 2× faster, pool5 features within 1% of float32's.
EXTRACTION_BFLOAT16_FASTER = {("tensorflow", "bf16-cpu")}
# The projected scan beats the stock LSTM on every CPU backend and with JAX on an H100, where it beat cuDNN;
# Keras' eager torch loop loses to torch's cuDNN LSTM on a GPU.
LSTM_FASTEST = {("tensorflow", "cpu"): "projected", ("jax", "cpu"): "projected", ("torch", "cpu"): "projected",
                ("jax", "gpu"): "projected", ("torch", "gpu"): "stock"}
# On an H100, JAX ran the card's design at 25.3k/27.0k/29.1k/29.0k samples/s (float32) and
# 41.5k/47.5k/50.6k/52.9k (mixed bfloat16) unrolling 1/2/5/10 steps; on CPUs unrolling did not help.
LSTM_UNROLL = {("jax", "gpu"): 10}


@functools.cache
def compute_device() -> str:
    """"gpu" when the Keras backend computes on a GPU, else "cpu"."""
    if keras.backend.backend() == "torch":  # Keras has no device list for torch
        import torch  # only the torch backend has it installed

        return "gpu" if torch.cuda.is_available() else "cpu"
    try:
        devices = keras.distribution.list_devices()  # e.g. ["gpu:0"]; the accelerator first when there is one
    except (NotImplementedError, ValueError, RuntimeError):
        return "cpu"
    return "gpu" if any(device.lower().startswith(("gpu", "cuda")) for device in devices) else "cpu"


def cpu_has_bfloat16() -> bool:
    """Whether the CPU computes in bfloat16 itself (AVX512-BF16 or AMX, as Linux's /proc/cpuinfo says)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _where() -> tuple[str, str]:
    """(backend, device) as the bfloat16 tables key it: the device is "gpu", "bf16-cpu" or "cpu"."""
    device = compute_device()
    if device == "cpu" and cpu_has_bfloat16():
        device = "bf16-cpu"
    return keras.backend.backend(), device


def _check(precision: str, choices: tuple[str, ...], what: str) -> None:
    if precision not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, not {precision!r}")


def training_precision(precision: str) -> str:
    """The Keras dtype policy to train in; ``auto`` is mixed_bfloat16 where it was measured faster, else float32."""
    _check(precision, TRAINING_PRECISIONS, "precision")
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if _where() in TRAINING_BFLOAT16_FASTER else "float32"


def extraction_precision(precision: str) -> str:
    """The arithmetic VGG16 extracts features in; ``auto`` is bfloat16 where it was measured faster, else float32."""
    _check(precision, EXTRACTION_PRECISIONS, "VGG16 precision")
    if precision != "auto":
        return precision
    return "bfloat16" if _where() in EXTRACTION_BFLOAT16_FASTER else "float32"


def lstm_implementation() -> str:
    """RepeatedInputLSTM's ``auto``: the implementation measured faster on this backend and device."""
    return LSTM_FASTEST.get((keras.backend.backend(), compute_device()), "stock")


def lstm_unroll() -> int:
    """Steps the projected LSTM's scan runs per loop iteration here."""
    return LSTM_UNROLL.get((keras.backend.backend(), compute_device()), 1)


def lstm_options(policy=None) -> dict:
    """Options for a stock ``layers.LSTM`` under ``policy`` (default: the global one).

    JAX's cuDNN LSTM takes no bfloat16, so mixed precision skips it there.
    """
    policy = policy or keras.config.dtype_policy()
    if keras.backend.backend() == "jax" and policy.compute_dtype == "bfloat16":
        return {"use_cudnn": False}
    return {}


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers made inside take Keras' dtype policy ``name`` (e.g. "float32", "mixed_bfloat16"); the previous one is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def read_ahead_workers() -> int:
    """Threads that read batches while the model trains: 4 on a GPU, where a step is quicker than reading its batch."""
    return 4 if compute_device() == "gpu" else 1


def keep_freed_memory(pad_bytes: int = 64 << 20) -> bool:
    """Asks glibc's malloc to keep ``pad_bytes`` free at the top of each heap rather than hand it back at once.

    A training step allocates and frees the same large buffers every time (the
    LSTMs' saved states, tens of MB per layer). TensorFlow's generator
    dataset, which ``fit`` reads a PyDataset through, sets glibc's
    ``M_TRIM_THRESHOLD`` to 128 KB (it logs "Memory patch applied"), so the
    heaps holding those buffers shrank after each step and grew again in the
    next, and every fresh page faulted in: on 2 CPU cores the card's design
    trained 1.4× slower through ``fit`` than through ``train_on_batch``. The
    pad keeps 64 MiB whenever the heap is trimmed. Returns whether the setting
    took (False on a C library without ``mallopt``, e.g. macOS).
    """
    M_TOP_PAD = -2  # from glibc's malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TOP_PAD, pad_bytes))
