import pytest

from metrics import caption_metrics

REFERENCES = [["アカイマル", "アカイエン"], ["アオイシカク", "アオイシカクケイ"], ["ミドリノサンカク", "ミドリノサンカクケイ"]]


def test_a_candidate_identical_to_a_reference_scores_bleu4_one():
    scores = caption_metrics(["アカイマル", "アオイシカク", "ミドリノサンカク"], REFERENCES)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)


def test_empty_candidates_score_zero():
    scores = caption_metrics(["", "", ""], REFERENCES)
    assert scores["BLEU-1"] == pytest.approx(0.0, abs=1e-6)
    assert scores["ROUGE-L"] == 0.0 and scores["CIDEr-D"] == 0.0


def test_cider_d_ranks_the_right_caption_above_a_wrong_one():
    right = caption_metrics(["アカイエン", "アオイシカク", "ミドリノサンカク"], REFERENCES)["CIDEr-D per image"]
    wrong = caption_metrics(["ミドリノサンカク", "アオイシカク", "ミドリノサンカク"], REFERENCES)["CIDEr-D per image"]
    assert right[0] > wrong[0] and right[1:] == pytest.approx(wrong[1:])


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        caption_metrics(["ア"], REFERENCES)
