"""lm.py, and CTC beam search with it (decoding.decode_ctc_lm)."""

import itertools
import json
import math

import keras
import numpy as np
import pytest

import lm
from decoding import decode_ctc, decode_ctc_lm
from kana import END, Vocabulary

VOCABULARY = Vocabulary(("ア", "イ", "ウ"))  # classes 1, 2, 3; 0 is the end (CTC's blank)
CAPTIONS = ["アイウ", "アイイ", "ウイア", "アイウア"]


def total_probability(model, history):
    return sum(math.exp(model.log_probability(history, symbol)) for symbol in [*VOCABULARY.characters, lm.END_MARK])


@pytest.mark.parametrize("order", [1, 2, 3, 8])
def test_probabilities_of_what_may_follow_sum_to_one(order):
    model = lm.CharNgram.fit(CAPTIONS, order)
    for history in ["", "ア", "アイ", "ウウウ", "アイウアイウ"]:
        assert total_probability(model, history) == pytest.approx(1.0)


def test_the_model_knows_how_captions_start_and_end():
    model = lm.CharNgram.fit(CAPTIONS, 3)
    assert model.log_probability("", "ア") > model.log_probability("", "イ")  # 3 of 4 captions start with ア
    assert model.log_probability("アイウ", lm.END_MARK) > model.log_probability("アイ", lm.END_MARK)
    assert model.log_probability("ア", "イ") > math.log(0.5)


def test_it_round_trips_through_json_and_rejects_damaged_files(tmp_path):
    model = lm.CharNgram.fit(CAPTIONS, 4)
    model.save(tmp_path / "lm.json")
    loaded = lm.CharNgram.load(tmp_path / "lm.json")
    assert loaded.counts == model.counts and (loaded.order, loaded.alphabet) == (4, model.alphabet)
    good = model.to_json()
    damaged = [{**good, "order": 99}, {**good, "order": True}, {**good, "counts": {}},
               {**good, "counts": {**good["counts"], "アイウア": {"イ": 1}}},  # a context as long as the order
               {**good, "counts": {**good["counts"], "ア": {"イ": -1}}},
               {**good, "counts": {**good["counts"], "ア": {lm.START_MARK: 1}}},
               {**good, "counts": {**good["counts"], "ア": {"イウ": 1}}}, {**good, "extra": 1}, [1, 2]]
    for data in damaged:
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match="not a language model"):
            lm.CharNgram.load(tmp_path / "bad.json")


def test_pruning_keeps_the_short_contexts_and_the_bound():
    captions = ["".join(chars) for chars in itertools.product("アイウ", repeat=5)]  # every long context seen once
    full = lm.CharNgram.fit(captions, 6)
    pruned = lm.CharNgram.fit(captions, 6, max_ngrams=400)
    assert sum(map(len, pruned.counts.values())) <= 400 < sum(map(len, full.counts.values()))
    assert all(pruned.counts[context] == full.counts[context] for context in full.counts if len(context) < 2)
    assert total_probability(pruned, "アイウア") == pytest.approx(1.0)


def test_without_its_weight_the_search_is_ctc_beam_search():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(4, 0.3), size=(3, 8)).astype(np.float32)
    model = lm.CharNgram.fit(CAPTIONS, 3)
    fused = decode_ctc_lm(probabilities, VOCABULARY, model, weight=0.0, beam_size=16, n_best=3)
    plain = decode_ctc(probabilities, VOCABULARY, beam_size=16, n_best=3)
    for ours, theirs in zip(fused, plain):
        assert [c.text for c in ours] == [c.text for c in theirs]
        assert [c.probability for c in ours] == pytest.approx([c.probability for c in theirs], rel=1e-3)


def test_the_language_model_settles_a_character_the_photo_leaves_open():
    # Step 2 is a coin toss between イ and ウ; the training captions only ever write アイ.
    steps = [[0.05, 0.9, 0.03, 0.02], [0.02, 0.02, 0.475, 0.485], [0.96, 0.02, 0.01, 0.01]]  # CTC alone: ウ
    probabilities = np.array([steps], np.float32)
    model = lm.CharNgram.fit(["アイ"] * 5 + ["ウア"], 3)
    (alone,), = decode_ctc_lm(probabilities, VOCABULARY, model, weight=0.0)
    (fused,), = decode_ctc_lm(probabilities, VOCABULARY, model, weight=0.5)
    assert (alone.text, fused.text) == ("アウ", "アイ")
    # The probability reported is CTC's alone: the caption's paths, as keras.ops.ctc_loss sums them.
    loss = keras.ops.ctc_loss(np.array([[1, 2]]), np.log(probabilities), np.array([2]), np.array([3]), mask_index=END)
    assert fused.probability == pytest.approx(float(np.exp(-keras.ops.convert_to_numpy(loss)[0])), rel=1e-3)


def test_a_shorter_context_reads_the_lower_order_model_from_the_same_counts():
    trigram, bigram = lm.CharNgram.fit(CAPTIONS, 3), lm.CharNgram.fit(CAPTIONS, 2)
    for history in ("", "ア", "アイ", "イウア"):
        for symbol in ("ア", "イ", "ウ", lm.END_MARK):
            assert trigram.log_probability(history, symbol, context=1) == pytest.approx(
                bigram.log_probability(history, symbol))
            assert trigram.log_probability(history, symbol, context=9) == trigram.log_probability(history, symbol)
    assert trigram.log_probability("アイ", "ウ", context=1) != trigram.log_probability("アイ", "ウ")
