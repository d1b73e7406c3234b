"""Recoloured photos: RGB channels swapped or raised, and the colour words of the captions changed to match.

A swap of two channels exchanges two colours a caption names (red and blue,
or red and green) and keeps others (white, black, grey, and the third
primary) what they were: a photo of a red star and its captions become a
photo of a blue star and theirs, a pair the photos may never show. No swap
makes yellow; raising green to red where red is the higher (``red-yellow``,
green := max(red, green)) turns red into yellow and keeps green, blue, white,
black, grey and yellow. This is train.py --recolour, as --flip makes a left
from a right; hard.py uses the same recolourings for `demo.py --hard --recolour`.

A photo is recoloured only where its captions say it can be: at least one of
them names a colour the recolouring changes into another, and none names a
colour it turns into one no word names (under a swap yellow becomes cyan,
orange azure, purple and pink other hues; raising green turns orange into
yellow and purple into grey). The decision reads the captions alone, so a
colour no caption names is recoloured unseen; the words are matched whole, as
pykakasi splits the caption (赤ちゃん, a baby, and 青年, a youth, are not colours).
"""

from __future__ import annotations

import numpy as np

from kana import katakana_reading, words

# name: (per output channel, the input channels it is the maximum of; colours changed, into what; colours kept)
RECOLOURINGS = {
    "red-blue": (((2,), (1,), (0,)), {"red": "blue", "blue": "red"}, {"green", "white", "black", "grey"}),
    "red-green": (((1,), (0,), (2,)), {"red": "green", "green": "red"}, {"blue", "white", "black", "grey"}),
    "red-yellow": (((0,), (0, 1), (2,)), {"red": "yellow"}, {"yellow", "green", "blue", "white", "black", "grey"}),
}
SWAPS = ("red-blue", "red-green")  # train.py --recolour without names: the channel swaps

# The exchanged colours' words by role: a word of one colour is written as the other's word of the same role.
# The 色 compounds are written as the plain noun where pykakasi reads them on'yomi (赤色 セキショク, 緑色 リョクショク),
# as captions rarely say them; blue's noun as 青色, as 青の is rarely said where 赤の is.
_ROLES = ("noun", "compound", "adjective", "adverb", "vivid", "kana", "kana adjective", "loanword")
_EXCHANGED_WORDS = {  # colour: (the words read as it, by role; the word written for it, by role)
    "red": (("赤", "赤色", "赤い", "赤く", "真っ赤", "あか", "あかい", "レッド"),
            ("赤", "赤", "赤い", "赤く", "真っ赤", "あか", "あかい", "レッド")),
    "blue": (("青", "青色", "青い", "青く", "真っ青", "あお", "あおい", "ブルー"),
             ("青色", "青色", "青い", "青く", "真っ青", "あお", "あおい", "ブルー")),
    "green": (("緑", "緑色", None, None, None, "みどり", None, "グリーン"),
              ("緑", "緑", "緑の", "緑に", "緑", "みどり", "みどりの", "グリーン")),
    "yellow": (("黄", "黄色", "黄色い", "黄色く", "真っ黄色", "きいろ", "きいろい", "イエロー"),
               ("黄色", "黄色", "黄色い", "黄色く", "まっきいろ", "きいろ", "きいろい", "イエロー")),
}
_OTHER_WORDS = {  # colours only told apart: a photo whose captions name one a recolouring changes is not recoloured
    "yellow": ("金", "金色"),
    "orange": ("オレンジ", "橙", "橙色", "だいだい"),
    "purple": ("紫", "紫色", "むらさき", "パープル"),
    "pink": ("ピンク", "桃色", "ももいろ"),
    "brown": ("茶", "茶色", "茶色い", "ブラウン"),
    "light blue": ("水色", "紺", "紺色", "空色"),
    "white": ("白", "白い", "白色", "真っ白", "しろい", "ホワイト"),
    "black": ("黒", "黒い", "黒色", "真っ黒", "くろい", "ブラック"),
    "grey": ("灰色", "グレー", "グレイ", "ねずみ色", "銀", "銀色"),
}
_PARTICLES = ("", "の", "な", "に", "と", "で", "が", "は", "を", "も", "や")  # pykakasi may leave one on the word

_WORD_ROLE = {word: (colour, role) for colour, (read, _) in _EXCHANGED_WORDS.items()
              for role, word in zip(_ROLES, read) if word}
_WORD_COLOUR = {**{word: colour for colour, forms in _OTHER_WORDS.items() for word in forms},
                **{word: colour for word, (colour, _) in _WORD_ROLE.items()}}


def _split(word: str) -> tuple[str, str] | None:
    """``(colour word, particle)`` where ``word`` is a colour word with at most a particle after it."""
    for particle in _PARTICLES:
        stem = word[: len(word) - len(particle)] if particle else word
        if word.endswith(particle) and stem in _WORD_COLOUR:
            return stem, particle
    return None


def colours_named(caption: str) -> set[str]:
    """The colours ``caption`` names (RECOLOURINGS' names and those of _OTHER_WORDS)."""
    return {_WORD_COLOUR[split[0]] for word in words(caption) if (split := _split(word))}


def applicable(captions: list[str]) -> list[str]:
    """The RECOLOURINGS that fit a photo with these captions: they name a colour it changes into a named one, and
    none it changes into an unnamed one."""
    named = set().union(*map(colours_named, captions)) if captions else set()
    return [name for name, (_, exchanged, kept) in RECOLOURINGS.items()
            if named & set(exchanged) and named <= set(exchanged) | kept]


def recoloured_reading(caption: str, recolouring: str) -> tuple[str, str]:
    """katakana_reading of ``caption`` with the changed colours' words swapped (赤い -> 青い, 緑の -> 赤の)."""
    exchanged = RECOLOURINGS[recolouring][1]

    def rewrite(word: str) -> str:
        split = _split(word)
        if split is None or split[0] not in _WORD_ROLE or _WORD_ROLE[split[0]][0] not in exchanged:
            return word
        colour, role = _WORD_ROLE[split[0]]
        return _EXCHANGED_WORDS[exchanged[colour]][1][_ROLES.index(role)] + split[1]

    return katakana_reading(caption, rewrite)


def recolour_pixels(images: np.ndarray, recolouring: str) -> np.ndarray:
    """``images`` (``(..., 3)`` RGB) recoloured: each channel the maximum of the recolouring's input channels."""
    sources = RECOLOURINGS[recolouring][0]
    if all(len(channels) == 1 for channels in sources):  # a swap: one gather, no copies per channel
        return images[..., [channels[0] for channels in sources]]
    return np.stack([images[..., list(channels)].max(axis=-1) for channels in sources], axis=-1)
