"""A run folder written before the image2text rename still loads and captions exactly as it did then."""

import json
from pathlib import Path

import pytest

from captioner import Captioner
from model import CaptionerConfig

OLD_RUNS = Path(__file__).parent / "data" / "run-0a28a14"
EXPECTED = json.loads((OLD_RUNS / "captions.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("folder, arch", [("seed", "image2text"), ("attention", "attention")])
def test_an_old_run_folder_captions_as_it_did(tiny_demo, folder, arch):
    """``tiny_demo`` is demo.generate(seed=3, num_train=24, num_val=6): the photos the old captions were made of."""
    old_config = json.loads((OLD_RUNS / folder / "config.json").read_text())
    assert "feature_shape" in old_config and old_config["arch"] == folder  # written by the old version
    captioner = Captioner(OLD_RUNS / folder, beam_size=2)
    assert captioner.config == CaptionerConfig.load(OLD_RUNS / folder / "config.json")
    assert captioner.config.arch == arch
    photos = sorted((tiny_demo / "val2014").iterdir())
    captioned = {Path(path).name: captions for path, captions, _ in captioner.caption_files(photos, n_best=2)}
    assert set(captioned) == set(EXPECTED[folder])
    for name, expected in EXPECTED[folder].items():
        assert [caption.text for caption in captioned[name]] == [text for text, _ in expected], name
        assert [caption.probability for caption in captioned[name]] == pytest.approx(
            [probability for _, probability in expected], rel=1e-4), name
    assert all(captions[0].text for captions in captioned.values())  # the old runs write something for every photo
