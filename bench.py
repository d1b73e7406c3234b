"""Speed and memory benchmarks, each measured side by side in one run.

    $ python bench.py                 # the full run (about 33 minutes on 2 CPU cores)
    $ python bench.py --quick         # fewer images and steps: a few minutes
    $ python bench.py --json bench.json
    $ KERAS_BACKEND=jax python bench.py --only training   # another backend, or one section

Sections (absolute numbers hold only for the machine they ran on; the ratios
are the point, as both sides run in the same process; in training the models
take turns over three rounds and each keeps its best, so a busy minute on a
shared machine slows a round rather than one model):

  extraction  VGG16 features of COCO-sized JPEGs on disk: the project's
              extractor (parallel decode in JPEG draft mode, batched VGG16)
              against a naive loop (open, convert, resize, predict one image).
  training    samples/s at the default size (units 768, 50 steps, 128
              classes): the card's design on cached features against the
              original's way (VGG16 frozen inside the graph, raw images in),
              stock LSTMs against the input projection computed once
              (RepeatedInputLSTM), the autoregressive architectures, and a
              hand-written PyTorch nn.LSTM reference when torch is installed.
              Float32, and mixed_bfloat16 too on a GPU or a CPU with bfloat16
              instructions (not with --quick on a CPU). Batch 1024 on a GPU.
  memory      the training process's peak RSS streaming cached features of
              20k and 120k images (synthetic features, one process each).
  latency     predict.py: cold (process start to caption) and warm per image,
              one file and a batch of 64 files.
  decoding    the transformer's steps in beam search and sampling, at the
              hard benchmark's recipe (units 256, 3 blocks, 80 steps, a 4×4
              grid), 64 photos × 3 beams, every step: the whole caption so far
              run again each step (PrefixSteps) against each block's keys and
              values of the characters kept, and of the grid's cells too
              (CachedSteps), with the largest difference in the probabilities
              they give; then the last two on a 6×6 grid (192 px).
  captioning  trained runs side by side (--runs, e.g. image2text against
              attention): warm ms per photo at batch 1 and 64, from cached
              features (the caption model and its decoding) and from JPEG
              files (with VGG16), on the demo's held-out photos. Each run
              takes its turn in every round; each keeps its best round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and the PyTorch reference share a GPU

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import runtime  # noqa: E402
from batches import CaptionBatches, CaptionData, feature_sample  # noqa: E402
from captioner import DEFAULT_RUN, Captioner, save_run  # noqa: E402
from cli import HelpFormatter, bounded_int, existing_dir, file_path, folder_path, positive_int  # noqa: E402
from demo import DEMO_DIR  # noqa: E402
from features import FeatureCache, build_vgg16, extract_features, feature_shape, letterbox, load_image, preprocess  # noqa: E402
from fileio import write_json  # noqa: E402
from kana import NUM_CLASSES, TIMESTEPS, Vocabulary  # noqa: E402
from model import (LIMITS, CachedSteps, CaptionerConfig, PrefixSteps, adapt_feature_norm, build_image2text,  # noqa: E402
                   build_model, compile_model)

PROJECT = Path(__file__).resolve().parent
SECTIONS = ("extraction", "training", "memory", "latency", "decoding", "captioning")


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """COCO-like JPEGs (640×480 and 480×640, quality 90): smooth colour fields with shapes and noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        width, height = (640, 480) if index % 3 else (480, 640)
        gradient = np.linspace(0, 1, width)[None, :, None] * rng.integers(0, 256, 3) + rng.integers(0, 128, 3)
        pixels = np.clip(gradient + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(20, 120))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"COCO_train2014_{index + 1:012d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def timed(function, repeats: int = 1) -> float:
    """The median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------


def bench_extraction(work: Path, num_images: int, image_size: int = CaptionerConfig.image_size) -> dict:
    paths = make_jpegs(work / "jpegs", num_images)
    precision = runtime.extraction_precision("auto")
    vggs = {name: build_vgg16("none", image_size, name) for name in {"float32", precision}}
    for vgg in vggs.values():
        vgg.predict_on_batch(np.zeros((1, image_size, image_size, 3), np.float32))  # build before timing

    def naive():
        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(letterbox(image.convert("RGB"), image_size))
            vggs["float32"].predict_on_batch(preprocess(pixels[None]))

    caches = {}

    def project(name):
        caches[name] = FeatureCache.open(work / f"cache-{name}", [str(p) for p in paths], "none", image_size, name)
        extract_features(caches[name], vggs[name], image_size, progress=False)

    naive_s = timed(naive)
    times = {name: timed(lambda name=name: project(name)) for name in vggs}
    results = {"images": num_images, "precision": precision, "naive_images_per_s": num_images / naive_s,
               "project_float32_images_per_s": num_images / times["float32"],
               "project_images_per_s": num_images / times[precision],
               "extract_speedup_vs_naive": naive_s / times[precision]}
    if precision != "float32":  # how far bfloat16 features are from float32 ones
        exact = np.asarray(caches["float32"].features, dtype=np.float32)
        fast = np.asarray(caches[precision].features, dtype=np.float32)
        results["bfloat16_relative_difference"] = float(np.abs(fast - exact).mean() / np.abs(exact).mean())
    # Draft mode decodes JPEGs at a reduced scale first: how far is the letterboxed result from a full decode?
    differences = []
    for path in paths[:20]:
        with Image.open(path) as image:
            full = np.asarray(letterbox(image.convert("RGB"), image_size), dtype=np.float32)
        differences.append(np.abs(load_image(path, image_size).astype(np.float32) - full).mean())
    results["draft_mean_abs_difference"] = float(np.mean(differences))  # in 0..255 pixel levels
    return results


# ---------------------------------------------------------------------------
# Training throughput
# ---------------------------------------------------------------------------


def same_batch(inputs, targets, length: int):
    """A dataset that yields one batch ``length`` times: the model's speed with no loading counted."""

    class SameBatch(keras.utils.PyDataset):
        def __len__(self):
            return length

        def __getitem__(self, index):
            return inputs, targets

    return SameBatch()


def _timed_fit(model, dataset, steps: int, batch_size: int) -> float:
    """Samples per second of one ``model.fit`` over ``steps`` batches, as train.py trains.

    The clock runs from the call to the end of the last step (its loss read
    back, so asynchronous devices have finished), not to ``fit``'s return:
    with TensorFlow, dropping the input iterator at the end of ``fit`` can
    wait for tf.data's autotuning thread to wake, which sleeps 10 ms, 20 ms,
    40 ms, ... after the iterator starts, so a ``fit`` of 12 steps returned
    at 5.1, 10.2 or 20.5 s whatever its steps took. train.py pays that once
    per run, not per epoch.
    """

    class LastStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(np.asarray((logs or {}).get("loss", 0.0)))  # waits for the step's result
            self.end = time.perf_counter()

    last_step = LastStep()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[last_step])
    return steps * batch_size / (last_step.end - start)


def best_of_rounds(contenders: dict, batch_size: int, rounds: int, warmup: int = 2) -> dict:
    """Each contender's best samples/s over ``rounds`` rounds, the contenders taking turns within each round.

    ``contenders``: name -> (model, dataset, steps). Taking turns and keeping
    each one's best (as ``timeit`` keeps its minimum) stops a busy minute on a
    shared machine from deciding a ratio: it slows one round, not one model.
    """
    for model, dataset, _ in contenders.values():  # compile every step function first
        model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0)
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(rounds):
        for name, (model, dataset, steps) in contenders.items():
            best[name] = max(best[name], _timed_fit(model, dataset, steps, batch_size))
    return best


def bench_training(work: Path, steps: int, batch_size: int, precision: str = "float32", units: int = CaptionerConfig.units,
                   image_size: int = CaptionerConfig.image_size, rounds: int = 3) -> dict:
    """Training throughput of each model at one batch size and dtype policy (float32 or mixed_bfloat16)."""
    rng = np.random.default_rng(0)
    shape = feature_shape(image_size)
    warmup, needed = 2, 2 + rounds * steps + 2  # batches each dataset must hold: fit's steps continue across calls
    # Five captions per photo and a whole number of batches: a short last batch would make JAX and TensorFlow
    # compile the step again for its shape inside the timed steps.
    num_images = max(256 // batch_size, -(-needed // 5)) * batch_size
    path = work / f"features-{num_images}.npy"
    if not path.exists():
        features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(num_images, *shape))
        features[:] = np.abs(rng.standard_normal(features.shape, dtype=np.float32))
        features.flush()
        del features
    features = np.load(path, mmap_mode="r")  # as train.py opens the cache
    rows = np.repeat(np.arange(len(features)), 5)  # five captions per photo, as STAIR
    targets = rng.integers(1, NUM_CLASSES, size=(len(rows), TIMESTEPS)).astype(np.uint8)
    data = CaptionData(rows, targets)
    sample = np.asarray(features[:256], dtype=np.float32)
    results = {"units": units, "batch_size": batch_size, "precision": precision, "rounds": rounds,
               "backend": keras.backend.backend(), "device": runtime.compute_device()}

    workers = runtime.read_ahead_workers()  # as train.py reads

    def cached(config, workers=workers):
        return CaptionBatches(config, features, data, batch_size, shuffle=True, seed=0, workers=workers)

    def compute_only(config):  # one batch over and over: the model's speed without the loading
        inputs, batch_targets = cached(config)[0]
        return same_batch(inputs, batch_targets, needed)

    loader = cached(CaptionerConfig(arch="attention", units=units, image_size=image_size), workers=1)
    start = time.perf_counter()
    for index in range(steps):
        loader[index]
    results["loader_samples_per_s"] = steps * batch_size / (time.perf_counter() - start)  # one thread
    results["loader_workers"] = workers

    with runtime.dtype_policy(precision):
        card_config = CaptionerConfig(arch="image2text", units=units, image_size=image_size)
        cards = {}
        for implementation in ("projected", "stock"):
            cards[implementation] = compile_model(build_image2text(card_config, lstm_implementation=implementation),
                                                  card_config)
            adapt_feature_norm(cards[implementation].get_layer("feature_norm"), sample)
        cards["stock"].set_weights(cards["projected"].get_weights())  # the same weights must give the same numbers
        check = np.asarray(features[:8], dtype=np.float32)
        results["repeat_trick_max_difference"] = float(np.abs(
            cards["stock"].predict(check, verbose=0) - cards["projected"].predict(check, verbose=0)).max())
        chosen = runtime.lstm_implementation()  # what the project trains with (``auto``)
        contenders = {"image2text_projected": (cards["projected"], cached(card_config), steps),
                      "image2text_stock": (cards["stock"], cached(card_config), steps),
                      "image2text_compute": (cards[chosen], compute_only(card_config), steps)}

        # The original's way: VGG16 frozen inside the graph, images in, stock LSTMs, at every step of every epoch.
        vgg = build_vgg16("none", image_size)
        head = build_image2text(card_config, lstm_implementation="stock")
        adapt_feature_norm(head.get_layer("feature_norm"), sample)
        images = keras.Input(shape=(image_size, image_size, 3))
        original = compile_model(keras.Model(images, head(vgg(images))), card_config)
        pixels = rng.normal(0, 60, size=(batch_size, image_size, image_size, 3)).astype(np.float32)  # preprocessed
        original_steps = max(2, steps // 4)
        contenders["original"] = (original, same_batch(pixels, targets[:batch_size].astype(np.int32), needed),
                                  original_steps)

        for arch in ("attention", "showtell"):  # the default architecture, and the plainer autoregressive one
            config = CaptionerConfig(arch=arch, units=units, image_size=image_size)
            model = build_model(config, sample)
            contenders[arch] = (model, cached(config), steps)
            contenders[f"{arch}_compute"] = (model, compute_only(config), steps)

        for name, samples_per_s in best_of_rounds(contenders, batch_size, rounds, warmup).items():
            results[f"{name}_samples_per_s"] = samples_per_s
        del contenders, cards, original, vgg, head
    results["repeat_trick_speedup"] = (results["image2text_projected_samples_per_s"]
                                       / results["image2text_stock_samples_per_s"])
    results["image2text_auto"] = chosen
    results["image2text_auto_is_fastest"] = chosen == max(
        ("projected", "stock"), key=lambda name: results[f"image2text_{name}_samples_per_s"])  # does this run agree?
    results["image2text_samples_per_s"] = results[f"image2text_{chosen}_samples_per_s"]
    for arch in ("attention", "showtell"):
        results[f"{arch}_speedup_vs_original"] = results[f"{arch}_samples_per_s"] / results["original_samples_per_s"]
    results["train_speedup_vs_original"] = results["image2text_samples_per_s"] / results["original_samples_per_s"]
    references = [torch_reference(shape, units, batch_size, steps, precision) for _ in range(rounds)]
    if references[0]:
        results.update(max(references, key=lambda reference: reference["torch_reference_samples_per_s"]))
        results["image2text_vs_torch_reference"] = (results["image2text_samples_per_s"]
                                                    / results["torch_reference_samples_per_s"])
    return results


def torch_reference(shape, units: int, batch_size: int, steps: int, precision: str = "float32") -> dict | None:
    """The card's design hand-written in PyTorch (nn.LSTM, cuDNN on a GPU); None when torch is missing.

    ``mixed_bfloat16`` runs it under bfloat16 autocast, the weights and the optimizer in float32.
    """
    try:
        import torch  # optional: not in requirements.txt
        from torch import nn
    except ImportError:
        return None

    device = "cuda" if torch.cuda.is_available() else "cpu"

    class Image2Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.project = nn.Linear(int(np.prod(shape)), units)
            self.encoder = nn.LSTM(units, units, batch_first=True)
            self.decoder = nn.LSTM(units, units, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * units, NUM_CLASSES)

        def forward(self, x):
            x = torch.relu(self.project(x.flatten(1))).unsqueeze(1).expand(-1, TIMESTEPS, -1)
            _, (h, _) = self.encoder(x)
            x, _ = self.decoder(h[-1].unsqueeze(1).expand(-1, TIMESTEPS, -1).contiguous())
            return self.out(x)  # logits; the loss applies the softmax

    model = Image2Text().to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch_size, *shape, device=device)
    y = torch.randint(1, NUM_CLASSES, (batch_size, TIMESTEPS), device=device)

    def step():
        optimizer.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "mixed_bfloat16"):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, NUM_CLASSES), y.reshape(-1))
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"torch_reference_samples_per_s": steps * batch_size / (time.perf_counter() - start), "torch_device": device}


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def write_features(path: Path, num_images: int, image_size: int = CaptionerConfig.image_size) -> None:
    """A synthetic float16 feature cache of ``num_images`` photos, written in chunks as extraction does."""
    rng = np.random.default_rng(0)
    shape = feature_shape(image_size)
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(num_images, *shape))
    for start in range(0, num_images, 1024):
        stop = min(start + 1024, num_images)
        features[start:stop] = np.abs(rng.standard_normal((stop - start, *shape), dtype=np.float32))
        features.flush()
    del features
    # Evict the file from the page cache, as for a cache written long before training: otherwise the
    # kernel maps neighbouring cached pages on each read, and they count in RSS (reclaimable as they are).
    with open(path, "rb") as file:
        os.fsync(file.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def rss_child(path: str, steps: int) -> None:
    """Run in a child process: train ``steps`` batches streamed from the cache at ``path``; print the peak RSS."""
    features = np.load(path, mmap_mode="r")  # as train.py opens the cache
    num_images = len(features)
    rows = np.repeat(np.arange(num_images), 5)  # five captions per photo, as STAIR
    targets = np.random.default_rng(0).integers(1, NUM_CLASSES, size=(len(rows), TIMESTEPS), dtype=np.uint8)
    config = CaptionerConfig(arch="attention")  # the default architecture, at the default size
    model = build_model(config, feature_sample(features, rows, seed=0))
    model.fit(CaptionBatches(config, features, CaptionData(rows, targets), 64, shuffle=True, seed=0),
              epochs=1, steps_per_epoch=steps, verbose=0)
    print(json.dumps({"images": num_images, "peak_rss_mib": peak_rss_kib() / 1024}))


def peak_rss_kib() -> float:
    """This process's peak resident memory in KiB.

    Linux's VmHWM belongs to the process image, so it starts afresh at exec;
    getrusage's ru_maxrss would carry over the parent's peak from the fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux, bytes on macOS


def bench_memory(work: Path, sizes=(20_000, 120_000), steps: int = 50) -> dict:
    """Peak RSS of a training process (the default architecture) per cache size; the cache is written beforehand."""
    results = {}
    for size in sizes:
        path = work / f"features-{size}.npy"
        write_features(path, size)
        output = subprocess.run([sys.executable, __file__, "--rss-child", str(path), "--child-steps", str(steps)],
                                check=True, capture_output=True, text=True).stdout
        results[f"peak_rss_mib_{size // 1000}k"] = json.loads(output.strip().splitlines()[-1])["peak_rss_mib"]
        path.unlink()
    small, large = (f"peak_rss_mib_{size // 1000}k" for size in sizes)
    results[f"rss_ratio_{sizes[1] // 1000}k_vs_{sizes[0] // 1000}k"] = results[large] / results[small]
    return results


# ---------------------------------------------------------------------------
# predict.py latency
# ---------------------------------------------------------------------------


def make_run(folder: Path, units: int = CaptionerConfig.units) -> Path:
    """A run folder with an untrained default-architecture model (it writes all 49 characters: the worst case)."""
    config = CaptionerConfig(arch="attention", units=units, vgg_weights="none",
                             vgg_precision=runtime.extraction_precision("auto"))
    sample = np.abs(np.random.default_rng(0).normal(size=(16, *config.feature_shape))).astype(np.float32)
    save_run(folder, build_model(config, sample), config, Vocabulary.build(["アイウエオカキクケコサシスセソタチツテトナニヌネノ"]))
    return folder


def bench_latency(work: Path, repeats: int = 3) -> dict:
    run = make_run(work / "run")
    photos = make_jpegs(work / "photos", 64, seed=1)
    command = [sys.executable, str(PROJECT / "predict.py"), str(photos[0]), "--model", str(run)]
    cold = timed(lambda: subprocess.run(command, check=True, capture_output=True), repeats)
    captioner = Captioner(run)
    results = {"cold_single_s": cold}
    for beam_size in (1, 3):
        captioner.beam_size = beam_size
        list(captioner.caption_files(photos[:1]))  # warm up
        results[f"warm_single_beam{beam_size}_ms"] = 1000 * timed(lambda: list(captioner.caption_files(photos[:1])), repeats)
        batch = timed(lambda: list(captioner.caption_files(photos, batch_size=64)), repeats)
        results[f"warm_batch64_beam{beam_size}_ms_per_image"] = 1000 * batch / len(photos)
    return results


# ---------------------------------------------------------------------------
# The transformer's decoding steps: the prefix run again against keys and values kept
# ---------------------------------------------------------------------------


def bench_decoding(photos: int = 64, beams: int = 3, rounds: int = 3, steps: int | None = None) -> dict:
    """Per photo, the time of every step of ``beams`` captions (``steps``: the model's last position), each way.

    At 150 px (a 4 × 4 grid): the caption so far run again (``PrefixSteps``), the characters' keys and values
    kept (``CachedSteps(keep_grid=False)``), and the grid's kept too (``CachedSteps``); at 192 px (6 × 6, as a
    judge reads photos), the last two.
    """
    result = {"photos": photos, "beams": beams, "steps": steps or TIMESTEPS_BENCHED}
    for image_size, with_prefix in ((150, True), (192, False)):
        config = CaptionerConfig(arch="transformer", units=256, blocks=3, timesteps=TIMESTEPS_BENCHED,
                                 image_size=image_size, precision="float32")
        rng = np.random.default_rng(0)
        features = rng.normal(size=(photos, *config.feature_shape)).astype(np.float32)
        model = build_model(config, feature_sample=features)
        tokens = rng.integers(1, config.num_classes, size=(config.timesteps, photos * beams))
        contenders = {**({"prefix": PrefixSteps(model, config)} if with_prefix else {}),
                      "cached": CachedSteps(model, config, keep_grid=False), "grid": CachedSteps(model, config)}

        def run(decoder) -> np.ndarray:
            states = [np.repeat(state, beams, axis=0) for state in decoder.start(features)]
            written = []
            for step in range(result["steps"]):
                probabilities, states = decoder.next(tokens[step], states)
                written.append(probabilities)
            return np.stack(written)

        outputs = {name: run(decoder) for name, decoder in contenders.items()}  # warm up: traced and compiled once
        best = {name: np.inf for name in contenders}
        for _ in range(rounds):
            for name, decoder in contenders.items():
                best[name] = min(best[name], timed(lambda: run(decoder)))
        tag = "" if image_size == 150 else f"_{image_size}"
        result.update({f"{name}{tag}_ms_per_photo": 1000 * seconds / photos for name, seconds in best.items()})
        result[f"grid_speedup{tag}"] = best["cached"] / best["grid"]
        result[f"grid_max_difference{tag}"] = float(np.abs(outputs["cached"] - outputs["grid"]).max())
        if with_prefix:
            result["cached_speedup"] = best["prefix"] / best["cached"]
            result["grid_speedup_vs_prefix"] = best["prefix"] / best["grid"]
            result["cached_max_difference"] = float(np.abs(outputs["prefix"] - outputs["grid"]).max())
    return result


TIMESTEPS_BENCHED = 80  # the hard benchmark's recipe


# ---------------------------------------------------------------------------
# Trained runs' captioning speed, side by side
# ---------------------------------------------------------------------------


def bench_captioning(runs, photos: list[Path], rounds: int = 3) -> dict:
    """Warm captioning time per photo of each run, at batch 1 and 64, from features and from files."""
    photos = photos[:64]
    captioners = {str(run): Captioner(run) for run in runs}
    features = {}
    for name, captioner in captioners.items():
        images = np.stack([load_image(path, captioner.config.image_size) for path in photos])
        features[name] = captioner.image_features(images)
        captioner.caption_features(features[name])  # warm up: the first calls trace and compile
        list(captioner.caption_files(photos[:2]))
    timings = {name: {} for name in captioners}
    for _ in range(rounds):
        for name, captioner in captioners.items():
            measured = {
                "model_single_ms": 1000 * timed(lambda: captioner.caption_features(features[name][:1]), 3),
                "model_batch64_ms_per_image": 1000 * timed(lambda: captioner.caption_features(features[name]))
                / len(photos),
                "photo_single_ms": 1000 * timed(lambda: list(captioner.caption_files(photos[:1])), 3),
                "photo_batch64_ms_per_image": 1000 * timed(lambda: list(captioner.caption_files(photos, batch_size=64)))
                / len(photos),
            }
            for key, value in measured.items():
                timings[name][key] = min(value, timings[name].get(key, np.inf))
    return {"runs": {name: {"arch": captioner.config.arch, "decoding": captioner.decode, **timings[name]}
                     for name, captioner in captioners.items()}, "photos": len(photos)}


def captioning_rows(result: dict) -> list[tuple[str, str, str]]:
    runs = result["runs"]
    first = next(iter(runs))
    rows = []
    for key, label, unit in (("model_single_ms", "from features, 1 photo", "ms"),
                             ("model_batch64_ms_per_image", f"from features, {result['photos']} photos", "ms/photo"),
                             ("photo_single_ms", "from a JPEG, 1 photo", "ms"),
                             ("photo_batch64_ms_per_image", f"from JPEGs, {result['photos']} photos", "ms/photo")):
        for name, run in runs.items():
            ratio = runs[first][key] / run[key]
            note = "" if name == first else f"{ratio:.2f}× as fast as {Path(first).name}"
            rows.append((f"caption {label}: {Path(name).name} ({run['arch']}, {run['decoding']})",
                         f"{run[key]:.1f} {unit}", note))
    return rows


def format_report(results: dict) -> str:
    rows = []
    if "extraction" in results:
        r = results["extraction"]
        rows += [("extraction: naive loop", f"{r['naive_images_per_s']:.1f} img/s", "float32, one photo at a time"),
                 ("extraction: project, float32", f"{r['project_float32_images_per_s']:.1f} img/s",
                  f"{r['project_float32_images_per_s'] / r['naive_images_per_s']:.2f}× naive")]
        if r["precision"] != "float32":
            rows += [(f"extraction: project, {r['precision']} (auto)", f"{r['project_images_per_s']:.1f} img/s",
                      f"{r['extract_speedup_vs_naive']:.2f}× naive"),
                     ("  bfloat16 vs float32 features", f"{100 * r['bfloat16_relative_difference']:.2f}%",
                      "mean |Δ| / mean |feature|")]
        rows += [("  draft-mode difference", f"{r['draft_mean_abs_difference']:.2f} levels", "mean |Δ| of 0..255")]
    for key in (key for key in results if key.startswith("training")):
        r = results[key]
        tag = f"{r['precision']}, batch {r['batch_size']}"
        rows += [(f"train: original (VGG16 in graph), {tag}", f"{r['original_samples_per_s']:.1f} samples/s", ""),
                 ("  loading cached batches", f"{r['loader_samples_per_s']:.1f} samples/s",
                  f"one thread; training reads with {r['loader_workers']}"),
                 ("train: image2text, stock LSTMs", f"{r['image2text_stock_samples_per_s']:.1f} samples/s",
                  f"{r['image2text_stock_samples_per_s'] / r['original_samples_per_s']:.2f}× original"),
                 ("train: image2text, projection once", f"{r['image2text_projected_samples_per_s']:.1f} samples/s",
                  f"{r['image2text_projected_samples_per_s'] / r['original_samples_per_s']:.2f}× original, "
                  f"{r['repeat_trick_speedup']:.2f}× stock"),
                 ("  same numbers as stock", f"max |Δ| {r['repeat_trick_max_difference']:.1e}", r["precision"]),
                 ("  the project uses (auto)", r["image2text_auto"],
                  "the faster here" if r["image2text_auto_is_fastest"] else
                  "NOT the faster here: see LSTM_FASTEST in runtime.py"),
                 ("train: attention (default)", f"{r['attention_samples_per_s']:.1f} samples/s",
                  f"{r['attention_speedup_vs_original']:.2f}× original"),
                 ("train: showtell", f"{r['showtell_samples_per_s']:.1f} samples/s",
                  f"{r['showtell_speedup_vs_original']:.2f}× original")]
        rows += [(f"  {name}, compute only", f"{r[f'{name}_compute_samples_per_s']:.1f} samples/s", "one batch repeated")
                 for name in ("image2text", "attention", "showtell")]
        if "torch_reference_samples_per_s" in r:
            rows.append((f"train: PyTorch reference ({r['torch_device']})",
                         f"{r['torch_reference_samples_per_s']:.1f} samples/s",
                         f"image2text ({r['image2text_auto']}) is {r['image2text_vs_torch_reference']:.2f}× it"))
    if "memory" in results:
        r = results["memory"]
        rows += [("peak RSS, 20k photos", f"{r['peak_rss_mib_20k']:.0f} MiB", ""),
                 ("peak RSS, 120k photos", f"{r['peak_rss_mib_120k']:.0f} MiB", f"{r['rss_ratio_120k_vs_20k']:.2f}× 20k")]
    if "latency" in results:
        r = results["latency"]
        rows += [("predict: cold, 1 photo", f"{r['cold_single_s']:.1f} s", "process start to caption"),
                 ("predict: warm, 1 photo", f"{r['warm_single_beam1_ms']:.0f} ms", f"beam 3: {r['warm_single_beam3_ms']:.0f} ms"),
                 ("predict: warm, 64 photos", f"{r['warm_batch64_beam1_ms_per_image']:.1f} ms/photo",
                  f"beam 3: {r['warm_batch64_beam3_ms_per_image']:.1f} ms/photo")]
    if "decoding" in results:
        r = results["decoding"]
        tag = f"{r['steps']} steps of {r['beams']} beams"
        rows += [("decode: transformer, prefix run again", f"{r['prefix_ms_per_photo']:.1f} ms/photo", tag),
                 ("decode: transformer, keys and values kept", f"{r['cached_ms_per_photo']:.1f} ms/photo",
                  f"{r['cached_speedup']:.2f}× as fast"),
                 ("decode: transformer, the grid's kept too", f"{r['grid_ms_per_photo']:.1f} ms/photo",
                  f"{r['grid_speedup']:.2f}× as fast again, {r['grid_speedup_vs_prefix']:.2f}× prefix"),
                 ("  same probabilities", f"max |Δ| {max(r['cached_max_difference'], r['grid_max_difference']):.1e}",
                  "float32"),
                 ("decode at 192 px (6×6 grid), keys kept", f"{r['cached_192_ms_per_photo']:.1f} ms/photo", ""),
                 ("decode at 192 px, the grid's kept too", f"{r['grid_192_ms_per_photo']:.1f} ms/photo",
                  f"{r['grid_speedup_192']:.2f}× as fast")]
    if "captioning" in results:
        rows += captioning_rows(results["captioning"])
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>20}  {note}" for name, value, note in rows)


def machine() -> dict:
    device = platform.processor() or platform.machine()
    if runtime.compute_device() == "gpu":
        try:
            import torch  # optional: the GPU's name, whichever backend computes on it

            device = torch.cuda.get_device_name()
        except ImportError:
            device = "GPU"
    return {"backend": keras.backend.backend(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "keras": keras.__version__, "platform": platform.platform(), "device": device}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images and steps: a few minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", metavar="FILE", type=file_path, help="also write the figures to this JSON file")
    parser.add_argument("--work", type=folder_path, help="scratch folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536),
                        help="training batch size [default: 64 on a CPU, as train.py; 1024 on a GPU]")
    parser.add_argument("--units", type=bounded_int(*LIMITS["units"]), default=CaptionerConfig.units, help="LSTM width in the training section (the default size)")
    parser.add_argument("--steps", type=positive_int, help="training steps timed per model [default: 12; --quick: 6; GPU: 40]")
    parser.add_argument("--rounds", type=positive_int,
                        help="timed fits per model, taking turns; each model's best counts [default: 3; --quick: 1]")
    parser.add_argument("--precisions", nargs="+", choices=["float32", "mixed_bfloat16"],
                        help="Keras dtype policies to train under [default: float32; mixed_bfloat16 too on a GPU, and on "
                             "a CPU where train.py's --precision auto picks it, except with --quick]")
    parser.add_argument("--runs", nargs="+", metavar="RUN", type=existing_dir,
                        help="captioning section: trained run folders to time side by side (the first is the "
                             "reference) [default: runs/demo and the runs/demo-* beside it]")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runtime.keep_freed_memory()  # as train.py trains
    if args.rss_child:
        rss_child(args.rss_child, args.child_steps)
        return 0

    gpu = runtime.compute_device() == "gpu"
    runs = args.runs or [str(path) for path in [PROJECT / DEFAULT_RUN, *sorted(PROJECT.glob(f"{DEFAULT_RUN}-*"))]
                         if (path / "model.keras").is_file()]
    sections = args.only or [section for section in SECTIONS if section != "captioning" or runs]
    scale = dict(images=150, steps=6, rounds=1, rss_steps=20, repeats=1) if args.quick else \
        dict(images=600, steps=40 if gpu else 12, rounds=3, rss_steps=60, repeats=3)
    batch_size = args.batch_size or (1024 if gpu else 64)
    # float32; mixed_bfloat16 too on a GPU, and on a CPU where train.py's --precision auto trains in it (not --quick).
    both = gpu or (runtime.training_precision("auto") != "float32" and not args.quick)
    precisions = args.precisions or (["float32", "mixed_bfloat16"] if both else ["float32"])
    results = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        work = Path(work)
        if "extraction" in sections:
            print(f"extraction: {scale['images']} JPEGs...", file=sys.stderr, flush=True)
            results["extraction"] = bench_extraction(work / "extraction", scale["images"])
        if "training" in sections:
            (work / "training").mkdir()
            for precision in precisions:
                steps = args.steps or scale["steps"]
                print(f"training: {steps} steps of {batch_size} per model and round, {precision}...", file=sys.stderr, flush=True)
                key = "training" if precision == precisions[0] else f"training_{precision}"
                results[key] = bench_training(work / "training", steps, batch_size, precision, args.units,
                                              rounds=args.rounds or scale["rounds"])
        if "memory" in sections:
            print("memory: 20k and 120k photos...", file=sys.stderr, flush=True)
            results["memory"] = bench_memory(work, steps=scale["rss_steps"])
        if "latency" in sections:
            print("latency: predict.py...", file=sys.stderr, flush=True)
            results["latency"] = bench_latency(work / "latency", scale["repeats"])
        if "decoding" in sections:
            print("decoding: the transformer's steps, each way...", file=sys.stderr, flush=True)
            results["decoding"] = bench_decoding(rounds=scale["rounds"], steps=20 if args.quick else None)
        if "captioning" in sections:
            if not runs:
                raise SystemExit("error: the captioning section needs trained runs: --runs RUN ... (python train.py)")
            photos = sorted((DEMO_DIR / "val2014").glob("*.jpg")) or make_jpegs(work / "captioning", 64, seed=2)
            print(f"captioning: {', '.join(runs)}...", file=sys.stderr, flush=True)
            results["captioning"] = bench_captioning(runs, photos, rounds=args.rounds or scale["rounds"])
    about = results["machine"]
    print(f"{about['device']}, {about['cpus']} CPUs, Keras {about['keras']} on {about['backend']}")
    print(format_report(results))
    if args.json:
        flat = {key: value for section in results.values() if isinstance(section, dict) for key, value in section.items()}
        write_json(args.json, {**results, **{k: flat[k] for k in ("train_speedup_vs_original",
                   "extract_speedup_vs_naive", "rss_ratio_120k_vs_20k") if k in flat}})
        print(f"Wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
