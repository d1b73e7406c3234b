"""The web page (app.py): Streamlit's AppTest without a browser, then the real server in headless Chromium."""

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jaconv
import pytest
from PIL import Image

from captioner import Captioner
from conftest import PROJECT
from test_end_to_end import is_katakana
from test_features import png_header

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.fixture(autouse=True)
def keep_main_module():
    """AppTest installs its script as ``__main__`` and leaves it there; the next tests' worker processes
    (pretrain.py draws scenes in some) would run that script again on start-up."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


def page(model: str, ensemble=(), more=()):
    """The app as AppTest runs it: the body is the script, with ``--model`` (and ``more`` options) as after
    streamlit's ``--``."""
    import app

    app.main(["--model", model, *(option for run in ensemble for option in ("--ensemble", run)), *more])


def open_page(model, ensemble=(), more=()) -> AppTest:
    at = AppTest.from_function(page, kwargs={"model": str(model), "ensemble": [str(run) for run in ensemble],
                                             "more": [str(option) for option in more]}, default_timeout=120)
    return at.run()


def captioned_photo(run, demo, beam_size=3):
    """A held-out photo the tiny run writes a non-empty caption for, and predict.py's captions of it at ``beam_size``."""
    photos = sorted((demo / "val2014").iterdir())
    for path, captions, _ in Captioner(run, beam_size=beam_size).caption_files(photos, n_best=beam_size):
        if captions[0].text:
            return Path(path), captions
    raise AssertionError("the tiny run captions no held-out photo")


def webp_with_alpha(photo: Path) -> bytes:
    out = io.BytesIO()
    Image.open(photo).convert("RGBA").save(out, format="WEBP")
    return out.getvalue()


def test_an_upload_is_captioned_and_a_bad_one_is_an_error(tiny_run, tiny_demo):
    photo, expected = captioned_photo(tiny_run[0], tiny_demo)
    at = open_page(tiny_run[0])
    assert not at.exception and not at.error
    at.slider[0].set_value(3)
    at.file_uploader[0].set_value([("photo.jpg", photo.read_bytes(), "image/jpeg"),
                                   ("broken.png", b"not a png", "image/png"),
                                   ("bomb.png", png_header(20_000, 20_000), "image/png"),
                                   ("photo.webp", webp_with_alpha(photo), "image/webp")])
    at.run()
    assert not at.exception
    errors = [error.value for error in at.error]
    assert len(errors) == 2 and errors[0].startswith("error: broken.png: not a readable image")
    assert errors[1].startswith("error: bomb.png: too many pixels to decode safely")
    captions = [block.value[4:] for block in at.markdown if block.value.startswith("### ")]
    assert captions[0] == expected[0].text and is_katakana(captions[0])  # predict.py's caption, non-empty katakana
    assert len(captions) == 2 and is_katakana(captions[1])  # the WebP with an alpha channel is captioned too
    table = at.table[0]  # the n-best list at beam size 3
    assert list(table.value["caption"]) == [caption.text for caption in expected]
    assert [float(p) for p in table.value["probability"]] == pytest.approx(
        [float(f"{caption.probability:.2g}") for caption in expected])
    assert any("ms (reading, VGG16, decoding)" in block.value for block in at.caption)
    assert any(block.value == f"ひらがな: {jaconv.kata2hira(captions[0])}" for block in at.caption)


def test_the_page_says_how_to_get_a_model(tmp_path):
    at = open_page(tmp_path / "missing")
    assert [error.value for error in at.error] == [f"error: no run folder at {tmp_path / 'missing'}."]
    assert not at.exception and not at.file_uploader


def bad_option_page():
    import app

    app.main(["--bogus"])


def test_a_bad_option_is_an_error_on_the_page():
    at = AppTest.from_function(bad_option_page, default_timeout=60).run()
    assert not at.exception
    assert [error.value for error in at.error] == ["error: the page's options are: streamlit run app.py -- "
                                                   "[--model RUN_FOLDER] [--ensemble RUN_FOLDER]… "
                                                   "[--samples N [--judge RUN_FOLDER]… [--seed S]]"]


def test_drawn_captions_judged_on_the_page_are_predicts(tiny_run, tiny_demo):
    photo, _ = captioned_photo(tiny_run[0], tiny_demo, beam_size=1)
    captioner = Captioner(tiny_run[0], samples=4, seed=3, judges=[tiny_run[0]])
    ((_, expected, _),) = captioner.caption_files([photo], n_best=4)
    uploaded = Captioner(tiny_run[0], samples=4, seed=3, judges=[tiny_run[0]])
    result = uploaded.caption_photo(io.BytesIO(photo.read_bytes()), n_best=4, name="photo.jpg")  # read again to judge
    assert [caption.text for caption in result.captions] == [caption.text for caption in expected]
    at = open_page(tiny_run[0], more=["--samples", 4, "--seed", 3, "--judge", tiny_run[0]])
    assert not at.exception and not at.error
    assert any(f"4 captions drawn per photo, chosen by {tiny_run[0]}" in block.value for block in at.caption)
    at.file_uploader[0].set_value([("photo.jpg", photo.read_bytes(), "image/jpeg")])
    at.run()
    assert not at.exception and not at.error
    assert [block.value[4:] for block in at.markdown if block.value.startswith("### ")] == [
        expected[0].text or "(empty)"]  # a tiny run's judge may well prefer the empty caption
    at = open_page(tiny_run[0], more=["--judge", tiny_run[0]])  # a judge has nothing to choose among
    assert not at.exception and not at.file_uploader and len(at.error) == 1


def test_an_ensemble_on_the_page_captions_as_predict_does_and_a_bad_member_is_an_error(tiny_run, tiny_demo, tmp_path):
    photo, expected = captioned_photo(tiny_run[0], tiny_demo, beam_size=1)
    at = open_page(tiny_run[0], ensemble=[tiny_run[0]])  # a run with itself: the mean of equal distributions
    assert not at.exception and not at.error
    assert any(f"{tiny_run[0]} and {tiny_run[0]} as one" in block.value for block in at.caption)
    at.file_uploader[0].set_value([("photo.jpg", photo.read_bytes(), "image/jpeg")])
    at.run()
    assert not at.exception and not at.error
    assert [block.value[4:] for block in at.markdown if block.value.startswith("### ")] == [expected[0].text]
    at = open_page(tiny_run[0], ensemble=[tmp_path / "nowhere"])
    assert not at.exception and not at.file_uploader
    assert len(at.error) == 1 and "--ensemble must be a run folder written by train.py" in at.error[0].value


def test_a_run_that_does_not_load_is_the_line_predict_prints(tiny_run, tiny_demo, tmp_path, capsys):
    import predict

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0], broken)
    (broken / "model.keras").write_bytes(b"truncated")
    at = open_page(broken)
    assert not at.exception and len(at.error) == 1 and "damaged or truncated" in at.error[0].value
    capsys.readouterr()
    assert predict.main([str(tiny_demo / "val2014"), "--model", str(broken)]) == 2
    assert at.error[0].value == capsys.readouterr().err.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(model, port: int, timeout: float = 90):
    """``streamlit run app.py`` on 127.0.0.1:``port``, stopped (its whole process group) whatever happens."""
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--", "--model", str(model)]
    server = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {server.stdout.read().decode(errors='replace')}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stdout.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium-headless-shell)")
def test_a_photo_dropped_on_the_page_in_a_real_browser_is_captioned(tiny_run, tiny_demo, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    photo, expected = captioned_photo(tiny_run[0], tiny_demo, beam_size=1)  # the page's default: greedy
    with streamlit_server(tiny_run[0], free_port()) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.goto(url)
            tab.locator('input[type="file"]').set_input_files(str(photo))
            tab.get_by_text("ms (reading, VGG16, decoding)").wait_for(timeout=120_000)
            heading = tab.locator("h3").filter(has_text=photo.name)
            assert heading.count() == 1
            captions = [text.strip() for text in tab.locator("h3").all_inner_texts() if text.strip() != photo.name]
            assert captions == [expected[0].text]
            tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
