"""train.py -> predict.py -> evaluate.py on a tiny demo dataset, as a user runs them."""

import json
import re

import numpy as np
import pytest
from PIL import Image

import evaluate
import kana
import lm
import model
import plots
import predict
import train
from captioner import Captioner
from conftest import TINY_EPOCHS, train_argv
from dataset import find_images
from features import load_image


def is_katakana(text: str) -> bool:
    return all(kana._KATAKANA.fullmatch(char) for char in text)


def test_training_writes_everything_predict_needs(tiny_run):
    out, _ = tiny_run
    for name in ("model.keras", "checkpoint.keras", "config.json", "vocab.json", "state.json",
                 "history.csv", "loss.png", "metrics.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["timesteps"], config["num_classes"], config["vgg_weights"]) == ("attention", 50, 128, "none")
    assert len((out / "history.csv").read_text().splitlines()) == 1 + TINY_EPOCHS  # header + a line an epoch
    assert "CIDEr-D" in json.loads((out / "metrics.json").read_text())


def test_predict_prints_katakana_and_reports_bad_files(tiny_run, tiny_demo, tmp_path, capsys):
    out, _ = tiny_run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    photos = [tiny_demo / "val2014" / f"COCO_val2014_{i:012d}.jpg" for i in (1, 2)]
    code = predict.main([str(photos[0]), str(bad), str(photos[1]), "--model", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # one file failed
    lines = captured.out.splitlines()
    assert [line.partition(": ")[0] for line in lines] == [str(p) for p in photos]
    # Each printed caption is the model's: the library's caption of the same photo.
    expected = [captions[0].text for _, captions, _ in Captioner(out).caption_files(photos)]
    assert [line.partition(": ")[2] for line in lines] == expected
    assert all(is_katakana(caption) for caption in expected)
    assert "broken.jpg" in captured.err and "Traceback" not in captured.err


def test_the_tiny_run_writes_katakana_captions(tiny_run, tiny_demo):
    """The tiny run is trained enough to write something: its captions are non-empty katakana for some photos."""
    results = list(Captioner(tiny_run[0]).caption_files(sorted((tiny_demo / "val2014").iterdir())))
    texts = [captions[0].text for _, captions, _ in results]
    assert any(texts) and all(is_katakana(text) for text in texts)


def test_predict_json_and_plot(tiny_run, tiny_demo, tmp_path, capsys):
    out, _ = tiny_run
    plot = tmp_path / "captions.png"
    code = predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--json", "--plot", str(plot)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(rows) == 6 and set(rows[0]) == {"file", "caption"}
    assert [row["file"] for row in rows] == [str(p) for p in sorted((tiny_demo / "val2014").iterdir())]
    # Six photos in a grid of 4 columns: 2 rows of 4 × 3.6 inch panels at 100 dpi.
    with Image.open(plot) as image:
        assert image.size == (1600, 720)
        pixels = np.asarray(image.convert("RGB"))
    # The first photo is drawn in the first panel: its mean colour is there, not just a white page.
    assert pixels[:360, :400].std() > 20


def test_predict_n_best_prints_ranked_captions_with_probabilities(tiny_run, tiny_demo, capsys):
    out, _ = tiny_run
    photo = tiny_demo / "val2014" / "COCO_val2014_000000000001.jpg"
    assert predict.main([str(photo), "--model", str(out), "--n-best", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Captions for {photo}:"
    probabilities = [float(line.rsplit("(p=", 1)[1].rstrip(")")) for line in lines[1:]]
    assert [line.split(")")[0].strip() for line in lines[1:]] == ["1", "2", "3"]
    assert all(0 <= p <= 1 for p in probabilities)


def test_image2text_trains_with_ctc_by_default_and_predicts_n_best(tiny_demo, tmp_path, capsys):
    out = tmp_path / "image2text"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--arch", "image2text")) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["loss"], config["decoding"], config["lm_weight"]) == ("image2text", "ctc", "ctc-lm", 0.5)
    assert lm.CharNgram.load(out / "lm.json").order == lm.DEFAULT_ORDER
    # The kept epoch is the one whose validation captions score best, and the log says which.
    state = json.loads((out / "state.json").read_text())
    assert state["select_by"] == "cider" and state["best_score"] == state["history"][0]["val_cider"] >= 0
    assert "Kept epoch 1 (validation CIDEr-D" in capsys.readouterr().out
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--n-best", "2", "--json",
                         "--lm-weight", "0.3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 6
    for record in records:
        assert len(record["captions"]) == 2 and all(0 <= c["probability"] <= 1 for c in record["captions"])
        assert record["caption"] == record["captions"][0]["caption"] and is_katakana(record["caption"])
    assert evaluate.main(["--model", str(out), "--annotations", str(tiny_demo / "captions_val.json"), "--images",
                          str(tiny_demo / "val2014"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    metrics = json.loads((out / "eval-captions_val" / "metrics.json").read_text())
    assert (metrics["decode"], metrics["lm_weight"]) == ("ctc-lm", 0.5)
    capsys.readouterr()
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--ensemble", str(out)]) == 2
    assert "--ensemble averages the steps of autoregressive runs" in capsys.readouterr().err
    (out / "lm.json").rename(tmp_path / "lm.json")  # a run folder without its language model
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out)]) == 2
    error = capsys.readouterr().err
    assert "lm.json not found" in error and "--decode ctc" in error
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--decode", "ctc"]) == 0
    (out / "lm.json").write_text('{"order": 3, "alphabet": 2, "counts": {"": {"ア": "many"}}}')
    capsys.readouterr()
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "lm.json is not a language model written by train.py" in error and len(error.splitlines()) == 1
    (tmp_path / "lm.json").replace(out / "lm.json")
    # --resume keeps the loss the run started with.
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 2, "--arch", "image2text",
                                 "--resume")) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2
    best = max(state["history"], key=lambda row: row["val_cider"])
    assert (state["best_epoch"], state["best_score"]) == (best["epoch"], best["val_cider"])


def test_weight_averaging_keeps_the_average_and_resumes_from_the_last_step(tiny_demo, tmp_path, capsys):
    out = tmp_path / "averaged"
    argv = train_argv(tiny_demo, out, tmp_path / "cache", "--arch", "image2text", "--weight-average", 0.9,
                      "--keep-best", "loss", "--patience", 10, "--learning-rate", 0.01)
    assert train.main([*argv, "--epochs", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["weight_average"] == 0.9
    kept, last = (model.load_model(out / name) for name in ("model.keras", "checkpoint.keras"))
    averaged = last.optimizer._model_variables_moving_average  # the checkpoint's average, beside its last step
    assert all(np.allclose(k, a) for k, a in zip(kept.trainable_weights, averaged))
    assert not all(np.allclose(k, w) for k, w in zip(kept.trainable_weights, last.trainable_weights))
    assert train.main([*argv, "--epochs", "2", "--resume"]) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == 2 and state["select_by"] == "loss"
    assert (state["best_score"], state["best_val_loss"]) == (
        -min(row["val_loss"] for row in state["history"]), min(row["val_loss"] for row in state["history"]))
    capsys.readouterr()
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_flip_caches_the_mirrored_photos_and_is_recorded(tiny_demo, tmp_path, capsys):
    out, cache = tmp_path / "flipped", tmp_path / "cache"
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", 1, "--flip")) == 0
    assert json.loads((out / "config.json").read_text())["flip"] is True
    assert "Flip: each training caption" in capsys.readouterr().out
    folders = sorted(folder.name for folder in cache.iterdir())
    assert len(folders) == 2 and folders[1].replace("-mirrored", "") == folders[0]
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out)]) == 0


def test_recolour_caches_the_recoloured_photos_is_recorded_and_kept_on_resume(tiny_demo, tmp_path, capsys):
    out, cache = tmp_path / "recoloured", tmp_path / "cache"
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", 1, "--recolour")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recolour"] is True and config["recolourings"] == ["red-blue", "red-green"]
    log = capsys.readouterr().out
    counts = re.search(r"Recolour: of (\d+) training photos, also trained on recoloured copies of (\d+) red-blue and "
                       r"(\d+) red-green \((\d+) captions\)", log)
    assert counts and 0 < int(counts[2]) < int(counts[1]) and 0 < int(counts[3]) < int(counts[1])
    folders = {folder.name for folder in cache.iterdir()}
    assert {name for name in folders if f"-red-blue-{counts[2]}-" in name or f"-red-green-{counts[3]}-" in name}
    assert len(folders) == 3
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out)]) == 0
    # resumed without the flag, the run keeps recolouring, from the same caches
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", 2, "--resume")) == 0
    log = capsys.readouterr().out
    assert "Resuming with the run's own recolour (True)" in log and counts[0] in log
    assert {folder.name for folder in cache.iterdir()} == folders
    assert json.loads((out / "state.json").read_text())["epoch"] == 2


def test_timesteps_char_dropout_and_length_weighting_are_recorded_and_kept_on_resume(tiny_demo, tmp_path, capsys):
    out = tmp_path / "short"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--timesteps", 12,
                                 "--char-dropout", 0.3, "--char-dropout-span", 3, "--length-weighting", 1,
                                 "--weighted-length", "photo")) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["timesteps"], config["char_dropout"], config["char_dropout_span"],
            config["length_weighting"], config["weighted_length"]) == (12, 0.3, 3, 1.0, "photo")
    assert "Captions longer than 11 characters were truncated" in capsys.readouterr().out
    captioner = Captioner(out)
    assert captioner.model.inputs[1].shape[1] == 12
    photos = sorted((tiny_demo / "val2014").glob("*.jpg"))
    assert all(len(caption.text) <= 11 for photo in photos for caption in captioner.caption_photo(photo).captions)
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 2, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "Resuming with the run's own timesteps (12)" in printed
    assert "Resuming with the run's own length weighting (1.0)" in printed
    assert "Resuming with the run's own weighted length (photo)" in printed
    assert f"Language model: the run's own {out / 'lm.json'}" in printed  # read, not fitted again
    assert json.loads((out / "config.json").read_text())["timesteps"] == 12
    (out / "lm.json").write_text('{"order": 3}')
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 3, "--resume")) == 2
    error = capsys.readouterr().err
    assert "lm.json" in error and "Delete it and resume" in error and len(error.splitlines()) == 1
    assert json.loads((out / "state.json").read_text())["epoch"] == 2  # nothing trained


def test_cosine_schedule_decays_over_the_epochs_asked_for_and_resumes_along_it(tiny_demo, tmp_path):
    out = tmp_path / "cosine"
    argv = train_argv(tiny_demo, out, tmp_path / "cache", "--schedule", "cosine", "--learning-rate", 0.01)
    assert train.main([*argv, "--epochs", "1"]) == 0  # the schedule spans the 1 epoch asked for
    assert json.loads((out / "config.json").read_text())["schedule"] == "cosine"
    optimizer = model.load_model(out / "checkpoint.keras").optimizer
    assert int(optimizer.iterations) > 0
    assert float(optimizer.learning_rate) == pytest.approx(0.01 * model.FINAL_LEARNING_RATE, rel=1e-3)
    assert train.main([*argv, "--epochs", "2", "--resume"]) == 0
    assert float(model.load_model(out / "checkpoint.keras").optimizer.learning_rate) == pytest.approx(1e-4, rel=1e-3)


def test_image2text_defaults_are_the_measured_best():
    demo = train.parse_args(["--arch", "image2text"])
    assert (demo.loss, demo.epochs, demo.keep_best, demo.weight_average) == ("ctc", 30, "cider", 0.99)
    assert (train.parse_args([]).keep_best, train.parse_args([]).weight_average) == ("loss", 0)
    original = train.parse_args(["--arch", "image2text", "--loss", "crossentropy"])
    assert (original.keep_best, original.weight_average) == ("loss", 0)
    assert train.parse_args([]).epochs == 15 and train.parse_args([]).loss == "crossentropy"
    assert train.parse_args(["--arch", "image2text", "--epochs", "3", "--loss", "crossentropy"]).loss == "crossentropy"


def test_image2text_with_the_originals_crossentropy(tiny_demo, tmp_path, capsys):
    out = tmp_path / "image2text"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--arch", "image2text",
                                 "--loss", "crossentropy")) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["loss"], config["decoding"]) == ("crossentropy", "argmax")
    capsys.readouterr()  # the training log
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--decode", "collapse"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--decode", "ctc", "--n-best", "2"]) == 0


def test_the_old_name_seed_is_accepted_with_a_note(tiny_demo, tmp_path, capsys):
    out = tmp_path / "seed"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--arch", "seed")) == 0
    assert "--arch seed is now called image2text" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["arch"] == "image2text"


def test_attention_maps_are_drawn_per_photo(tiny_run, tiny_demo, tmp_path, capsys):
    out, _ = tiny_run  # the default architecture is attention
    photo = tiny_demo / "val2014" / "COCO_val2014_000000000001.jpg"
    maps = tmp_path / "maps"
    assert predict.main([str(photo), "--model", str(out), "--attention", str(maps)]) == 0
    assert (maps / "COCO_val2014_000000000001.png").is_file()
    # A caption of five characters: five maps over the 1×1 grid of a 32 px photo, drawn as six panels.
    captioner = Captioner(out)
    text = "".join(captioner.vocabulary.characters[:5])
    image, weights = captioner.attention_of_file(photo, text)
    assert weights.shape == (5, 1, 1) and np.allclose(weights, 1.0)
    np.testing.assert_array_equal(image, load_image(photo, 32))
    empty, five = tmp_path / "empty.png", tmp_path / "five.png"
    plots.plot_attention(image, "", weights[:0], photo.name, empty)
    plots.plot_attention(image, text, weights, photo.name, five)
    with Image.open(empty) as one_panel, Image.open(five) as six_panels:
        # 1.6 × 1.8 inch panels at 80 dpi, in one row.
        assert one_panel.size == (128, 144) and six_panels.size == (6 * 128, 144)


@pytest.mark.parametrize("arch, options", [("showtell", ()), ("transformer", ("--blocks", 1, "--heads", 2, "--summary-token"))])
def test_the_other_autoregressive_models_train_and_draw_no_attention_maps(tiny_demo, tmp_path, capsys, arch, options):
    out = tmp_path / arch
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--arch", arch, *options)) == 0
    capsys.readouterr()  # the training log
    photo = tiny_demo / "val2014" / "COCO_val2014_000000000001.jpg"
    assert predict.main([str(photo), "--model", str(out), "--n-best", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert predict.main([str(photo), "--model", str(out), "--attention", str(tmp_path / "maps")]) == 2
    assert "needs an attention model" in capsys.readouterr().err


def test_recolour_takes_the_recolourings_by_name(tiny_demo, tmp_path, capsys):
    out, cache = tmp_path / "yellowed", tmp_path / "cache"
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", 1, "--recolour", "red-yellow,red-blue")) == 0
    assert json.loads((out / "config.json").read_text())["recolourings"] == ["red-yellow", "red-blue"]
    counts = re.search(r"recoloured copies of (\d+) red-yellow and (\d+) red-blue \(", capsys.readouterr().out)
    assert counts and int(counts[1]) > 0 and int(counts[2]) > 0
    assert sum("-red-yellow-" in folder.name for folder in cache.iterdir()) == 1


@pytest.mark.parametrize("names", ["sepia", "red-blue,red-blue", "red-blue,", ""])
def test_unknown_recolourings_are_refused_before_anything_is_made(names, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--recolour", names, "--out", str(tmp_path / "run")])
    assert "expected names from red-blue, red-green, red-yellow" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--arch", "attention", "--blocks", "3"], "--blocks is for --arch transformer"),
    (["--heads", "8"], "--heads is for --arch transformer"),
    (["--summary-token"], "--summary-token is for --arch transformer"),
    (["--arch", "transformer", "--initial-state", "pooled"], "the transformer has no initial state"),
])
def test_transformer_options_are_refused_elsewhere(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_predict_with_a_missing_model_is_a_clear_error(tiny_demo, tmp_path, capsys):
    code = predict.main([str(tiny_demo / "val2014"), "--model", str(tmp_path / "nothing")])
    assert code == 2 and "model.keras not found" in capsys.readouterr().err


def test_predict_with_a_damaged_model_is_a_clear_error(tiny_run, tiny_demo, tmp_path, capsys):
    import shutil

    out, _ = tiny_run
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "model.keras").write_bytes((out / "model.keras").read_bytes()[:1000])
    code = predict.main([str(tiny_demo / "val2014"), "--model", str(damaged)])
    err = capsys.readouterr().err
    assert code == 2 and "damaged or truncated" in err and "Traceback" not in err


def test_evaluate_prints_the_table_and_writes_files(tiny_run, tiny_demo, tmp_path, capsys):
    out, cache = tiny_run
    report = tmp_path / "report"
    code = evaluate.main(["--model", str(out), "--annotations", str(tiny_demo / "captions_val.json"),
                          "--images", str(tiny_demo / "val2014"), "--out", str(report), "--cache-dir", str(cache), "--quiet"])
    assert code == 0
    table = capsys.readouterr().out
    for name in ("BLEU-4", "ROUGE-L", "CIDEr-D", "exact match", "never ended", "scene accuracy"):
        assert name in table
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["images"] == 6 and 0 <= metrics["scene accuracy"] <= 1
    assert (report / "samples.png").is_file()
    captions = json.loads((report / "captions.json").read_text(encoding="utf-8"))
    ids = {image["id"] for image in json.loads((tiny_demo / "captions_val.json").read_text())["images"]}
    assert len(captions) == 6 and {row["image_id"] for row in captions} == ids
    assert all(isinstance(row["caption"], str) and isinstance(row["ended"], bool) for row in captions)
    assert np.mean([row["CIDEr-D"] for row in captions]) == pytest.approx(metrics["CIDEr-D"], abs=1e-6)


def test_the_prior_is_taken_out_when_asked_and_needs_the_runs_language_model(tiny_run, tiny_demo, tmp_path, capsys):
    out, cache = tiny_run
    assert lm.CharNgram.load(out / "lm.json").order == lm.DEFAULT_ORDER  # every autoregressive run writes it
    assert json.loads((out / "config.json").read_text())["prior_weight"] == 0.0
    photos = str(tiny_demo / "val2014")
    assert predict.main([photos, "--model", str(out), "--json", "--prior-weight", "0.5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and all(is_katakana(row["caption"]) for row in rows)
    report = tmp_path / "report"
    assert evaluate.main(["--model", str(out), "--annotations", str(tiny_demo / "captions_val.json"), "--images",
                          photos, "--out", str(report), "--cache-dir", str(cache), "--quiet",
                          "--prior-weight", "0.5"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["prior_weight"], metrics["lm_weight"]) == (0.5, None)
    (out / "lm.json").rename(tmp_path / "lm.json")  # a run folder without its language model (an older run's)
    try:
        capsys.readouterr()
        assert predict.main([photos, "--model", str(out), "--prior-weight", "0.5"]) == 2
        error = capsys.readouterr().err
        assert "lm.json not found" in error and "--prior-weight 0" in error
        assert predict.main([photos, "--model", str(out)]) == 0  # the run's own weight, 0, needs none
    finally:
        (tmp_path / "lm.json").replace(out / "lm.json")
    with pytest.raises(SystemExit):
        train.parse_args(["--arch", "image2text", "--prior-weight", "0.5"])
    assert "--prior-weight is for the autoregressive architectures" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--arch", "image2text", "--own-chars", "0.5"])
    assert "--own-chars is for the autoregressive architectures" in capsys.readouterr().err


def test_no_repeat_decodes_captions_without_a_repeated_run(tiny_run, tiny_demo, tmp_path, capsys):
    out, cache = tiny_run
    photos = str(tiny_demo / "val2014")
    assert predict.main([photos, "--model", str(out), "--json", "--no-repeat", "3"]) == 0
    captions = [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()]
    assert len(captions) == 6 and all(is_katakana(caption) for caption in captions)
    for caption in captions:
        runs = [caption[i : i + 3] for i in range(len(caption) - 2)]
        assert len(runs) == len(set(runs)), caption
    report = tmp_path / "report"
    assert evaluate.main(["--model", str(out), "--annotations", str(tiny_demo / "captions_val.json"), "--images",
                          photos, "--out", str(report), "--cache-dir", str(cache), "--quiet", "--no-repeat", "3"]) == 0
    assert json.loads((report / "metrics.json").read_text())["no_repeat"] == 3
    for bad in ("1", "-2", "81", "x"):
        with pytest.raises(SystemExit):
            predict.parse_args([photos, "--no-repeat", bad])
    assert "must be 0 (off) or from 2 to 80" in capsys.readouterr().err



def test_samples_keep_the_likeliest_of_the_drawn_and_searched_captions(tiny_run, tiny_demo, tmp_path, capsys):
    out, cache = tiny_run
    photos = str(tiny_demo / "val2014")
    argv = [photos, "--model", str(out), "--json", "--samples", "6", "--n-best", "3", "--seed", "4"]
    assert predict.main(argv) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(first) == 6
    for record in first:
        probabilities = [c["probability"] for c in record["captions"]]
        assert probabilities == sorted(probabilities, reverse=True) and record["caption"] == record["captions"][0]["caption"]
    assert predict.main(argv) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first  # seeded
    report = tmp_path / "report"
    assert evaluate.main(["--model", str(out), "--annotations", str(tiny_demo / "captions_val.json"), "--images",
                          photos, "--out", str(report), "--cache-dir", str(cache), "--quiet", "--samples", "4"]) == 0
    assert json.loads((report / "metrics.json").read_text())["samples"] == 4
    for bad in (["--samples", "65"], ["--samples", "-1"], ["--seed", "3"]):
        with pytest.raises(SystemExit):
            predict.parse_args([photos, *bad])
    err = capsys.readouterr().err
    assert "must be 0 (off) or from 1 to 64" in err and "--seed sets the draws of --samples" in err
    with pytest.raises(SystemExit):
        evaluate.main(["--human", "--samples", "4"])
    assert "--samples is for a run's captions" in capsys.readouterr().err



def test_a_run_judging_its_own_candidates_ranks_them_as_it_drew_them(tiny_run, tiny_demo, capsys):
    from pathlib import Path

    from captioner import _check_judge
    from kana import Vocabulary
    from model import CaptionerConfig

    out, _ = tiny_run
    photos = str(tiny_demo / "val2014")
    argv = [photos, "--model", str(out), "--json", "--samples", "6", "--n-best", "4"]
    assert predict.main(argv) == 0
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert predict.main([*argv, "--judge", str(out)]) == 0  # its probabilities again, fed each caption whole
    judged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(judged) == len(alone) == 6
    for first, second in zip(alone, judged):
        assert {c["caption"] for c in first["captions"]} == {c["caption"] for c in second["captions"]}
        drawn = {c["caption"]: c["probability"] for c in first["captions"]}
        for caption in second["captions"]:
            assert caption["probability"] == pytest.approx(drawn[caption["caption"]], rel=1e-2, abs=1e-6)
    with pytest.raises(SystemExit):
        predict.parse_args([photos, "--judge", str(out)])
    assert "--judge ranks the captions drawn for a photo" in capsys.readouterr().err
    config = CaptionerConfig(arch="transformer")
    with pytest.raises(ValueError, match="knows every character the run writes"):
        _check_judge(Path("a"), config, Vocabulary(("ア", "イ")), Path("b"), config, Vocabulary(("イ",)))
    with pytest.raises(ValueError, match="one character after another"):
        _check_judge(Path("a"), config, Vocabulary(("ア",)), Path("b"), CaptionerConfig(), Vocabulary(("ア",)))


def test_an_ensemble_of_a_run_with_itself_captions_as_the_run_alone(tiny_run, tiny_demo, tmp_path, capsys):
    import shutil

    out, cache = tiny_run
    photos = str(tiny_demo / "val2014")
    assert predict.main([photos, "--model", str(out), "--json"]) == 0
    alone = capsys.readouterr().out
    assert predict.main([photos, "--model", str(out), "--ensemble", str(out), "--json"]) == 0
    assert capsys.readouterr().out == alone  # the mean of two equal distributions is the one
    assert evaluate.main(["--model", str(out), "--ensemble", str(out), "--annotations",
                          str(tiny_demo / "captions_val.json"), "--images", photos, "--cache-dir", str(cache),
                          "--quiet"]) == 0
    assert json.loads((out / "eval-captions_val-ensemble-of-2" / "metrics.json").read_text())["ensemble"] == [str(out)]
    other = tmp_path / "other"  # the same run, as if trained on other VGG16 weights' features
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("eval-*", "*checkpoint*"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vgg_weights": "synthetic"}))
    capsys.readouterr()
    assert predict.main([photos, "--model", str(out), "--ensemble", str(other)]) == 2
    error = capsys.readouterr().err
    assert "cannot be averaged" in error and "vgg_weights (none against synthetic)" in error
    assert predict.main([photos, "--model", str(out), "--ensemble", str(out), "--attention", str(tmp_path / "maps")]) == 2
    assert "in an ensemble" in capsys.readouterr().err and not (tmp_path / "maps").exists()
    assert predict.main([photos, "--model", str(out), "--ensemble", str(tmp_path / "nowhere")]) == 2
    assert "--ensemble must be a run folder written by train.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.parse_args([photos, *["--ensemble", str(out)] * 8])
    assert "at most 7 runs" in capsys.readouterr().err


def test_human_ceiling_scores_references_against_each_other(tiny_demo, capsys):
    code = evaluate.main(["--human", "--annotations", str(tiny_demo / "captions_val.json"),
                          "--images", str(tiny_demo / "val2014")])
    table = capsys.readouterr().out
    assert code == 0
    assert any(line.split() == ["scene", "accuracy", "1.000"] for line in table.splitlines())  # every one names its scene
    code = evaluate.main(["--human", "--timesteps", "8", "--annotations", str(tiny_demo / "captions_val.json"),
                          "--images", str(tiny_demo / "val2014")])
    lengths = [float(line.split()[2]) for line in capsys.readouterr().out.splitlines() if line.startswith("mean length")]
    assert code == 0 and lengths and lengths[0] <= 7  # each first caption cut as --timesteps 8 cuts training's
    with pytest.raises(SystemExit):
        evaluate.main(["--human", "--ensemble", "runs/other"])
    assert "--human scores the references" in capsys.readouterr().err


def test_resume_continues_and_refuses_to_clobber(tiny_run, tiny_demo, tmp_path, capsys):
    import shutil

    out, cache = tmp_path / "run", tiny_run[1]
    shutil.copytree(tiny_run[0], out)  # the shared run stays as it is for the other tests
    epochs = TINY_EPOCHS + 1
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", epochs)) == 2
    assert "--resume" in capsys.readouterr().err
    assert train.main(train_argv(tiny_demo, out, cache, "--epochs", epochs, "--resume", "--patience", epochs)) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == epochs and [row["epoch"] for row in state["history"]] == list(range(1, epochs + 1))


def test_mixed_precision_trains_resumes_in_it_and_captions(tiny_demo, tmp_path, capsys):
    """--precision mixed_bfloat16: the layers compute in bfloat16, --resume keeps it, predict.py captions with it."""
    import keras

    from model import load_model

    out = tmp_path / "mixed"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--precision", "mixed_bfloat16")) == 0
    assert keras.config.dtype_policy().name == "float32"  # the process-wide policy is put back
    assert json.loads((out / "config.json").read_text())["precision"] == "mixed_bfloat16"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 2, "--resume",
                                 "--precision", "float32")) == 0
    assert "Resuming in the run's own precision (mixed_bfloat16)" in capsys.readouterr().out
    model = load_model(out / "model.keras")
    assert model.get_layer("decoder_lstm").compute_dtype == "bfloat16"
    assert model.get_layer("decoder_lstm").variable_dtype == "float32"
    photo = tiny_demo / "val2014" / "COCO_val2014_000000000001.jpg"
    assert predict.main([str(photo), "--model", str(out), "--n-best", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    best = lines[1].split(") ", 1)[1].rsplit(" (p=", 1)[0]  # "  1) カタカナ (p=0.01)"
    assert len(lines) == 3 and is_katakana(best)
    assert predict.main([str(photo), "--model", str(out), "--attention", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == 1


def test_train_reports_missing_data_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # the parser checks the file exists, before anything else
        train.main(["--annotations", str(tmp_path / "none.json"), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "none.json: file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def make_stair(tmp_path, captions, num_photos=12):
    """A hand-made STAIR v1.2-style file (extra fields, tokenized captions) over a COCO 2014 folder."""
    from PIL import Image, ImageDraw

    folder = tmp_path / "train2014"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(100, 100 + num_photos):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        photo = Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8))
        ImageDraw.Draw(photo).ellipse((10, 10, 30, 30), fill=(255, 255, 0))
        photo.save(folder / name)
        images.append({"license": 3, "url": f"http://mscoco.org/images/{image_id}", "file_name": name,
                       "id": image_id, "width": 64, "height": 48, "date_captured": "2013-11-14 16:28:13"})
        for caption in captions:
            annotations.append({"image_id": image_id, "id": len(annotations), "caption": caption,
                                "tokenized_caption": " ".join(caption)})
    stair = tmp_path / "stair_captions_v1.2_train.json"
    stair.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations},
                                ensure_ascii=False), encoding="utf-8")
    return stair, folder, images


def test_a_stair_dataset_the_project_did_not_generate(tmp_path, capsys):
    captions = ["犬が芝生の上を走っている。", "テーブルの上にケーキが置いてある。", "2人の男性がテニスをしている。"]
    stair, folder, images = make_stair(tmp_path, captions)
    out = tmp_path / "run"
    assert train.main(train_argv((stair, folder), out, tmp_path / "cache", "--epochs", 1)) == 0
    log = capsys.readouterr().out
    assert "36 captions of 12 photos" in log
    vocabulary = kana.Vocabulary.load(out / "vocab.json")
    assert {"イ", "ヌ", "テ"} <= set(vocabulary.characters)
    assert predict.main([str(folder / images[0]["file_name"]), "--model", str(out)]) == 0


def test_a_messy_dataset_trains_and_says_what_it_skipped(tmp_path, capsys):
    """Emoji-only, latin-only, very long, half-width and full-width captions; a broken photo; a photo without captions."""
    from PIL import Image

    captions = ["🐶🐶🐶", "A dog runs on the grass.", "犬が走っている。" * 12, "ｲﾇｶﾞﾊｼｯﾃｲﾙ", "２人が歩いている😀。"]
    stair, folder, images = make_stair(tmp_path, captions, num_photos=8)
    broken = folder / images[3]["file_name"]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    Image.new("RGB", (64, 48)).save(folder / "COCO_train2014_000000000999.jpg")  # a photo nobody captioned
    out = tmp_path / "run"
    assert train.main(train_argv((stair, folder), out, tmp_path / "cache", "--epochs", 1)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    log = captured.out
    assert "16 captions had no reading at all and were skipped" in log  # emoji-only and latin-only, 8 photos each
    assert "Skipped 1 unreadable images" in log
    assert "truncated: " in log and "truncated: 0;" not in log
    vocabulary = kana.Vocabulary.load(out / "vocab.json")
    assert {"イ", "ヌ", "フ", "タ", "リ"} <= set(vocabulary.characters)  # ｲﾇ → イヌ, ２人 → フタリ
    assert not set("🐶😀ADog") & set(vocabulary.characters)


def test_predict_streams_a_folder_of_ten_thousand_photos(tiny_run, tiny_demo, tmp_path, monkeypatch):
    """Photos are decoded a few batches ahead of the captions, never all at once: memory stays bounded."""
    import os

    import features

    folder = tmp_path / "many"
    folder.mkdir()
    source = tiny_demo / "val2014" / "COCO_val2014_000000000001.jpg"
    for index in range(10_000):
        os.link(source, folder / f"{index:05d}.jpg")
    decoded = []
    real_load = features.load_image
    monkeypatch.setattr(features, "load_image",
                        lambda path, size, name=None: decoded.append(path) or real_load(path, size, name))
    paths, problems = find_images([folder])
    assert len(paths) == 10_000 and not problems
    captioner = Captioner(tiny_run[0])
    results = captioner.caption_files(paths, batch_size=16)
    for captioned in range(1, 5 * 16 + 1):
        path, captions, error = next(results)
        assert error is None and captions
        assert len(decoded) <= captioned + 3 * 16  # at most the current batch and two ahead
    results.close()


def test_a_vocabulary_from_another_run_is_detected(tiny_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "mixed"
    shutil.copytree(tiny_run[0], out)
    # A 151-character vocabulary (another run's, of another size) beside a 128-class model.
    kana.Vocabulary(tuple(chr(code) for code in range(0x3041, 0x3041 + 151))).save(out / "vocab.json")
    code = predict.main([str(out / "config.json"), "--model", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "not the vocabulary this run was trained with" in err and "Traceback" not in err


def test_a_nan_loss_stops_training_without_saving_a_model(tiny_demo, tmp_path, monkeypatch, capsys):
    import training

    real_sample = training.feature_sample
    monkeypatch.setattr(training, "feature_sample", lambda *args, **kwargs: real_sample(*args, **kwargs) * np.nan)
    out = tmp_path / "nan"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 3)) == 1
    log = capsys.readouterr().out
    assert "The loss became nan" in log and "no model was saved" in log
    assert not (out / "model.keras").exists() and not (out / "checkpoint.keras").exists()


def test_a_model_file_with_code_in_it_is_refused(tiny_run, tiny_demo, tmp_path, capsys, monkeypatch):
    """Safe mode: a .keras file whose Lambda layer carries Python code is not loaded."""
    import shutil

    import keras

    out = tmp_path / "untrusted"
    shutil.copytree(tiny_run[0], out)
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("CODE_RAN_MARKER", str(marker))
    inputs = keras.Input(shape=(1, 1, 512))
    # Code that leaves a mark when it runs (no closure: Keras serialises the lambda's bytecode alone).
    outputs = keras.layers.Lambda(
        lambda x: x * 2 if __import__("pathlib").Path(__import__("os").environ["CODE_RAN_MARKER"]).touch() is None
        else x)(inputs)
    keras.Model(inputs, outputs).save(out / "model.keras")
    marker.unlink()  # building the model ran it once
    photo = tiny_demo / "val2014" / "COCO_val2014_000000000001.jpg"
    assert predict.main([str(photo), "--model", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "arbitrary code" in err and "Traceback" not in err
    assert not marker.exists()
    # The file does carry code: loaded unsafely and called, it runs.
    keras.models.load_model(out / "model.keras", safe_mode=False)(np.zeros((1, 1, 1, 512), "float32"))
    assert marker.exists()


def test_train_keeps_freed_memory(tmp_path, monkeypatch):
    """train.py asks glibc to keep freed memory at the top of its heaps (page faults slowed CPU training 1.4×)."""
    import platform

    import runtime

    calls = []
    real = runtime.keep_freed_memory
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(real()) or calls[-1])
    (tmp_path / "none.json").write_text("{}")  # fails after the arguments are parsed
    train.main(["--annotations", str(tmp_path / "none.json"), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert calls == [platform.libc_ver()[0] == "glibc"]  # called once, and it takes where mallopt exists


def test_attention_over_the_conv5_grid(tiny_demo, tmp_path, capsys):
    out = tmp_path / "conv5"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--feature-layer", "conv5")) == 0
    assert json.loads((out / "config.json").read_text())["feature_layer"] == "conv5"
    assert [folder.name for folder in (tmp_path / "cache").iterdir() if "-conv5-" in folder.name]
    captioner = Captioner(out)
    assert captioner.config.feature_shape == (2, 2, 512)  # 32 px: conv5_3 is 2×2, pool5 1×1
    assert captioner.image_features(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 2, 2, 512)
    capsys.readouterr()
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--attention", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == 6


def test_attributes_are_fitted_before_training_saved_in_the_model_and_read_when_captioning(tiny_demo, tmp_path, capsys):
    out = tmp_path / "attributes"
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1, "--attributes", 8)) == 0
    assert json.loads((out / "config.json").read_text())["attributes"] == 8
    log = capsys.readouterr().out
    assert "Attributes: 8 caption n-grams" in log and "mean AUC on the validation photos" in log
    captioner = Captioner(out)
    layer = captioner.model.get_layer("attributes")
    assert not layer.trainable and np.abs(layer.get_weights()[0]).max() > 0  # the ridge, kept through training
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(out), "--n-best", "2"]) == 0
    assert train.main(train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 2, "--resume",
                                 "--attributes", 4)) == 0
    assert "Resuming with the run's own attributes (8)" in capsys.readouterr().out
