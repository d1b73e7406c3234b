"""The embedded demo dataset: coloured shapes with Japanese captions, in STAIR/COCO format.

    $ python demo.py                      # writes data/demo/ (done by train.py when missing)
    $ python demo.py --seed 2 --out data/demo-seed2 --templates alternate

Each photo shows one or two shapes (丸, 三角, 四角 in 赤, 青, 緑, 黄) on the
left, in the middle or on the right, and has five captions worded
differently, written in kanji and hiragana like STAIR Captions:

    data/demo/captions_train.json          images + annotations, as STAIR v1.2
    data/demo/captions_val.json            the held-out photos
    data/demo/train2014/COCO_train2014_000000000001.jpg ...
    data/demo/val2014/COCO_val2014_000000000001.jpg ...

Each image entry also carries a ``scene`` (what was drawn), which COCO readers
ignore and ``scene_accuracy`` uses to check captions. The same seed always
gives the same dataset.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import hard
from cli import bounded_int, folder_path, names_from
from fileio import atomic_path, write_json
from recolour import RECOLOURINGS, SWAPS

DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"
CAPTIONS_PER_IMAGE = 5
CANVAS = (320, 240)  # width, height: COCO's 4:3, small enough to generate fast

POSITIONS = {"left": 0.2, "middle": 0.5, "right": 0.8}  # x centre, as a share of the width
COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (235, 205, 30)}
SHAPES = ("circle", "triangle", "square")

# How captions name things: (written form, katakana reading). The readings are
# what the parser looks for in a model's katakana output.
POSITION_WORDS = {
    "left": [("左", "ヒダリ"), ("左側", "ヒダリガワ")],
    "middle": [("真ん中", "マンナカ"), ("中央", "チュウオウ")],
    "right": [("右", "ミギ"), ("右側", "ミギガワ")],
}
COLOR_WORDS = {
    "red": [("赤い", "アカイ"), ("赤の", "アカノ")],
    "blue": [("青い", "アオイ"), ("青色の", "アオイロノ")],
    "green": [("緑の", "ミドリノ")],
    "yellow": [("黄色い", "キイロイ"), ("黄色の", "キイロノ")],
}
SHAPE_WORDS = {
    "circle": [("丸", "マル"), ("円", "エン")],
    "triangle": [("三角", "サンカク"), ("三角形", "サンカクケイ")],
    "square": [("四角", "シカク"), ("四角形", "シカクケイ")],
}

# Caption templates; {p}, {o} are one object's position and "colour shape".
TEMPLATES = {
    "standard": {
        1: [
            "{p1}に{o1}があります。",
            "{o1}が{p1}にあります。",
            "{p1}に{o1}が一つ描かれています。",
            "白い背景の{p1}に{o1}が見えます。",
            "画像の{p1}には{o1}があります。",
        ],
        2: [
            "{p1}に{o1}、{p2}に{o2}があります。",
            "{o1}が{p1}に、{o2}が{p2}にあります。",
            "{p1}には{o1}があり、{p2}には{o2}があります。",
            "二つの図形があります。{p1}が{o1}で、{p2}が{o2}です。",
            "{p1}に{o1}が、{p2}に{o2}が描かれています。",
        ],
    },
    # Other wording, for a second held-out set that does not share templates.
    "alternate": {
        1: [
            "{o1}が{p1}に一つ置かれています。",
            "{p1}の方に{o1}が見えます。",
            "図形は{p1}の{o1}だけです。",
            "{p1}にあるのは{o1}です。",
            "画像には{p1}に{o1}が写っています。",
        ],
        2: [
            "{o1}が{p1}、{o2}が{p2}に置かれています。",
            "{p1}の方に{o1}、{p2}の方に{o2}が見えます。",
            "図形は二つで、{p1}に{o1}、{p2}に{o2}です。",
            "{p1}にあるのは{o1}で、{p2}にあるのは{o2}です。",
            "画像には{p1}に{o1}が、{p2}に{o2}が写っています。",
        ],
    },
}


def random_scene(rng: np.random.Generator) -> list[dict]:
    """One or two objects at different positions, listed left to right."""
    num_objects = int(rng.integers(1, 3))
    positions = sorted(rng.choice(list(POSITIONS), size=num_objects, replace=False), key=POSITIONS.get)
    return [
        {"position": str(position), "color": str(rng.choice(list(COLORS))), "shape": str(rng.choice(SHAPES))}
        for position in positions
    ]


def draw_scene(scene: list[dict], rng: np.random.Generator) -> Image.Image:
    """Draws the objects on a light, slightly tinted background."""
    width, height = CANVAS
    background = tuple(int(value) for value in rng.integers(200, 256, size=3))
    image = Image.new("RGB", CANVAS, background)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        # Nearly one size, so that shape (not size) is what sets a shape's area:
        # features from a randomly initialised VGG16 mostly measure how much of
        # each colour lies where, and tell shapes apart by their area.
        radius = int(rng.integers(34, 39))
        center_x = int((POSITIONS[obj["position"]] + rng.uniform(-0.03, 0.03)) * width)
        center_y = int(height * (0.5 + rng.uniform(-0.15, 0.15)))
        color = tuple(int(np.clip(value + rng.integers(-20, 21), 0, 255)) for value in COLORS[obj["color"]])
        box = (center_x - radius, center_y - radius, center_x + radius, center_y + radius)
        if obj["shape"] == "circle":
            draw.ellipse(box, fill=color)
        elif obj["shape"] == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(center_x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=color)
    return image


def write_captions(scene: list[dict], rng: np.random.Generator, templates: str = "standard") -> list[str]:
    """Five captions of ``scene``, each from another template, with random synonyms."""
    captions = []
    for template in TEMPLATES[templates][len(scene)]:
        words = {}
        for number, obj in enumerate(scene, start=1):
            words[f"p{number}"] = _pick(rng, POSITION_WORDS[obj["position"]])
            words[f"o{number}"] = _pick(rng, COLOR_WORDS[obj["color"]]) + _pick(rng, SHAPE_WORDS[obj["shape"]])
        captions.append(template.format(**words))
    return captions


def _pick(rng, choices) -> str:
    return choices[int(rng.integers(len(choices)))][0]


def generate(out_dir=DEMO_DIR, seed: int = 0, num_train: int = 2000, num_val: int = 200, templates: str = "standard") -> Path:
    """Writes the demo dataset to ``out_dir`` (see the module docstring); returns ``out_dir``.

    Images are written first and the caption files last, each atomically, so a
    dataset with both JSON files is complete.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        folder = out_dir / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            scene = random_scene(rng)
            file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
            with atomic_path(folder / file_name, suffix=".jpg") as temporary:
                draw_scene(scene, rng).save(temporary, quality=90)
            images.append({"id": image_id, "file_name": file_name, "width": CANVAS[0], "height": CANVAS[1], "scene": scene})
            for caption in write_captions(scene, rng, templates):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
        info = {"description": f"kana-captioner demo dataset (seed {seed}, {templates} templates)", "version": "1.0"}
        write_json(out_dir / f"captions_{split}.json", {"info": info, "images": images, "annotations": annotations})
    return out_dir


def ensure_demo(out_dir=DEMO_DIR) -> Path:
    """Generates the default demo dataset unless it is already complete."""
    out_dir = Path(out_dir)
    if not all((out_dir / f"captions_{split}.json").exists() for split in ("train", "val")):
        print(f"Generating the demo dataset in {out_dir} ...", flush=True)
        generate(out_dir)
    return out_dir


# ---------------------------------------------------------------------------
# Checking captions against what was drawn
# ---------------------------------------------------------------------------


def _alternation(words: dict) -> tuple[re.Pattern, dict[str, str]]:
    """A pattern matching any reading of ``words``, longest first, and ``{reading: name}``."""
    readings = {reading: name for name, choices in words.items() for _, reading in choices}
    return re.compile("|".join(sorted(map(re.escape, readings), key=len, reverse=True))), readings


_PARSERS = {key: _alternation(words) for key, words in (("position", POSITION_WORDS), ("color", COLOR_WORDS), ("shape", SHAPE_WORDS))}


def parse_scene(katakana: str) -> list[dict]:
    """The objects a katakana caption names: one per clause that names a position, colour and shape."""
    objects = []
    for clause in re.split("[、。]", katakana):
        found = {}
        for key, (pattern, readings) in _PARSERS.items():
            matches = pattern.findall(clause)
            if len(matches) == 1:
                found[key] = readings[matches[0]]
        if len(found) == 3:
            objects.append(found)
    return objects


def caption_matches_scene(katakana: str, scene: list[dict]) -> bool:
    """True when the caption names exactly the drawn objects, each with its colour, shape and position."""
    key = lambda obj: (obj["position"], obj["color"], obj["shape"])  # noqa: E731
    return sorted(map(key, parse_scene(katakana))) == sorted(map(key, scene))


def scene_accuracy(captions: list[str], scenes: list[list[dict]]) -> float:
    """The share of captions that name every object's colour, shape and position correctly."""
    if not captions:
        return 0.0
    return sum(caption_matches_scene(caption, scene) for caption, scene in zip(captions, scenes)) / len(captions)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value  # 0 is a choice (e.g. a held-out set alone), not "unset"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate the demo dataset, or the hard benchmark (STAIR/COCO caption format).")
    parser.add_argument("--hard", action="store_true",
                        help=f"the hard benchmark (hard.py) instead: train, val, val-unseen, val-styles and val-pairs sets in {hard.HARD_DIR}")
    parser.add_argument("--out", type=folder_path, help=f"output folder (default: {DEMO_DIR}; --hard: {hard.HARD_DIR})")
    parser.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="random seed; the same seed gives the same data")
    parser.add_argument("--num-train", type=bounded_int(0, 1_000_000), help="training photos (default: 2000; --hard: 3000)")
    parser.add_argument("--num-val", type=bounded_int(0, 1_000_000), help="held-out photos per set (default: 200; --hard: 300)")
    parser.add_argument("--templates", choices=sorted(TEMPLATES), default="standard", help="caption wording (demo only)")
    parser.add_argument("--every-pair", action="store_true",
                        help="--hard only: the training photos draw every colour–kind pair, the held-out ones among "
                             "them, for probe.py to fit on (what the features hold of pairs the benchmark's training "
                             "never shows); not for training a captioner measured on val-unseen "
                             f"[default --out: {hard.HARD_DIR.with_name('hard-every')}]")
    parser.add_argument("--recolour", nargs="?", const=SWAPS, type=names_from(RECOLOURINGS),
                        metavar="NAMES",
                        help="--hard only: the training photos, each followed by copies with red and blue, and red "
                             "and green, swapped (channels and caption words) where every colour stays one the "
                             "captions name; the held-out sets as the benchmark's. NAMES picks, comma-separated, from "
                             f"{', '.join(RECOLOURINGS)} (red-yellow: red made yellow) "
                             f"[default NAMES: {','.join(SWAPS)}; "
                             f"default --out: {hard.HARD_DIR.with_name('hard-recoloured')}]")
    args = parser.parse_args(argv)
    for flag in ("every_pair", "recolour"):
        if getattr(args, flag) not in (None, False) and not args.hard:
            parser.error(f"--{flag.replace('_', '-')} goes with --hard")
    if args.every_pair and args.recolour:
        parser.error("--every-pair and --recolour are two different training sets: pick one")
    try:
        if args.hard:
            num_train, num_val = _given(args.num_train, 3000), _given(args.num_val, 300)
            # --every-pair and --recolour never write over the benchmark's own training photos unless --out says so
            default_out = hard.HARD_DIR.with_name("hard-every" if args.every_pair else "hard-recoloured"
                                                  if args.recolour else "hard")
            out = hard.generate(args.out or default_out, args.seed, num_train, num_val, args.every_pair,
                                args.recolour or ())
        else:
            num_train, num_val = _given(args.num_train, 2000), _given(args.num_val, 200)
            out = generate(args.out or DEMO_DIR, args.seed, num_train, num_val, args.templates)
    except OSError as error:  # a full disk, an unwritable folder
        print(f"error: {error}", file=sys.stderr)
        return 2
    copies = " and their recoloured copies" if args.recolour else ""
    print(f"Wrote {num_train} training photos{copies} and {num_val} held-out photos per set to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
