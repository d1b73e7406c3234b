"""The feature ceiling: how much of each attribute a linear probe reads off the VGG16 features the captioner reads.

    $ python probe.py                                   # the hard benchmark's training photos, random VGG16
    $ python probe.py --vgg-weights weights.h5 --annotations data/hard/captions_train.json --images data/hard/train2014
    $ python probe.py --vgg-weights synthetic --test-annotations data/hard/captions_val-unseen.json \
          --test-images data/hard/val-unseen2014    # fitted on every training photo, scored on a held-out set

For every photo of a generated set (hard.py's scenes), the pool5 features
(from the same cache train.py uses) are max- and mean-pooled over the grid
and standardised; ridge regression, fitted on the first 75% of the photos,
predicts which colours, kinds and positions are present and how many objects
there are; the last 25% are scored (or, with ``--test-annotations``, the
probe is fitted on all of them and scores a held-out set: the ceiling of
the captioner's own evaluation, colour–kind pairs training never drew
among them):

    AUC            how well the probe's score ranks photos with the attribute above those without
    top-k          the share of present colours (kinds, positions) among the probe's k best guesses,
                   k being how many the photo has: comparable with the captioner's per-group scores
    count          the share of photos whose number of objects the probe gets exactly
    position of each kind
                   read off the whole grid, not pooled (pooling loses where things are): for each
                   object alone in its group, whether its third is among the k thirds the probe
                   scores best for its kind (k: how many thirds that kind holds). The ceiling of the
                   captioner's "position, kind named" (position top-k above only says which thirds
                   hold something, whatever it is)
    held-out       AUC on what pretrain.py never draws (hard.FEATURE_HELD_OUT_KINDS; sky backgrounds):
                   whether a synthetic VGG16's features generalise beyond its own scenes
    unseen pairs   kind top-k on the colour–kind pairs training never drew (hard.UNSEEN_PAIRS), when the
                   held-out set has some: what the features hold of the kind in evaluate.py's
                   "color and kind, unseen pairs"
    every colour and kind
                   the share of photos whose k best-scored kinds are exactly their kinds and (colour
                   photos) whose k best-scored colours are exactly their colours: the ceiling of the
                   captioner's photo-level score of the same name, and a ceiling (paired, counted and
                   placed aside) of its "every object right"; then the same on the photos of each
                   number of objects, as evaluate.py gives the captioner's
    every colour and kind, each placed
                   every colour and kind, and each object alone in its group in a third ``position of
                   each kind`` ranks among its kind's: the ceiling of the captioner's "every object
                   right" with how colours pair with kinds and how many of each there are given (the
                   probe is told them); then by number of objects
    greyscale told the share of photos the probe tells greyscale or colour right

A captioner that reads these features can do better than a linear probe, so
this is a floor on what the features hold; a captioner far below it is
losing what the features hold.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402

import numpy as np  # noqa: E402

import hard  # noqa: E402
import runtime  # noqa: E402
from cli import HelpFormatter, bounded_int, existing_dir, existing_file, file_path, folder_path, vgg_weights  # noqa: E402
from dataset import load_caption_files  # noqa: E402
from features import DEFAULT_CACHE_DIR, FEATURE_LAYERS, WeightsUnavailable, cached_features  # noqa: E402
from fileio import write_json  # noqa: E402
from model import LIMITS, CaptionerConfig  # noqa: E402

RIDGE_PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)  # tried on a held-out part of the fitting photos
GRID_RIDGE_PENALTIES = (1.0, 10.0, 100.0, 1000.0, 10000.0)  # the same for the whole grid (many more features)
GRID_PHOTOS = 6000  # the grid probe fits on at most this many photos: its system is photos × photos (or features²)
EACH_PLACED = "every colour and kind, each placed"  # and every object alone in its group in its third


def pooled(features: np.ndarray) -> np.ndarray:
    """Max- and mean-pooled over the grid: ``(n, rows, cols, channels)`` -> ``(n, 2 * channels)``."""
    features = np.asarray(features, dtype=np.float32)
    return np.concatenate([features.max(axis=(1, 2)), features.mean(axis=(1, 2))], axis=1)


def targets(scenes: list[dict]) -> dict[str, np.ndarray]:
    """Per attribute, a 0/1 matrix ``(photos, values)``; ``count`` is one-hot over 1..4 objects, ``greyscale`` one
    column."""
    def indicator(values, key):
        return np.array([[any(obj[key] == value for obj in scene["objects"]) for value in values] for scene in scenes],
                        dtype=np.float32)

    counts = np.array([len(scene["objects"]) for scene in scenes])
    return {"color": indicator(list(hard.COLORS), "color"), "kind": indicator(list(hard.KINDS), "kind"),
            "position": indicator(list(hard.POSITIONS), "position"),
            "count": (counts[:, None] == np.arange(1, 5)[None, :]).astype(np.float32),
            "greyscale": np.array([[scene["greyscale"]] for scene in scenes], dtype=np.float32)}


def every_color_and_kind(kind_scores: np.ndarray, color_scores: np.ndarray, scenes: list[dict]) -> np.ndarray:
    """Per photo, whether its kinds are exactly the k best-scored kinds and, in a colour photo, its colours exactly
    the k best-scored colours (k: how many each photo has; ``color_scores`` for every photo, greyscale ones
    ignored): the ceiling of the captioner's ``hard.EVERY_COLOR_AND_KIND``, told how many to name."""
    labels = targets(scenes)

    def exact(row, present):
        return set(np.argsort(-row)[: int(present.sum())]) == set(np.flatnonzero(present))

    return np.array([exact(kind_row, kind_labels) and (scene["greyscale"] or exact(color_row, color_labels))
                     for kind_row, kind_labels, color_row, color_labels, scene
                     in zip(kind_scores, labels["kind"], color_scores, labels["color"], scenes)], dtype=bool)


def kind_positions(scenes: list[dict]) -> np.ndarray:
    """A 0/1 matrix ``(photos, kinds, thirds)``: which thirds hold an object of which kind."""
    kinds, thirds = list(hard.KINDS), list(hard.POSITIONS)
    y = np.zeros((len(scenes), len(kinds), len(thirds)), np.float32)
    for row, scene in enumerate(scenes):
        for obj in scene["objects"]:
            y[row, kinds.index(obj["kind"]), thirds.index(obj["position"])] = 1.0
    return y


def kind_position_share(scores: np.ndarray, scenes: list[dict]) -> float | None:
    """The share of objects alone in their group (hard.groups) whose third is among the k best-scored thirds
    for their kind (``scores`` shaped as ``kind_positions``; k: how many thirds hold that kind); None without one."""
    hits = [hit for photo in kinds_placed(scores, scenes) for hit in photo]
    return float(np.mean(hits)) if hits else None


def kinds_placed(scores: np.ndarray, scenes: list[dict]) -> list[list[bool]]:
    """Per photo, for each object alone in its group, whether its third is among the k best-scored thirds for its
    kind (``kind_position_share``'s hits, photo by photo)."""
    labels, kinds = kind_positions(scenes), list(hard.KINDS)
    placed = []
    for row_scores, row_labels, scene in zip(scores, labels, scenes):
        hits = []
        for group in hard.groups(scene):
            if group.count == 1:
                kind = kinds.index(group.kind)
                best = np.argsort(-row_scores[kind])[: int(row_labels[kind].sum())]
                hits.append(list(hard.POSITIONS).index(group.position) in best)
        placed.append(hits)
    return placed


def grid_ridge_scores(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Ridge regression from many features (a whole grid, flattened), in its dual form when there are more features
    than photos, the penalty chosen as ``choose_penalty`` does: ``x`` standardised ``(photos, features)``, ``y``
    ``(photos, outputs)``."""
    def fit_predict(x_fit, y_fit, x_new, penalty):
        if len(x_fit) > x_fit.shape[1]:
            return predict_ridge(fit_ridge(x_fit, y_fit, penalty), x_new)
        mean_x, mean_y = x_fit.mean(0), y_fit.mean(0)
        centred = x_fit - mean_x
        gram = centred @ centred.T
        coefficients = np.linalg.solve(gram + penalty * len(x_fit) * np.eye(len(x_fit), dtype=gram.dtype),
                                       y_fit - mean_y)
        return (x_new - mean_x) @ (centred.T @ coefficients) + mean_y

    split = int(len(x) * 0.8)
    errors = [np.mean((fit_predict(x[:split], y[:split], x[split:], penalty) - y[split:]) ** 2)
              for penalty in GRID_RIDGE_PENALTIES]
    return fit_predict(x, y, x_test, GRID_RIDGE_PENALTIES[int(np.argmin(errors))])


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Weights ``(features + 1, outputs)`` of ridge regression with a bias (not penalised)."""
    x = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    gram = x.T @ x + penalty * len(x) * np.diag(np.r_[np.ones(x.shape[1] - 1), 0.0])
    return np.linalg.solve(gram, x.T @ y)


def predict_ridge(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1) @ weights


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The probability that a positive outranks a negative, ties counting half (Mann–Whitney); None without both."""
    positive = labels > 0
    num_positive, num_negative = int(positive.sum()), int((~positive).sum())
    if not num_positive or not num_negative:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based, tied scores share their mean rank
    ranks = average_rank[inverse]
    return float((ranks[positive].sum() - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def top_k_share(scores: np.ndarray, labels: np.ndarray) -> float:
    """The share of present values among each photo's k best-scored values, k = how many it has."""
    hits, total = 0, 0
    for row_scores, row_labels in zip(scores, labels):
        k = int(row_labels.sum())
        if k:
            hits += int(row_labels[np.argsort(-row_scores)[:k]].sum())
            total += k
    return hits / total if total else 0.0


def unseen_pair_kinds_ranked(scores: np.ndarray, labels: np.ndarray, scenes: list[dict]) -> float | None:
    """The share of colour photos' unseen colour–kind pairs (hard.UNSEEN_PAIRS) whose kind is among the photo's k
    best-scored kinds (k = how many kinds it has); None when no photo has one."""
    kinds = list(hard.KINDS)
    hits = []
    for row_scores, row_labels, scene in zip(scores, labels, scenes):
        pairs = {(obj["color"], obj["kind"]) for obj in scene["objects"]} & hard.UNSEEN_PAIRS
        if pairs and not scene["greyscale"]:
            best = np.argsort(-row_scores)[: int(row_labels.sum())]
            hits += [kinds.index(kind) in best for _, kind in pairs]
    return float(np.mean(hits)) if hits else None


def probe(features: np.ndarray, scenes: list[dict], fit_share: float = 0.75,
          test_features: np.ndarray | None = None, test_scenes: list[dict] | None = None) -> dict:
    """The probe's scores per attribute (see the module docstring).

    Fitted on the first ``fit_share`` of the photos and scored on the rest; or,
    given ``test_features`` and ``test_scenes`` (a held-out set), fitted on all
    the photos and scored on those.
    """
    x, grid = pooled(features), _flattened(features)
    if test_features is None:
        split = int(len(x) * fit_share)
        x, scenes, x_test, test_scenes = x[:split], scenes[:split], x[split:], scenes[split:]
        grid, grid_test = grid[:split], grid[split:]
    else:
        x_test, grid_test = pooled(test_features), _flattened(test_features)
    mean, spread = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / spread, (x_test - mean) / spread
    results = {"photos fitted": len(x), "photos scored": len(x_test)}
    fit_targets, test_targets = targets(scenes), targets(test_scenes)
    every_photo = {}  # each attribute's scores on every test photo
    for name, y in fit_targets.items():
        y_test = test_targets[name]
        if name == "color":  # colours are not in greyscale photos
            fit_rows = np.flatnonzero([not scene["greyscale"] for scene in scenes])
            test_rows = np.flatnonzero([not scene["greyscale"] for scene in test_scenes])
        else:
            fit_rows, test_rows = np.arange(len(x)), np.arange(len(x_test))
        penalty = choose_penalty(x[fit_rows], y[fit_rows])
        weights = fit_ridge(x[fit_rows], y[fit_rows], penalty)
        every_photo[name] = predict_ridge(weights, x_test)
        scores, y_test = every_photo[name][test_rows], y_test[test_rows]
        if name == "count":
            results["count"] = float(np.mean(scores.argmax(1) == y_test.argmax(1)))
            continue
        if name == "greyscale":  # told apart at the midpoint of the two kinds of fitted photos' mean scores
            fitted, grey = predict_ridge(weights, x[fit_rows])[:, 0], y[fit_rows, 0] > 0
            if grey.any() and not grey.all():
                threshold = (fitted[grey].mean() + fitted[~grey].mean()) / 2
                results[hard.GREYSCALE_TOLD] = float(np.mean((scores[:, 0] > threshold) == (y_test[:, 0] > 0)))
            continue
        aucs = [auc(scores[:, column], y_test[:, column]) for column in range(y.shape[1])]
        results[f"{name} AUC"] = _mean(aucs)
        results[f"{name} top-k"] = top_k_share(scores, y_test)
        if name == "kind":  # the kinds and the background pretrain.py never draws: do its features generalise?
            held = [list(hard.KINDS).index(kind) for kind in hard.FEATURE_HELD_OUT_KINDS]
            results["kind AUC, held-out kinds"] = _mean([aucs[column] for column in held])
            unseen = unseen_pair_kinds_ranked(scores, y_test, test_scenes)
            if unseen is not None:
                results["kind top-k, unseen pairs"] = unseen
        if name in ("color", "kind"):
            sky = np.array([test_scenes[row]["background"] in hard.FEATURE_HELD_OUT_BACKGROUNDS for row in test_rows])
            results[f"{name} AUC, held-out bg"] = _mean(
                [auc(scores[sky, column], y_test[sky, column]) for column in range(y.shape[1])])
    right = every_color_and_kind(every_photo["kind"], every_photo["color"], test_scenes)
    objects = np.array([len(scene["objects"]) for scene in test_scenes])
    results[hard.EVERY_COLOR_AND_KIND] = float(right.mean())
    results.update({hard.by_objects(int(count), hard.EVERY_COLOR_AND_KIND): float(right[objects == count].mean())
                    for count in np.unique(objects)})
    if len(grid) > GRID_PHOTOS:
        grid, scenes = grid[:GRID_PHOTOS], scenes[:GRID_PHOTOS]
        results["photos fitted, grid"] = GRID_PHOTOS
    mean, spread = grid.mean(0), grid.std(0) + 1e-6
    y = kind_positions(scenes)
    scores = grid_ridge_scores((grid - mean) / spread, y.reshape(len(y), -1), (grid_test - mean) / spread)
    scores = scores.reshape(len(scores), *y.shape[1:])
    share = kind_position_share(scores, test_scenes)
    if share is not None:
        results["position of each kind"] = share
    placed = right & np.array([all(hits) for hits in kinds_placed(scores, test_scenes)])
    results[EACH_PLACED] = float(placed.mean())
    results.update({hard.by_objects(int(count), EACH_PLACED): float(placed[objects == count].mean())
                    for count in np.unique(objects)})
    return results


def _flattened(features: np.ndarray) -> np.ndarray:
    """The whole grid as one row per photo: ``(n, rows, cols, channels)`` -> ``(n, rows * cols * channels)``."""
    return np.asarray(features, dtype=np.float32).reshape(len(features), -1)


def _mean(values) -> float:
    """The mean of the values that are not None (NaN when there are none)."""
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else float("nan")


def choose_penalty(x: np.ndarray, y: np.ndarray) -> float:
    """The ridge penalty with the least squared error on the last fifth of the fitting photos."""
    split = int(len(x) * 0.8)
    errors = [np.mean((predict_ridge(fit_ridge(x[:split], y[:split], penalty), x[split:]) - y[split:]) ** 2)
              for penalty in RIDGE_PENALTIES]
    return RIDGE_PENALTIES[int(np.argmin(errors))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--annotations", type=existing_file, default=str(hard.HARD_DIR / "captions_train.json"),
                        help="a generated caption file whose images carry hard.py scenes")
    parser.add_argument("--images", type=existing_dir, default=str(hard.HARD_DIR / "train2014"), help="the folder of its photos")
    parser.add_argument("--test-annotations", type=existing_file,
                        help="fit on every photo of --annotations and score the probe on this held-out caption file "
                             "(e.g. data/hard/captions_val-unseen.json) instead of on the last quarter")
    parser.add_argument("--test-images", type=existing_dir, help="the folder of --test-annotations' photos")
    parser.add_argument("--vgg-weights", type=vgg_weights, default="none", help="imagenet, synthetic (pretrain.py's), a local .h5 file, or none (random)")
    parser.add_argument("--image-size", type=bounded_int(*LIMITS["image_size"]), default=CaptionerConfig.image_size, help="letterbox size")
    parser.add_argument("--feature-layer", choices=list(FEATURE_LAYERS), default=CaptionerConfig.feature_layer,
                        help="as train.py's: the VGG16 grid to probe")
    parser.add_argument("--vgg-precision", choices=runtime.EXTRACTION_PRECISIONS, default="auto",
                        help="as train.py's: the same features as the captioner reads")
    parser.add_argument("--cache-dir", type=folder_path, default=str(DEFAULT_CACHE_DIR), help="VGG16 feature cache")
    parser.add_argument("--json", metavar="FILE", type=file_path, help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if (args.test_annotations is None) != (args.test_images is None):
        parser.error("--test-annotations and --test-images go together")
    try:
        features, scenes = _features_and_scenes(args.annotations, args.images, args)
        test_features, test_scenes = (_features_and_scenes(args.test_annotations, args.test_images, args)
                                      if args.test_annotations else (None, None))
    except (OSError, ValueError, WeightsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = probe(features, scenes, test_features=test_features, test_scenes=test_scenes)
    width = max(len(name) for name in results) + 2
    print(f"{'attribute':<{width}}{'value':>8}")
    for name, value in results.items():
        print(f"{name:<{width}}{value:>8.3f}" if isinstance(value, float) else f"{name:<{width}}{value:>8d}")
    if args.json:
        write_json(args.json, {"annotations": args.annotations, "test_annotations": args.test_annotations,
                               "vgg_weights": args.vgg_weights,
                               "image_size": args.image_size, "feature_layer": args.feature_layer, **results})
    return 0


def _features_and_scenes(annotations: str, images: str, args) -> tuple[np.ndarray, list[dict]]:
    """The cached features of a generated set's readable photos, and their scenes."""
    records, _ = load_caption_files([annotations], [images])
    if not records or not all(isinstance(record.scene, dict) for record in records):
        raise ValueError(f"{annotations} has no hard.py scenes to probe (python demo.py --hard makes some).")
    cache, _ = cached_features([record.path for record in records], args.vgg_weights, args.image_size,
                               args.cache_dir, progress=not args.quiet,
                               precision=runtime.extraction_precision(args.vgg_precision), layer=args.feature_layer)
    rows = np.flatnonzero(cache.complete)
    return cache.features[rows], [records[row].scene for row in rows]


if __name__ == "__main__":
    sys.exit(main())
