"""The steps of a training run, in the order train.py takes them.

    check_out        check --out against --resume/--overwrite, writing nothing; the saved state when resuming
    resolve_config   one CaptionerConfig for fresh and resumed runs
    prepare_data     captions -> katakana; photos -> cached VGG16 features; split, vocabulary, encoding
    claim_out        only now is --out touched: its lock taken, a replaced run moved aside (until the new
                     run saves its first model; put back if it fails before then)
    build_or_resume  a new compiled model (its config and vocabulary written), or the checkpoint
    fit              Keras fit on the cached features, saving the run after every epoch and keeping the best
                     epoch by validation loss or by the CIDEr-D of the validation photos' captions; with
                     --own-chars, fed some of its own characters (scheduled sampling, OwnChars)
    self_critical    (--self-critical) fine-tuning on the model's own captions' CIDEr-D (selfcritical.py),
                     keeping an epoch only where its validation captions beat the kept model's
    evaluate_validation  caption metrics of the best model on the validation photos
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import shutil
from pathlib import Path

import keras
import numpy as np

import attributes
import runtime
import selfcritical
from batches import (MAX_REFERENCES, CaptionBatches, CaptionData, encode_captions, feature_sample, split_by_image,
                     with_all_references)
from captioner import (CHECKPOINT_FILE, CONFIG_FILE, HISTORY_FILE, LOSS_PLOT_FILE, METRICS_FILE, MODEL_FILE,
                       STATE_FILE, VOCAB_FILE, Captioner)
from dataset import ImageRecord, load_caption_files
from features import FeatureCache, cached_features
from fileio import lock_folder, read_json, remove_stale_temporaries, write_json, write_text
from kana import LEFT, RIGHT, Vocabulary, convert_captions, mirror_reading
from lm import LM_FILE, CharNgram
from metrics import caption_metrics, format_table, score
from model import (CaptionerConfig, architecture, build_model, ctc_fits, load_model, previous_chars, save_model,
                   step_models)
from plots import plot_loss
from recolour import applicable, recoloured_reading

# Files a fresh run replaces; anything else in --out is left alone.
SELF_CRITICAL_FILE = "self-critical.keras"  # the self-critical stage's last epoch, with its optimizer (--resume)
RUN_OUTPUTS = (STATE_FILE, CHECKPOINT_FILE, MODEL_FILE, HISTORY_FILE, LOSS_PLOT_FILE, METRICS_FILE, CONFIG_FILE,
               VOCAB_FILE, SELF_CRITICAL_FILE)
PREVIOUS_RUN = "previous-run"  # where --overwrite keeps the run it replaces until the new one has a model
# What model.keras keeps, and early stopping watches: the lowest validation loss, or the highest CIDEr-D of the
# validation photos' captions, decoded as predict.py decodes them.
SELECT_BY = ("loss", "cider")
VAL_CAPTION_PHOTOS = 1000  # cider: the validation photos captioned after each epoch (the first of the split)


def log(message: str = "") -> None:
    print(message, flush=True)


def check_out(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """Checks ``out`` against --resume/--overwrite, changing nothing; returns the saved state when resuming, else None.

    Raises:
        FileNotFoundError: --resume, and ``out`` holds no checkpoint.
        FileExistsError: ``out`` is a file, or holds a run or a model and neither --resume nor --overwrite was given.
        ValueError: the saved state is not a run state.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder.")
    holds = [name for name in (STATE_FILE, CHECKPOINT_FILE, MODEL_FILE) if (out / name).exists()]
    if (out / PREVIOUS_RUN / MODEL_FILE).exists() and MODEL_FILE not in holds:
        holds.append(f"{PREVIOUS_RUN}/{MODEL_FILE}")
    if resume:
        if not (out / STATE_FILE).is_file() or not (out / CHECKPOINT_FILE).is_file():
            raise FileNotFoundError(f"--resume: {out} holds no checkpoint to resume from (no {STATE_FILE} "
                                    f"and {CHECKPOINT_FILE}).")
        state = read_json(out / STATE_FILE, "Run state")
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or not isinstance(
                state.get("history"), list) or not isinstance(state.get("best_val_loss"), (int, float)):
            raise ValueError(f"{out / STATE_FILE} is not a run state; start over with --overwrite.")
        # A state without select_by is from a version that kept the lowest validation loss.
        state = {**new_state("loss"), "best_score": -state["best_val_loss"], **state}
        if state["select_by"] not in SELECT_BY or not isinstance(state["best_score"], (int, float)):
            raise ValueError(f"{out / STATE_FILE} is not a run state; start over with --overwrite.")
        stage = state.get("self_critical")
        if stage is not None and not (isinstance(stage, dict) and isinstance(stage.get("epoch"), int)
                                      and isinstance(stage.get("history"), list)
                                      and isinstance(stage.get("best_epoch", 0), int)
                                      and isinstance(stage.get("best_cider", 0.0), (int, float))
                                      and stage.get("baseline", "greedy") in selfcritical.BASELINES
                                      and stage.get("reward", "cider") in selfcritical.REWARDS
                                      and _is_length_weighting(stage.get("length_weighting", 0.0))):
            raise ValueError(f"{out / STATE_FILE} holds no self-critical stage this version reads (its epoch, history, "
                             f"baseline {'/'.join(selfcritical.BASELINES)}, reward {'/'.join(selfcritical.REWARDS)}, "
                             f"length weighting 0 to {selfcritical.MAX_LENGTH_WEIGHTING:g}); "
                             f"start over with --overwrite.")
        return state
    if holds and not overwrite:
        raise FileExistsError(
            f"{out} already holds a model or a training run ({', '.join(holds)}). Pass --resume to continue it, "
            f"--overwrite to replace it (it is kept in {out / PREVIOUS_RUN} until the new run has a model), "
            f"or choose another --out."
        )
    return None


def claim_out(out: Path, resume: bool, overwrite: bool, lock=None):
    """Takes --out for this process, once every input has been checked; returns ``(lock, saved_state)``.

    Creates ``out``, takes its lock (a second writer fails here, naming this
    process), removes temporaries whose writer is gone, puts back a run that
    an interrupted --overwrite had moved aside, checks ``out`` again (another
    process may have written it meanwhile) and, for --overwrite, moves the
    old run's files into ``out/previous-run/``. ``lock``: the lock, if this process already holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock = lock or lock_folder(out)
    try:
        for path in remove_stale_temporaries(out):
            log(f"Removed {path.name}, left by an interrupted run.")
        previous = out / PREVIOUS_RUN
        if previous.is_dir() and not (out / MODEL_FILE).exists():
            restore_previous(out)
        saved_state = check_out(out, resume, overwrite)
        if saved_state is None and any((out / name).exists() for name in RUN_OUTPUTS):
            shutil.rmtree(previous, ignore_errors=True)  # an older replaced run: the one in out is newer and whole
            previous.mkdir()
            for name in RUN_OUTPUTS:
                if (out / name).exists():
                    (out / name).rename(previous / name)
            log(f"Moved the run in {out} to {previous}; it is deleted once this run saves its first model, and put "
                f"back if this run fails before then.")
    except BaseException:
        lock.close()
        raise
    return lock, saved_state


def restore_previous(out: Path) -> None:
    """Puts back the run that --overwrite moved aside, if the new run has not saved a model."""
    previous = out / PREVIOUS_RUN
    if not previous.is_dir() or (out / MODEL_FILE).exists():
        return
    for name in RUN_OUTPUTS:
        (out / name).unlink(missing_ok=True)
        if (previous / name).exists():
            (previous / name).rename(out / name)
    shutil.rmtree(previous, ignore_errors=True)
    log(f"Put back the previous run in {out}: the new run ended before it saved a model.")


def discard_previous(out: Path) -> None:
    """Deletes the run --overwrite moved aside, now that the new run has saved a model."""
    previous = out / PREVIOUS_RUN
    if previous.is_dir():
        shutil.rmtree(previous)
        log(f"\nDeleted the replaced run ({previous}): this run has saved its first model.")


def resolve_config(requested: CaptionerConfig, resumed_from: Path | None) -> CaptionerConfig:
    """The run's config: ``requested`` with ``auto`` precisions resolved, or a resumed run's own.

    A resumed run keeps every setting it started with; where ``requested``
    asks for other features or another precision, the log says so.
    """
    if resumed_from is None:
        return dataclasses.replace(requested, vgg_precision=runtime.extraction_precision(requested.vgg_precision),
                                   precision=runtime.training_precision(requested.precision))
    config = CaptionerConfig.load(resumed_from / CONFIG_FILE)
    if (config.image_size, config.vgg_weights, config.feature_layer) != (
            requested.image_size, requested.vgg_weights, requested.feature_layer):
        log(f"Resuming with the run's own image size ({config.image_size}), VGG16 weights ({config.vgg_weights}) "
            f"and feature layer ({config.feature_layer}).")
    if requested.precision not in ("auto", config.precision):
        log(f"Resuming in the run's own precision ({config.precision}).")
    for name in ("timesteps", "loss", "references", "weight_average", "schedule", "flip", "recolour", "recolourings",
                 "char_dropout", "char_dropout_span", "own_chars", "length_weighting", "weighted_length",
                 "initial_state", "dropout", "grid_positions", "attributes", "prior_weight"):
        if getattr(requested, name) != getattr(config, name):
            log(f"Resuming with the run's own {name.replace('_', ' ')} ({getattr(config, name)}).")
    return config


@dataclasses.dataclass
class TrainingData:
    """Everything fit and evaluation read, with photos indexed by their feature-cache row."""

    records: list[ImageRecord]  # every photo the annotations name and the image folders hold
    references: list[list[str]]  # per photo, its human captions in katakana
    cache: FeatureCache  # per photo, its VGG16 features
    vocabulary: Vocabulary
    val_images: np.ndarray  # cache rows of the validation photos
    train: CaptionData
    val: CaptionData
    language_model: CharNgram | None = None  # ctc-lm and autoregressive runs: of the training photos' human captions
    mirrored_cache: FeatureCache | None = None  # --flip: per photo, the features of it mirrored left to right
    # --recolour: per recolouring, the training photos it fits recoloured, and their captions (rows of that cache)
    recoloured: list[tuple[FeatureCache, CaptionData]] = dataclasses.field(default_factory=list)


def prepare_data(config: CaptionerConfig, annotations, images, cache_dir, val_fraction: float, seed: int,
                 vocabulary_file: Path | None = None, distill_from: str | None = None,
                 progress: bool = True, language_model_file: Path | None = None) -> TrainingData:
    """Captions -> katakana; photos -> cached features (once per photo); split by photo; vocabulary; encoding.

    Args:
        config: the run's config (its image size, VGG16 weights and precision pick the features).
        annotations, images: caption files and the folders holding their photos.
        cache_dir: where features are cached.
        val_fraction: share of the photos held out for validation.
        seed: the split's seed.
        vocabulary_file: a resumed run's vocabulary; None builds one from the training captions.
        distill_from: a trained run whose captions replace the human ones as targets.
        progress: show progress bars.
        language_model_file: a resumed run's lm.json, read (and checked) instead of fitted again when it is there.
    """
    records, report = load_caption_files(annotations, images)
    log(f"Read {report.num_annotations} annotations: {sum(len(r.captions) for r in records)} captions "
        f"of {len(records)} photos.")
    for line in report.lines():
        log(f"  {line}")
    if not records:
        raise ValueError(f"No usable photos: none of the {report.num_annotations} annotations names a photo in "
                         f"{', '.join(map(str, images))} with a caption. Check that --images is the folder holding "
                         f"the files the annotations name (e.g. train2014/).")
    readings, num_dropped, num_empty = convert_captions([r.captions for r in records], progress=progress)
    log(f"Katakana: {num_dropped} characters without a reading were dropped; "
        f"{num_empty} captions had no reading at all and were skipped.")

    cache, _ = cached_features([record.path for record in records], config.vgg_weights, config.image_size,
                               cache_dir, progress=progress, log=log, precision=config.vgg_precision,
                               layer=config.feature_layer)
    mirrored_cache = None
    if config.flip:
        mirrored_cache, _ = cached_features([record.path for record in records], config.vgg_weights,
                                            config.image_size, cache_dir, progress=progress, log=log,
                                            precision=config.vgg_precision, layer=config.feature_layer, variant="mirrored")
    complete = cache.complete if mirrored_cache is None else cache.complete & mirrored_cache.complete
    usable = np.flatnonzero(complete & np.array([bool(r) for r in readings]))
    if len(usable) < 2:
        raise ValueError(f"No usable photos: {len(usable)} of {len(records)} photos could be read and have a caption "
                         f"with a katakana reading; training needs at least 2 (one to train on, one to validate).")
    train_images, val_images = split_by_image(len(usable), val_fraction, seed)
    train_images, val_images = usable[train_images], usable[val_images]

    references = readings  # the human captions: validation metrics are always against these
    if distill_from:
        readings = distilled_readings(distill_from, config, cache.features, readings,
                                      np.concatenate([train_images, val_images]))
    if vocabulary_file is not None:
        vocabulary = Vocabulary.load(vocabulary_file, config.vocabulary, config.num_classes)
    else:
        vocabulary = Vocabulary.build((k for image in train_images for k in readings[image]), config.num_classes)
    train, train_report = encode_captions(readings, train_images, vocabulary, config.timesteps)
    val, val_report = encode_captions(readings, val_images, vocabulary, config.timesteps)
    if config.flip:
        mirrored_readings = [[mirror_reading(caption) for caption in captions] for captions in readings]
        train.mirrored_targets = encode_captions(mirrored_readings, train_images, vocabulary, config.timesteps)[0].targets
        log(f"Flip: each training caption, at random, of its photo mirrored left to right "
            f"({sum(LEFT in c or RIGHT in c for i in train_images for c in readings[i])} of them name left or right).")
    recoloured = []
    if config.recolour:
        recoloured = recoloured_data(config, records, train_images, vocabulary, cache_dir, progress)
    if config.loss == "ctc":
        (train.targets, cut_train), (val.targets, cut_val) = (ctc_fits(data.targets, config.timesteps)
                                                              for data in (train, val))
        if train.mirrored_targets is not None:
            train.mirrored_targets = ctc_fits(train.mirrored_targets, config.timesteps)[0]
        for _, more in recoloured:
            more.targets = ctc_fits(more.targets, config.timesteps)[0]
        if cut_train + cut_val:
            log(f"CTC: {cut_train + cut_val} captions were cut to fit {config.timesteps} steps "
                f"(a repeated character takes a blank step between).")
    if config.references == "likeliest":
        (train, dropped_train), (val, dropped_val) = with_all_references(train), with_all_references(val)
        log(f"Likeliest-reference training: each photo's {train.targets.shape[1]} captions are its targets"
            + (f" ({dropped_train + dropped_val} captions past the first {MAX_REFERENCES} of a photo are not)."
               if dropped_train + dropped_val else "."))
    language_model = None
    # CTC runs read it beside the model; autoregressive runs may take it out of theirs (decoding.PriorSubtracted).
    if config.decoding == "ctc-lm" or architecture(config).autoregressive:
        language_model = _language_model(language_model_file, vocabulary, train_images, references)
    log(f"Vocabulary: {vocabulary.num_classes} classes (end class + {len(vocabulary.characters)} characters).")
    log(f"Training on {len(train.rows)} captions of {len(train_images)} photos; validating on "
        f"{len(val.rows)} captions of {len(val_images)} photos.")
    log(f"Captions longer than {config.timesteps - 1} characters were truncated: "
        f"{train_report.num_truncated + val_report.num_truncated}; characters outside the vocabulary left out: "
        f"{train_report.num_unknown + val_report.num_unknown}.")
    return TrainingData(records, references, cache, vocabulary, val_images, train, val, language_model, mirrored_cache,
                        recoloured)


def recoloured_data(config: CaptionerConfig, records: list[ImageRecord], train_images: np.ndarray, vocabulary,
                    cache_dir, progress: bool = True) -> list[tuple[FeatureCache, CaptionData]]:
    """train.py --recolour: per config.recolourings, the training photos whose captions it fits (recolour.applicable),
    their recoloured features (cached once) and their captions with the colour words swapped."""
    fits = {image: applicable(records[image].captions) for image in train_images}
    parts, counts = [], []
    for name in config.recolourings:
        photos = [image for image in train_images if name in fits[image]]
        counts.append(f"{len(photos)} {name}")
        if not photos:
            continue
        cache, _ = cached_features([records[image].path for image in photos], config.vgg_weights, config.image_size,
                                   cache_dir, progress=progress, log=log, precision=config.vgg_precision,
                                   layer=config.feature_layer, variant=name)
        readings = [[reading for caption in records[image].captions
                     if (reading := recoloured_reading(caption, name)[0])] for image in photos]
        parts.append((cache, encode_captions(readings, np.flatnonzero(cache.complete), vocabulary,
                                             config.timesteps)[0]))
    log(f"Recolour: of {len(train_images)} training photos, also trained on recoloured copies of "
        f"{' and '.join(counts)} ({sum(len(data.rows) for _, data in parts)} captions).")
    return parts


def _language_model(saved: Path | None, vocabulary, train_images, references) -> CharNgram:
    """The run's character language model: a resumed run's ``saved`` lm.json (read and checked, fitted when the
    run started on the same photos), else fitted on the training photos' captions."""
    if saved is not None and Path(saved).is_file():
        try:
            language_model = CharNgram.load(saved)
        except ValueError as error:
            raise ValueError(f"{error} Delete it and resume: train.py fits it again.") from None
        log(f"Language model: the run's own {saved}.")
        return language_model
    language_model = CharNgram.fit(
        "".join(char for char in caption if char in vocabulary.char_to_index)
        for image in train_images for caption in references[image])
    log(f"Language model: {language_model.order}-grams of the training captions' characters, "
        f"{sum(map(len, language_model.counts.values())):,} stored.")
    return language_model


def distilled_readings(teacher_dir, config: CaptionerConfig, features, readings, images) -> list[list[str]]:
    """Sequence-level knowledge distillation: each photo's one target is the teacher's best caption.

    A non-autoregressive decoder cannot pick one of several wordings per
    image; a teacher's single consistent caption removes that ambiguity.
    """
    teacher = Captioner(teacher_dir, with_vgg=False)
    if (teacher.config.vgg_weights, teacher.config.image_size, teacher.config.vgg_precision) != (
            config.vgg_weights, config.image_size, config.vgg_precision):
        raise ValueError(
            f"--distill-from {teacher_dir} was trained on other features (VGG16 weights "
            f"{teacher.config.vgg_weights}, {teacher.config.image_size} px); pass the same --vgg-weights and --image-size."
        )
    log(f"Captioning {len(images)} photos with the teacher {teacher_dir} (greedy) as training targets.")
    distilled = [[] for _ in readings]
    for image, (text, _) in zip(images, teacher.caption_cached(features, images)):
        distilled[image] = [text] if text else []
    return distilled


def new_state(select_by: str) -> dict:
    """state.json of a run that has not finished an epoch yet; ``select_by`` (SELECT_BY) picks the kept epoch."""
    return {"epoch": 0, "select_by": select_by, "best_score": -math.inf, "best_val_loss": math.inf, "best_epoch": 0,
            "wait": 0, "history": []}


def build_or_resume(config: CaptionerConfig, data: TrainingData, out: Path, saved_state: dict | None,
                    seed: int, select_by: str = "loss", decay_steps: int = 1) -> tuple[keras.Model, dict]:
    """The resumed run's checkpoint and state, or a new model (its config and vocabulary written to ``out``).

    ``decay_steps``: the steps of the epochs asked for, over which a cosine schedule decays.
    """
    if data.language_model is not None and (saved_state is None or not (out / LM_FILE).is_file()):
        out.mkdir(parents=True, exist_ok=True)
        data.language_model.save(out / LM_FILE)
    if saved_state is not None:
        return load_model(out / CHECKPOINT_FILE), saved_state
    keras.utils.set_random_seed(seed)
    with runtime.dtype_policy(config.precision):  # the layers keep it, and the model file records it
        model = build_model(config, feature_sample(data.cache.features, data.train.rows, seed), decay_steps)
    if config.attributes:
        fit_attributes(model, config, data)
    config = dataclasses.replace(config, vocabulary=data.vocabulary.fingerprint())
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    data.vocabulary.save(out / VOCAB_FILE)
    log(f"Model {config.arch}: {model.count_params():,} parameters, backend {keras.backend.backend()}, "
        f"{config.precision}.")
    return model, new_state(select_by)


def fit_attributes(model: keras.Model, config: CaptionerConfig, data: TrainingData) -> None:
    """Sets the model's attribute layer (attributes.py) from the training photos, and logs what it reads."""
    fitted = attributes.fit(model, data.cache.features, data.train, data.val, config.num_classes)
    characters = ["", *data.vocabulary.characters]
    commonest = "・".join(attributes.decode(code, characters, config.num_classes) for code in fitted["codes"][:10])
    log(f"Attributes: {len(fitted['codes'])} caption n-grams (commonest: {commonest}), read off the features by "
        f"ridge (penalty {fitted['penalty']:g}); their mean AUC on the validation photos: {fitted['auc']:.3f}.")


def is_finished(state: dict, epochs: int) -> bool:
    return bool(state.get("stopped_early")) or state["epoch"] >= epochs


def fit(model: keras.Model, config: CaptionerConfig, data: TrainingData, out: Path, state: dict, epochs: int,
        batch_size: int, patience: int, seed: int, verbose: bool = True) -> None:
    """Trains up to epoch ``epochs`` from ``state["epoch"]``, saving the run after every epoch (``Checkpointer``)."""
    features = data.cache.features
    scorer = validation_cider(config, data) if state["select_by"] == "cider" else None
    batches = CaptionBatches(config, features, data.train, batch_size, shuffle=True, seed=seed + state["epoch"],
                             workers=runtime.read_ahead_workers(), length_weighting=config.length_weighting,
                             weighted_length=config.weighted_length,
                             mirrored_features=data.mirrored_cache.features if data.mirrored_cache else None,
                             recoloured=[(cache.features, more) for cache, more in data.recoloured])
    model.fit(
        batches,
        validation_data=CaptionBatches(config, features, data.val, batch_size, shuffle=False, seed=0),
        epochs=epochs,
        initial_epoch=state["epoch"],
        callbacks=[keras.callbacks.TerminateOnNaN(),
                   *([keras.callbacks.SwapEMAWeights()] if config.weight_average else []),  # val_loss of the average
                   *([OwnChars(batches, config.own_chars, epochs, seed)] if config.own_chars else []),
                   Checkpointer(out, state, patience, scorer)],
        verbose="auto" if verbose else 0,
    )


def validation_cider(config: CaptionerConfig, data: TrainingData, reward: str = "cider"):
    """``scorer(model)``: the CIDEr-D of up to VAL_CAPTION_PHOTOS validation photos' captions, decoded as predict.py
    does; with ``reward`` ``cider+objects``, the mean of that self-critical reward (selfcritical.reward_scores)."""
    rows = data.val_images[:VAL_CAPTION_PHOTOS]
    references = [data.references[row] for row in rows]
    captioners = {}  # one per model: its step models (autoregressive runs) are built once, not every epoch

    def scorer(model: keras.Model) -> float:
        if id(model) not in captioners:
            captioners[id(model)] = Captioner.of_model(model, config, data.vocabulary, data.language_model)
        captions = [text for text, _ in captioners[id(model)].caption_cached(data.cache.features, rows)]
        if reward != "cider":
            return float(np.mean(selfcritical.reward_scores(captions, references, reward)))
        return caption_metrics(captions, references)["CIDEr-D"]

    return scorer


def self_critical(config: CaptionerConfig, data: TrainingData, out: Path, state: dict, epochs: int,
                  learning_rate: float, seed: int, progress: bool = True, baseline: str = "greedy",
                  reward: str = "cider", length_weighting: float = 0.0) -> None:
    """Fine-tunes the kept model by self-critical sequence training up to epoch ``epochs`` of that stage, resumably.

    Each epoch ends with the CIDEr-D of the validation photos' greedy
    captions; model.keras is replaced only by an epoch that beats the best so
    far, the cross-entropy stage's kept model to begin with. The stage's last
    epoch (with its optimizer) is SELF_CRITICAL_FILE, and its progress is
    ``state["self_critical"]``. ``baseline``: selfcritical.BASELINES; ``reward``: selfcritical.REWARDS (the
    validation captions are scored by it too; its values are kept under the ``cider`` keys).
    ``length_weighting``: selfcritical.run_epoch's. A resumed stage keeps its own baseline, reward and length
    weighting.
    """
    stage = state.get("self_critical") or {"epoch": 0, "history": []}
    resuming = stage["epoch"] and (out / SELF_CRITICAL_FILE).is_file()
    began = (stage.get("reward", "cider"), stage.get("baseline", "greedy"), stage.get("length_weighting", 0.0))
    if resuming and began != (reward, baseline, length_weighting):
        log(f"Resuming the self-critical stage with the reward, baseline and length weighting it began with "
            f"({began[0]}, {began[1]}, {began[2]:g}).")
    if resuming:
        reward, baseline, length_weighting = began
    scorer = validation_cider(config, data, reward)
    if resuming:
        model = load_model(out / SELF_CRITICAL_FILE)
    else:
        model = selfcritical.compile_for(load_model(out / MODEL_FILE), learning_rate)
        stage = {"epoch": 0, "history": [], "learning_rate": learning_rate, "baseline": baseline, "reward": reward,
                 "length_weighting": length_weighting, "best_epoch": 0,
                 "best_cider": state["best_score"] if state["select_by"] == "cider" and reward == "cider"
                 else scorer(model)}
        log(f"Self-critical training from the kept epoch {state['best_epoch']} (validation {reward} "
            f"{stage['best_cider']:.3f}), learning rate {learning_rate:g}, baseline {baseline}"
            + (f", photos drawn by length to the power {length_weighting:g}." if length_weighting else "."))
    state["self_critical"] = stage
    photos, steps = np.unique(data.train.rows), step_models(model, config)
    for epoch in range(stage["epoch"], epochs):
        result = selfcritical.run_epoch(model, steps, config, data.vocabulary, data.cache.features, photos,
                                        data.references, seed + epoch, progress, baseline, reward,
                                        length_weighting)
        result["val_cider"] = scorer(model)
        stage["history"].append({"epoch": epoch + 1, **result})
        log(f"Self-critical epoch {epoch + 1}/{epochs}: sampled captions' {reward} {result['sample_cider']:.3f}, "
            f"greedy {result['greedy_cider']:.3f}; validation {result['val_cider']:.3f} "
            f"(best {max(stage['best_cider'], result['val_cider']):.3f}).")
        if result["val_cider"] > stage["best_cider"]:
            stage["best_cider"], stage["best_epoch"] = result["val_cider"], epoch + 1
            save_model(model, out / MODEL_FILE)
        save_model(model, out / SELF_CRITICAL_FILE)
        stage["epoch"] = epoch + 1
        write_json(out / STATE_FILE, state)


def _is_length_weighting(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        0 <= value <= selfcritical.MAX_LENGTH_WEIGHTING


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Within it, ``model`` holds its optimizer's average of the weights, where it keeps one (config.weight_average)."""
    if not getattr(model.optimizer, "use_ema", False):
        yield
        return
    swap = keras.callbacks.SwapEMAWeights()  # its evaluation hooks swap the average in and back out
    swap.set_model(model)
    swap.on_test_begin()
    try:
        yield
    finally:
        swap.on_test_end()


class OwnChars(keras.callbacks.Callback):
    """Scheduled sampling (Bengio et al. 2015), all steps at once (Duckworth et al. 2019): the decoder is fed
    characters it wrote itself, not only people's.

    Trained only on human prefixes, a decoder has never seen a caption go on
    from its own mistakes, and writing, it reads nothing else: it names an
    object again where the next belongs. Before each epoch but the first,
    the model reads every caption served, teacher-forced, and draws its own
    next character at each step from what it predicts there (``own_guesses``).
    In epoch ``e`` of ``epochs`` each character fed is, with chance
    ``share * e / (epochs - 1)``, the model's guess of it rather than the
    caption's (CaptionBatches.own_share); the targets stay the caption's.
    """

    def __init__(self, batches: CaptionBatches, share: float, epochs: int, seed: int, guess_batch: int = 512):
        super().__init__()
        self.batches, self.share, self.epochs, self.seed, self.guess_batch = batches, share, epochs, seed, guess_batch

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.own_share = self.share * min(1.0, epoch / max(1, self.epochs - 1))
        if self.batches.own_share:
            self.batches.guesses = own_guesses(self.model, self.batches, self.seed + epoch, self.guess_batch)


def own_guesses(model: keras.Model, batches: CaptionBatches, seed: int, batch_size: int = 512) -> np.ndarray:
    """Per caption that ``batches`` serves (in its ``served`` order) and step, a character drawn from the model's
    next-character distribution after the caption's own characters before it."""
    targets = batches.data.targets
    guesses = np.empty(targets.shape, dtype=targets.dtype)
    rng = np.random.default_rng(seed)
    for start in range(0, len(targets), batch_size):
        chosen = np.arange(start, min(start + batch_size, len(targets)))
        features, caption = batches.served(chosen, np.zeros(len(chosen), dtype=bool))
        probabilities = np.asarray(model.predict_on_batch((features, previous_chars(caption))), dtype=np.float64)
        cumulative = np.cumsum(probabilities, axis=-1)
        draws = rng.random((*cumulative.shape[:-1], 1)) * cumulative[..., -1:]
        guesses[chosen] = np.minimum((cumulative < draws).sum(axis=-1), probabilities.shape[-1] - 1)
    return guesses


class Checkpointer(keras.callbacks.Callback):
    """After each epoch, saves the run atomically and applies early stopping.

    Saves checkpoint.keras (last epoch, with optimizer state), model.keras
    (the best epoch so far by ``state["select_by"]``), state.json,
    history.csv and loss.png. An epoch whose loss is not finite is not
    saved, and training stops. ``scorer(model)``: the validation captions'
    CIDEr-D, for runs that keep the best by it.
    """

    def __init__(self, out: Path, state: dict, patience: int, scorer=None):
        super().__init__()
        self.out, self.state, self.patience, self.scorer = out, state, patience, scorer

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        logs = {key: float(value) for key, value in (logs or {}).items()}
        if not all(math.isfinite(value) for value in logs.values()):
            log(f"\nThe loss became {logs.get('loss')} in epoch {epoch + 1}: stopping without saving this "
                f"epoch. Try a lower --learning-rate; --resume restarts from the last good epoch.")
            self.model.stop_training = True
            state["diverged"] = True
            return
        with averaged_weights(self.model):  # what model.keras keeps; checkpoint.keras goes on from the last step
            if state["select_by"] == "cider":
                logs["val_cider"] = self.scorer(self.model)
                log(f"\nValidation CIDEr-D {logs['val_cider']:.3f} "
                    f"(best {max(state['best_score'], logs['val_cider']):.3f}).")
            state["history"].append({"epoch": epoch + 1, **logs})
            score = logs["val_cider"] if state["select_by"] == "cider" else -logs["val_loss"]
            if score > state["best_score"]:
                state["best_score"], state["best_val_loss"] = score, logs["val_loss"]
                state["best_epoch"], state["wait"] = epoch + 1, 0
                save_model(self.model, self.out / MODEL_FILE)
                discard_previous(self.out)
            else:
                state["wait"] += 1
        save_model(self.model, self.out / CHECKPOINT_FILE)
        state["epoch"] = epoch + 1
        if state["wait"] >= self.patience:
            watched = "CIDEr-D" if state["select_by"] == "cider" else "loss"
            log(f"\nNo better validation {watched} for {self.patience} epochs: stopping early.")
            self.model.stop_training = True
            state["stopped_early"] = True
        write_json(self.out / STATE_FILE, state)
        write_history(self.out, state["history"])


def write_history(out: Path, history: list[dict]) -> None:
    """history.csv and loss.png from the per-epoch logs."""
    if not history:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, list(history[0]), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(out / HISTORY_FILE, text.getvalue())
    plot_loss(history, out / LOSS_PLOT_FILE)


def evaluate_validation(out: Path, data: TrainingData) -> str:
    """Scores the saved best model on the validation photos' cached features; writes metrics.json; returns the table."""
    rows = data.val_images
    captions = Captioner(out, with_vgg=False).caption_cached(data.cache.features, rows)
    result = score(captions, [data.references[i] for i in rows], [data.records[i].scene for i in rows])
    result.pop("CIDEr-D per image")
    write_json(out / METRICS_FILE, {"split": "validation", **result})
    return format_table(result)
