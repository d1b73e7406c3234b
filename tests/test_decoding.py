"""Decoding tested with hand-written probabilities, as im2txt tests its beam search with a FakeModel."""

import numpy as np
import pytest

import lm
from decoding import (Averaged, NoRepeat, PriorSubtracted, beam_search, class_order, decode_ctc, decode_parallel,
                      repeat_endings, sample_and_rank, sample_captions)
from kana import END, Vocabulary

VOCABULARY = Vocabulary(("ア", "イ", "ウ"))  # classes 1, 2, 3; 0 is the end


def test_parallel_decoding_stops_at_end_class():
    steps = [1, 1, 2, END, 3, 3]  # ア ア イ, then the end, then noise that must not be printed
    probabilities = np.full((1, len(steps), 4), 0.1)
    probabilities[0, np.arange(len(steps)), steps] = 0.7
    (best,), = decode_parallel(probabilities, VOCABULARY)
    assert (best.text, best.ended) == ("アアイ", True)
    assert best.probability == pytest.approx(0.7**4)
    assert decode_parallel(probabilities, VOCABULARY, collapse_repeats=True)[0][0].text == "アイ"
    probabilities[0, 3] = [0.0, 0.0, 0.0, 1.0]
    assert decode_parallel(probabilities, VOCABULARY)[0][0].ended is False


class FakeSteps:
    """Next-character probabilities from a table keyed by the caption so far (the state is the prefix)."""

    TABLE = {
        "": {"ア": 0.6, "イ": 0.4},
        "ア": {"ア": 0.5, "": 0.5},  # ア then end: 0.30
        "アア": {"": 1.0},  # アア: 0.30, longer, same probability
        "イ": {"ウ": 1.0},
        "イウ": {"": 1.0},  # イウ: 0.40, the most likely caption overall
    }

    def __init__(self):
        self.prefixes = []

    def start(self, features):
        self.prefixes = [""] * len(features)
        return [np.zeros((len(features), 1))]

    def next(self, tokens, states):
        # The state is an index into self.prefixes, so the fake follows reordered beams.
        new_prefixes, output = [], np.full((len(tokens), 4), 1e-9)
        for row, token in enumerate(tokens):
            prefix = self.prefixes[int(states[0][row, 0])] if self.prefixes else ""
            if token != END or prefix:
                prefix += VOCABULARY.index_to_char.get(int(token), "")
            new_prefixes.append(prefix)
            for char, probability in self.TABLE.get(prefix, {"": 1.0}).items():
                output[row, VOCABULARY.char_to_index.get(char, END)] = probability
        self.prefixes = new_prefixes
        return output, [np.arange(len(tokens), dtype=float)[:, None]]


def test_beam_search_finds_the_most_likely_caption_and_ranks_n_best():
    captions = beam_search(FakeSteps(), np.zeros((1, 1)), VOCABULARY, beam_size=3, n_best=3)[0]
    # Ranked by log-probability per character (end included): イウ 0.4 over 3, アア 0.3 over 3, ア 0.3 over 2.
    assert [c.text for c in captions] == ["イウ", "アア", "ア"]
    assert [c.probability for c in captions] == pytest.approx([0.4, 0.3, 0.3])
    assert all(c.ended for c in captions)


def test_greedy_takes_the_locally_best_character():
    (best,) = beam_search(FakeSteps(), np.zeros((1, 1)), VOCABULARY, beam_size=1)[0]
    assert best.text in ("ア", "アア")  # greedy follows ア (0.6) and misses イウ (0.4)


def test_beam_search_is_batched_per_image():
    captions = beam_search(FakeSteps(), np.zeros((4, 1)), VOCABULARY, beam_size=2)
    assert [c[0].text for c in captions] == ["イウ"] * 4


def test_captions_without_end_are_cut_and_marked():
    class Babbler(FakeSteps):
        TABLE = {}

        def next(self, tokens, states):
            output = np.full((len(tokens), 4), 0.01)
            output[:, 1] = 0.97  # always ア, never the end
            return output, states

    (best,) = beam_search(Babbler(), np.zeros((1, 1)), VOCABULARY, beam_size=2, max_length=5)[0]
    assert best.text == "アアアアア" and not best.ended



def test_drawn_captions_find_the_likeliest_caption_that_greedy_misses():
    rng = np.random.default_rng(0)
    captions = sample_and_rank(FakeSteps(), np.zeros((2, 1)), VOCABULARY, num_samples=20, rng=rng, n_best=3)
    for ranked in captions:  # greedy writes ア (0.3); a draw of イ (0.4 of them) finds イウ (0.4)
        assert [c.text for c in ranked][0] == "イウ" and {c.text for c in ranked[1:]} == {"ア", "アア"}
        assert [c.probability for c in ranked] == pytest.approx([0.4, 0.3, 0.3])
    again = sample_and_rank(FakeSteps(), np.zeros((2, 1)), VOCABULARY, num_samples=20, rng=np.random.default_rng(0),
                            n_best=3)
    assert again == captions  # the same seed, the same captions


def test_drawn_captions_rank_ended_ones_before_likelier_unended_ones():
    class Rambler(FakeSteps):
        TABLE = {"": {"ア": 0.9, "イ": 0.1}, "ア": {"ア": 1.0}, "アア": {"ア": 1.0}, "イ": {"": 1.0}}

    ranked = sample_and_rank(Rambler(), np.zeros((1, 1)), VOCABULARY, num_samples=40, rng=np.random.default_rng(1),
                             n_best=2, max_length=2)[0]
    assert [(c.text, c.ended) for c in ranked] == [("イ", True), ("アア", False)]



def test_draws_skip_the_spare_classes_no_character_decodes_to():
    class Spare(FakeSteps):
        def next(self, tokens, states):
            return np.tile([0.1, 0.1, 0.1, 0.1, 0.6], (len(tokens), 1)), states  # class 4: no character

    drawn = sample_captions(Spare(), np.zeros((1, 1)), 300, 4, np.random.default_rng(0), VOCABULARY.num_classes)
    assert drawn.targets.max() < VOCABULARY.num_classes and 0 < drawn.targets.max()


class OneCharacter(FakeSteps):
    """A photo that is more likely ア than イ, hardly ウ, then the end."""

    TABLE = {"": {"ア": 0.55, "イ": 0.44, "ウ": 0.01}}


# Captions where ア is usual, イ rare and ウ never written: the prior a captioner learns alongside the photo.
USUAL_A = lm.CharNgram.fit(["ア"] * 17 + ["イ"] * 3, 3)


def test_taking_the_prior_out_writes_what_the_photo_adds_among_the_plausible_characters():
    def best(weight, plausible=0.1):
        steps = PriorSubtracted(OneCharacter(), USUAL_A, VOCABULARY, weight, plausible) \
            if weight is not None else OneCharacter()
        return beam_search(steps, np.zeros((1, 1)), VOCABULARY, beam_size=3)[0][0].text

    assert best(None) == best(0.0) == "ア"
    assert best(1.0) == "イ"  # 0.44 against a prior of about 3/20 beats 0.55 against about 17/20
    # ウ is rarer still, but the photo makes it under 0.1× as likely as ア: it is written only without that bound,
    # and then again and again, however unlikely the model finds it (the babble the bound prevents).
    assert best(10.0) == "イ"
    assert best(10.0, plausible=0.0).startswith("ウウウ")


def test_the_prior_reads_each_beams_own_characters_as_beams_are_reordered():
    """Beam search with the prior against the same correction worked out caption by caption.

    The prior reads one character of context from a trigram model: the bigram model of the same captions.
    """
    captions = ["アア", "アア", "イウ", "ア", "イア"]
    model = lm.CharNgram.fit(captions, 2)

    def corrected(prefix):  # the FakeSteps table's distribution after prefix, corrected as PriorSubtracted does
        table = FakeSteps.TABLE.get(prefix, {"": 1.0})
        top = max(table.values())
        scores = {char: np.log(p) - 0.7 * model.log_probability(prefix, char or lm.END_MARK)
                  for char, p in table.items() if p >= 0.1 * top}
        total = sum(np.exp(list(scores.values())))
        return {char: np.exp(score) / total for char, score in scores.items()}

    def probability(caption):
        result = 1.0
        for index, char in enumerate([*caption, ""]):
            result *= corrected(caption[:index]).get(char, 0.0)
        return result

    steps = PriorSubtracted(FakeSteps(), lm.CharNgram.fit(captions, 3), VOCABULARY, 0.7, plausible=0.1, context=1)
    captions = beam_search(steps, np.zeros((2, 1)), VOCABULARY, beam_size=3, n_best=3)
    for ranked in captions:
        assert [c.probability for c in ranked] == pytest.approx([probability(c.text) for c in ranked])
        assert {c.text for c in ranked} == {"ア", "アア", "イウ"}


def test_repeat_endings_are_the_characters_that_would_write_a_run_again():
    caption = np.array([[1, 2, 3, 1, 2], [1, 2, 3, 3, 2]])  # アイウアイ, アイウウイ
    assert repeat_endings(caption, 3) == [[3], []]  # アイ was once followed by ウ; ウイ never before
    assert repeat_endings(caption, 2) == [[3], [3]]  # イ was followed by ウ in both
    assert repeat_endings(np.array([[1, 1, 2, 1, 1]]), 2) == [[1, 2]]
    assert repeat_endings(caption[:, :2], 3) == [[], []]  # too short to hold a run of three


class Looper(FakeSteps):
    """A decoder that writes アイアイ... and would go on: after ア, イ; after イ, ア (rarely ウ or the end)."""

    def next(self, tokens, states):
        output = np.zeros((len(tokens), 4))
        output[tokens == END] = [0.0, 1.0, 0.0, 0.0]
        output[tokens == 1] = [0.1, 0.0, 0.9, 0.0]
        output[tokens == 2] = [0.05, 0.8, 0.0, 0.15]
        output[tokens == 3] = [1.0, 0.0, 0.0, 0.0]
        return output, states


def test_no_repeat_writes_no_run_of_characters_twice():
    (looping,) = beam_search(Looper(), np.zeros((1, 1)), VOCABULARY, beam_size=1, max_length=9)[0]
    assert (looping.text, looping.ended) == ("アイアイアイアイア", False)
    (best,) = beam_search(NoRepeat(Looper(), 3), np.zeros((1, 1)), VOCABULARY, beam_size=1, max_length=9)[0]
    # アイアイ: ア would write アイア again; of ウ (0.15) and the end (0.05), ウ, then the end.
    assert (best.text, best.ended) == ("アイアイウ", True)
    assert best.probability == pytest.approx(0.9 * 0.8 * 0.9 * 0.75)
    for ranked in beam_search(NoRepeat(Looper(), 2), np.zeros((3, 1)), VOCABULARY, beam_size=3, n_best=3,
                              max_length=9):  # each beam checks its own characters as beams are reordered
        for caption in ranked:
            pairs = [caption.text[i : i + 2] for i in range(len(caption.text) - 1)]
            assert len(pairs) == len(set(pairs)) and caption.ended


def test_no_repeat_leaves_a_step_whose_every_character_is_blocked():
    class OnlyA(FakeSteps):
        def next(self, tokens, states):
            return np.tile([0.0, 1.0, 0.0, 0.0], (len(tokens), 1)), states

    (best,) = beam_search(NoRepeat(OnlyA(), 2), np.zeros((1, 1)), VOCABULARY, beam_size=1, max_length=4)[0]
    assert (best.text, best.ended) == ("アアアア", False)
    with pytest.raises(ValueError, match="at least 2"):
        NoRepeat(OnlyA(), 1)


OTHER_ORDER = Vocabulary(("ウ", "ア", "イ"))  # the same characters, numbered as another run's split ranks them


class Renumbered:
    """``FakeSteps`` as a run with OTHER_ORDER's numbering would give them: fed and answering in its own classes."""

    def __init__(self, steps):
        self.steps, self.order = steps, class_order(VOCABULARY, OTHER_ORDER, 4)  # OTHER_ORDER's class of each class

    def start(self, features):
        return self.steps.start(features)

    def next(self, tokens, states):
        probabilities, states = self.steps.next(np.argsort(self.order)[tokens], states)
        renumbered = np.empty_like(probabilities)
        renumbered[:, self.order] = probabilities
        return renumbered, states


def test_class_order_finds_each_character_in_the_other_runs_numbering():
    assert class_order(VOCABULARY, OTHER_ORDER, 6).tolist() == [END, 2, 3, 1, 4, 5]  # unused classes stay put
    with pytest.raises(ValueError, match="different characters"):
        class_order(VOCABULARY, Vocabulary(("ア", "イ", "エ")), 4)


def test_an_ensemble_averages_each_step_across_runs_numbered_differently():
    alone = beam_search(FakeSteps(), np.zeros((2, 1)), VOCABULARY, beam_size=3, n_best=3)
    orders = [np.arange(4), class_order(VOCABULARY, OTHER_ORDER, 4)]
    twice = beam_search(Averaged([FakeSteps(), Renumbered(FakeSteps())], orders), np.zeros((2, 1)), VOCABULARY,
                        beam_size=3, n_best=3)
    assert [[(c.text, c.probability) for c in ranked] for ranked in twice] == \
        [[(c.text, pytest.approx(c.probability)) for c in ranked] for ranked in alone]

    class SureOfA(FakeSteps):
        TABLE = {"": {"ア": 0.9, "イ": 0.1}, "ア": {"": 1.0}, "イ": {"ウ": 1.0}}

    # The mean: ア 0.75 (0.6 and 0.9), then the end 0.75 (0.5 and 1.0): 0.5625, over イウ's 0.25.
    (best,) = beam_search(Averaged([FakeSteps(), Renumbered(SureOfA())], orders), np.zeros((1, 1)), VOCABULARY,
                          beam_size=3)[0]
    assert (best.text, best.probability) == ("ア", pytest.approx(0.5625))


def ctc_probabilities(steps):
    """One image's per-step probabilities: 0.7 on each step's class, the rest spread over the others."""
    probabilities = np.full((1, len(steps), 4), 0.1)
    probabilities[0, np.arange(len(steps)), steps] = 0.7
    return probabilities


def test_ctc_decoding_merges_repeats_and_removes_blanks():
    # ア ア (merged) blank ア (a new ア after the blank) イ イ blank: "アアイ"
    probabilities = ctc_probabilities([1, 1, END, 1, 2, 2, END])
    (best,), = decode_ctc(probabilities, VOCABULARY)
    assert (best.text, best.ended) == ("アアイ", True)
    assert best.probability == pytest.approx(0.7**7, rel=1e-4)  # greedy: the best path's probability


def test_ctc_beam_search_ranks_captions_and_sums_their_paths():
    # Step 2 is split between ア and the blank: both paths read "ア", so "ア" outranks any two-character caption.
    probabilities = np.array([[[0.1, 0.8, 0.05, 0.05], [0.45, 0.45, 0.05, 0.05], [0.9, 0.04, 0.03, 0.03]]])
    captions, = decode_ctc(probabilities, VOCABULARY, beam_size=4, n_best=3)
    assert [caption.text for caption in captions][0] == "ア"
    assert len(captions) == 3 and len({caption.text for caption in captions}) == 3
    probabilities_ranked = [caption.probability for caption in captions]
    assert probabilities_ranked == sorted(probabilities_ranked, reverse=True)
    assert probabilities_ranked[0] > 0.8 * 0.45 * 0.9  # more than its likeliest single path: paths are summed
    assert decode_ctc(probabilities[:0], VOCABULARY) == []
