"""The hard benchmark: scenes the demo's random VGG16 cannot read, in STAIR/COCO format, and a scorer per attribute.

    $ python demo.py --hard                              # data/hard/: train, val, val-unseen, val-styles, val-pairs
    $ python evaluate.py --model RUN --annotations data/hard/captions_val-unseen.json --images data/hard/val-unseen2014

Each photo is COCO-sized (640×480, 480×640, 640×427, 500×375 or 612×612,
JPEG quality 40–90) and shows one to four objects (mostly one or two) of ten kinds in eight
colours, from a tenth to half the photo's width, on a plain, gradient,
noisy, room or sky-and-grass background; one photo in ten is greyscale.
Five captions each, in STAIR-like styles, name each object's colour and
kind, its position (left, middle, right) or how many there are of it, some
its size and the background; some run past 49 katakana.

Held out from training, so the validation sets measure generalisation:
caption styles (``UNSEEN_STYLES``: never in training captions) and colour–kind
pairs (``UNSEEN_PAIRS``: never drawn in training photos). ``val`` holds
neither out, ``val-unseen`` both (every photo has an unseen pair, every
caption an unseen style), ``val-styles`` and ``val-pairs`` one each.

Every image entry carries its ``scene``; ``score`` parses a katakana caption
back into (colour, kind, count, position) mentions and scores each attribute.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fileio import atomic_path, write_json
from kana import text_to_katakana
from recolour import RECOLOURINGS, recolour_pixels  # what train.py --recolour makes, here in the photos

HARD_DIR = Path(__file__).resolve().parent / "data" / "hard"
SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (612, 612))  # COCO's common photo sizes
CAPTIONS_PER_IMAGE = 5
GREYSCALE_SHARE = 0.1
OBJECT_COUNT_SHARES = (0.35, 0.35, 0.2, 0.1)  # photos with 1, 2, 3, 4 objects

COLORS = {  # name: (RGB, written forms)
    "red": ((215, 35, 35), ["赤い", "赤の"]),
    "blue": ((35, 70, 215), ["青い", "青色の"]),
    "green": ((30, 160, 60), ["緑の"]),
    "yellow": ((235, 210, 30), ["黄色い", "黄色の"]),
    "white": ((245, 245, 245), ["白い", "白の"]),
    "black": ((20, 20, 20), ["黒い", "黒の"]),
    "purple": ((130, 40, 170), ["紫の", "紫色の"]),
    "orange": ((245, 130, 20), ["オレンジ色の", "オレンジの"]),
}
KINDS = {  # name: written forms
    "circle": ["丸", "円"], "triangle": ["三角", "三角形"], "square": ["四角", "四角形"], "star": ["星"],
    "heart": ["ハート"], "cross": ["十字"], "hexagon": ["六角形"], "diamond": ["菱形"], "crescent": ["三日月"],
    "arrow": ["矢印"],
}
POSITIONS = {"left": ["左", "左側"], "middle": ["真ん中", "中央"], "right": ["右", "右側"]}
COUNTS = {2: "二つ", 3: "三つ", 4: "四つ"}
SIZE_WORDS = {"big": "大きな", "small": "小さな"}
BACKGROUNDS = {"plain": "無地の背景", "gradient": "グラデーションの背景", "noise": "ざらざらした背景",
               "room": "部屋", "sky": "空と芝生"}
# Never drawn in a training photo; val-unseen draws them in most photos.
UNSEEN_PAIRS = {("red", "star"), ("blue", "heart"), ("yellow", "cross"), ("green", "arrow")}
# Never drawn when pretrain.py trains the synthetic VGG16, so that probe.py can show whether its features see
# shapes and scenes they were not trained on.
FEATURE_HELD_OUT_KINDS = ("crescent", "arrow")
FEATURE_HELD_OUT_BACKGROUNDS = ("sky",)


# ---------------------------------------------------------------------------
# Scenes and drawing
# ---------------------------------------------------------------------------


def random_scene(rng: np.random.Generator, pairs: str = "seen", kinds=tuple(KINDS), backgrounds=tuple(BACKGROUNDS)) -> dict:
    """One to four objects that do not overlap, their sizes a tenth to half the photo's width.

    ``pairs``: "seen" never draws an UNSEEN_PAIRS colour–kind pair; "unseen"
    makes the first object one of them; "every" draws every pair alike. ``kinds`` and ``backgrounds``: the
    ones to draw from (pretrain.py leaves some out).
    """
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    objects, boxes = [], []
    for index in range(int(rng.choice(4, p=OBJECT_COUNT_SHARES)) + 1):
        color, kind = _pick_pair(rng, pairs, first=index == 0, kinds=kinds)
        for _ in range(50):  # rejection sampling; smaller objects fit more easily
            size = float(rng.uniform(0.1, 0.5 if len(objects) < 2 else 0.3))
            radius = size * width / 2
            x, y = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            if radius <= height / 2 and all(math.hypot(x - bx, y - by) > radius + br + 4 for bx, by, br in boxes):
                boxes.append((x, y, radius))
                objects.append({"color": color, "kind": kind, "size": round(size, 3), "x": round(x / width, 3),
                                "y": round(y / height, 3), "position": _position(x / width)})
                break
    objects.sort(key=lambda obj: obj["x"])
    return {"width": width, "height": height, "background": str(rng.choice(list(backgrounds))),
            "greyscale": bool(rng.random() < GREYSCALE_SHARE), "objects": objects}


def _pick_pair(rng, pairs: str, first: bool, kinds=tuple(KINDS)) -> tuple[str, str]:
    if pairs == "unseen" and first:
        return sorted(UNSEEN_PAIRS)[int(rng.integers(len(UNSEEN_PAIRS)))]
    while True:
        pair = str(rng.choice(list(COLORS))), str(rng.choice(list(kinds)))
        if pairs != "seen" or pair not in UNSEEN_PAIRS:
            return pair


def _position(x: float) -> str:
    return "left" if x < 1 / 3 else "middle" if x < 2 / 3 else "right"


def draw_scene(scene: dict, rng: np.random.Generator) -> Image.Image:
    """The background, then each object as a jittered colour through its shape's mask."""
    width, height = scene["width"], scene["height"]
    image = Image.fromarray(_background(scene["background"], width, height, rng))
    for obj in scene["objects"]:
        mask = Image.new("L", (width, height))
        center = (obj["x"] * width, obj["y"] * height)
        _draw_kind(ImageDraw.Draw(mask), obj["kind"], center, obj["size"] * width / 2)
        base = obj["rgb"] if "rgb" in obj else COLORS[obj["color"]][0]  # pretrain.py draws some in other colours
        rgb = np.clip(np.array(base) + rng.integers(-18, 19, 3), 0, 255)
        image.paste(tuple(int(value) for value in rgb), mask=mask)
    if scene["greyscale"]:
        image = image.convert("L").convert("RGB")
    return image


def _background(name: str, width: int, height: int, rng) -> np.ndarray:
    tint = lambda low, high: rng.integers(low, high, 3).astype(np.float32)  # noqa: E731
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    if name == "plain":
        pixels = np.broadcast_to(tint(70, 200), (height, width, 3))
    elif name == "gradient":
        pixels = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * (tint(60, 200) - tint(60, 200)) + tint(60, 200)
        pixels = np.broadcast_to(pixels, (height, width, 3))
    elif name == "noise":
        pixels = tint(90, 170) + rng.normal(0, 30, (height, width, 3))
    elif name == "room":  # a wall above, a wooden floor with planks below
        wall, floor = tint(150, 215), np.array([120, 80, 45], np.float32) + rng.integers(-20, 21, 3)
        planks = (np.sin(np.arange(width) / width * 40) * 12)[None, :, None]
        pixels = np.where(rows < 0.65, wall, floor + planks)
    else:  # sky above, grass below
        sky = np.array([110, 170, 235], np.float32) * (0.8 + 0.2 * rows)
        grass = np.array([60, 140, 50], np.float32) + rng.normal(0, 15, (height, width, 3))
        pixels = np.where(rows < 0.55, sky, grass)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _polygon(center, radius, points) -> list[tuple[float, float]]:
    cx, cy = center
    return [(cx + radius * px, cy + radius * py) for px, py in points]


def _regular(sides: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(start + 2 * math.pi * i / sides), math.sin(start + 2 * math.pi * i / sides)) for i in range(sides)]


_STAR = [(math.cos(-math.pi / 2 + math.pi * i / 5) * (1 if i % 2 == 0 else 0.42),
          math.sin(-math.pi / 2 + math.pi * i / 5) * (1 if i % 2 == 0 else 0.42)) for i in range(10)]
_HEART = [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
          for t in np.linspace(0, 2 * math.pi, 40)]
_CROSS = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3),
          (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
_ARROW = [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)]
_SHAPES = {"triangle": _regular(3), "hexagon": _regular(6, 0), "diamond": [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)],
           "star": _STAR, "heart": _HEART, "cross": _CROSS, "arrow": _ARROW}


def _draw_kind(draw: ImageDraw.ImageDraw, kind: str, center, radius: float) -> None:
    cx, cy = center
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "square":
        draw.rectangle((cx - 0.85 * radius, cy - 0.85 * radius, cx + 0.85 * radius, cy + 0.85 * radius), fill=255)
    elif kind == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - 0.55 * radius, cy - 1.05 * radius, cx + 1.35 * radius, cy + 0.85 * radius), fill=0)
    else:
        draw.polygon(_polygon(center, radius, _SHAPES[kind]), fill=255)


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Group:
    """Objects of one colour and kind: what a caption names together."""

    color: str | None  # None in a greyscale photo, where colours cannot be told apart
    kind: str
    count: int
    position: str  # the leftmost object's
    size: str | None  # "big" or "small" when every object of the group is


def groups(scene: dict) -> list[Group]:
    """The scene's (colour, kind) groups, left to right; in a greyscale photo, kind groups."""
    found: dict[tuple[str | None, str], list[dict]] = {}
    for obj in scene["objects"]:
        found.setdefault((None if scene["greyscale"] else obj["color"], obj["kind"]), []).append(obj)
    result = []
    for (color, kind), members in found.items():
        sizes = {"big" if obj["size"] >= 0.35 else "small" if obj["size"] <= 0.15 else None for obj in members}
        result.append(Group(color, kind, len(members), members[0]["position"], sizes.pop() if len(sizes) == 1 else None))
    return result


def _object_phrase(group: Group, greyscale: bool, rng) -> str:
    size = SIZE_WORDS[group.size] if group.size and rng.random() < 0.5 else ""
    color = "" if group.color is None else _choice(rng, COLORS[group.color][1])
    return size + color + _choice(rng, KINDS[group.kind])


def _choice(rng, options):
    return options[int(rng.integers(len(options)))]


def _clauses(scene: dict, rng, where: str, count_form: str) -> list[str]:
    """One clause per group: ``where`` formats a single object with {p} and {o}; ``count_form`` a group with {o} and {n}."""
    clauses = []
    for group in groups(scene):
        phrase = _object_phrase(group, scene["greyscale"], rng)
        if group.count > 1:
            clauses.append(count_form.format(o=phrase, n=COUNTS[group.count]))
        else:
            clauses.append(where.format(p=_choice(rng, POSITIONS[group.position]), o=phrase))
    return clauses


GREYSCALE_PHOTO = "灰色の写真"  # how a greyscale photo's every caption opens: "a grey photo"


def _photo_prefix(scene: dict) -> str:
    return f"{GREYSCALE_PHOTO}で、" if scene["greyscale"] else ""


def _style_list(scene, rng):  # 左に赤い丸、右に青い星があります。
    return _photo_prefix(scene) + "、".join(_clauses(scene, rng, "{p}に{o}", "{n}の{o}")) + "があります。"


def _style_subject(scene, rng):  # 赤い丸が左に、青い星が右にあります。
    return _photo_prefix(scene) + "、".join(_clauses(scene, rng, "{o}が{p}に", "{o}が{n}")) + "あります。"


def _style_clauses(scene, rng):  # 左に赤い丸があり、右に青い星があります。
    return _photo_prefix(scene) + "、".join(_clauses(scene, rng, "{p}に{o}があり", "{o}が{n}あり")) + "ます。"


def _style_count(scene, rng):  # 図形が三つあります。左は赤い丸です。...
    total = len(scene["objects"])
    head = "図形が一つあります。" if total == 1 else f"図形が{COUNTS[total]}あります。"
    return _photo_prefix(scene) + head + "、".join(_clauses(scene, rng, "{p}は{o}", "{o}が{n}")) + "です。"


def _style_long(scene, rng):  # the background, then each object at length: often over 49 katakana
    clauses = _clauses(scene, rng, "{p}には{o}が描かれていて", "{o}が{n}描かれていて")
    return _photo_prefix(scene) + BACKGROUNDS[scene["background"]] + "に、" + "、".join(clauses) + "ます。"


def _style_seen_from(scene, rng):  # unseen: 左の方に赤い丸が見え、...
    return _photo_prefix(scene) + "、".join(_clauses(scene, rng, "{p}の方に{o}が見え", "{o}が{n}見え")) + "ます。"


def _style_only(scene, rng):  # unseen: 写っているのは左の赤い丸と...
    return _photo_prefix(scene) + "写っているのは" + "と、".join(_clauses(scene, rng, "{p}の{o}", "{n}の{o}")) + "です。"


SEEN_STYLES = (_style_list, _style_subject, _style_clauses, _style_count, _style_long)
UNSEEN_STYLES = (_style_seen_from, _style_only)


def write_captions(scene: dict, rng, styles=SEEN_STYLES) -> list[str]:
    """Five captions of ``scene``, cycling through ``styles``."""
    return [styles[index % len(styles)](scene, rng) for index in range(CAPTIONS_PER_IMAGE)]


# ---------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------

SPLITS = {  # name: (pairs, styles); each split draws from its own random stream, so adding one changes no other
    "train": ("seen", SEEN_STYLES),
    "val": ("seen", SEEN_STYLES),
    "val-unseen": ("unseen", UNSEEN_STYLES),  # both held out: the benchmark's headline set
    "val-styles": ("seen", UNSEEN_STYLES),  # one factor each: how much of val-unseen's drop is the styles' ...
    "val-pairs": ("unseen", SEEN_STYLES),  # ... and how much the pairs'
}


def recolour_captions(captions: list[str], exchanged: dict[str, str]) -> list[str]:
    """The captions with each exchanged colour's written forms swapped for the other's (form by form, the last
    form standing in where the other colour has fewer)."""
    forms = {form: COLORS[target][1][min(index, len(COLORS[target][1]) - 1)]
             for source, target in exchanged.items() for index, form in enumerate(COLORS[source][1])}
    pattern = re.compile(_alternation(forms))
    return [pattern.sub(lambda match: forms[match.group(0)], caption) for caption in captions]


def _recoloured(scene: dict, recolouring: str) -> dict | None:
    """``scene`` with its colours exchanged, or None where the swap would leave a colour no caption names."""
    _, exchanged, kept = RECOLOURINGS[recolouring]
    colours = {obj["color"] for obj in scene["objects"]}
    if scene["greyscale"] or not colours & set(exchanged) or not colours <= set(exchanged) | kept:
        return None
    return {**scene, "objects": [{**obj, "color": exchanged.get(obj["color"], obj["color"])}
                                 for obj in scene["objects"]]}


def generate(out_dir=HARD_DIR, seed: int = 0, num_train: int = 3000, num_val: int = 300,
             every_pair: bool = False, recolourings: tuple[str, ...] = ()) -> Path:
    """Writes captions_{split}.json and the photos in {split}2014/ for each of SPLITS; returns ``out_dir``.

    ``every_pair``: the training photos draw every colour–kind pair, UNSEEN_PAIRS among them: a set to fit the
    probe on, to see what the features hold of pairs the benchmark's training photos never show (a captioner
    trained on it is not measuring generalisation on ``val-unseen``).
    ``recolourings`` (RECOLOURINGS' names; e.g. SWAPS, which make no yellow, so the yellow cross stays unseen):
    the benchmark's training photos, each followed by its copy in each of these where it can be named: pairs the
    photos never show, made from the photos alone, as a flip makes left from right.
    """
    out_dir = Path(out_dir)
    for split, (pairs, styles) in SPLITS.items():
        pairs = "every" if every_pair and split == "train" else pairs
        rng = np.random.default_rng([seed, list(SPLITS).index(split)])
        count = num_train if split == "train" else num_val
        folder = out_dir / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []

        def add(image_id: int, scene: dict, captions: list[str]) -> str:
            file_name = f"COCO_{split.split('-')[0]}2014_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "width": scene["width"], "height": scene["height"],
                           "scene": scene})
            first = len(annotations) + 1
            annotations.extend({"id": first + number, "image_id": image_id, "caption": caption}
                               for number, caption in enumerate(captions))
            return file_name

        next_id = count + 1  # recoloured copies are numbered after the drawn photos
        for image_id in range(1, count + 1):
            scene = random_scene(rng, pairs)
            photo, quality = draw_scene(scene, rng), int(rng.integers(40, 91))
            captions = write_captions(scene, rng, styles)
            file_name = add(image_id, scene, captions)
            with atomic_path(folder / file_name, suffix=".jpg") as temporary:
                photo.save(temporary, quality=quality)
            for name in recolourings if split == "train" else ():
                exchanged = RECOLOURINGS[name][1]
                recoloured = _recoloured(scene, name)
                if recoloured is not None:  # the swap of the saved photo, JPEG artefacts and all
                    with Image.open(folder / file_name) as saved:
                        pixels = recolour_pixels(np.asarray(saved.convert("RGB")), name)
                    with atomic_path(folder / add(next_id, recoloured, recolour_captions(captions, exchanged)),
                                     suffix=".jpg") as temporary:
                        Image.fromarray(pixels).save(temporary, quality=90)
                    next_id += 1
        info = {"description": f"kana-captioner hard benchmark, {split} (seed {seed})", "version": "1.0"}
        write_json(out_dir / f"captions_{split}.json", {"info": info, "images": images, "annotations": annotations})
    return out_dir


# ---------------------------------------------------------------------------
# Scoring captions against scenes
# ---------------------------------------------------------------------------


def _readings(names_to_forms: dict) -> dict[str, str]:
    """``{katakana reading: name}`` of every written form."""
    return {text_to_katakana(form): name for name, forms in names_to_forms.items() for form in forms}


def _alternation(readings) -> str:
    return "|".join(sorted(map(re.escape, readings), key=len, reverse=True))


@dataclasses.dataclass(frozen=True)
class _Grammar:
    """The readings and patterns a caption is parsed with."""

    colors: dict[str, str]  # katakana reading -> colour name
    kinds: dict[str, str]
    positions: dict[str, str]
    counts: dict[str, int]
    mention: re.Pattern  # (size) (colour) (size) kind: groups 1 and 2 are the colour and kind readings
    greyscale: str  # the reading of GREYSCALE_PHOTO
    color: re.Pattern
    position: re.Pattern
    count: re.Pattern


@functools.cache
def _grammar() -> _Grammar:
    """Built on first use, not on import: the readings come from pykakasi, which predict.py never needs for this."""
    colors = _readings({name: forms for name, (_, forms) in COLORS.items()})
    kinds, positions = _readings(KINDS), _readings(POSITIONS)
    counts = {text_to_katakana(word): count for count, word in COUNTS.items()}
    size = _alternation(text_to_katakana(word) for word in SIZE_WORDS.values())
    mention = re.compile(f"(?:{size})?({_alternation(colors)})?(?:{size})?({_alternation(kinds)})")
    return _Grammar(colors, kinds, positions, counts, mention, text_to_katakana(GREYSCALE_PHOTO),
                    re.compile(_alternation(colors)),
                    re.compile(_alternation(positions)), re.compile(_alternation(counts)))


_CLAUSE = re.compile("[、。]")


@dataclasses.dataclass(frozen=True)
class Mention:
    """What a caption says of one group of objects."""

    color: str | None
    kind: str
    count: int  # 1 unless a count word is in its clause
    position: str | None  # the position word in its clause, if one


def parse(katakana: str) -> list[Mention]:
    """The (colour, kind, count, position) mentions of a katakana caption, clause by clause.

    A clause is what lies between 、 and 。; a count or position word belongs to
    the clause's mention when the clause has exactly one (else to none).
    """
    grammar = _grammar()
    mentions = []
    for clause in _CLAUSE.split(katakana):
        found = [(match.group(1), match.group(2)) for match in grammar.mention.finditer(clause)]
        if not found:
            continue
        positions, counts = grammar.position.findall(clause), grammar.count.findall(clause)
        single = len(found) == 1
        position = grammar.positions[positions[0]] if single and len(positions) == 1 else None
        count = grammar.counts[counts[0]] if single and len(counts) == 1 else 1
        for color, kind in found:
            mentions.append(Mention(grammar.colors.get(color), grammar.kinds[kind], count, position))
    return mentions


def colors_named(katakana: str) -> set[str]:
    grammar = _grammar()
    return {grammar.colors[match] for match in grammar.color.findall(katakana)}


UNSEEN_PAIRS_NAMED = "color and kind, unseen pairs"
POSITION_KIND_NAMED = "position, kind named"
EVERY_COLOR_AND_KIND = "every colour and kind"
GREYSCALE_TOLD = "greyscale told"
ATTRIBUTES = ("kind", "color", "color and kind", UNSEEN_PAIRS_NAMED, "count", "position", POSITION_KIND_NAMED,
              EVERY_COLOR_AND_KIND, GREYSCALE_TOLD, "every object right", "absent colour named")


def score_caption(katakana: str, scene: dict) -> dict[str, float]:
    """Per-attribute scores of one caption; each is a share of the scene's groups (or 0/1 for the photo).

    ``color`` is scored on colour photos only (None on greyscale ones).
    ``count`` and ``position`` are read from the mention of the group's kind
    (whatever colour it names), so that each attribute is scored on its own:
    ``count`` on every group (a single object must not be given a count of
    two or more), ``position`` on groups of one object (``position, kind
    named``: on those whose kind the caption names, as the probe's
    ``position of each kind`` is given the kinds present). ``every object
    right``: each group named once with its colour, kind, count and position,
    and nothing else named. ``absent colour named``: a colour no object has
    (any colour, in a greyscale photo). ``color and kind, unseen pairs``:
    ``color and kind`` on the groups whose pair training never drew
    (``UNSEEN_PAIRS``; None on photos without one): whether the captioner
    composes a colour and a kind it has only seen apart. ``every colour and
    kind``: the kinds named are the photo's kinds, and (in a colour photo)
    the colours named its colours, however they are paired, counted or
    placed: what the probe's ``every colour and kind`` reads off the
    features. ``greyscale told``: the caption calls the photo grey
    (``GREYSCALE_PHOTO``) if and only if it is greyscale.
    """
    mentions = parse(katakana)
    scene_groups = groups(scene)
    grey = scene["greyscale"]

    def matches(same_color: bool) -> list[Mention | None]:
        """Each group's mention (of its kind, and of its colour if asked); a mention serves one group at most."""
        unused, found = list(mentions), []
        for group in scene_groups:
            mention = next((m for m in unused if m.kind == group.kind and (grey or not same_color
                                                                            or m.color == group.color)), None)
            if mention is not None:
                unused.remove(mention)
            found.append(mention)
        return found

    matched, by_kind = matches(same_color=True), matches(same_color=False)
    present = {group.color for group in scene_groups}
    named_kinds = {m.kind for m in mentions}
    named_colors = colors_named(katakana)
    right = [m is not None and m.count == g.count and (g.count > 1 or m.position == g.position)
             for g, m in zip(scene_groups, matched)]
    return {
        "kind": float(np.mean([g.kind in named_kinds for g in scene_groups])),
        "color": None if grey else float(np.mean([g.color in named_colors for g in scene_groups])),
        "color and kind": float(np.mean([m is not None for m in matched])),
        UNSEEN_PAIRS_NAMED: _mean([m is not None for g, m in zip(scene_groups, matched)
                                   if (g.color, g.kind) in UNSEEN_PAIRS]),
        "count": float(np.mean([m is not None and m.count == g.count for g, m in zip(scene_groups, by_kind)])),
        "position": _mean([m is not None and m.position == g.position
                           for g, m in zip(scene_groups, by_kind) if g.count == 1]),
        POSITION_KIND_NAMED: _mean([m.position == g.position
                                    for g, m in zip(scene_groups, by_kind) if g.count == 1 and m is not None]),
        EVERY_COLOR_AND_KIND: float(named_kinds == {g.kind for g in scene_groups}
                                    and (grey or named_colors == present)),
        GREYSCALE_TOLD: float((_grammar().greyscale in katakana) == grey),
        "every object right": float(all(right) and len(mentions) == len(scene_groups)),
        "absent colour named": float(bool(named_colors if grey else named_colors - present)),
    }


def _mean(values) -> float | None:
    return float(np.mean(values)) if values else None


ANY_CANDIDATE = "every object right, any candidate"  # any_right: the best a ranking of the candidates gets
BY_OBJECTS = ("every object right", EVERY_COLOR_AND_KIND)  # photo-level scores also given by number of objects


def by_objects(count: int, name: str = "every object right") -> str:
    """The name of the photo-level score ``name`` (one of ``BY_OBJECTS``) on the photos of ``count`` objects, as
    ``score`` and probe.py give it."""
    return f"{name}, {count} object{'' if count == 1 else 's'}"


def by_objects_names() -> list[str]:
    """Every ``by_objects`` name, in the order tables show them."""
    return [by_objects(count, name) for name in BY_OBJECTS for count in range(1, len(OBJECT_COUNT_SHARES) + 1)]


def any_right(candidates: list[list[str]], scenes: list[dict]) -> float:
    """The share of photos with at least one of their candidate captions scored ``every object right``: how many a
    decoder that ranked its candidates perfectly would get right (evaluate.py --samples)."""
    return float(np.mean([max(score_caption(text, scene)["every object right"] for text in texts)
                          for texts, scene in zip(candidates, scenes)]))


def score(captions: list[str], scenes: list[dict]) -> dict[str, float]:
    """The mean of each attribute's score over the photos it applies to (``score_caption``), then the photo-level
    scores (``BY_OBJECTS``) on the photos of each number of objects (``by_objects``): where the length limit and
    the captioner lose them."""
    columns = collections.defaultdict(list)
    for caption, scene in zip(captions, scenes):
        scores = score_caption(caption, scene)
        for name, value in scores.items():
            if value is not None:
                columns[name].append(value)
        for name in BY_OBJECTS:
            columns[by_objects(len(scene["objects"]), name)].append(scores[name])
    return {name: float(np.mean(columns[name])) for name in (*ATTRIBUTES, *by_objects_names()) if columns[name]}
