import pytest

import kana
from kana import END, Vocabulary, clause_cut, katakana_reading, number_to_kanji, text_to_katakana


@pytest.mark.parametrize(
    "text, expected",
    [
        ("赤いシャツを着た男性がフリスビーをしています。", "アカイシャツヲキタダンセイガフリスビーヲシテイマス。"),
        ("左に赤い丸、右に青い三角があります。", "ヒダリニアカイマル、ミギニアオイサンカクガアリマス。"),
        ("ﾃﾆｽをする女性", "テニスヲスルジョセイ"),  # half-width katakana
        ("２つの図形", "フタツノズケイ"),  # full-width digit, read as a counter
        ("12台の車", "ジュウニダイノクルマ"),
        ("2人の男性", "フタリノダンセイ"),
    ],
)
def test_readings_of_real_style_sentences(text, expected):
    assert text_to_katakana(text) == expected


def test_characters_without_a_reading_are_dropped_and_reported():
    katakana, dropped = katakana_reading("ABCの看板😀がある")
    assert katakana == "ノカンバンガアル"
    assert dropped == "ABC😀"


def test_output_is_katakana_and_punctuation_only():
    katakana = text_to_katakana("テーブルの上に、ケーキとコーヒーが置いてある。")
    assert katakana and all(kana._KATAKANA.fullmatch(char) for char in katakana)


@pytest.mark.parametrize("number, written", [(0, "〇"), (7, "七"), (10, "十"), (23, "二十三"), (105, "百五"), (2024, "二千二十四")])
def test_number_to_kanji(number, written):
    assert number_to_kanji(number) == written


def test_vocabulary_is_built_by_frequency_with_end_class_first():
    vocabulary = Vocabulary.build(["アアアイイウ", "アイ"], num_classes=3)
    assert vocabulary.characters == ("ア", "イ")  # ウ is the least frequent and does not fit
    assert vocabulary.num_classes == 3
    assert vocabulary.char_to_index == {"ア": 1, "イ": 2}


def test_vocabulary_json_round_trip(tmp_path):
    vocabulary = Vocabulary.build(["アカイマル", "アオイシカク。"])
    vocabulary.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocabulary


def test_vocabulary_rejects_a_file_that_is_not_one(tmp_path):
    (tmp_path / "vocab.json").write_text('{"words": []}')
    with pytest.raises(ValueError, match="tokens"):
        Vocabulary.load(tmp_path / "vocab.json")


def test_encode_pads_with_end_counts_unknown_and_truncates():
    vocabulary = Vocabulary(("ア", "イ"))
    encoded, unknown, truncated = vocabulary.encode("アウイ", timesteps=6)
    assert encoded.tolist() == [1, 2, END, END, END, END]
    assert (unknown, truncated) == (1, False)
    encoded, _, truncated = vocabulary.encode("アイアイアイ", timesteps=4)
    assert encoded.tolist() == [1, 2, 1, END]  # always room for the end class
    assert truncated


def test_a_caption_over_the_limit_is_cut_after_its_last_clause_that_fits():
    vocabulary = Vocabulary.build(["ヒダリニマル、ミギニホシ。"])
    encoded, _, truncated = vocabulary.encode("ヒダリニマル、ミギニホシ。", timesteps=10)
    assert truncated and vocabulary.decode(encoded) == ("ヒダリニマル、", True)
    encoded, _, _ = vocabulary.encode("ヒダリニマルミギニホシ", timesteps=5)  # no clause mark: cut at the limit
    assert vocabulary.decode(encoded) == ("ヒダリニ", True)
    assert clause_cut("ヒダリニマル、ミギニホシ。", 9) == "ヒダリニマル、"  # the same cut, on the text itself
    assert clause_cut("ヒダリニマル、ミギニホシ。", 13) == "ヒダリニマル、ミギニホシ。"


def test_encode_decode_round_trip():
    vocabulary = Vocabulary.build(["ミギニアオイサンカクガアリマス。"])
    encoded, _, _ = vocabulary.encode("ミギニアオイサンカク。")
    assert vocabulary.decode(encoded) == ("ミギニアオイサンカク。", True)


def test_cli_prints_the_reading(capsys):
    assert kana.main(["赤い丸"]) == 0
    assert capsys.readouterr().out.strip() == "アカイマル"


def test_mirror_reading_swaps_left_and_right_and_undoes_itself():
    reading = text_to_katakana("左に赤い丸、右側に青い星、左右に線があります。")
    mirrored = kana.mirror_reading(reading)
    assert mirrored == "ミギニアカイマル、ヒダリガワニアオイホシ、サユウニセンガアリマス。"
    assert kana.mirror_reading(mirrored) == reading
