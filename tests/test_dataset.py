import json

import pytest
from PIL import Image

from dataset import is_safe_file_name, load_caption_files


def write_json(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def coco_layout(tmp_path):
    """train2014/ and val2014/ with COCO file names, as the real dataset ships."""
    for split, image_id in (("train", 9), ("train", 25), ("val", 42)):
        folder = tmp_path / f"{split}2014"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (64, 48), "red").save(folder / f"COCO_{split}2014_{image_id:012d}.jpg")
    return tmp_path


def test_stair_format_with_file_names(coco_layout):
    stair = write_json(coco_layout / "stair.json", {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"},
                   {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
        "annotations": [{"id": 1, "image_id": 9, "caption": "赤い丸があります。", "tokenized_caption": "赤い 丸"},
                        {"id": 2, "image_id": 9, "caption": "丸が赤い。"},
                        {"id": 3, "image_id": 42, "caption": "何かがある。"}],
    })
    records, report = load_caption_files([stair], [coco_layout / "train2014", coco_layout / "val2014"])
    assert [(r.path.name, r.captions) for r in records] == [
        ("COCO_train2014_000000000009.jpg", ["赤い丸があります。", "丸が赤い。"]),
        ("COCO_val2014_000000000042.jpg", ["何かがある。"]),
    ]
    assert not report.skipped


def test_yj_format_without_file_names_finds_photos_by_id(coco_layout):
    yj = write_json(coco_layout / "yj.json", {"images": [{"id": 25}], "annotations": [{"image_id": 25, "caption": "猫"}]})
    records, _ = load_caption_files([yj], [coco_layout / "train2014"])
    assert records[0].path.name == "COCO_train2014_000000000025.jpg"


def test_several_files_merge_captions_of_the_same_photo(coco_layout):
    first = write_json(coco_layout / "a.json", {"images": [], "annotations": [{"image_id": 9, "caption": "一"}]})
    second = write_json(coco_layout / "b.json", {"annotations": [{"image_id": 9, "caption": "二"}]})
    records, _ = load_caption_files([first, second], [coco_layout / "train2014"])
    assert len(records) == 1 and records[0].captions == ["一", "二"]


def test_bad_annotations_are_counted_not_fatal(coco_layout):
    data = write_json(coco_layout / "bad.json", {
        "images": [{"id": 1, "file_name": "../../etc/passwd"}, {"id": 2, "file_name": "/etc/passwd"},
                   {"id": 3, "file_name": "COCO_train2014_000000000003.jpg"}, {"id": 9, "file_name": "COCO_train2014_000000000009.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}, {"image_id": 3, "caption": "c"},
                        {"image_id": 9, "caption": "  "}, {"caption": "no id"}, {"image_id": 9, "caption": "良い"},
                        {"image_id": 77, "caption": "写真のない注釈"}],  # no image entry and no COCO file
    })
    records, report = load_caption_files([data], [coco_layout / "train2014"])
    assert [r.captions for r in records] == [["良い"]]
    assert report.skipped == {
        "annotations whose file_name leaves the image folder": 2,
        "annotations whose image file is missing": 2,
        "empty captions": 1,
        "annotations without a number or string image_id": 1,
    }


@pytest.mark.parametrize("name", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:\\x.jpg", "..\\x.jpg", ""])
def test_unsafe_file_names(name):
    assert not is_safe_file_name(name)


def test_malformed_and_misshapen_files_get_one_clear_error(coco_layout):
    (coco_layout / "broken.json").write_text('{"images": [', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_caption_files([coco_layout / "broken.json"], [coco_layout / "train2014"])
    write_json(coco_layout / "list.json", [1, 2])
    with pytest.raises(ValueError, match="not a caption file"):
        load_caption_files([coco_layout / "list.json"], [coco_layout / "train2014"])
    with pytest.raises(FileNotFoundError, match="Annotation file not found"):
        load_caption_files([coco_layout / "missing.json"], [coco_layout / "train2014"])
    with pytest.raises(FileNotFoundError, match="Image folder not found"):
        load_caption_files([coco_layout / "list.json"], [coco_layout / "nope"])
