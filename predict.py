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

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from captioner import DEFAULT_RUN, Captioner  # noqa: E402
from cli import (HelpFormatter, add_drawing_options, bounded_append, bounded_float, bounded_int,  # noqa: E402
                 check_drawing_options, file_path, folder_path, nonempty_path, off_or_bounded_int, vgg_weights)
from dataset import find_images  # noqa: E402
from decoding import (BEAM_HELP, DECODE_METHODS, ENSEMBLE_HELP, LM_WEIGHT_HELP, MAX_BEAM, MAX_ENSEMBLE,  # noqa: E402
                      MAX_NO_REPEAT, NO_REPEAT_HELP, PRIOR_WEIGHT_HELP, SAMPLES_HELP)
from features import WeightsUnavailable  # noqa: E402
from plots import plot_attention, plot_captions  # noqa: E402

MAX_PLOTTED = 64  # photos drawn by --plot
MAX_ATTENTION_MAPS = 16  # photos drawn by --attention


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Caption photos in katakana with a model trained by train.py.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("images", nargs="+", type=nonempty_path, help="image files or folders of images")
    parser.add_argument("--model", type=nonempty_path, default=DEFAULT_RUN, help="run folder written by train.py")
    parser.add_argument("--ensemble", action=bounded_append(MAX_ENSEMBLE - 1, "runs beside --model"), default=[],
                        metavar="RUN", type=nonempty_path, help=ENSEMBLE_HELP)
    parser.add_argument("--json", action="store_true", help='print one JSON object per image: {"file": ..., "caption": ...}')
    parser.add_argument("--plot", metavar="PNG", type=file_path, help=f"also draw the photos (the first {MAX_PLOTTED}) with their "
                                                      f"captions into this PNG")
    parser.add_argument("--attention", metavar="DIR", type=folder_path,
                        help=f"attention models: draw the attention map behind each character, one PNG per photo "
                             f"(the first {MAX_ATTENTION_MAPS}) into DIR")
    parser.add_argument("--batch-size", type=bounded_int(1, 4096), default=32, help="photos per VGG16/model call")
    parser.add_argument("--vgg-weights", type=vgg_weights, help="override the run's VGG16 weights (imagenet, synthetic, a .h5 file, or none)")
    parser.add_argument("--decode", choices=DECODE_METHODS,
                        help="image2text runs: argmax = the likeliest character per step; collapse = also write "
                             "repeated characters once; ctc = CTC decoding; ctc-lm = CTC beam search with the run's "
                             "language model of its training captions [default: as the run was trained]")
    parser.add_argument("--beam-size", type=bounded_int(1, MAX_BEAM), default=1, help=BEAM_HELP)
    parser.add_argument("--lm-weight", type=bounded_float(0, 10), help=LM_WEIGHT_HELP)
    parser.add_argument("--prior-weight", type=bounded_float(0, 10), metavar="W",
                        help="autoregressive runs: " + PRIOR_WEIGHT_HELP
                             + " [default: the run's, from train.py --prior-weight]")
    parser.add_argument("--no-repeat", type=off_or_bounded_int(2, MAX_NO_REPEAT), default=0, metavar="N",
                        help=NO_REPEAT_HELP)
    add_drawing_options(parser, SAMPLES_HELP)
    parser.add_argument("--n-best", type=bounded_int(1, MAX_BEAM), default=1,
                        help="print this many captions per image, with probabilities (autoregressive runs and CTC decoding)")
    args = parser.parse_args(argv)
    check_drawing_options(parser, args)
    return args


def print_captions(path: str, captions, args: argparse.Namespace) -> None:
    """One photo's captions on stdout, in the form the flags ask for."""
    if args.json:
        record = {"file": path, "caption": captions[0].text}
        if args.n_best > 1:
            record["captions"] = [{"caption": c.text, "probability": c.probability} for c in captions]
        print(json.dumps(record, ensure_ascii=False), flush=True)
    elif args.n_best > 1:
        print(f"Captions for {path}:", flush=True)
        for rank, caption in enumerate(captions, start=1):
            print(f"  {rank}) {caption.text} (p={caption.probability:.2g})", flush=True)
    else:
        print(f"{path}: {captions[0].text}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths, problems = find_images(args.images)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        print("error: no images to caption", file=sys.stderr)
        return 1
    try:
        captioner = Captioner(args.model, args.vgg_weights, decode=args.decode,
                              beam_size=args.beam_size if args.samples else max(args.beam_size, args.n_best),
                              lm_weight=args.lm_weight,
                              prior_weight=args.prior_weight, ensemble=args.ensemble,
                              no_repeat=args.no_repeat, samples=args.samples, seed=args.seed or 0,
                              judges=args.judge)
        if args.attention and not captioner.has_attention:
            raise ValueError(f"--attention needs an attention model, alone; {args.model} is {captioner.config.arch!r}"
                             + (" in an ensemble" if args.ensemble else ""))
        return 1 if caption_all(captioner, paths, args) or problems else 0
    except (OSError, ValueError, WeightsUnavailable) as error:  # a run that does not load, a full disk
        print(f"error: {error}", file=sys.stderr)
        return 2


def caption_all(captioner: Captioner, paths, args: argparse.Namespace) -> int:
    """Prints each photo's captions and draws what the flags ask for; returns how many photos failed."""
    if args.attention:
        Path(args.attention).mkdir(parents=True, exist_ok=True)
    plotted, num_failed, num_maps = [], 0, 0
    for path, captions, error in captioner.caption_files(paths, args.batch_size, args.n_best):
        if error is not None:
            num_failed += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        print_captions(path, captions, args)
        if args.plot and len(plotted) < MAX_PLOTTED:
            plotted.append((path, captions[0].text))
        if args.attention and num_maps < MAX_ATTENTION_MAPS:
            out_file = Path(args.attention) / f"{Path(path).stem}.png"
            image, maps = captioner.attention_of_file(path, captions[0].text)
            plot_attention(image, captions[0].text, maps, Path(path).name, out_file)
            print(f"Drew the attention behind each character into {out_file}", file=sys.stderr)
            num_maps += 1
    if args.plot and plotted:
        plot_captions(plotted, args.plot)
        print(f"Drew {len(plotted)} captioned photos into {args.plot}", file=sys.stderr)
    return num_failed


if __name__ == "__main__":
    sys.exit(main())
