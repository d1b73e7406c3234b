"""Trains the katakana captioner on STAIR Captions / YJ Captions (or the embedded demo).

    $ python train.py                                   # the demo dataset, on a CPU
    $ python train.py --annotations stair_captions_v1.2_train.json yjcaptions26k_clean.json \\
          --images train2014/ val2014/ --out runs/stair
    $ python train.py ... --out runs/stair --resume     # continue after an interruption

Steps (training.py): captions -> katakana -> vocabulary; photos -> frozen VGG16
pool5 features, computed once and cached on disk; then Keras ``fit`` on the
cached features. ``--out`` ends up holding everything predict.py needs.
"""

from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import demo  # noqa: E402
import runtime  # noqa: E402
import selfcritical  # noqa: E402
import training  # noqa: E402
from captioner import (CONFIG_FILE, DEFAULT_RUN, HISTORY_FILE, LOSS_PLOT_FILE, METRICS_FILE, MODEL_FILE,  # noqa: E402
                       VOCAB_FILE)
from cli import (HelpFormatter, bounded_float, bounded_int, existing_dir, existing_file, folder_path, fraction,  # noqa: E402
                 names_from, positive_float, positive_int, vgg_weights)
from decoding import PRIOR_WEIGHT_HELP  # noqa: E402
from features import DEFAULT_CACHE_DIR, FEATURE_LAYERS, WeightsUnavailable  # noqa: E402
from fileio import lock_folder  # noqa: E402
from lm import LM_FILE  # noqa: E402
from recolour import RECOLOURINGS, SWAPS  # noqa: E402
from model import (ARCHITECTURES, FINAL_LEARNING_RATE, INITIAL_STATES, LIMITS, LOSSES, MAX_ATTRIBUTES,  # noqa: E402
                   REFERENCES, SCHEDULES, WEIGHTED_LENGTHS, CaptionerConfig, architecture_name)

# Real data: the original's width and ImageNet VGG16, as CaptionerConfig's defaults say.
DEFAULTS = dict(epochs=30, batch_size=64, units=CaptionerConfig.units, vgg_weights=CaptionerConfig.vgg_weights,
                out="runs/stair")
# The demo fits a laptop CPU: a random VGG16 (no download) and a narrower model.
DEMO_DEFAULTS = dict(epochs=15, batch_size=128, units=256, vgg_weights="none", out=DEFAULT_RUN)
# The loss each architecture trains with unless --loss says otherwise (image2text: the one measured best).
DEFAULT_LOSS = {"image2text": "ctc", "showtell": "crossentropy", "attention": "crossentropy",
                "transformer": "crossentropy"}
# How the kept model is chosen unless --keep-best / --weight-average say otherwise: the validation loss, and the
# weights as they are, except for image2text with CTC, where the validation captions' CIDEr-D picks the epoch and
# the weights are averaged over steps (measured best, docs/image2text.md: its captions vary a lot from step to step).
DEFAULT_SELECTION = dict(keep_best="loss", weight_average=0.0)
RECIPES = {("image2text", "ctc"): dict(keep_best="cider", weight_average=0.99)}
# image2text with CTC still learns after 15 demo epochs (scene accuracy 30% at 15; 47% given 30, of which early
# stopping used 25): it gets 30.
DEMO_EPOCHS = {"image2text": 30}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the katakana image captioner. With no --annotations it trains on the embedded demo dataset.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--annotations", nargs="+", metavar="JSON", type=existing_file,
                      help="STAIR/YJ/COCO caption files (e.g. stair_captions_v1.2_train.json); none = the demo dataset")
    data.add_argument("--images", nargs="+", metavar="DIR", type=existing_dir,
                      help="folders holding the photos the annotations name (e.g. train2014/ val2014/)")
    data.add_argument("--val-fraction", type=fraction, default=0.1,
                      help="share of the photos held out for validation (split by photo, never by caption)")
    data.add_argument("--image-size", type=bounded_int(*LIMITS["image_size"]), default=CaptionerConfig.image_size,
                      help="photos are letterboxed to this square size")
    data.add_argument("--feature-layer", choices=list(FEATURE_LAYERS), default=CaptionerConfig.feature_layer,
                      help="the VGG16 grid the model reads: pool5 (the card's; 4x4 at 150 px, 16 KiB a photo in the "
                           "cache) or conv5 (conv5_3 before its pooling: 9x9 at 150 px, 81 KiB; 14x14 at 224 px, "
                           "196 KiB, the grid Show, Attend and Tell attends over)")
    data.add_argument("--cache-dir", type=folder_path, default=str(DEFAULT_CACHE_DIR),
                      help="where VGG16 features are cached, reused across epochs and runs")
    data.add_argument("--vgg-weights", metavar="WEIGHTS", type=vgg_weights,
                      help=f"'imagenet' (Keras download/cache), 'synthetic' (the project's own, shipped in weights/; pretrain.py makes it), "
                           f"a local .h5 file, or 'none' for a randomly initialised "
                           f"frozen VGG16 [default: {DEFAULTS['vgg_weights']}; the demo uses {DEMO_DEFAULTS['vgg_weights']}]")
    data.add_argument("--vgg-precision", choices=runtime.EXTRACTION_PRECISIONS, default="auto",
                      help="arithmetic of the one-time feature extraction; auto = bfloat16 where the CPU does it "
                           "natively (TensorFlow on CPUs with AVX512-BF16/AMX: about 2x faster, features within "
                           "1%%), else float32")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", type=architecture_name, choices=list(ARCHITECTURES), default="attention",
                       help="image2text: the original keras-image2text design, all 50 characters at once "
                            "(formerly 'seed'); showtell: Show and Tell, one character at a time from the "
                            "image-initialised LSTM; attention: Show, Attend and Tell, showtell plus attention "
                            "over the VGG16 grid; transformer: a Transformer decoder over the characters written so "
                            "far and the grid's cells")
    model.add_argument("--loss", choices=LOSSES,
                       help="image2text: ctc = connectionist temporal classification, the end class as the blank "
                            "(a character may sit a step earlier or later); crossentropy = the original's per-step "
                            f"loss at exact positions. Autoregressive models train with crossentropy "
                            f"[default: {DEFAULT_LOSS['image2text']} for image2text]")
    model.add_argument("--references", choices=REFERENCES, default=CaptionerConfig.references,
                       help="CTC: train on each human caption of a photo as a target of its own, or at every step "
                            "on the one of them the model finds likeliest for the photo (hard EM: one wording per "
                            "photo instead of a blend of five)")
    model.add_argument("--lm-weight", type=bounded_float(0, 10), default=CaptionerConfig.lm_weight,
                       help="CTC runs are read by a beam search beside a language model of the training captions "
                            "(lm.json, written with the run): its weight, kept in config.json")
    model.add_argument("--prior-weight", type=bounded_float(0, 10), default=CaptionerConfig.prior_weight,
                       metavar="W",
                       help="autoregressive runs, decoding (kept in config.json; predict.py and evaluate.py "
                            "--prior-weight override it): " + PRIOR_WEIGHT_HELP)
    model.add_argument("--distill-from", metavar="RUN", type=existing_dir,
                       help="train on the captions a trained (autoregressive) run writes for each photo instead of "
                            "the human captions: sequence-level distillation, one consistent target per photo")
    model.add_argument("--timesteps", type=bounded_int(*LIMITS["timesteps"]), default=CaptionerConfig.timesteps,
                       help="characters per caption, the end class included (50, the card's): a longer caption is "
                            "cut after its last clause that fits. The hard benchmark's captions of three or four "
                            "objects run to 60-120 katakana; the model's time per step grows with it")
    model.add_argument("--units", type=bounded_int(*LIMITS["units"]), help=f"LSTM/Dense width [default: {DEFAULTS['units']}; the demo uses {DEMO_DEFAULTS['units']}]")
    model.add_argument("--initial-state", choices=INITIAL_STATES, default=CaptionerConfig.initial_state,
                       help="attention and showtell: the decoder's initial state from the flattened grid (Show and "
                            "Tell's: weights of its own for each cell) or from the grid's mean and maximum over its "
                            "cells (pooled: an object is seen alike in any cell)")
    model.add_argument("--grid-positions", action="store_true",
                       help="attention: add a learnt vector per grid cell to what it attends over, so its context "
                            "says where a cell is (captions that name objects left to right)")
    model.add_argument("--attributes", type=bounded_int(0, MAX_ATTRIBUTES), default=CaptionerConfig.attributes,
                       metavar="N",
                       help="attention: read the N character n-grams that the most training captions use off each "
                            "photo's features (a ridge regression fitted before training, frozen in the model) and "
                            "give them to the decoder at every step (semantic attributes); 0: none")
    model.add_argument("--blocks", type=bounded_int(*LIMITS["blocks"]),
                       help=f"transformer: decoder blocks [default: {CaptionerConfig.blocks}]")
    model.add_argument("--heads", type=bounded_int(*LIMITS["heads"]),
                       help=f"transformer: attention heads per block, a divisor of --units "
                            f"[default: {CaptionerConfig.heads}]")
    model.add_argument("--summary-token", action="store_true",
                       help="transformer: attend over one more cell, read off the whole flattened grid (what "
                            "attention's initial state reads), beside the grid's cells")
    model.add_argument("--dropout", type=bounded_float(0, 0.9), metavar="SHARE",
                       help=f"attention, showtell and transformer: dropout on the image features and on the decoder's "
                            f"outputs (transformer: after each block's layers) [default: {CaptionerConfig.dropout}]")
    fitting = parser.add_argument_group("training")
    fitting.add_argument("--epochs", type=bounded_int(1, 100_000),
                         help=f"the total number of epochs [default: {DEFAULTS['epochs']}; the demo uses "
                              f"{DEMO_DEFAULTS['epochs']}, {DEMO_EPOCHS['image2text']} for image2text]")
    fitting.add_argument("--batch-size", type=bounded_int(1, 65_536), help=f"captions per step [default: {DEFAULTS['batch_size']}; the demo uses {DEMO_DEFAULTS['batch_size']}]")
    fitting.add_argument("--learning-rate", type=positive_float, default=CaptionerConfig.learning_rate, help="Adam's learning rate")
    fitting.add_argument("--schedule", choices=SCHEDULES, default=CaptionerConfig.schedule,
                         help="Adam's learning rate over the run: constant, or cosine: from --learning-rate at the "
                              f"first step down to {FINAL_LEARNING_RATE:g}× it at the last step of --epochs (a resumed "
                              "run keeps the schedule it started with)")
    fitting.add_argument("--weight-average", type=bounded_float(0, 0.9999),
                         help="keep, evaluate and save an exponential moving average of the weights over training "
                              "steps, with this momentum (0.99: about the last 100 steps); 0 = the weights as they are "
                              "after the epoch's last step [default: 0.99 for image2text with CTC, else 0]")
    fitting.add_argument("--keep-best", choices=training.SELECT_BY,
                         help="the epoch model.keras keeps, and early stopping watches: the lowest validation loss, or "
                              "the highest CIDEr-D of the validation photos' captions (up to "
                              f"{training.VAL_CAPTION_PHOTOS}, decoded as predict.py decodes them, after every epoch) "
                              "[default: cider for image2text with CTC, else loss]")
    fitting.add_argument("--flip", action="store_true",
                         help="mirror half the training captions' photos left to right, at random each epoch, with "
                              "ヒダリ (left) and ミギ (right) swapped in the caption; the mirrored photos' features "
                              "are cached once beside the others")
    fitting.add_argument("--recolour", nargs="?", const=SWAPS, type=names_from(RECOLOURINGS), metavar="NAMES",
                         help="also train on copies of the photos whose captions name red, blue or green, with two "
                              "colour channels swapped (red and blue, red and green) and the captions' colour words "
                              "swapped to match: colour-object pairs the photos never show. A photo whose captions "
                              "name a colour the swap would change into an unnamed one (yellow, orange, purple, "
                              "pink, brown) is not copied; the copies' features are cached once beside the others. "
                              f"NAMES picks, comma-separated, from {', '.join(RECOLOURINGS)} (red-yellow raises "
                              f"green to red where red is higher: red becomes yellow) [default NAMES: {','.join(SWAPS)}]")
    fitting.add_argument("--char-dropout", type=bounded_float(0, 0.9), default=CaptionerConfig.char_dropout,
                         metavar="SHARE",
                         help="attention, showtell and transformer: hide this share of the previous characters "
                              "from the decoder in training (word dropout), so that it reads the photo rather than "
                              "guessing from what it has written")
    fitting.add_argument("--char-dropout-span", type=bounded_int(*LIMITS["char_dropout_span"]),
                         default=CaptionerConfig.char_dropout_span, metavar="CHARACTERS",
                         help="with --char-dropout: hide the characters in runs of this many, so that whole words "
                              "are hidden (a colour just written cannot decide the kind written next)")
    fitting.add_argument("--own-chars", type=bounded_float(0, 1), default=CaptionerConfig.own_chars, metavar="SHARE",
                         help="autoregressive runs: scheduled sampling. Each character the decoder is fed is, by "
                              "chance, its own guess of it (drawn from what it predicts after the caption's characters "
                              "before) rather than the caption's: a chance that grows from 0 in the first epoch to "
                              "SHARE in the last, so that it learns to go on from what it wrote itself. Each epoch "
                              "after the first reads the training captions once more to draw the guesses")
    fitting.add_argument("--length-weighting", type=bounded_float(0, 4), default=CaptionerConfig.length_weighting,
                         metavar="P",
                         help="each epoch draws as many training captions as there are, at random with replacement, "
                              "each with odds of its length in characters to the power P, so that long captions "
                              "(photos of many objects) are trained on more often; 0 = every caption once an epoch. The longer "
                              "wordings of every photo are drawn more often too: P = 1 cost 6 points of the hard "
                              "benchmark's val-styles (docs/hard-benchmark.md)")
    fitting.add_argument("--weighted-length", choices=WEIGHTED_LENGTHS, default=CaptionerConfig.weighted_length,
                         help="with --length-weighting: whose length sets a caption's odds: its own, or the mean of "
                              "its photo's captions, so that photos of many objects are drawn more often but every "
                              "wording of a photo alike; photo with P = 1 cost 4 points of val-styles "
                              "(docs/hard-benchmark.md) [default: %(default)s]")
    fitting.add_argument("--self-critical", type=bounded_int(0, 10_000), default=0, metavar="EPOCHS",
                         help="after the cross-entropy epochs, this many epochs of self-critical sequence training "
                              "(attention, showtell, transformer): the model's sampled captions, rewarded by their "
                              "CIDEr-D (--self-critical-reward) above a baseline; an epoch is kept only where the "
                              "validation captions' reward beats the kept model's")
    fitting.add_argument("--self-critical-learning-rate", type=positive_float, default=5e-5, metavar="RATE",
                         help="Adam's learning rate in the self-critical epochs")
    fitting.add_argument("--self-critical-baseline", choices=selfcritical.BASELINES, default="greedy",
                         help="what a sampled caption's CIDEr-D is measured against: the greedy caption's, or the "
                              "mean of the same photo's other samples")
    fitting.add_argument("--self-critical-reward", choices=selfcritical.REWARDS, default="cider",
                         help="what a caption earns, and what picks the self-critical epoch kept: CIDEr-D, or CIDEr-D "
                              f"+ {selfcritical.OBJECTS_WEIGHT:g} × how well the objects it names (colour, kind, count, "
                              "place; the hard benchmark's grammar, hard.py) agree with each reference's "
                              "[default: %(default)s]")
    fitting.add_argument("--self-critical-length-weighting", type=bounded_float(0, selfcritical.MAX_LENGTH_WEIGHTING),
                         default=0.0, metavar="P",
                         help="each self-critical epoch draws as many training photos as there are, at random with "
                              "replacement, each with odds of its captions' mean length in characters to the power P, "
                              "so that photos with more to say (more objects) are trained on more often; 0 = every "
                              "photo once an epoch. P = 2 got no more photos of many objects right and cost 2-6 points "
                              "of the hard benchmark's val-styles (docs/hard-benchmark.md) [default: %(default)s]")
    fitting.add_argument("--patience", type=positive_int, default=5,
                         help="stop after this many epochs without a better validation score (--keep-best)")
    fitting.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="random seed for the split, the shuffling and the weights")
    fitting.add_argument("--precision", choices=runtime.TRAINING_PRECISIONS, default="auto",
                         help="mixed_bfloat16 is Keras' mixed precision: arithmetic in bfloat16, weights in float32. "
                              "auto = mixed_bfloat16 where bench.py measured it faster (JAX on a GPU; TensorFlow on "
                              "CPUs with AVX512-BF16/AMX), else float32")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=folder_path, help=f"run folder: model, vocabulary, config, history [default: {DEFAULTS['out']}; "
                                      f"the demo: {DEFAULT_RUN}]")
    output.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    output.add_argument("--overwrite", action="store_true", help="start over even if --out holds a run")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.images and not args.annotations:
        parser.error("--images needs --annotations (the caption files that name the photos)")
    if args.annotations and not args.images:
        parser.error("--annotations needs --images (the folders holding the photos, e.g. train2014/)")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other")
    if args.loss == "ctc" and ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--loss ctc is for --arch image2text; {args.arch} writes one character at a time and "
                     f"trains with crossentropy")
    args.loss = args.loss or DEFAULT_LOSS[args.arch]
    if args.self_critical and not ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--self-critical is for the autoregressive architectures (attention, showtell, transformer); "
                     f"{args.arch} writes every character at once")
    stage_options = [f"--{name.replace('_', '-')}" for name in ("self_critical_learning_rate", "self_critical_baseline",
                     "self_critical_reward", "self_critical_length_weighting")
                     if getattr(args, name) != parser.get_default(name)]
    if stage_options and not args.self_critical:
        parser.error(f"{', '.join(stage_options)} set{'s' if len(stage_options) == 1 else ''} how the self-critical "
                     f"epochs train; give --self-critical EPOCHS too")
    if args.char_dropout and not ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--char-dropout is for the autoregressive architectures (attention, showtell, transformer); "
                     f"{args.arch} reads no previous characters")
    if args.own_chars and not ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--own-chars is for the autoregressive architectures (attention, showtell, transformer); "
                     f"{args.arch} reads no previous characters")
    if args.char_dropout_span > 1 and not args.char_dropout:
        parser.error("--char-dropout-span hides runs of the characters --char-dropout hides; give --char-dropout too")
    if args.weighted_length != CaptionerConfig.weighted_length and not args.length_weighting:
        parser.error("--weighted-length says whose length --length-weighting weighs by; give --length-weighting too")
    if args.prior_weight and not ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--prior-weight is for the autoregressive architectures (attention, showtell, transformer); "
                     f"{args.arch} writes every character at once")
    if args.dropout is not None and not ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--dropout is for the autoregressive architectures (attention, showtell, transformer); "
                     f"{args.arch} has none")
    if args.initial_state != "flatten" and not ARCHITECTURES[args.arch].autoregressive:
        parser.error(f"--initial-state is for --arch attention and showtell; {args.arch} keeps the card's layers")
    if args.arch == "transformer" and args.initial_state != "flatten":
        parser.error("--initial-state is for --arch attention and showtell; the transformer has no initial state")
    for name in ("blocks", "heads", "summary_token"):
        if getattr(args, name) not in (None, False) and args.arch != "transformer":
            parser.error(f"--{name.replace('_', '-')} is for --arch transformer; {args.arch} has no Transformer blocks")
    if args.grid_positions and args.arch != "attention":
        parser.error(f"--grid-positions is for --arch attention; {args.arch} attends over no grid")
    if args.attributes and args.arch != "attention":
        parser.error(f"--attributes is for --arch attention; {args.arch} has no input for them")
    if args.flip and args.references != "each":
        parser.error("--flip is for --references each: likeliest-reference training does not mirror its references")
    if args.recolour and args.distill_from:
        parser.error("--recolour recolours the human captions; with --distill-from the targets are the teacher's")
    if args.recolour and args.references != "each":
        parser.error("--recolour is for --references each: likeliest-reference training does not recolour its "
                     "references")
    if args.references != "each" and args.loss != "ctc":
        parser.error(f"--references {args.references} is for CTC training (--arch image2text --loss ctc)")
    for name, value in RECIPES.get((args.arch, args.loss), DEFAULT_SELECTION).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    defaults = {**DEMO_DEFAULTS, "epochs": DEMO_EPOCHS.get(args.arch, DEMO_DEFAULTS["epochs"])} \
        if args.annotations is None else DEFAULTS
    return argparse.Namespace(**{**vars(args), **{name: value for name, value in defaults.items()
                                                  if getattr(args, name) is None}})


def requested_config(args: argparse.Namespace) -> CaptionerConfig:
    """The model settings the command line asks for (``auto`` precisions still unresolved)."""
    return CaptionerConfig(arch=args.arch, units=args.units, timesteps=args.timesteps, image_size=args.image_size,
                           feature_layer=args.feature_layer, vgg_weights=args.vgg_weights,
                           vgg_precision=args.vgg_precision, precision=args.precision,
                           learning_rate=args.learning_rate, loss=args.loss, lm_weight=args.lm_weight,
                           prior_weight=args.prior_weight,
                           references=args.references, weight_average=args.weight_average, schedule=args.schedule,
                           flip=args.flip, recolour=args.recolour is not None,
                           recolourings=args.recolour or SWAPS,
                           char_dropout=args.char_dropout,
                           char_dropout_span=args.char_dropout_span, own_chars=args.own_chars,
                           length_weighting=args.length_weighting,
                           weighted_length=args.weighted_length,
                           initial_state=args.initial_state,
                           dropout=CaptionerConfig.dropout if args.dropout is None else args.dropout,
                           grid_positions=args.grid_positions, attributes=args.attributes,
                           blocks=args.blocks or CaptionerConfig.blocks, heads=args.heads or CaptionerConfig.heads,
                           summary_token=args.summary_token)


def train(args: argparse.Namespace) -> int:
    """Runs training.py's steps in order; returns the exit status."""
    out = Path(args.out)
    saved_state = training.check_out(out, args.resume, args.overwrite)  # changes nothing: nothing is checked yet
    early_lock = lock_folder(out) if out.is_dir() else None  # a second writer stops here, before any work
    try:
        config, data = prepare(args, out, saved_state)
        lock, saved_state = training.claim_out(out, args.resume, args.overwrite, early_lock)  # --out changes from here
    except BaseException:
        if early_lock is not None:
            early_lock.close()
        raise
    with lock:
        try:
            model, state = training.build_or_resume(config, data, out, saved_state, args.seed, args.keep_best,
                                                    args.epochs * math.ceil(len(data.train.rows) / args.batch_size))
            fitted = saved_state is not None and training.is_finished(state, args.epochs)
            self_critical_done = (state.get("self_critical") or {"epoch": 0})["epoch"] >= args.self_critical
            if fitted and self_critical_done:
                training.log(f"The run in {out} is already finished ({state['epoch']} epochs); nothing to resume.")
                return 0
            if saved_state is not None:
                training.log(f"Resuming {out} after epoch {state['epoch']}.")
                if state["select_by"] != args.keep_best:
                    training.log(f"Keeping the best epoch by the run's own measure ({state['select_by']}).")
            if not fitted:
                training.fit(model, config, data, out, state, args.epochs, args.batch_size, args.patience, args.seed,
                             verbose=not args.quiet)
            if not self_critical_done and state["history"] and not state.get("diverged"):
                training.self_critical(config, data, out, state, args.self_critical,
                                       args.self_critical_learning_rate, args.seed, progress=not args.quiet,
                                       baseline=args.self_critical_baseline, reward=args.self_critical_reward,
                                       length_weighting=args.self_critical_length_weighting)
        finally:
            training.restore_previous(out)  # only where this run has saved no model
        if state.get("diverged") and not state["history"]:
            training.log("Training diverged before the first epoch ended; no model was saved.")
            return 1
        return finish(args, out, data, state)


def prepare(args: argparse.Namespace, out: Path, saved_state: dict | None):
    """The run's config and its data: captions read, features extracted; nothing in ``out`` is changed."""
    annotations, images = args.annotations, args.images
    if annotations is None:
        demo_dir = demo.ensure_demo()
        annotations, images = [str(demo_dir / "captions_train.json")], [str(demo_dir / "train2014")]
        training.log(f"No --annotations given: training on the demo dataset in {demo_dir}.")
    if args.vgg_weights == "none":
        training.log("Using a randomly initialised frozen VGG16 (--vgg-weights none): fine for the demo's shapes, "
                     "not for photos.")
    config = training.resolve_config(requested_config(args), out if saved_state is not None else None)
    data = training.prepare_data(config, annotations, images, args.cache_dir, args.val_fraction, args.seed,
                                 vocabulary_file=out / VOCAB_FILE if saved_state is not None else None,
                                 distill_from=args.distill_from, progress=not args.quiet,
                                 language_model_file=out / LM_FILE if saved_state is not None else None)
    return config, data


def finish(args: argparse.Namespace, out: Path, data: training.TrainingData, state: dict) -> int:
    """The validation metrics of the best model, and where the run is."""
    measure = (f"validation CIDEr-D {state['best_score']:.3f}, " if state["select_by"] == "cider" else "") + \
        f"validation loss {state['best_val_loss']:.4f}"
    training.log(f"Kept epoch {state['best_epoch']} ({measure}).")
    stage = state.get("self_critical")
    if stage and stage["best_epoch"]:
        training.log(f"Then kept self-critical epoch {stage['best_epoch']} (validation {stage.get('reward', 'cider')} "
                     f"{stage['best_cider']:.3f}).")
    elif stage:
        training.log(f"No self-critical epoch beat it (best validation {stage.get('reward', 'cider')} "
                     f"{stage['best_cider']:.3f}).")

    table = training.evaluate_validation(out, data)
    training.log(f"Validation metrics ({len(data.val_images)} photos, character-level):\n{table}")
    training.log(f"The run is in {out}/ ({MODEL_FILE}, {CONFIG_FILE}, {VOCAB_FILE}, {METRICS_FILE}, {HISTORY_FILE}, "
                 f"{LOSS_PLOT_FILE}).")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.keep_freed_memory()
    try:
        return train(args)
    except (OSError, ValueError, WeightsUnavailable) as error:  # missing files, a busy or full disk, bad data
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command with --resume to continue from the last finished epoch "
              "(features already extracted are kept).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
