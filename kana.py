"""Japanese text -> katakana readings, and the character vocabulary the model speaks.

The captioner writes one katakana character per timestep, so every Japanese
caption (kanji, hiragana, katakana, digits) is first turned into its katakana
reading with pykakasi:

    $ python kana.py "赤いシャツを着た男性がフリスビーをしています。"
    アカイシャツヲキタダンセイガフリスビーヲシテイマス。

Class 0 of the vocabulary is the end class: it ends a caption and pads it to
the fixed number of timesteps. The other classes are the most frequent
characters of the training captions, so at most ``num_classes - 1`` of them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import re
import sys
import unicodedata
from typing import Iterable, Sequence

import numpy as np
import pykakasi
from tqdm import tqdm

from fileio import read_json, write_json

END = 0  # index of the end/padding class
END_TOKEN = "</s>"  # how the end class is written in vocab.json
NUM_CLASSES = 128  # softmax width of the card's design
TIMESTEPS = 50  # characters per caption, end class included
CLAUSE_MARKS = "、。"  # a caption over the length limit is cut after the last of these that fits
LEFT, RIGHT = "ヒダリ", "ミギ"  # swapped in the caption of a photo mirrored left to right (train.py --flip)

# Characters a katakana reading may contain: the katakana block, the prolonged
# sound mark, iteration marks, and the sentence punctuation the captions use.
_KATAKANA = re.compile(r"[\u30a1-\u30fa\u30fc-\u30fe、。！？]")
_KANJI_DIGITS = "〇一二三四五六七八九"
_KANJI_UNITS = ((1000, "千"), (100, "百"), (10, "十"))
_NUMBER = re.compile(r"[0-9]+")


def number_to_kanji(number: int) -> str:
    """Writes a whole number in kanji, so that pykakasi reads it: 23 -> 二十三.

    Numbers of 10,000 or more are written digit by digit (一〇〇〇〇), which
    pykakasi reads digit by digit; captions rarely contain them.
    """
    if number >= 10000:
        return "".join(_KANJI_DIGITS[int(digit)] for digit in str(number))
    if number == 0:
        return _KANJI_DIGITS[0]
    text = ""
    for unit, name in _KANJI_UNITS:
        count, number = divmod(number, unit)
        if count:
            text += ("" if count == 1 else _KANJI_DIGITS[count]) + name
    return text + (_KANJI_DIGITS[number] if number else "")


_kakasi = None


def _converter():
    global _kakasi
    if _kakasi is None:  # building the dictionaries takes a moment: do it once, lazily
        _kakasi = pykakasi.kakasi()
    return _kakasi


def katakana_reading(text: str, rewrite=None) -> tuple[str, str]:
    """Converts Japanese text to its katakana reading.

    The text is NFKC-normalised (half-width katakana become full-width,
    full-width digits and latin become ASCII), numbers are written in kanji so
    that counters read naturally (2つ -> フタツ), and pykakasi reads the rest.

    Args:
        text: a caption in any mix of kanji, hiragana, katakana and digits.
        rewrite: ``rewrite(word)``, what to read in place of each word as
            pykakasi splits the text (None: the word itself); train.py
            --recolour's colour words (recolour.py).

    Returns:
        ``(katakana, dropped)``: the reading, and the characters that have no
        katakana reading (latin letters, emoji, symbols), which are left out.
    """
    items, dropped = _words(text)
    reading = []
    for item in items:
        word = item["orig"] if rewrite is None else rewrite(item["orig"])
        reading.append(item["kana"] if word == item["orig"]
                       else "".join(part["kana"] for part in _converter().convert(word)))
    katakana = []
    for char in "".join(reading):
        (katakana if _KATAKANA.fullmatch(char) else dropped).append(char)
    return "".join(katakana), "".join(dropped)


def words(text: str) -> list[str]:
    """The words of ``text`` as pykakasi splits it for katakana_reading (a particle may stay on its word: 赤の)."""
    return [item["orig"] for item in _words(text)[0]]


def _words(text: str) -> tuple[list[dict], list[str]]:
    """pykakasi's words of the normalised text's Japanese script, and the characters left out before reading."""
    text = unicodedata.normalize("NFKC", text)
    text = _NUMBER.sub(lambda match: number_to_kanji(int(match.group())), text)
    # Only Japanese script and the kept punctuation go to pykakasi: it handles
    # them well, and it mangles some others (an emoji makes it repeat text).
    kept, dropped = [], []
    for char in text:
        if char.isspace():
            continue
        if _is_japanese(char):
            kept.append(char)
        else:
            dropped.append(char)
    return [item for chunk in _chunks("".join(kept)) for item in _converter().convert(chunk)], dropped


def _is_japanese(char: str) -> bool:
    code = ord(char)
    return (
        0x3041 <= code <= 0x309F  # hiragana
        or 0x30A0 <= code <= 0x30FF  # katakana
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= code <= 0x4DBF  # CJK extension A
        or 0xF900 <= code <= 0xFAFF  # CJK compatibility ideographs
        or char in "々〆ヶ、。！？"
    )


CHUNK_CHARS = 64  # pykakasi's time grows with the square of its input; longer texts are read in pieces
_CHUNK_END = re.compile(r"(?<=[。、！？])")


def _chunks(text: str):
    """``text`` in pieces of at most CHUNK_CHARS, cut after punctuation where it has any (a caption is one piece)."""
    for sentence in _CHUNK_END.split(text):
        for start in range(0, len(sentence), CHUNK_CHARS):
            yield sentence[start : start + CHUNK_CHARS]


def text_to_katakana(text: str) -> str:
    """The katakana reading of ``text``; characters without one are left out."""
    return katakana_reading(text)[0]


_LEFT_OR_RIGHT = re.compile(f"{LEFT}|{RIGHT}")


def mirror_reading(katakana: str) -> str:
    """The caption of the photo mirrored left to right: every ヒダリ (left) a ミギ (right) and back.

    It works on the reading, so a word that merely contains ミギ would be
    swapped too; in caption text that is rare, and 左右 (サユウ) is left alone.
    """
    return _LEFT_OR_RIGHT.sub(lambda match: RIGHT if match.group() == LEFT else LEFT, katakana)


def convert_captions(caption_lists, progress: bool = False) -> tuple[list[list[str]], int, int]:
    """Katakana readings of each image's captions, as training and evaluation both need them.

    Args:
        caption_lists: one list of Japanese captions per image.
        progress: show a progress bar.

    Returns:
        ``(readings, num_dropped_chars, num_empty)``: per image, the readings
        that are not empty; how many characters had no reading; how many
        captions had no reading at all (and were left out).
    """
    readings, num_dropped_chars, num_empty = [], 0, 0
    for captions in tqdm(caption_lists, desc="katakana", unit="img", disable=not progress, dynamic_ncols=True):
        converted = []
        for caption in captions:
            katakana, dropped = katakana_reading(caption)
            num_dropped_chars += len(dropped)
            if katakana:
                converted.append(katakana)
            else:
                num_empty += 1
        readings.append(converted)
    return readings, num_dropped_chars, num_empty


def clause_cut(caption: Sequence, max_length: int, marks=frozenset(CLAUSE_MARKS)) -> Sequence:
    """``caption`` (characters or their indices) if it fits in ``max_length``; else cut after its last clause mark
    (an item of ``marks``) that fits, or at ``max_length`` where none does."""
    if len(caption) <= max_length:
        return caption
    kept = caption[:max_length]
    last = max((position for position, item in enumerate(kept) if item in marks), default=None)
    return kept if last is None else kept[: last + 1]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The characters the model writes; index 0 is the end class.

    Attributes:
        characters: the characters of classes 1, 2, ...; the class of
            ``characters[i]`` is ``i + 1``.
    """

    characters: tuple[str, ...]

    def __post_init__(self):
        if len(set(self.characters)) != len(self.characters):
            raise ValueError("The vocabulary lists a character twice.")
        if any(len(char) != 1 for char in self.characters):
            raise ValueError("Every vocabulary entry must be one character.")

    @property
    def num_classes(self) -> int:
        return len(self.characters) + 1

    @functools.cached_property  # built once: encode() runs once per caption
    def char_to_index(self) -> dict[str, int]:
        return {char: index + 1 for index, char in enumerate(self.characters)}

    @functools.cached_property
    def index_to_char(self) -> dict[int, str]:
        return {index + 1: char for index, char in enumerate(self.characters)}

    @classmethod
    def build(cls, texts: Iterable[str], num_classes: int = NUM_CLASSES) -> "Vocabulary":
        """The ``num_classes - 1`` most frequent characters of ``texts``.

        Ties are broken by character code, so the same captions always give the
        same vocabulary.
        """
        counts = collections.Counter()
        for text in texts:
            counts.update(text)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(tuple(char for char, _ in ranked[: num_classes - 1]))

    def to_json(self) -> dict:
        return {"end_index": END, "tokens": [END_TOKEN, *self.characters]}

    @classmethod
    def from_json(cls, data: dict) -> "Vocabulary":
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not tokens or tokens[0] != END_TOKEN or not all(
                isinstance(token, str) for token in tokens):
            raise ValueError(f'A vocabulary JSON holds {{"tokens": ["{END_TOKEN}", "ア", ...]}}.')
        return cls(tuple(tokens[1:]))

    def fingerprint(self) -> str:
        """A short digest of the classes in order; config.json keeps it, so a vocab.json from another run is caught."""
        return hashlib.sha1("\n".join(self.to_json()["tokens"]).encode()).hexdigest()[:16]

    def save(self, path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path, fingerprint: str | None = None, max_classes: int | None = None) -> "Vocabulary":
        """Reads vocab.json; checks it against its run's ``fingerprint`` and softmax width where they are given."""
        try:
            vocabulary = cls.from_json(read_json(path, "Vocabulary file"))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if fingerprint is not None and vocabulary.fingerprint() != fingerprint:
            raise ValueError(f"{path} is not the vocabulary this run was trained with (config.json records another); "
                             f"copy the run folder whole.")
        if max_classes is not None and vocabulary.num_classes > max_classes:
            raise ValueError(f"{path} has {vocabulary.num_classes} classes; the run's model writes {max_classes}.")
        return vocabulary

    def encode(self, katakana: str, timesteps: int = TIMESTEPS) -> tuple[np.ndarray, int, bool]:
        """Class indices of a katakana caption, ended and padded with the end class.

        Args:
            katakana: a reading from ``text_to_katakana``.
            timesteps: the length of the result; a caption keeps at most
                ``timesteps - 1`` characters, so that it always ends. A longer
                one is cut after the last clause (、 or 。) that fits, where one
                does, so that the model learns to end where a sentence may end,
                not mid-word.

        Returns:
            ``(indices, num_unknown, truncated)``: an int32 array of length
            ``timesteps``, how many characters were not in the vocabulary (and
            left out), and whether the caption was cut.
        """
        lookup = self.char_to_index
        indices = [lookup[char] for char in katakana if char in lookup]
        num_unknown = len(katakana) - len(indices)
        truncated = len(indices) > timesteps - 1
        encoded = np.full(timesteps, END, dtype=np.int32)
        kept = clause_cut(indices, timesteps - 1, {lookup[mark] for mark in CLAUSE_MARKS if mark in lookup}) \
            if truncated else indices
        encoded[: len(kept)] = kept
        return encoded, num_unknown, truncated

    def decode(self, indices: Sequence[int], collapse_repeats: bool = False) -> tuple[str, bool]:
        """The caption up to the first end class.

        Args:
            indices: class indices, one per timestep.
            collapse_repeats: write a run of the same character once (a cure
                for the stutter of non-autoregressive decoders, ``マルルル``).

        Returns:
            ``(caption, ended)``: unknown indices are skipped; ``ended`` is
            False when no end class was reached.
        """
        lookup = self.index_to_char
        chars, previous = [], None
        for index in indices:
            index = int(index)
            if index == END:
                return "".join(chars), True
            if not (collapse_repeats and index == previous):
                chars.append(lookup.get(index, ""))
            previous = index
        return "".join(chars), False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the katakana reading the captioner is trained on, one line per text.",
    )
    parser.add_argument("texts", nargs="*", help="Japanese texts; none reads lines from standard input")
    parser.add_argument("--show-dropped", action="store_true", help="also print the characters left out")
    args = parser.parse_args(argv)
    texts = args.texts or (line.rstrip("\n") for line in sys.stdin)
    for text in texts:
        katakana, dropped = katakana_reading(text)
        print(f"{katakana}\t(dropped: {dropped})" if args.show_dropped and dropped else katakana)
    return 0


if __name__ == "__main__":
    sys.exit(main())
