"""A character n-gram model of the training captions: the language model that CTC decoding reads.

The card's design writes all 50 characters at once, each step on its own; it
gets the structure of a caption right and misspells words (ミドイ for
ミドリ). CTC beam search with this model beside it (``decoding.decode_ctc_lm``,
shallow fusion) ranks each partial caption by

    log P_ctc(caption | photo) + weight * log P_lm(caption)

so that a spelling the training captions never use loses to one they do,
while the photo still decides which words are written. The model is fitted on
the katakana of the training photos' captions only (never the validation
photos'), and stored beside the model as ``lm.json``: for each context of up
to ``order - 1`` characters, how often each character (or the caption's end)
followed it. Probabilities are interpolated from the longest context down to
a uniform distribution (Witten-Bell), so any caption has a probability.
"""

from __future__ import annotations

import collections
import math
from typing import Iterable

from fileio import read_json, write_json

LM_FILE = "lm.json"
DEFAULT_ORDER = 10  # characters of context, plus one: chosen on a tuning set of new demo scenes (docs/image2text.md)
MAX_ORDER = 16
MAX_NGRAMS = 2_000_000  # stored (context, next) pairs; rarer long ones are dropped beyond it (about 40 MB of JSON)
MAX_LM_BYTES = 256 * 2**20  # lm.json files larger than this are not read
END_MARK = "</s>"  # the caption's end, as lm.json writes it
START_MARK = "\x02"  # the caption's start, which every context of its first characters begins with
MAX_CACHED = 1_000_000  # log-probabilities kept for reuse while decoding


class CharNgram:
    """Counts of which character follows each context of up to ``order - 1`` characters.

    Attributes:
        order: n of the n-gram: the longest context is ``order - 1`` characters.
        counts: context -> {next character or END_MARK: count}.
        alphabet: how many outcomes the uniform floor spreads over (characters seen, plus the end).
    """

    def __init__(self, order: int, counts: dict[str, dict[str, int]], alphabet: int):
        self.order, self.counts, self.alphabet = order, counts, alphabet
        self._totals = {context: (sum(following.values()), len(following)) for context, following in counts.items()}
        self._cache: dict[tuple[str, str], float] = {}

    @classmethod
    def fit(cls, captions: Iterable[str], order: int = DEFAULT_ORDER, max_ngrams: int = MAX_NGRAMS) -> "CharNgram":
        """Counts every context of the captions; beyond ``max_ngrams``, the rarest long contexts' pairs go first."""
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be from 1 to {MAX_ORDER}, not {order}")
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for caption in captions:
            padded = START_MARK + caption
            for index, symbol in enumerate([*caption, END_MARK], 1):
                for length in range(min(order - 1, index) + 1):
                    counts[padded[index - length : index]][symbol] += 1
        counts = _prune({context: dict(following) for context, following in counts.items()}, max_ngrams)
        alphabet = len({symbol for following in counts.values() for symbol in following} | {END_MARK})
        return cls(order, counts, alphabet)

    def log_probability(self, history: str, symbol: str, context: int | None = None) -> float:
        """log P(``symbol`` | the caption so far, ``history``: its last ``order - 1`` characters); or of END_MARK.

        ``context``: read at most this many of them (a shorter model from the same counts).
        """
        history = START_MARK + history
        length = self.order - 1 if context is None else max(min(context, self.order - 1), 0)
        key = (history[len(history) - length :] if length else "", symbol)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            cached = self._cache[key] = self._log_probability(*key)
        return cached

    def _log_probability(self, context: str, symbol: str) -> float:
        probability = 1.0 / self.alphabet
        for length in range(len(context) + 1):  # Witten-Bell: from the empty context to the longest one seen
            suffix = context[len(context) - length :]
            following = self.counts.get(suffix)
            if not following:
                break
            total, types = self._totals[suffix]
            probability = (following.get(symbol, 0) + types * probability) / (total + types)
        return math.log(probability)

    def to_json(self) -> dict:
        return {"order": self.order, "alphabet": self.alphabet, "counts": self.counts}

    @classmethod
    def from_json(cls, data, source: str = LM_FILE) -> "CharNgram":
        """Checks every field: a run folder may come from anywhere."""
        problem = f"{source} is not a language model written by train.py"
        if not isinstance(data, dict) or set(data) != {"order", "alphabet", "counts"}:
            raise ValueError(f"{problem} (expected order, alphabet and counts).")
        order, alphabet, counts = data["order"], data["alphabet"], data["counts"]
        if not (_whole(order) and 1 <= order <= MAX_ORDER and _whole(alphabet) and 1 <= alphabet <= 1_000_000):
            raise ValueError(f"{problem} (order {order!r}, alphabet {alphabet!r}).")
        if not isinstance(counts, dict) or "" not in counts or sum(
                len(f) if isinstance(f, dict) else 1 for f in counts.values()) > MAX_NGRAMS:
            raise ValueError(f"{problem} (counts must hold the empty context and at most {MAX_NGRAMS:,} pairs).")
        for context, following in counts.items():
            if len(context) >= order or not isinstance(following, dict) or not following or not all(
                    (len(symbol) == 1 and symbol != START_MARK or symbol == END_MARK) and _whole(count) and count > 0
                    for symbol, count in following.items()):
                raise ValueError(f"{problem} (context {context[:20]!r}).")
        return cls(order, counts, alphabet)

    def save(self, path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path) -> "CharNgram":
        return cls.from_json(read_json(path, "Language model", MAX_LM_BYTES), str(path))


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prune(counts: dict[str, dict[str, int]], max_ngrams: int) -> dict[str, dict[str, int]]:
    """Drops pairs seen fewer than 2, 3, ... times from contexts of two or more characters until ``max_ngrams`` remain."""
    minimum, largest = 2, max((count for following in counts.values() for count in following.values()), default=0)
    while sum(map(len, counts.values())) > max_ngrams:
        if minimum > largest + 1:
            raise ValueError(f"the captions' one-character contexts alone hold more than {max_ngrams:,} pairs")
        counts = {context: kept for context, following in counts.items() if (kept := following if len(context) < 2 else
                  {symbol: count for symbol, count in following.items() if count >= minimum})}
        minimum += 1
    return counts
