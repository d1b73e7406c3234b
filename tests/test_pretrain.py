"""pretrain.py: targets per third of the photo, and a weights file that train.py's VGG16 loads."""

import json

import numpy as np

import hard
import pretrain
from features import build_vgg16, preprocess


def test_targets_name_each_third_of_the_photo_and_with_pairs_which_colour_each_kind_is():
    scenes = [{"objects": [{"color": "red", "kind": "star", "position": "left"},
                           {"color": "blue", "kind": "star", "position": "right"}]}]
    thirds = pretrain.scene_targets(scenes, "thirds")
    assert thirds["count"].tolist() == [1]  # two objects: class 1
    on = lambda targets, labels: {label for label, value in zip(labels, targets[0]) if value}  # noqa: E731
    assert on(thirds["where"], pretrain.target_labels("thirds")) == {"left:red", "left:star", "right:blue", "right:star"}
    pairs = pretrain.scene_targets(scenes, "pairs")
    assert on(pairs["where"], pretrain.target_labels("pairs")) == {
        "left:red", "left:star", "left:red-star", "right:blue", "right:star", "right:blue-star"}
    assert on(pairs["present"], pretrain.target_names("pairs")) == {"red", "blue", "star", "red-star", "blue-star"}


def test_scenes_are_drawn_in_colour_deterministically_and_alike_in_parallel():
    images, scenes = pretrain.make_scenes(24, 32, progress=False)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    assert (images[..., 0] != images[..., 1]).any(axis=(1, 2)).all()  # never greyscale
    kinds = {obj["kind"] for scene in scenes for obj in scene["objects"]}
    assert kinds and not kinds & set(hard.FEATURE_HELD_OUT_KINDS)
    again, _ = pretrain.make_scenes(24, 32, progress=False)
    np.testing.assert_array_equal(images, again)
    many, many_scenes = pretrain.make_scenes(pretrain.CHUNK + 30, 32, progress=False)
    np.testing.assert_array_equal(many[:24], images)  # drawn by worker processes, the same scenes
    assert many_scenes[:24] == scenes and len(many_scenes) == len(many)


def test_the_probe_scenes_draw_what_training_never_does():
    _, scenes = pretrain.make_scenes(200, 16, progress=False, held_out=True)
    assert {obj["kind"] for scene in scenes for obj in scene["objects"]} >= set(hard.FEATURE_HELD_OUT_KINDS)
    assert {scene["background"] for scene in scenes} >= set(hard.FEATURE_HELD_OUT_BACKGROUNDS)
    assert any(scene["greyscale"] for scene in scenes)


def test_a_short_run_writes_weights_that_the_feature_extractor_loads(tmp_path):
    out = tmp_path / "vgg.weights.h5"
    report = tmp_path / "report.json"
    assert pretrain.main(["--num-images", "64", "--num-val", "32", "--image-size", "32", "--crop", "0",
                          "--epochs", "1", "--targets", "pairs", "--presence-head", "--probe-scenes", "80", "--probe-size", "32",
                          "--out", str(out), "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["recipe"]["targets"] == "pairs" and results["held_out"]["val_where_auc"] > 0
    assert {"color AUC", "kind AUC", "kind AUC, held-out kinds", "count"} <= set(results["probe"]) == set(results["probe_random"])
    trained, random = build_vgg16(str(out), 64), build_vgg16("none", 64)  # any image size: the base is convolutional
    moved = [np.abs(a - b).max() for a, b in zip(trained.get_weights(), random.get_weights())]
    assert len(moved) == 26 and max(moved) > 0  # every conv layer's kernel and bias, trained away from the seed


def test_folding_batch_norm_gives_plain_vgg16_computing_the_same_features():
    trained = pretrain.build_batch_norm_vgg16(32)
    rng = np.random.default_rng(0)
    for layer in trained.layers:  # statistics far from the identity, so that folding has work to do
        if "_bn" in layer.name:
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 1, mean.shape), rng.uniform(0.5, 3, variance.shape)])
    images = rng.normal(0, 50, (2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(trained(images, training=False))
    folded = np.asarray(pretrain.fold_batch_norm(trained, 32)(images))
    assert np.abs(expected).max() > 1 and np.abs(folded - expected).max() < 1e-4 * np.abs(expected).max()


def test_unfolding_starts_the_batch_normalised_network_from_plain_weights_computing_the_same(tmp_path):
    plain_file = tmp_path / "plain.weights.h5"
    pretrain.save_half(build_vgg16("none", 32), plain_file)
    plain = build_vgg16(str(plain_file), 32)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    trained = pretrain.build_batch_norm_vgg16(32)
    pretrain.unfold_batch_norm(trained, str(plain_file), images)
    expected = np.asarray(plain(preprocess(images)))
    scale = np.abs(expected).max()
    assert scale > 1
    for training in (False, True):  # its statistics are the calibration batch's, so batch statistics agree too
        assert np.abs(np.asarray(trained(preprocess(images), training=training)) - expected).max() < 1e-4 * scale
    folded = pretrain.fold_batch_norm(trained, 32)  # and folding it back gives the plain weights
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(folded.get_weights(), plain.get_weights()))


def test_a_crop_run_can_start_from_weights_instead_of_from_scratch(tmp_path):
    start, out = tmp_path / "start.weights.h5", tmp_path / "out.weights.h5"
    pretrain.save_half(build_vgg16("none", 32), start)
    argv = ["--num-images", "32", "--num-val", "8", "--image-size", "64", "--crop", "32", "--epochs", "1",
            "--probe-scenes", "0", "--learning-rate", "1e-9", "--out", str(out)]
    images = preprocess(np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))

    def distance(weights):  # how far its features are from the start's, relative to their size
        expected = np.asarray(build_vgg16(str(start), 64)(images))
        return np.abs(np.asarray(build_vgg16(str(weights), 64)(images)) - expected).max() / np.abs(expected).max()

    assert pretrain.main([*argv, "--init", str(start)]) == 0
    assert distance(out) < 0.1  # a step of 1e-9 leaves it where it started: only the statistics move a little
    assert pretrain.main(argv) == 0
    assert distance(out) > 0.5  # from scratch it is another network


def test_weights_are_stored_in_half_precision(tmp_path):
    import h5py

    out = tmp_path / "vgg.weights.h5"
    vgg = build_vgg16("none", 32)
    pretrain.save_half(vgg, out)
    with h5py.File(out) as file:
        dtypes = set()
        file.visititems(lambda name, item: dtypes.add(str(item.dtype)) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {"float16"}
    loaded = build_vgg16(str(out), 32)
    assert all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(loaded.get_weights(), vgg.get_weights()))


SCENE = {"width": 640, "height": 480, "objects": [  # letterboxed to 160 px: a quarter of the size, 20 px bars above and below
    {"color": "red", "kind": "star", "x": 0.25, "y": 0.5, "size": 0.2},     # 32 px square around (40, 80)
    {"color": "blue", "kind": "star", "x": 0.75, "y": 0.25, "size": 0.1}]}  # 16 px square around (120, 50)


def test_object_boxes_follow_the_letterbox():
    assert pretrain.object_boxes(SCENE, 160) == [(24.0, 64.0, 56.0, 96.0), (112.0, 42.0, 128.0, 58.0)]


def test_a_crop_shows_what_is_mostly_inside_it_and_leaves_cut_objects_unknown():
    names = pretrain.target_names("pairs")
    said = lambda crop: {value: {n for n, v in zip(names, pretrain.crop_targets(SCENE, 160, crop)) if v == value}  # noqa: E731
                         for value in (1, -1)}
    assert said((0, 40, 64)) == {1: {"red", "star", "red-star"}, -1: set()}
    assert said((96, 0, 64)) == {1: {"blue", "star", "blue-star"}, -1: set()}
    assert said((44, 40, 64)) == {1: set(), -1: {"red", "star", "red-star"}}  # most of the red star's square is cut off
    assert said((0, 40, 160)) == {1: {"red", "blue", "star", "red-star", "blue-star"}, -1: set()}
    assert said((60, 100, 50)) == {1: set(), -1: set()}  # nothing there: every name is absent


def test_an_object_in_a_random_colour_or_a_grey_scene_teaches_its_kind_and_no_colour():
    names = pretrain.target_names("pairs")
    said = lambda scene, crop: {value: {n for n, v in zip(names, pretrain.crop_targets(scene, 160, crop)) if v == value}  # noqa: E731
                                for value in (1, -1)}
    teal = {**SCENE, "objects": [{**SCENE["objects"][0], "rgb": [10, 200, 200]}, SCENE["objects"][1]]}
    assert pretrain.nearest_colors([10, 200, 200], 2) == ["blue", "green"]
    # the star shows its kind; the palette colours nearest to teal are unknown, and it is not red
    assert said(teal, (0, 40, 64)) == {1: {"star"}, -1: {"blue", "green", "blue-star", "green-star"}}
    # the blue star beside it still shows its colour
    assert said(teal, (0, 40, 160)) == {1: {"star", "blue", "blue-star"}, -1: {"green", "green-star"}}
    colours = set(hard.COLORS) | {name for name in names if "-" in name}
    assert said({**SCENE, "greyscale": True}, (0, 40, 160)) == {1: {"star"}, -1: colours}


def test_random_colours_and_grey_scenes_are_drawn_on_request_and_keep_the_held_out_pairs_unseen():
    images, scenes = pretrain.draw_scenes(range(120), 32, hues=0.5, greyscale=0.2)
    objects = [obj for scene in scenes for obj in scene["objects"]]
    recoloured = [obj for obj in objects if "rgb" in obj]
    assert 0.3 < len(recoloured) / len(objects) < 0.7 and 0.1 < np.mean([scene["greyscale"] for scene in scenes]) < 0.3
    assert not {(pretrain.nearest_colors(obj["rgb"])[0], obj["kind"]) for obj in recoloured} & hard.UNSEEN_PAIRS
    grey = [index for index, scene in enumerate(scenes) if scene["greyscale"]]
    assert (images[grey, ..., 0] == images[grey, ..., 1]).all()
    _, plain = pretrain.draw_scenes(range(120), 32)  # the default recipe: palette colours, never grey
    assert not any("rgb" in obj or scene["greyscale"] for scene in plain for obj in scene["objects"])


def test_recolouring_needs_crops():
    import pytest

    with pytest.raises(SystemExit):
        pretrain.main(["--crop", "0", "--hues", "0.5"])


def test_crop_batches_cut_fresh_crops_each_epoch_and_the_same_ones_for_validation():
    images, scenes = pretrain.make_scenes(40, 96, progress=False)
    batches = pretrain.CropBatches(images, scenes, 48, 8, "pairs", shuffle=True)
    crops, targets = batches[0]
    assert crops.shape == (8, 48, 48, 3) and crops.dtype == np.uint8 and targets["present"].shape == (8, 80)
    assert (targets["present"] == 1).any(axis=1).mean() >= 0.5  # most crops are centred near an object
    np.testing.assert_array_equal(batches[0][0], crops)  # a batch read twice within an epoch is the same
    # each crop is a square of its scene, with the targets that crop_targets gives that square
    first = batches.order[0]
    squares = [(left, top) for top in range(49) for left in range(49)
               if np.array_equal(images[first, top : top + 48, left : left + 48], crops[0])]
    assert any(np.array_equal(pretrain.crop_targets(scenes[first], 96, (left, top, 48)), targets["present"][0])
               for left, top in squares)
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][0], crops)
    val = pretrain.CropBatches(images, scenes, 48, 8, "pairs", shuffle=False)
    before = val[1][0]
    val.on_epoch_end()
    np.testing.assert_array_equal(val[1][0], before)


def test_masked_loss_skips_unknown_targets():
    logits = np.array([[5.0, -5.0, 40.0]], np.float32)
    known = np.asarray(pretrain.masked_binary_crossentropy(np.array([[1.0, 0.0, -1.0]], np.float32), logits))
    assert known.shape == (1,) and known[0] < 0.01  # the confident wrong third logit is not counted
    wrong = np.asarray(pretrain.masked_binary_crossentropy(np.array([[1.0, 0.0, 0.0]], np.float32), logits))
    assert wrong[0] > 10


def test_a_short_crop_run_writes_weights_that_the_feature_extractor_loads(tmp_path):
    out = tmp_path / "vgg.weights.h5"
    report = tmp_path / "report.json"
    assert pretrain.main(["--num-images", "64", "--num-val", "32", "--image-size", "64", "--crop", "32", "--epochs", "1",
                          "--probe-scenes", "0", "--out", str(out), "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["recipe"]["crop"] == 32 and results["held_out"]["val_loss"] > 0
    assert build_vgg16(str(out), 64).output_shape == (None, 2, 2, 512)


def test_the_shipped_weights_tell_kinds_apart_where_a_random_vgg16_cannot():
    # --vgg-weights synthetic works from a fresh clone: the file is in the repository, and it sees shapes on new
    # scenes (the kinds and background its training never drew among them), which a random VGG16 does not.
    import features

    assert features.weights_file("synthetic").stat().st_size > 20 * 2**20  # the weights, not a pointer to them
    images, scenes = pretrain.make_scenes(200, 150, first_seed=10**6, progress=False, held_out=True)
    shipped = pretrain.probe_generalisation("synthetic", images, scenes)
    random = pretrain.probe_generalisation("none", images, scenes)
    assert shipped["kind AUC"] > 0.85 and random["kind AUC"] < 0.65
    assert shipped["color AUC"] > 0.9
