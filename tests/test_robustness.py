"""Bad input gets one line of error and loses nothing: options, run folders, data files, a second writer, a full disk."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import bench
import demo
import evaluate
import kana
import predict
import pretrain
import probe
import train
import training
from captioner import CONFIG_FILE, MODEL_FILE, VOCAB_FILE, Captioner
from conftest import train_argv
from dataset import find_images, load_caption_files
from features import FeatureCache, ImageError, load_image
from fileio import DiskFull, FolderBusy, lock_folder, read_json, remove_stale_temporaries, write_text

ROOT = Path(__file__).resolve().parent.parent


def run_main(main, argv, capsys):
    """``main(argv)``'s exit status and stderr; any exception other than argparse's exit fails the test."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err):
    assert code not in (0, None), err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "error" in last, err


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    (root / "empty.json").write_text("{}")
    return root


def bad_cases(root):
    """(tool, argv) pairs, each with one bad value."""
    file, folder, missing = str(root / "a_file"), str(root / "a_dir"), str(root / "missing")
    good = ["--annotations", str(root / "empty.json"), "--images", folder]
    train_cases = [[*good, option, value] for option, value in [
        ("--epochs", "0"), ("--epochs", "x"), ("--batch-size", "0"), ("--batch-size", "-5"), ("--units", "-1"),
        ("--image-size", "1000"), ("--image-size", "8"), ("--val-fraction", "1.5"), ("--val-fraction", "0"),
        ("--learning-rate", "-1"), ("--learning-rate", "nan"), ("--patience", "0"), ("--seed", "-1"),
        ("--out", file), ("--out", ""), ("--cache-dir", file), ("--vgg-weights", "bogus"), ("--vgg-weights", folder),
        ("--distill-from", missing), ("--arch", "bogus"), ("--precision", "bogus"), ("--vgg-precision", "bogus"),
        ("--loss", "bogus"), ("--lm-weight", "-1"), ("--lm-weight", "nan"), ("--weight-average", "1"),
        ("--weight-average", "-0.5"), ("--keep-best", "bleu"), ("--references", "bogus"),
        ("--schedule", "linear"), ("--char-dropout", "1"), ("--char-dropout", "-0.1"),
        ("--char-dropout-span", "0"), ("--char-dropout-span", "17"), ("--char-dropout-span", "4"),
        ("--timesteps", "1"), ("--timesteps", "100000"), ("--initial-state", "bogus"), ("--dropout", "1"),
        ("--dropout", "-0.1"), ("--length-weighting", "-1"), ("--length-weighting", "5"),
        ("--length-weighting", "nan"), ("--weighted-length", "word"),
        ("--weighted-length", "photo")]]
    train_cases += [[*good, "--arch", "image2text", "--initial-state", "pooled"],
                    [*good, "--arch", "image2text", "--dropout", "0.1"], [*good, "--arch", "image2text", "--dropout", "0.3"],
                    [*good, "--arch", "showtell", "--grid-positions"],
                    [*good, "--arch", "showtell", "--attributes", "8"],
                    [*good, "--attributes", "-1"], [*good, "--attributes", "100000"]]
    train_cases += [[*good, "--arch", "image2text", "--char-dropout", "0.2"], [*good, "--arch", "attention", "--loss", "ctc"], [*good, "--references", "likeliest"],
                    [*good, "--arch", "image2text", "--references", "likeliest", "--flip"],
                    [*good, "--arch", "image2text", "--references", "likeliest", "--recolour"],
                    [*good, "--recolour", "--distill-from", folder]]
    train_cases += [["--annotations", missing, "--images", folder], ["--annotations", "", "--images", folder],
                    ["--annotations", folder, "--images", folder], ["--annotations", str(root / "empty.json"),
                                                                     "--images", missing],
                    ["--annotations", str(root / "empty.json"), "--images", file]]
    predict_cases = [[""], [file, "--batch-size", "-5"], [file, "--batch-size", "0"], [file, "--n-best", "0"],
                     [file, "--beam-size", "100000"], [file, "--plot", folder], [file, "--attention", file],
                     [file, "--model", ""], [file, "--vgg-weights", "bogus"], [file, "--decode", "bogus"],
                     [file, "--model", missing], [file, "--lm-weight", "11"]]
    evaluate_cases = [["--limit", "0"], ["--beam-size", "0"], ["--batch-size", "0"], ["--annotations", missing],
                      ["--annotations", str(root / "empty.json"), "--images", missing],
                      ["--out", file], ["--cache-dir", file], ["--decode", "bogus"], ["--model", ""],
                      ["--lm-weight", "x"], ["--timesteps", "20"], ["--human", "--timesteps", "1"]]
    demo_cases = [["--num-train", "-1"], ["--num-val", "x"], ["--seed", "-1"], ["--out", file], ["--templates", "bogus"]]
    probe_cases = [["--image-size", "1"], ["--annotations", missing], ["--images", file], ["--json", folder],
                   ["--vgg-weights", "bogus"], ["--cache-dir", file], ["--vgg-precision", "bogus"],
                   ["--test-annotations", str(root / "empty.json")], ["--test-images", folder],
                   ["--test-annotations", missing, "--test-images", folder]]
    pretrain_cases = [["--epochs", "0"], ["--image-size", "8"], ["--out", str(root / "w.h5")], ["--out", folder],
                      ["--num-images", "1000000000"], ["--learning-rate", "0"], ["--batch-size", "0"],
                      ["--num-val", "0"], ["--steps", "0"], ["--precision", "bogus"], ["--num-images", "8"],
                      ["--targets", "bogus"], ["--probe-scenes", "-1"], ["--probe-size", "8"], ["--json", folder],
                      ["--crop", "16"], ["--image-size", "64", "--crop", "96"], ["--image-size", "48"],
                      ["--init", missing], ["--init", "none"], ["--init", "imagenet"], ["--init", file],
                      ["--init", folder]]
    bench_cases = [["--steps", "0"], ["--rounds", "0"], ["--units", "0"], ["--json", folder], ["--work", file],
                   ["--batch-size", "0"], ["--only", "bogus"], ["--precisions", "bogus"]]
    tools = {"train": train.main, "predict": predict.main, "evaluate": evaluate.main, "demo": demo.main,
             "probe": probe.main, "pretrain": pretrain.main, "bench": bench.main}
    for name, cases in (("train", train_cases), ("predict", predict_cases), ("evaluate", evaluate_cases),
                        ("demo", demo_cases), ("probe", probe_cases), ("pretrain", pretrain_cases),
                        ("bench", bench_cases)):
        for argv in cases:
            yield name, tools[name], argv


def test_every_tool_refuses_each_bad_value_with_one_line(paths, capsys):
    """Each bad option value: a non-zero exit, one line of error, no traceback, and nothing written."""
    before = sorted(paths.rglob("*"))
    failures = []
    for name, main, argv in bad_cases(paths):
        code, err = run_main(main, argv, capsys)
        try:
            assert_one_line_error(code, err)
        except AssertionError as error:
            failures.append(f"{name} {argv}: {error}")
    assert not failures, "\n".join(failures)
    assert sorted(paths.rglob("*")) == before


def digest_tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failing_train_leaves_an_existing_run_byte_for_byte(tiny_run, tiny_demo, tmp_path, capsys):
    out, cache = tiny_run
    before = digest_tree(out)
    empty = tmp_path / "no_photos"
    empty.mkdir()
    for options, message in (([], "already holds"), (["--overwrite"], "No usable photos")):
        code, err = run_main(train.main, train_argv((tiny_demo / "captions_train.json", empty), out, cache, *options),
                             capsys)
        assert_one_line_error(code, err)
        assert message in err
        assert digest_tree(out) == before
    with lock_folder(out):  # a failed run let go of the folder, even inside one process
        pass


def test_a_folder_with_only_a_model_is_not_replaced_without_overwrite(tiny_run, tiny_demo, tmp_path, capsys):
    out, cache = tiny_run
    copied = tmp_path / "copied"
    copied.mkdir()
    for name in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE):  # what predict needs; no state.json
        shutil.copy(out / name, copied / name)
    before = digest_tree(copied)
    code, err = run_main(train.main, train_argv(tiny_demo, copied, cache, "--epochs", 1), capsys)
    assert_one_line_error(code, err)
    assert "already holds a model" in err and digest_tree(copied) == before


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_before_its_first_model(
        tiny_run, tiny_demo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    before = digest_tree(out)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(training, "fit", fail)
    code, err = run_main(train.main, train_argv(tiny_demo, out, tiny_run[1], "--overwrite", "--epochs", 1), capsys)
    assert_one_line_error(code, err)
    assert digest_tree(out) == before and not (out / training.PREVIOUS_RUN).exists()


def test_overwrite_keeps_the_old_run_aside_until_the_new_one_has_a_model(tiny_run, tiny_demo, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    assert train.main(train_argv(tiny_demo, out, tiny_run[1], "--overwrite", "--epochs", 1)) == 0
    log = capsys.readouterr().out
    assert "Moved the run" in log and "Deleted the replaced run" in log
    assert not (out / training.PREVIOUS_RUN).exists() and (out / MODEL_FILE).exists()


def test_a_second_writer_is_refused_naming_the_first(tiny_demo, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import fileio; "
                               "lock = fileio.lock_folder(sys.argv[2]); print('locked', flush=True); time.sleep(900)",
                               str(ROOT), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, str(ROOT / "train.py"),
                                 *train_argv(tiny_demo, out, tmp_path / "cache", "--epochs", 1)],
                                capture_output=True, text=True, timeout=600, cwd=ROOT)  # the holder outlives it
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"pid {holder.pid}" in second.stderr.strip().splitlines()[-1]
        assert not (out / MODEL_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    with lock_folder(out):  # the lock died with its process: no stale lock
        pass


def test_a_lock_in_one_process_refuses_another_handle(tmp_path):
    with lock_folder(tmp_path):
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            lock_folder(tmp_path)


def test_only_temporaries_of_finished_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.keras.{dead.stdout.strip()}.tmp.keras"
    live = tmp_path / f".model.keras.{os.getpid()}.tmp.keras"
    stale.write_text("x")
    live.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists()


# ---------------------------------------------------------------------------
# Run folders are not trusted
# ---------------------------------------------------------------------------


def test_a_run_state_from_the_previous_version_resumes_keeping_the_lowest_loss(tmp_path):
    (tmp_path / "checkpoint.keras").write_bytes(b"")
    old = {"epoch": 3, "best_val_loss": 0.5, "best_epoch": 2, "wait": 1, "history": []}
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = training.check_out(tmp_path, resume=True, overwrite=False)
    assert (state["select_by"], state["best_score"], state["best_epoch"]) == ("loss", -0.5, 2)
    (tmp_path / "state.json").write_text(json.dumps({**old, "select_by": "bleu"}))
    with pytest.raises(ValueError, match="is not a run state"):
        training.check_out(tmp_path, resume=True, overwrite=False)


@pytest.mark.parametrize("field, value", [
    ("image_size", 100000), ("timesteps", 100000), ("timesteps", 0), ("units", -4), ("arch", "perceiver"),
    ("units", "16"), ("learning_rate", "fast"), ("image_size", True), ("dropout", 2), ("vgg_precision", "auto"),
    ("num_classes", 1), ("vocabulary", 5), ("weight_average", 1), ("references", "likeliest"), ("references", 3),
    ("flip", "yes"), ("recolour", 1), ("schedule", "linear"), ("char_dropout", 1.0), ("char_dropout", "0.2"),
    ("char_dropout_span", 0), ("char_dropout_span", 2.5), ("length_weighting", -1), ("length_weighting", "1"),
    ("weighted_length", "word"), ("weighted_length", None),
    ("initial_state", "mean"), ("initial_state", None), ("grid_positions", 1), ("attributes", -1),
    ("attributes", 1.5), ("attributes", 100000), ("blocks", 0), ("heads", "4"), ("summary_token", 1),
    ("own_chars", 1.5), ("own_chars", "0.2"), ("own_chars", float("nan")),
])
def test_a_config_field_out_of_range_is_named(tiny_run, tmp_path, field, value):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    config = json.loads((out / CONFIG_FILE).read_text())
    config[field] = value
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}: {field} is"):
        Captioner(out, with_vgg=False)


@pytest.mark.parametrize("text", ["[1, 2]", '"config"', "{" * 100000, "\ufeff{\"units\": \"x\"}"])
def test_a_config_that_is_not_an_object_of_settings_is_one_error(tiny_run, tmp_path, text):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / CONFIG_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError):
        Captioner(out, with_vgg=False)


def test_a_vocabulary_from_another_run_with_fewer_characters_is_refused(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    vocabulary = json.loads((out / VOCAB_FILE).read_text())
    vocabulary["tokens"] = vocabulary["tokens"][:-1]
    (out / VOCAB_FILE).write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match="not the vocabulary this run was trained with"):
        Captioner(out, with_vgg=False)


def test_a_truncated_model_file_says_so(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    data = (out / MODEL_FILE).read_bytes()
    (out / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        Captioner(out, with_vgg=False)


# ---------------------------------------------------------------------------
# Bounded work and odd data
# ---------------------------------------------------------------------------


def test_long_texts_reach_pykakasi_in_short_pieces(monkeypatch):
    """Its time grows with the square of its input: no piece may be longer than CHUNK_CHARS."""
    lengths = []
    converter = kana._converter()
    original = converter.convert
    monkeypatch.setattr(converter, "convert", lambda text: lengths.append(len(text)) or original(text))
    katakana, _ = kana.katakana_reading("漢字" * 2000)
    assert max(lengths) <= kana.CHUNK_CHARS and sum(lengths) == 4000 and katakana.startswith("カンジカンジ")
    lengths.clear()
    assert kana.katakana_reading("左に赤い丸、右に青い星があります。")[0] == "ヒダリニアカイマル、ミギニアオイホシガアリマス。"


def test_a_million_character_caption_is_cut_before_anything_reads_it(tmp_path):
    folder = tmp_path / "train2014"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"image_id": 1, "caption": "赤" * 1_000_000}, {"image_id": 1, "caption": "青い丸"}]}
    (tmp_path / "c.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    records, report = load_caption_files([tmp_path / "c.json"], [folder])
    assert len(records[0].captions[0]) == 200
    assert any("cut to that" in line for line in report.lines())


def test_odd_caption_files_are_counted_not_silent(tmp_path):
    folder = tmp_path / "train2014"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "123"):
        Image.new("RGB", (8, 8)).save(folder / name, format="JPEG")
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}, {"id": [2], "file_name": "b.jpg"},
                       {"id": 3, "file_name": 123}, {"id": {"x": 1}}],
            "annotations": [{"image_id": 1, "caption": "赤い丸"}, {"image_id": [2], "caption": "青"},
                            {"image_id": 3, "caption": "白"}]}
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode())  # with a byte-order mark
    records, report = load_caption_files([path, path], [folder])
    assert [(r.path.name, r.captions) for r in records] == [("a.jpg", ["赤い丸"])]  # the first entry of id 1 wins
    assert report.skipped == {
        "annotation files given twice (read once)": 1,
        "images entries whose id another entry with another file_name has (the first is kept)": 1,
        "images entries without a number or string id": 2,
        "annotations without a number or string image_id": 1,
        "annotations whose file_name is not a string": 1,
    }


def test_json_too_large_or_too_deep_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json(path, "Model config")
    with pytest.raises(ValueError, match="are not read"):
        read_json(path, "Model config", max_bytes=1000)


def test_a_big_phone_jpeg_is_read_in_draft_mode_and_a_big_png_is_refused(tmp_path):
    photo = tmp_path / "phone.jpg"
    Image.new("L", (12000, 9000), 128).save(photo, quality=50)  # 108 megapixels, as phone cameras take
    assert load_image(photo, 150).shape == (150, 150, 3)
    from test_features import png_header
    big = tmp_path / "big.png"
    big.write_bytes(png_header(10000, 9000))  # 90 megapixels decoded whole
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(big, 150)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_like_a_photo_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo, 32)  # opening it would wait forever for a writer
    assert find_images([str(fifo), ""])[1] == [f"{fifo}: not a regular file",
                                                "an empty path was given (an unset shell variable?)"]


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, where the test may mount one (root on Linux); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({made.stderr.decode().strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_found_when_the_cache_is_made(small_disk):
    paths = [f"/photo{i}.jpg" for i in range(400)]  # 400 × 8 KiB of 150 px features: more than the disk
    with pytest.raises(DiskFull, match="feature cache needs"):
        FeatureCache.open(small_disk / "cache", paths, "none", 150)


def test_a_full_disk_while_writing_keeps_the_previous_file(small_disk):
    path = small_disk / "state.json"
    write_text(path, "previous")
    with pytest.raises(DiskFull, match="the previous one is unchanged"):
        write_text(path, "x" * 4 * 2**20)
    assert path.read_text() == "previous"
    assert not [p for p in small_disk.iterdir() if p.name != "state.json"]


def test_a_weights_file_that_is_not_vgg16s_is_one_error(tmp_path):
    from features import build_vgg16

    path = tmp_path / "weights.h5"
    path.write_text("not weights")
    with pytest.raises(ValueError, match="is not a VGG16"):
        build_vgg16(str(path), 32)


def test_missing_synthetic_weights_say_how_to_make_them_before_any_cache_is_made(tmp_path, monkeypatch):
    import features

    monkeypatch.setattr(features, "SYNTHETIC_WEIGHTS", tmp_path / "none.weights.h5")
    with pytest.raises(features.WeightsUnavailable, match="python pretrain.py"):
        features.cached_features([str(tmp_path / "a.jpg")], "synthetic", 32, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_config_that_claims_attributes_the_model_lacks_is_refused(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    config = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps({**config, "attributes": 8}))
    with pytest.raises(ValueError, match="attributes 0 vs 8"):
        Captioner(out, with_vgg=False)
