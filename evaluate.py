"""Scores a trained run with the COCO caption metrics, on katakana characters.

    $ python evaluate.py --model runs/stair --annotations stair_captions_v1.2_val.json --images val2014/
    $ python evaluate.py --model runs/demo              # the demo's held-out photos

Every photo is captioned (features come from the same on-disk cache as
training) and compared with all its reference captions, converted to katakana
exactly as training converts them. Prints BLEU-1..4, ROUGE-L, CIDEr-D, the
share of exact matches, mean lengths and the share of captions that never
ended; for the demo dataset also the share of photos whose caption names every
shape's colour, shape and position. Writes metrics.json, captions.json (each
photo's caption, in the COCO results format plus its file, whether it ended
and its CIDEr-D) and samples.png (the best and worst photos by CIDEr-D) to
--out.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import demo  # noqa: E402
import hard  # noqa: E402
from captioner import DEFAULT_RUN, METRICS_FILE, Captioner  # noqa: E402
from cli import (HelpFormatter, add_drawing_options, bounded_append, bounded_float, bounded_int,  # noqa: E402
                 check_drawing_options, existing_dir, existing_file, folder_path, nonempty_path, off_or_bounded_int,
                 positive_int)
from dataset import load_caption_files  # noqa: E402
from decoding import (BEAM_HELP, DECODE_METHODS, ENSEMBLE_HELP, LM_WEIGHT_HELP, MAX_BEAM, MAX_ENSEMBLE,  # noqa: E402
                      MAX_NO_REPEAT, NO_REPEAT_HELP, PRIOR_WEIGHT_HELP, SAMPLES_HELP)
from features import DEFAULT_CACHE_DIR, WeightsUnavailable, cached_features  # noqa: E402
from fileio import write_json  # noqa: E402
from kana import clause_cut, convert_captions  # noqa: E402
from metrics import format_table, score  # noqa: E402
from model import LIMITS  # noqa: E402
from plots import plot_samples  # noqa: E402

SAMPLES_FILE = "samples.png"
CAPTIONS_FILE = "captions.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Caption a captioned dataset and print COCO caption metrics on katakana characters.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", type=nonempty_path, default=DEFAULT_RUN, help="run folder written by train.py")
    parser.add_argument("--ensemble", action=bounded_append(MAX_ENSEMBLE - 1, "runs beside --model"), default=[],
                        metavar="RUN", type=nonempty_path, help=ENSEMBLE_HELP)
    parser.add_argument("--annotations", nargs="+", metavar="JSON", type=existing_file,
                        help="caption files to evaluate on [default: the demo's held-out captions_val.json]")
    parser.add_argument("--images", nargs="+", metavar="DIR", type=existing_dir, help="folders holding their photos [default: demo val2014/]")
    parser.add_argument("--limit", type=positive_int, help="evaluate on the first N photos only")
    parser.add_argument("--decode", choices=DECODE_METHODS,
                        help="image2text runs: how captions are read off the model [default: as the run was trained]")
    parser.add_argument("--beam-size", type=bounded_int(1, MAX_BEAM), default=1, help=BEAM_HELP)
    parser.add_argument("--lm-weight", type=bounded_float(0, 10), help=LM_WEIGHT_HELP)
    parser.add_argument("--prior-weight", type=bounded_float(0, 10), metavar="W",
                        help="autoregressive runs: " + PRIOR_WEIGHT_HELP
                             + " [default: the run's, from train.py --prior-weight]")
    parser.add_argument("--no-repeat", type=off_or_bounded_int(2, MAX_NO_REPEAT), default=0, metavar="N",
                        help=NO_REPEAT_HELP)
    add_drawing_options(parser, SAMPLES_HELP + "; on the hard benchmark, also the share of photos with any "
                                               "candidate entirely right")
    parser.add_argument("--out", type=folder_path, help="folder for metrics.json, captions.json and samples.png "
                                                        "[default: MODEL/eval-ANNOTATIONS, -ensemble-of-N added]")
    parser.add_argument("--cache-dir", type=folder_path, default=str(DEFAULT_CACHE_DIR), help="VGG16 feature cache")
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536), default=256, help="photos per model call")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--human", action="store_true",
                        help="no model: score each photo's first reference caption against its other references "
                             "(how well a person scores on the same metrics)")
    parser.add_argument("--timesteps", type=bounded_int(*LIMITS["timesteps"]),
                        help="with --human: cut each first caption as train.py --timesteps cuts training captions "
                             "(after its last clause that fits in this minus one katakana): the most a model of that "
                             "length learns by writing what people write")
    args = parser.parse_args(argv)
    if args.human and args.ensemble:
        parser.error("--human scores the references, no model: --ensemble is for a run's captions")
    check_drawing_options(parser, args)
    if args.samples and args.human:
        parser.error("--human scores the references, no model: --samples is for a run's captions")
    if args.timesteps and not args.human:
        parser.error("--timesteps is for --human (a run's own caption length is in its config.json)")
    if args.annotations is None:
        demo_dir = demo.ensure_demo()
        args.annotations = [str(demo_dir / "captions_val.json")]
        args.images = args.images or [str(demo_dir / "val2014")]
    if not args.images:
        parser.error("--annotations needs --images (the folders holding the photos)")
    try:
        result = human_ceiling(args) if args.human else evaluate(args)
    except (OSError, ValueError, WeightsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if result else 1


def human_ceiling(args) -> dict:
    """The metrics of one human caption per photo against the photo's other captions."""
    records, _ = load_caption_files(args.annotations, args.images)
    records = records[: args.limit] if args.limit else records
    references, _, _ = convert_captions([record.captions for record in records])
    keep = [index for index, refs in enumerate(references) if len(refs) >= 2]
    if not keep:
        print("error: --human needs photos with at least two captions", file=sys.stderr)
        return {}
    first = [references[index][0] for index in keep]
    captions = [(clause_cut(caption, args.timesteps - 1) if args.timesteps else caption, True) for caption in first]
    result = score(captions, [references[index][1:] for index in keep], [records[index].scene for index in keep])
    result.pop("CIDEr-D per image")
    print(format_table(result))
    return result


def evaluate(args) -> dict:
    """Captions the annotated photos from cached features and scores them; writes metrics.json, captions.json and
    samples.png."""
    captioner = Captioner(args.model, with_vgg=False, decode=args.decode, beam_size=args.beam_size,
                           lm_weight=args.lm_weight, prior_weight=args.prior_weight, ensemble=args.ensemble,
                           no_repeat=args.no_repeat, samples=args.samples, seed=args.seed or 0, judges=args.judge)
    records, report = load_caption_files(args.annotations, args.images)
    records = records[: args.limit] if args.limit else records
    for line in report.lines():
        print(f"  {line}")
    references, _, _ = convert_captions([record.captions for record in records])
    config = captioner.config
    cache, _ = cached_features([r.path for r in records], config.vgg_weights, config.image_size,
                               args.cache_dir, progress=not args.quiet, precision=config.vgg_precision,
                               layer=config.feature_layer)
    judged = [cached_features([r.path for r in records], judge.vgg_weights, judge.image_size, args.cache_dir,
                              progress=not args.quiet, precision=judge.vgg_precision, layer=judge.feature_layer)[0]
              for _, judge, _ in captioner.judges]  # each judge's own features of the photos
    complete = np.logical_and.reduce([cache.complete, *(judge.complete for judge in judged)])
    keep = [index for index in np.flatnonzero(complete) if references[index]]
    if not keep:
        print("error: no readable photo with a usable caption to evaluate on", file=sys.stderr)
        return {}
    found = captioner.candidates_cached(cache.features, keep, args.batch_size,
                                        n_best=args.samples + args.beam_size if args.samples else 1)
    if judged:
        rows = np.asarray(keep)
        found = captioner.judge(found, [np.asarray(judge.features[rows], dtype=np.float32) for judge in judged])
    captions = [(candidates[0].text, candidates[0].ended) for candidates in found]
    kept_references = [references[index] for index in keep]
    scenes = [records[index].scene for index in keep]
    result = score(captions, kept_references, scenes)
    if args.samples and all(isinstance(scene, dict) for scene in scenes):  # the hard benchmark's photos
        result[hard.ANY_CANDIDATE] = hard.any_right([[c.text for c in candidates] for candidates in found], scenes)
    per_image = result.pop("CIDEr-D per image")
    result.update(model=str(args.model), ensemble=[str(run) for run in args.ensemble], annotations=args.annotations,
                  decode=captioner.decode, beam_size=args.beam_size,
                  lm_weight=captioner.lm_weight if captioner.decode == "ctc-lm" else None,
                  prior_weight=captioner.prior_weight if captioner.steps is not None else None,
                  no_repeat=captioner.no_repeat if captioner.steps is not None else None,
                  samples=args.samples, seed=args.seed or 0, judges=[str(run) for run in args.judge],
                  arch=captioner.config.arch)
    print(format_table(result))

    stem = "-".join(Path(name).stem for name in args.annotations)
    if args.ensemble:
        stem += f"-ensemble-of-{len(args.ensemble) + 1}"
    out = Path(args.out or Path(args.model) / f"eval-{stem}")
    write_json(out / METRICS_FILE, result)
    write_json(out / CAPTIONS_FILE, [
        {"image_id": records[index].image_id, "file_name": records[index].path.name, "caption": text, "ended": bool(ended),
         "CIDEr-D": float(cider)} for index, (text, ended), cider in zip(keep, captions, per_image)])
    plot_samples([str(records[index].path) for index in keep], [text for text, _ in captions],
                 kept_references, np.array(per_image), out / SAMPLES_FILE)
    print(f"Wrote {out / METRICS_FILE}, {out / CAPTIONS_FILE} and {out / SAMPLES_FILE}")
    return result


if __name__ == "__main__":
    sys.exit(main())
