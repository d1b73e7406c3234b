"""Self-critical sequence training: sampling, per-character weights, the direction of its step, and train.py's stage."""

import hashlib
import json

import keras
import numpy as np
import pytest

import decoding
import selfcritical
import train
from conftest import train_argv
from kana import END, Vocabulary
from metrics import cider_scores
from model import CaptionerConfig, build_model, model_inputs, step_models


class ScriptedSteps:
    """Stands in for StepModels: row r of the batch writes ``scripts[r]`` (class indices), then the end class."""

    def __init__(self, scripts, num_classes=5):
        self.scripts, self.num_classes = scripts, num_classes

    def start(self, features):
        return [np.arange(len(features))[:, None], np.zeros((len(features), 1), dtype=np.int64)]  # image, position

    def next(self, tokens, states):
        image, position = states
        probabilities = np.zeros((len(tokens), self.num_classes))
        for row, (i, p) in enumerate(zip(image[:, 0], position[:, 0])):
            script = self.scripts[i]
            probabilities[row, script[p] if p < len(script) else END] = 1.0
        return probabilities, [image, position + 1]


def test_samples_follow_the_model_and_long_ones_are_cut_unended():
    steps = ScriptedSteps([[1, 2], [3] * 10])
    samples = selfcritical.sample_captions(steps, np.zeros((2, 1)), num_samples=2, timesteps=6,
                                           rng=np.random.default_rng(0))
    assert samples.targets.tolist() == [[1, 2, 0, 0, 0, 0]] * 2 + [[3, 3, 3, 3, 3, 0]] * 2
    assert samples.lengths.tolist() == [2, 2, 5, 5] and samples.ended.tolist() == [True, True, False, False]
    weights = samples.weights(np.array([1.0, -2.0, 0.5, 0.0]))
    # Up to and including the end class where it was written; an unended caption's last step is not its choice.
    assert weights.tolist() == [[1, 1, 1, 0, 0, 0], [-2, -2, -2, 0, 0, 0], [0.5] * 5 + [0], [0] * 6]


def test_samples_are_drawn_in_proportion_to_the_softmax():
    class Uniform(ScriptedSteps):
        def next(self, tokens, states):
            return np.tile([0.5, 0.25, 0.25], (len(tokens), 1)), states

    samples = selfcritical.sample_captions(Uniform([]), np.zeros((1, 1)), num_samples=4000, timesteps=2,
                                           rng=np.random.default_rng(0))
    first = samples.targets[:, 0]
    assert abs(((samples.lengths == 0) & samples.ended).mean() - 0.5) < 0.03  # END first: an empty caption
    assert abs(samples.ended.mean() - 0.75) < 0.03  # or END second, after one character
    assert abs((first == 1).mean() - 0.25) < 0.03 and abs((first == 2).mean() - 0.25) < 0.03


def test_cider_scores_rank_the_right_caption_first():
    references = [["アカイマル", "アカイマルガアリマス"], ["キイロイサンカク"], ["ミドリノシカク"]]
    right, wrong, _ = cider_scores(["アカイマル", "アオイホシ", "ミドリノシカク"], references)
    assert right > wrong >= 0


@pytest.mark.parametrize("arch", ["attention", "transformer"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_rewarded_sample_becomes_likelier_and_a_penalised_one_less_likely(sign, arch):
    config = CaptionerConfig(arch=arch, units=16, image_size=32, dropout=0.0)
    keras.utils.set_random_seed(0)
    model = selfcritical.compile_for(build_model(config), 1e-3)  # one small step: a large one overshoots
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1, *config.feature_shape)).astype("float32")
    samples = selfcritical.sample_captions(step_models(model, config), features, 1, config.timesteps, rng)

    def log_likelihood():
        probabilities = np.asarray(model.predict_on_batch(model_inputs(config, features, samples.targets)))
        chosen = np.take_along_axis(probabilities[0], samples.targets[0][:, None], axis=1)[:, 0]
        return np.log(chosen)[samples.weights(np.ones(1))[0] > 0].sum()

    before = log_likelihood()
    model.train_on_batch(model_inputs(config, features, samples.targets), samples.targets,
                         sample_weight=samples.weights(np.array([sign])))
    assert np.sign(log_likelihood() - before) == sign


def test_train_py_fine_tunes_after_the_crossentropy_epochs_and_resumes(tiny_demo, tmp_path, capsys):
    out = tmp_path / "scst"
    argv = train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", "2")
    assert train.main(argv) == 0
    kept = hashlib.sha256((out / "model.keras").read_bytes()).hexdigest()
    assert train.main([*argv, "--resume", "--self-critical", "1", "--self-critical-length-weighting", "2"]) == 0
    stage = json.loads((out / "state.json").read_text())["self_critical"]
    assert stage["epoch"] == 1 and len(stage["history"]) == 1 and (out / "self-critical.keras").is_file()
    assert {"sample_cider", "greedy_cider", "val_cider"} <= set(stage["history"][0])
    replaced = hashlib.sha256((out / "model.keras").read_bytes()).hexdigest() != kept
    assert replaced == (stage["best_epoch"] == 1)  # model.keras changes only for a better validation CIDEr-D
    # Goes on from its own checkpoint, with the reward and length weighting it began with.
    assert train.main([*argv, "--resume", "--self-critical", "2", "--self-critical-reward", "cider+objects"]) == 0
    stage = json.loads((out / "state.json").read_text())["self_critical"]
    assert stage["epoch"] == 2 and [row["epoch"] for row in stage["history"]] == [1, 2]
    assert stage["reward"] == "cider" and stage["length_weighting"] == 2
    printed = capsys.readouterr().out
    assert "self-critical epoch" in printed.lower() and "it began with (cider, greedy, 2)" in printed


@pytest.mark.parametrize("power", [0.0, 2.0])
def test_an_epoch_draws_photos_by_their_captions_length(monkeypatch, power):
    drawn = []
    monkeypatch.setattr(selfcritical, "train_step", lambda model, steps, config, vocabulary, features, references,
                        *rest: drawn.extend(features[:, 0]) or {"sample_cider": 0.0, "greedy_cider": 0.0})
    photos = np.arange(200)
    references = [["ア" * (1 + 9 * (row % 2))] * 2 for row in photos]  # odd rows: captions ten times as long
    features = photos[:, None].astype(np.float32)
    selfcritical.run_epoch(None, None, None, None, features, photos, references, seed=0, progress=False,
                           length_weighting=power)
    assert len(drawn) == len(photos)
    long_share = np.mean(np.array(drawn) % 2 == 1)
    if power:
        assert long_share > 0.95  # odds of 100 to 1
    else:
        assert sorted(drawn) == list(photos)  # every photo once


def test_self_critical_is_refused_for_the_parallel_design(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--arch", "image2text", "--self-critical", "2"])
    assert "autoregressive" in capsys.readouterr().err


def test_vocabulary_decodes_samples_to_text():
    vocabulary = Vocabulary.build(["アイ"])
    samples = decoding.Samples(np.array([[1, 2, END]]), np.array([2]), np.array([True]))
    assert samples.texts(vocabulary) == [vocabulary.decode([1, 2, END])[0]]


def test_advantages_against_the_greedy_caption_or_the_other_samples():
    sampled = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0, 5.0])  # two photos, five samples each
    greedy = np.array([2.0, 1.0])
    np.testing.assert_allclose(selfcritical.advantages(sampled, greedy, "greedy"), sampled - np.array([2.0] * 5 + [1.0] * 5))
    others = selfcritical.advantages(sampled, greedy, "samples")
    np.testing.assert_allclose(others[:5], [1 - 3.5, 2 - 3.25, 3 - 3.0, 4 - 2.75, 5 - 2.5])
    np.testing.assert_allclose(others.reshape(2, 5).sum(axis=1), [0, 0], atol=1e-12)  # as often up as down


def test_a_caption_that_never_ends_earns_nothing(monkeypatch):
    """CIDEr-D alone pays an unended caption for its right words; the step must not teach the model not to end."""
    from decoding import Caption

    config = CaptionerConfig(arch="attention", units=16, image_size=32)
    ended = np.array([True, False] + [True] * 3)
    samples = decoding.Samples(np.ones((5, config.timesteps), dtype=np.int64), np.full(5, 3), ended)
    monkeypatch.setattr(selfcritical, "sample_captions", lambda *args: samples)
    monkeypatch.setattr(selfcritical, "beam_search", lambda *args: [[Caption("ア", False, 1.0)]])
    monkeypatch.setattr(selfcritical, "cider_scores", lambda candidates, references: np.ones(len(candidates)))

    class Recorder:
        def train_on_batch(self, inputs, targets, sample_weight):
            self.weights = sample_weight

    model = Recorder()
    result = selfcritical.train_step(model, None, config, Vocabulary.build(["ア"]), np.zeros((1, 1, 1, 512)),
                                     [["ア"]], np.random.default_rng(0))
    assert result == {"sample_cider": 0.8, "greedy_cider": 0.0}  # the unended greedy caption earns nothing too
    assert model.weights[:, 0].tolist() == [1, 0, 1, 1, 1]  # advantages against an unended greedy caption: 0


def test_object_agreement_pays_for_naming_each_object_once():
    """cider+objects: the caption that names the references' objects, once each, earns the most."""
    from kana import text_to_katakana

    references = [[text_to_katakana(text) for text in ("左に赤い丸、右に青い星があります。", "赤い丸が左に、青い星が右にあります。")]]
    right, twice, one, wrong_place = (text_to_katakana(text) for text in (
        "左に赤い丸があり、右に青い星があります。", "左に赤い丸、右に青い星、右に青い星があります。",
        "左に赤い丸があります。", "右に赤い丸、左に青い星があります。"))
    scores = selfcritical.object_agreement([right, twice, one, wrong_place], references * 4)
    np.testing.assert_allclose(scores, [1.0, 2 * 2 / 5, 2 * 1 / 3, 0.0])
    assert selfcritical.object_agreement(["アリマス"], [["ナニモナイ"]]).tolist() == [1.0]  # nothing named by either
    both = selfcritical.reward_scores([right, twice], references * 2, "cider+objects")
    np.testing.assert_allclose(both - cider_scores([right, twice], references * 2),
                               selfcritical.OBJECTS_WEIGHT * np.array([1.0, 0.8]))


@pytest.mark.parametrize("stage", [{"epoch": 1, "history": [], "reward": "bleu"}, {"epoch": 1, "history": [],
                                   "baseline": "mean"}, {"epoch": "1", "history": []}, ["not a stage"],
                                   {"epoch": 1, "history": [], "length_weighting": 9.0},
                                   {"epoch": 1, "history": [], "length_weighting": "2"}])
def test_a_saved_self_critical_stage_is_checked_before_it_is_resumed(tmp_path, stage):
    import training

    (tmp_path / "checkpoint.keras").write_bytes(b"")
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 1, "history": [], "best_val_loss": 0.5,
                                                     "self_critical": stage}))
    with pytest.raises(ValueError, match="self-critical stage"):
        training.check_out(tmp_path, resume=True, overwrite=False)


def test_the_reward_is_chosen_on_the_command_line(capsys):
    assert train.parse_args(["--self-critical", "1"]).self_critical_reward == "cider"
    assert train.parse_args(["--self-critical", "1", "--self-critical-reward", "cider+objects"]).self_critical_reward \
        == "cider+objects"
    with pytest.raises(SystemExit):
        train.parse_args(["--self-critical", "1", "--self-critical-reward", "bleu"])
    assert "cider+objects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--self-critical", "1", "--self-critical-length-weighting", "-1"])


@pytest.mark.parametrize("option", [["--self-critical-reward", "cider+objects"], ["--self-critical-baseline", "samples"],
                                    ["--self-critical-length-weighting", "2"], ["--self-critical-learning-rate", "1e-4"]])
def test_a_self_critical_option_without_the_stage_is_refused(option, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(option)
    assert f"{option[0]} sets how the self-critical epochs train; give --self-critical" in capsys.readouterr().err
