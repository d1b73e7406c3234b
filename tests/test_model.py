import numpy as np
import pytest

import keras

from model import ARCHITECTURES, CaptionerConfig, build_model, load_model


def small_config(**overrides):
    return CaptionerConfig(**{"units": 16, "feature_shape": (1, 1, 512), "image_size": 32, **overrides})


def test_seed_is_the_cards_design():
    model = build_model(CaptionerConfig(units=32))
    assert model.input_shape == (None, 4, 4, 512)
    assert model.output_shape == (None, 50, 128)
    assert model.get_layer("encoder_lstm").output.shape == (None, 32)  # final state only
    assert model.get_layer("repeat_state").output.shape == (None, 50, 32)
    assert model.get_layer("decoder_lstm").output.shape == (None, 50, 64)  # bidirectional
    assert isinstance(model.get_layer("next_char"), keras.layers.TimeDistributed)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_save_load_gives_identical_predictions(tmp_path, arch):
    from model import model_inputs

    config = small_config(arch=arch)
    features = np.random.default_rng(0).normal(size=(3, 1, 1, 512)).astype("float32")
    model = build_model(config, feature_sample=features * 2 + 1)  # standardisation statistics must survive saving
    inputs = model_inputs(config, features, np.random.default_rng(1).integers(0, 128, size=(3, 50)))
    model.save(tmp_path / "model.keras")
    restored = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(model.predict(inputs, verbose=0), restored.predict(inputs, verbose=0), atol=1e-6)


def test_showtell_reads_the_previous_character():
    from model import previous_chars

    model = build_model(small_config(arch="showtell"))
    assert [tuple(i.shape) for i in model.inputs] == [(None, 1, 1, 512), (None, 50)]
    assert model.output_shape == (None, 50, 128)
    assert previous_chars(np.array([[5, 6, 7, 0]])).tolist() == [[0, 5, 6, 7]]


def test_config_round_trip_and_unknown_settings(tmp_path):
    config = small_config(units=8, vgg_weights="none")
    config.save(tmp_path / "config.json")
    assert CaptionerConfig.load(tmp_path / "config.json") == config
    (tmp_path / "config.json").write_text('{"units": 8, "colour": "red"}')
    with pytest.raises(ValueError, match="colour"):
        CaptionerConfig.load(tmp_path / "config.json")


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        build_model(small_config(arch="transformer"))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_architecture_memorises_a_few_captions(arch):
    """A handful of images with one caption each must be learnt exactly (a tiny-batch overfit)."""
    from decoding import StepModels, beam_search, decode_parallel
    from kana import Vocabulary
    from model import AUTOREGRESSIVE, model_inputs

    captions = ["アカイマル", "アオイシカク", "キイロイサンカク", "ミドリノマル"]
    vocabulary = Vocabulary.build(captions)
    keras.utils.set_random_seed(0)
    features = np.random.default_rng(0).normal(size=(4, 2, 2, 512)).astype("float32")
    targets = np.stack([vocabulary.encode(caption, 12)[0] for caption in captions])
    config = small_config(arch=arch, units=64, learning_rate=1e-2, dropout=0.0, feature_shape=(2, 2, 512), timesteps=12)
    model = build_model(config, feature_sample=features)
    model.fit(model_inputs(config, features, targets), targets, epochs=300, batch_size=4, verbose=0)
    if arch in AUTOREGRESSIVE:
        decoded = beam_search(StepModels(model), features, vocabulary, beam_size=2, max_length=11)
    else:
        decoded = decode_parallel(model.predict(features, verbose=0), vocabulary)
    predicted = [captions[0].text for captions in decoded]
    assert predicted == captions
