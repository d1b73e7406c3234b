"""attributes.py: the caption n-grams a photo's captions use, chosen and counted exactly, read off features by ridge."""

import numpy as np
import pytest

import attributes
from batches import CaptionData
from model import CaptionerConfig, build_model

CHARACTERS = ["", "ア", "カ", "イ", "ホ", "シ", "マ", "ル"]  # class 0 is the end class
INDEX = {char: index for index, char in enumerate(CHARACTERS)}
NUM_CLASSES = 8


def encode(captions: list[str], timesteps: int = 8) -> np.ndarray:
    rows = np.zeros((len(captions), timesteps), np.uint8)
    for row, caption in enumerate(captions):
        rows[row, : len(caption)] = [INDEX[char] for char in caption]
    return rows


def test_ngram_codes_number_each_window_and_stop_at_the_end_class():
    codes = attributes.ngram_codes(encode(["アカイ"], 5), 2, NUM_CLASSES)
    assert [attributes.decode(code, CHARACTERS, NUM_CLASSES) for code in codes[0, :2]] == ["アカ", "カイ"]
    assert (codes[0, 2:] == -1).all()  # windows that reach the end class
    three = attributes.ngram_codes(encode(["アカイ"], 5), 3, NUM_CLASSES)
    assert attributes.decode(int(three[0, 0]), CHARACTERS, NUM_CLASSES) == "アカイ" and (three[0, 1:] == -1).all()
    assert three[0, 0] not in codes  # lengths never share a code


def test_attributes_are_the_commonest_informative_ngrams_and_targets_are_shares_of_captions():
    # Photo 0: two captions, photo 1: two, photo 2: one. マル is in every photo; アカ, ホシ, シマ in two of three.
    data = CaptionData(rows=np.array([0, 0, 1, 1, 2]),
                       targets=encode(["アカホシマル", "ホシマル", "アカマル", "イホシマル", "マル"]))
    ngrams = attributes.photo_ngrams(data, NUM_CLASSES)
    codes = attributes.choose(ngrams, 3)
    names = [attributes.decode(code, CHARACTERS, NUM_CLASSES) for code in codes]
    assert not {"マル", "アカ", "ホシ"} & set(names)  # in more than half of the photos: they tell little apart
    assert names == ["カホ", "カマ", "イホ"]  # one photo each; ties by code: shorter first, then class by class
    images, shares = attributes.shares(ngrams, codes)
    np.testing.assert_array_equal(images, [0, 1, 2])
    np.testing.assert_allclose(shares, [[0.5, 0, 0], [0, 0.5, 0.5], [0, 0, 0]])


def test_fit_sets_the_frozen_layer_to_the_ridge_that_reads_the_attributes_off_the_features():
    rng = np.random.default_rng(0)
    photos = 200
    features = np.zeros((photos, 1, 1, 512), np.float16)  # eight channels that vary: a ridge of 150 photos reads
    features[..., :8] = rng.normal(size=(photos, 1, 1, 8))  # a few dimensions well, not 1,024
    red = features[:, 0, 0, 0] > 0.3  # the photos whose captions say アカ (38%): a direction in the features
    data = CaptionData(rows=np.repeat(np.arange(photos), 2),
                       targets=encode(["アカマル" if is_red else "イマル" for is_red in red for _ in range(2)]))
    train, val = (CaptionData(data.rows[part], data.targets[part]) for part in (slice(0, 300), slice(300, None)))
    model = build_model(CaptionerConfig(arch="attention", units=16, image_size=32, attributes=6),
                        features.astype(np.float32))
    fitted = attributes.fit(model, features, train, val, NUM_CLASSES)
    names = [attributes.decode(code, CHARACTERS, NUM_CLASSES) for code in fitted["codes"]]
    assert names == ["アカ", "カマ", "アカマ", "カマル"]  # イマ, イマル and マル: in more than half of the photos
    assert fitted["auc"] > 0.9  # on the validation photos
    kernel, bias = model.get_layer("attributes").get_weights()
    read = attributes.summaries(model, features, np.arange(photos)) @ kernel + bias
    assert read[red, 0].mean() > read[~red, 0].mean() + 0.5
    assert np.abs(kernel[:, len(names):]).max() == 0  # the columns past the n-grams found read nothing


def test_attributes_are_for_attention_and_bounded():
    with pytest.raises(ValueError, match="attributes"):
        CaptionerConfig(arch="showtell", attributes=8)
    for value in (-1, 5000, 2.5, True):
        with pytest.raises(ValueError, match="attributes"):
            CaptionerConfig(arch="attention", attributes=value)
