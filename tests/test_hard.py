"""The hard benchmark: its captions parse back to their scenes, its held-out parts are held out, its scorer catches mistakes."""

import json

import numpy as np
import pytest
from PIL import Image

import hard
import probe
from dataset import load_caption_files
from kana import text_to_katakana
from metrics import format_table
from recolour import SWAPS


@pytest.fixture(scope="module")
def hard_set(tmp_path_factory):
    return hard.generate(tmp_path_factory.mktemp("hard"), seed=1, num_train=60, num_val=30)


def test_it_is_stair_format_with_coco_sized_photos(hard_set):
    for split in hard.SPLITS:
        records, report = load_caption_files([hard_set / f"captions_{split}.json"], [hard_set / f"{split}2014"])
        assert len(records) == (60 if split == "train" else 30) and not report.skipped
        assert all(len(record.captions) == hard.CAPTIONS_PER_IMAGE for record in records)
        with Image.open(records[0].path) as image:
            assert image.size in hard.SIZES and image.format == "JPEG"


def test_every_caption_scores_full_marks_against_its_own_scene(hard_set):
    for split in hard.SPLITS:
        data = json.loads((hard_set / f"captions_{split}.json").read_text(encoding="utf-8"))
        scenes = {image["id"]: image["scene"] for image in data["images"]}
        for annotation in data["annotations"]:
            scores = hard.score_caption(text_to_katakana(annotation["caption"]), scenes[annotation["image_id"]])
            assert scores["every object right"] == 1.0 and scores["absent colour named"] == 0.0, annotation
            assert scores[hard.EVERY_COLOR_AND_KIND] == scores[hard.GREYSCALE_TOLD] == 1.0, annotation


def test_unseen_pairs_and_styles_are_held_out(hard_set):
    def scenes(split):
        data = json.loads((hard_set / f"captions_{split}.json").read_text(encoding="utf-8"))
        return [image["scene"] for image in data["images"]], [a["caption"] for a in data["annotations"]]

    def unseen_pair(scene):
        return bool({(o["color"], o["kind"]) for o in scene["objects"]} & hard.UNSEEN_PAIRS)

    def unseen_style(caption):
        return "見え" in caption or "写っているのは" in caption

    for split, (pairs_held_out, styles_held_out) in {"train": (False, False), "val": (False, False),
                                                     "val-unseen": (True, True), "val-styles": (False, True),
                                                     "val-pairs": (True, False)}.items():
        split_scenes, captions = scenes(split)
        assert [unseen_pair(scene) for scene in split_scenes] == [pairs_held_out] * len(split_scenes), split
        assert [unseen_style(caption) for caption in captions] == [styles_held_out] * len(captions), split


SCENE = {"greyscale": False, "objects": [
    {"color": "red", "kind": "circle", "position": "left", "size": 0.2},
    {"color": "blue", "kind": "star", "position": "middle", "size": 0.2},
    {"color": "blue", "kind": "star", "position": "right", "size": 0.2}]}


@pytest.mark.parametrize("caption, expected", [
    ("左に赤い丸、青い星が二つあります。", {"every object right": 1.0, "count": 1.0, "absent colour named": 0.0,
                                      hard.EVERY_COLOR_AND_KIND: 1.0, hard.GREYSCALE_TOLD: 1.0}),
    ("左に赤い丸、青い星が三つあります。", {"every object right": 0.0, "count": 0.5, hard.EVERY_COLOR_AND_KIND: 1.0}),
    ("右に赤い丸、青い星が二つあります。", {"every object right": 0.0, "position": 0.0, hard.POSITION_KIND_NAMED: 0.0,
                                      hard.EVERY_COLOR_AND_KIND: 1.0}),  # however they are placed
    ("左に青い丸、赤い星が二つあります。", {"every object right": 0.0, "color and kind": 0.0,
                                      hard.EVERY_COLOR_AND_KIND: 1.0}),  # or paired
    ("灰色の写真で、左に赤い丸、青い星が二つあります。", {"every object right": 1.0, hard.GREYSCALE_TOLD: 0.0}),
    ("左に緑の丸、青い星が二つあります。", {"every object right": 0.0, "color": 0.5, "absent colour named": 1.0,
                                      "position": 1.0, "count": 1.0}),  # the kind's position and count, all the same
    ("左に赤い丸があります。", {"every object right": 0.0, "kind": 0.5, "color and kind": 0.5,
                            hard.EVERY_COLOR_AND_KIND: 0.0}),
    ("左に赤い三角、青い星が二つあります。", {"kind": 0.5, "color": 1.0, "position": 0.0,
                                      hard.POSITION_KIND_NAMED: None}),  # no position of a kind not named
    ("左に赤い丸、青い星が二つ、右に黄色い星があります。", {"every object right": 0.0, "absent colour named": 1.0,
                                               hard.EVERY_COLOR_AND_KIND: 0.0}),
])
def test_the_scorer_catches_each_kind_of_mistake(caption, expected):
    scores = hard.score_caption(text_to_katakana(caption), SCENE)
    for name, value in expected.items():
        assert scores[name] == value, (caption, name, scores)


def test_greyscale_photos_are_scored_without_colours():
    scene = {**SCENE, "greyscale": True}
    assert hard.score_caption(text_to_katakana("左に丸、星が二つあります。"), scene)["every object right"] == 1.0
    scores = hard.score_caption(text_to_katakana("左に赤い丸、星が二つあります。"), scene)
    assert scores["color"] is None and scores["absent colour named"] == 1.0  # no colour can be seen
    assert scores[hard.EVERY_COLOR_AND_KIND] == 1.0 and scores[hard.GREYSCALE_TOLD] == 0.0  # not called grey
    told = hard.score_caption(text_to_katakana("灰色の写真で、左に丸、星が二つあります。"), scene)
    assert told[hard.GREYSCALE_TOLD] == 1.0


def test_unseen_pairs_are_scored_on_their_own():
    scene = {"greyscale": False, "objects": [
        {"color": "red", "kind": "star", "position": "left", "size": 0.2},  # a pair training never draws
        {"color": "blue", "kind": "circle", "position": "right", "size": 0.2}]}
    assert ("red", "star") in hard.UNSEEN_PAIRS and ("blue", "circle") not in hard.UNSEEN_PAIRS
    composed = hard.score_caption(text_to_katakana("左に赤い星、右に青い丸があります。"), scene)
    apart = hard.score_caption(text_to_katakana("左に赤い丸、右に青い丸があります。"), scene)
    assert (composed[hard.UNSEEN_PAIRS_NAMED], apart[hard.UNSEEN_PAIRS_NAMED]) == (1.0, 0.0)
    assert apart["color and kind"] == 0.5
    assert hard.score_caption(text_to_katakana("左に赤い丸、青い星が二つあります。"), SCENE)[hard.UNSEEN_PAIRS_NAMED] is None
    result = hard.score([text_to_katakana("左に赤い星、右に青い丸があります。")] * 2, [scene, SCENE])
    assert result[hard.UNSEEN_PAIRS_NAMED] == 1.0  # the mean over the photos that have an unseen pair


def test_auc_and_top_k_on_hand_made_scores():
    assert probe.auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert probe.auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    assert probe.auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert probe.auc(np.array([0.5, 0.5]), np.array([1, 1])) is None
    assert probe.top_k_share(np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]]), np.array([[1, 0, 1], [1, 0, 0]])) == 2 / 3


def test_every_colour_and_kind_asks_for_exactly_the_photos_kinds_and_colours():
    scenes = [SCENE, {**SCENE, "greyscale": True}]  # a red circle and two blue stars
    kinds, colors = probe.targets(scenes)["kind"], probe.targets(scenes)["color"]
    assert probe.every_color_and_kind(kinds, colors, scenes).tolist() == [True, True]
    swapped = colors.copy()
    swapped[:, [list(hard.COLORS).index("red"), list(hard.COLORS).index("green")]] = swapped[
        :, [list(hard.COLORS).index("green"), list(hard.COLORS).index("red")]]  # green ranked where red is
    assert probe.every_color_and_kind(kinds, swapped, scenes).tolist() == [False, True]  # greyscale: colours not asked
    assert not probe.every_color_and_kind(kinds[:, ::-1], colors, scenes).any()  # other kinds ranked first


def test_the_probe_reads_what_the_features_hold():
    """Features that carry each colour in a channel of their own: the probe finds the colours, not the kinds."""
    rng = np.random.default_rng(0)
    scenes = [hard.random_scene(rng) for _ in range(400)]
    features = rng.normal(size=(len(scenes), 2, 2, 16)).astype(np.float32)
    for row, scene in enumerate(scenes):
        for obj in scene["objects"]:
            if not scene["greyscale"]:
                features[row, 0, 0, list(hard.COLORS).index(obj["color"])] += 5.0
    results = probe.probe(features, scenes)
    assert results["color AUC"] > 0.95 and results["color top-k"] > 0.9
    assert 0.4 < results["kind AUC"] < 0.6  # chance
    assert results["color AUC, held-out bg"] > 0.9  # the sky photos among the scored ones
    assert 0.3 < results["kind AUC, held-out kinds"] < 0.7
    assert results[hard.EVERY_COLOR_AND_KIND] < 0.3  # the colours, but not the kinds


def test_the_probe_tells_greyscale_photos_when_the_features_hold_it():
    rng = np.random.default_rng(3)
    scenes = [hard.random_scene(rng) for _ in range(400)]
    noise = rng.normal(size=(len(scenes), 2, 2, 8)).astype(np.float32)
    marked = noise.copy()
    marked[[scene["greyscale"] for scene in scenes], 1, 1, 0] += 5.0
    assert probe.probe(marked, scenes)[hard.GREYSCALE_TOLD] > 0.95
    assert probe.probe(noise, scenes)[hard.GREYSCALE_TOLD] < 0.8  # about as often right as a coin


def test_the_probe_reads_each_kinds_position_off_the_grid_not_the_pooled_features():
    """Each object's kind in a channel of the cell of its third: the grid tells where each kind is; the same
    kinds in a cell drawn at random do not."""
    rng = np.random.default_rng(2)
    scenes = [hard.random_scene(rng) for _ in range(300)]

    def features_of(where):
        features = rng.normal(size=(len(scenes), 1, 3, 12)).astype(np.float32)
        for row, scene in enumerate(scenes):
            for obj in scene["objects"]:
                features[row, 0, where(obj), list(hard.KINDS).index(obj["kind"])] += 5.0
        return features

    placed = probe.probe(features_of(lambda obj: list(hard.POSITIONS).index(obj["position"])), scenes)
    scattered = probe.probe(features_of(lambda obj: rng.integers(3)), scenes)
    assert placed["position of each kind"] > 0.9
    assert scattered["position of each kind"] < 0.65
    labels = probe.kind_positions(scenes[:1])
    assert labels.shape == (1, len(hard.KINDS), len(hard.POSITIONS))
    assert labels.sum() == len({(obj["kind"], obj["position"]) for obj in scenes[0]["objects"]})


def test_each_placed_asks_for_every_colour_and_kind_and_each_single_objects_third():
    """Each object's colour and kind in channels of the cell of its third: the probe gets the colours, the kinds
    and where the single objects are; with the cells drawn at random, the same colours and kinds, not where."""
    rng = np.random.default_rng(5)
    scenes = [hard.random_scene(rng) for _ in range(400)]

    def features_of(where):
        features = rng.normal(scale=0.1, size=(len(scenes), 1, 3, len(hard.COLORS) + len(hard.KINDS)))
        for row, scene in enumerate(scenes):
            for obj in scene["objects"]:
                cell = features[row, 0, where(obj)]
                cell[len(hard.COLORS) + list(hard.KINDS).index(obj["kind"])] += 1.0
                if not scene["greyscale"]:
                    cell[list(hard.COLORS).index(obj["color"])] += 1.0
        return features.astype(np.float32)

    placed = probe.probe(features_of(lambda obj: list(hard.POSITIONS).index(obj["position"])), scenes)
    scattered = probe.probe(features_of(lambda obj: rng.integers(3)), scenes)
    assert placed[probe.EACH_PLACED] > 0.8 and placed[hard.EVERY_COLOR_AND_KIND] > 0.8
    assert placed[probe.EACH_PLACED] <= placed[hard.EVERY_COLOR_AND_KIND]
    assert scattered[hard.EVERY_COLOR_AND_KIND] > 0.8 and scattered[probe.EACH_PLACED] < 0.5
    assert placed[hard.by_objects(1, probe.EACH_PLACED)] > 0.8
    hits = probe.kinds_placed(probe.kind_positions(scenes[:1]), scenes[:1])[0]
    assert hits == [True] * sum(group.count == 1 for group in hard.groups(scenes[0]))


@pytest.mark.parametrize("features", [40, 10])  # more features than photos (the dual form), and fewer
def test_the_grid_probe_is_ridge_regression_in_either_form(monkeypatch, features):
    rng = np.random.default_rng(3)
    x, x_new, y = rng.normal(size=(30, features)), rng.normal(size=(5, features)), rng.normal(size=(30, 2))
    monkeypatch.setattr(probe, "GRID_RIDGE_PENALTIES", (0.5,))
    expected = probe.predict_ridge(probe.fit_ridge(x, y, 0.5), x_new)
    np.testing.assert_allclose(probe.grid_ridge_scores(x, y, x_new), expected, rtol=1e-6, atol=1e-8)


def test_the_probe_scores_a_held_out_set_as_fitted_on_all_the_photos():
    """Fitted on every photo and scored on another set: a set whose colour channels are shuffled reads at chance."""
    rng = np.random.default_rng(1)

    def features_of(scenes, channels):
        features = rng.normal(size=(len(scenes), 2, 2, 16)).astype(np.float32)
        for row, scene in enumerate(scenes):
            for obj in scene["objects"]:
                if not scene["greyscale"]:
                    features[row, 0, 0, channels[list(hard.COLORS).index(obj["color"])]] += 5.0
        return features

    scenes, held_out = [hard.random_scene(rng) for _ in range(300)], [hard.random_scene(rng) for _ in range(120)]
    same = probe.probe(features_of(scenes, range(8)), scenes, test_features=features_of(held_out, range(8)),
                       test_scenes=held_out)
    assert (same["photos fitted"], same["photos scored"]) == (300, 120)
    assert same["color AUC"] > 0.95
    shuffled = probe.probe(features_of(scenes, range(8)), scenes, test_features=features_of(held_out, range(8, 16)),
                           test_scenes=held_out)
    assert 0.35 < shuffled["color AUC"] < 0.65


def test_the_probe_ranks_the_kinds_of_unseen_pairs_on_their_own():
    kinds = list(hard.KINDS)

    def scene(*pairs, greyscale=False):
        return {"greyscale": greyscale, "objects": [{"color": color, "kind": kind, "position": "left"}
                                                for color, kind in pairs]}

    def scores(*best):  # the kinds given, ranked first
        row = np.zeros(len(kinds))
        row[[kinds.index(kind) for kind in best]] = [len(best) - rank for rank in range(len(best))]
        return row

    scenes = [scene(("red", "star"), ("blue", "circle")), scene(("red", "star")),
              scene(("red", "star"), greyscale=True), scene(("blue", "circle"))]
    labels = probe.targets(scenes)["kind"]
    ranked = np.stack([scores("circle", "star"), scores("heart"), scores("star"), scores("circle")])
    assert probe.unseen_pair_kinds_ranked(ranked, labels, scenes) == 0.5  # found in the first, not the second
    assert probe.unseen_pair_kinds_ranked(ranked[3:], labels[3:], scenes[3:]) is None


def test_pretraining_never_draws_the_held_out_kinds_or_backgrounds():
    import pretrain

    for seed in range(200):
        rng = np.random.default_rng(seed)
        scene = hard.random_scene(rng, kinds=pretrain.KINDS, backgrounds=pretrain.BACKGROUNDS)
        assert scene["background"] not in hard.FEATURE_HELD_OUT_BACKGROUNDS
        assert not {obj["kind"] for obj in scene["objects"]} & set(hard.FEATURE_HELD_OUT_KINDS)


def test_evaluation_reports_the_attributes_of_hard_scenes():
    from metrics import format_table, score

    caption = text_to_katakana("左に赤い丸、青い星が二つあります。")
    result = score([(caption, True), ("", False)], [[caption], [caption]], [SCENE, SCENE])
    assert result["every object right"] == 0.5 and result["kind"] == 0.5 and "scene accuracy" not in result
    table = format_table(result)
    assert "every object right" in table and "absent colour named" in table


def test_probe_py_fits_on_the_training_photos_and_scores_a_held_out_set(hard_set, tmp_path):
    report = tmp_path / "probe.json"
    assert probe.main(["--annotations", str(hard_set / "captions_train.json"), "--images", str(hard_set / "train2014"),
                       "--test-annotations", str(hard_set / "captions_val-unseen.json"),
                       "--test-images", str(hard_set / "val-unseen2014"), "--image-size", "32",
                       "--cache-dir", str(tmp_path / "cache"), "--json", str(report), "--quiet"]) == 0
    results = json.loads(report.read_text())
    assert (results["photos fitted"], results["photos scored"]) == (60, 30)
    assert results["test_annotations"].endswith("captions_val-unseen.json")
    assert 0.0 <= results["kind top-k"] <= 1.0 and 0.0 <= results["color AUC"] <= 1.0
    by_objects = [results.get(hard.by_objects(count, hard.EVERY_COLOR_AND_KIND)) for count in (1, 2, 3, 4)]
    assert all(0.0 <= share <= 1.0 for share in by_objects if share is not None) and by_objects[0] is not None


def test_every_object_right_is_also_given_by_the_number_of_objects():
    one = {"greyscale": False, "objects": [SCENE["objects"][0]]}
    captions = [text_to_katakana(c) for c in ("左に赤い丸、青い星が二つあります。", "左に赤い丸があります。",
                                               "右に赤い丸があります。")]
    result = hard.score(captions, [SCENE, SCENE, one])
    assert result["every object right"] == pytest.approx(1 / 3)
    assert (result[hard.by_objects(1)], result[hard.by_objects(3)]) == (0.0, 0.5)
    assert hard.by_objects(2) not in result
    colour_and_kind = [result[hard.by_objects(count, hard.EVERY_COLOR_AND_KIND)] for count in (1, 3)]
    assert colour_and_kind == [1.0, 0.5]  # the misplaced circle still has its colour and kind; the stars go unnamed
    table = format_table({**result, "mean length": 10.0, "mean reference length": 11.0, "images": 3})
    assert "every object right, 1 object " in table and "every object right, 3 objects" in table
    assert "every colour and kind, 3 objects" in table


def test_every_pair_puts_the_held_out_pairs_in_the_training_photos_only_when_asked(tmp_path):
    """`demo.py --hard --every-pair`: a set to fit the probe on, never the benchmark's own training photos."""
    import demo

    def training_pairs(folder):
        data = json.loads((folder / "captions_train.json").read_text(encoding="utf-8"))
        return {(obj["color"], obj["kind"]) for image in data["images"] for obj in image["scene"]["objects"]}

    assert demo.main(["--hard", "--every-pair", "--num-train", "120", "--num-val", "0", "--out", str(tmp_path / "e")]) == 0
    assert training_pairs(tmp_path / "e") & hard.UNSEEN_PAIRS
    hard.generate(tmp_path / "s", num_train=120, num_val=0)
    assert not training_pairs(tmp_path / "s") & hard.UNSEEN_PAIRS
    with pytest.raises(SystemExit):
        demo.main(["--every-pair", "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("flag, folder", [("--every-pair", "hard-every"), ("--recolour", "hard-recoloured")])
def test_other_training_sets_keep_off_the_benchmarks_folder_by_default(tmp_path, monkeypatch, flag, folder):
    import demo

    monkeypatch.setattr(hard, "HARD_DIR", tmp_path / "hard")
    assert demo.main(["--hard", flag, "--num-train", "2", "--num-val", "0"]) == 0
    assert (tmp_path / folder / "captions_train.json").is_file() and not (tmp_path / "hard").exists()


def test_recolouring_swaps_colour_words_form_by_form():
    assert hard.recolour_captions(["左に赤い丸、右に青色の星があります。", "赤の丸と青い星"], {"red": "blue", "blue": "red"}) == \
        ["左に青い丸、右に赤の星があります。", "青色の丸と赤い星"]
    assert hard.recolour_captions(["赤の丸と緑の星、白い四角"], {"red": "green", "green": "red"}) == ["緑の丸と赤い星、白い四角"]
    assert hard.recolour_captions(["赤の丸と黄色い星"], {"red": "yellow"}) == ["黄色の丸と黄色い星"]


def test_red_yellow_copies_make_the_yellow_cross(tmp_path):
    """The one held-out pair no channel swap makes: raising green to red turns red crosses yellow."""
    folder = hard.generate(tmp_path, num_train=200, num_val=1, recolourings=("red-yellow",))
    data = json.loads((folder / "captions_train.json").read_text(encoding="utf-8"))
    copies = [image for image in data["images"] if image["id"] > 200]
    assert copies and {(o["color"], o["kind"]) for image in copies for o in image["scene"]["objects"]} & \
        {("yellow", "cross")}
    assert all(o["color"] != "red" for image in copies for o in image["scene"]["objects"])
    scenes = {image["id"]: image["scene"] for image in copies}
    for annotation in data["annotations"]:  # the copies' captions name their yellowed scenes
        if annotation["image_id"] in scenes:
            scores = hard.score_caption(text_to_katakana(annotation["caption"]), scenes[annotation["image_id"]])
            assert scores["every object right"] == 1.0 and scores["absent colour named"] == 0.0, annotation


def test_recoloured_training_photos_are_the_benchmarks_with_swapped_copies(tmp_path):
    """`demo.py --hard --recolour`: the same drawn photos, then copies whose pixels, scenes and captions agree."""
    import demo

    assert demo.main(["--hard", "--recolour", "--num-train", "80", "--num-val", "5", "--out", str(tmp_path / "r")]) == 0
    plain = hard.generate(tmp_path / "p", num_train=80, num_val=5)
    recoloured = json.loads((tmp_path / "r" / "captions_train.json").read_text(encoding="utf-8"))
    drawn = json.loads((plain / "captions_train.json").read_text(encoding="utf-8"))
    originals = [image for image in recoloured["images"] if image["id"] <= 80]
    assert originals == drawn["images"] and len(recoloured["images"]) > 80
    for image in drawn["images"]:  # the drawn photos, to the byte
        assert (tmp_path / "r" / "train2014" / image["file_name"]).read_bytes() == \
            (plain / "train2014" / image["file_name"]).read_bytes()
    for split in ("val", "val-unseen"):
        assert (tmp_path / "r" / f"captions_{split}.json").read_bytes() == (plain / f"captions_{split}.json").read_bytes()
    assert [annotation["id"] for annotation in recoloured["annotations"]] == \
        list(range(1, len(recoloured["annotations"]) + 1))
    scenes = {image["id"]: image["scene"] for image in recoloured["images"]}
    for annotation in recoloured["annotations"]:  # every copy's captions name its recoloured scene
        scores = hard.score_caption(text_to_katakana(annotation["caption"]), scenes[annotation["image_id"]])
        assert scores["every object right"] == 1.0 and scores["absent colour named"] == 0.0, annotation
    copies = [image for image in recoloured["images"] if image["id"] > 80]
    made = [(image, name) for image in drawn["images"] for name in SWAPS  # by default, the swaps
            if hard._recoloured(image["scene"], name) is not None]
    assert len(copies) == len(made) and not {(o["color"], o["kind"]) for image in copies
                                             for o in image["scene"]["objects"]} & {("yellow", "cross")}
    for copy, (source, name) in list(zip(copies, made))[:5]:
        assert copy["scene"] == hard._recoloured(source["scene"], name)
        swapped = np.asarray(Image.open(tmp_path / "r" / "train2014" / copy["file_name"]).convert("RGB"), np.float32)
        original = np.asarray(Image.open(plain / "train2014" / source["file_name"]).convert("RGB"), np.float32)
        assert np.abs(swapped - hard.recolour_pixels(original, name)).mean() < 6  # JPEG aside
    with pytest.raises(SystemExit):
        demo.main(["--recolour", "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit):
        demo.main(["--hard", "--recolour", "--every-pair", "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit):
        demo.main(["--hard", "--recolour", "red-blue,sepia", "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()


def test_any_right_counts_a_photo_once_one_of_its_candidates_is_right():
    right, wrong = text_to_katakana("左に赤い丸、青い星が二つあります。"), text_to_katakana("左に赤い丸があります。")
    assert hard.any_right([[wrong, right], [wrong], [right, right]], [SCENE] * 3) == pytest.approx(2 / 3)
