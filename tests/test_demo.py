import json

import demo
from dataset import load_caption_files
from kana import text_to_katakana


def test_generation_is_deterministic(tmp_path):
    first = demo.generate(tmp_path / "a", seed=5, num_train=6, num_val=2)
    second = demo.generate(tmp_path / "b", seed=5, num_train=6, num_val=2)
    for name in ("captions_train.json", "captions_val.json", "train2014/COCO_train2014_000000000006.jpg"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_demo_is_in_stair_coco_format(tiny_demo):
    data = json.loads((tiny_demo / "captions_train.json").read_text(encoding="utf-8"))
    image = data["images"][0]
    assert image["file_name"] == "COCO_train2014_000000000001.jpg" and image["id"] == 1
    assert {"id", "image_id", "caption"} <= set(data["annotations"][0])
    records, report = load_caption_files([tiny_demo / "captions_train.json"], [tiny_demo / "train2014"])
    assert len(records) == 24 and all(len(r.captions) == demo.CAPTIONS_PER_IMAGE for r in records)
    assert not report.skipped


def test_every_caption_names_its_scene(tmp_path):
    for templates in demo.TEMPLATES:
        out = demo.generate(tmp_path / templates, seed=1, num_train=40, num_val=0, templates=templates)
        records, _ = load_caption_files([out / "captions_train.json"], [out / "train2014"])
        for record in records:
            assert len(set(record.captions)) > 1  # differently worded
            for caption in record.captions:
                assert demo.caption_matches_scene(text_to_katakana(caption), record.scene), caption


def test_scene_check_catches_wrong_colour_position_or_missing_object():
    scene = [{"position": "left", "color": "red", "shape": "circle"}, {"position": "right", "color": "blue", "shape": "triangle"}]
    assert demo.caption_matches_scene("ヒダリニアカイマル、ミギニアオイサンカクガアリマス。", scene)
    assert not demo.caption_matches_scene("ヒダリニアオイマル、ミギニアオイサンカクガアリマス。", scene)
    assert not demo.caption_matches_scene("ミギニアカイマル、ヒダリニアオイサンカクガアリマス。", scene)
    assert not demo.caption_matches_scene("ヒダリニアカイマルガアリマス。", scene)
    assert not demo.caption_matches_scene("ヒダイイイイイイイイガガガガ", scene)
    assert demo.scene_accuracy(["ヒダリニアカイマル、ミギニアオイサンカクガアリマス。", "ア"], [scene, scene]) == 0.5


def test_the_cli_makes_a_held_out_set_alone(tmp_path):
    """`--num-train 0`, as the README's extra held-out sets are made: no training photos at all."""
    assert demo.main(["--seed", "1", "--num-train", "0", "--num-val", "3", "--out", str(tmp_path / "d")]) == 0
    assert not list((tmp_path / "d" / "train2014").iterdir())
    assert len(list((tmp_path / "d" / "val2014").iterdir())) == 3
    assert demo.main(["--hard", "--num-train", "0", "--num-val", "2", "--out", str(tmp_path / "h")]) == 0
    assert not list((tmp_path / "h" / "train2014").iterdir())
