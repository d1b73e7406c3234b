"""train.py --recolour's words: which photos a swap fits, and their captions with the colour words swapped."""

import collections
import json

import numpy as np
import pytest

import hard
import recolour
from kana import text_to_katakana


@pytest.mark.parametrize("caption, named", [
    ("赤ちゃんが赤い服を着ている", {"red"}),  # 赤ちゃん (a baby) is not a colour
    ("青年が青いバスの前に立っている", {"blue"}),  # nor 青年 (a youth)
    ("緑の芝生の上に赤い車", {"green", "red"}),
    ("黄色いバナナと茶色い犬", {"yellow", "brown"}),
    ("赤と白のバス", {"red", "white"}),
    ("灰色の猫", {"grey"}),
    ("青空の下を歩く人", set()),  # one word, not 青 and 空
    ("ＲＥＤのバス", set()),
])
def test_colours_named_are_whole_words(caption, named):
    assert recolour.colours_named(caption) == named


@pytest.mark.parametrize("captions, fits", [
    (["赤いバス", "バスが止まっている"], ["red-blue", "red-green", "red-yellow"]),
    (["青い車と白い家"], ["red-blue"]),  # red-green would keep blue: nothing to exchange
    (["緑の芝生と黒い犬"], ["red-green"]),
    (["緑の芝生に青いボール"], ["red-blue", "red-green"]),  # red-yellow changes neither
    (["赤いりんご", "黄色いバナナと赤いりんご"], ["red-yellow"]),  # a swap makes yellow cyan; raising green keeps it
    (["黄色いバナナ"], []),  # red-yellow keeps yellow: nothing to change
    (["赤い車とオレンジ色の花"], []),  # raising green turns orange into yellow, which its words would not say
    (["ピンクの花と緑の葉"], []),
    (["犬が走っている"], []),
    ([], []),
])
def test_a_swap_fits_captions_that_name_what_it_exchanges_and_nothing_it_changes(captions, fits):
    assert recolour.applicable(captions) == fits


def test_recoloured_readings_swap_the_colour_words_and_nothing_else():
    assert recolour.recoloured_reading("赤ちゃんが赤い服を着ている", "red-blue")[0] == text_to_katakana(
        "赤ちゃんが青い服を着ている")
    assert recolour.recoloured_reading("緑の芝生の上に赤い車", "red-green")[0] == text_to_katakana(
        "赤の芝生の上に緑の車")
    assert recolour.recoloured_reading("左に赤の丸、右に青色の星", "red-blue")[0] == text_to_katakana(
        "左に青色の丸、右に赤の星")
    assert recolour.recoloured_reading("白い犬と青い車", "red-green")[0] == text_to_katakana("白い犬と青い車")
    assert recolour.recoloured_reading("レッドのバス", "red-green")[0] == "グリーンノバス"
    assert recolour.recoloured_reading("左に赤い丸、右に黄色の星", "red-yellow")[0] == text_to_katakana(
        "左に黄色い丸、右に黄色の星")
    assert recolour.recoloured_reading("赤の十字と緑の車", "red-yellow")[0] == text_to_katakana("黄色の十字と緑の車")
    assert recolour.recoloured_reading("真っ赤な車", "red-yellow")[0] == "マッキイロナクルマ"


@pytest.mark.parametrize("name, pixels, expected", [
    ("red-blue", [215, 35, 35], [35, 35, 215]),
    ("red-green", [30, 160, 60], [160, 30, 60]),
    ("red-yellow", [215, 35, 35], [215, 215, 35]),  # red becomes yellow
    ("red-yellow", [35, 70, 215], [35, 70, 215]),  # blue, green, white and black stay what they were
    ("red-yellow", [30, 160, 60], [30, 160, 60]),
    ("red-yellow", [245, 245, 245], [245, 245, 245]),
])
def test_recoloured_pixels(name, pixels, expected):
    assert recolour.recolour_pixels(np.array([[pixels]], np.uint8), name).tolist() == [[expected]]


def test_the_hard_benchmark_recoloured_from_its_captions_alone_matches_its_scenes(tmp_path):
    """On the benchmark, the captions pick the photos the scenes say can be recoloured, and every recoloured
    caption names every object of the recoloured scene and no absent colour."""
    folder = hard.generate(tmp_path, num_train=120, num_val=1)
    data = json.loads((folder / "captions_train.json").read_text(encoding="utf-8"))
    captions = collections.defaultdict(list)
    for annotation in data["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"])
    recoloured = 0
    for image in data["images"]:
        fits = recolour.applicable(captions[image["id"]])
        for name in recolour.RECOLOURINGS:
            scene = hard._recoloured(image["scene"], name)
            assert (name in fits) == (scene is not None), (captions[image["id"]], name)
            for caption in captions[image["id"]] if scene else ():
                scores = hard.score_caption(recolour.recoloured_reading(caption, name)[0], scene)
                assert scores["every object right"] == 1.0 and scores["absent colour named"] == 0.0, caption
                recoloured += 1
    assert recoloured > 100
