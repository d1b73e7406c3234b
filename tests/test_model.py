import json

import numpy as np
import pytest

import keras

import runtime
from model import (ARCHITECTURES, CaptionerConfig, PrefixSteps, StepModels, build_model, load_model, model_inputs,
                   step_models)
from runtime import dtype_policy


def small_config(**overrides):
    """32 px photos: 1×1×512 pool5 features."""
    return CaptionerConfig(**{"units": 16, "image_size": 32, **overrides})


def stock_image2text(config):
    """The card's design written with stock Keras layers, as keras-image2text had it."""
    from keras import layers

    features = keras.Input(shape=config.feature_shape)
    x = layers.Normalization(axis=(1, 2, 3))(features)
    x = layers.Dense(config.units, activation="relu")(layers.Flatten()(x))
    x = layers.LSTM(config.units)(layers.RepeatVector(config.timesteps)(x))
    x = layers.RepeatVector(config.timesteps)(x)
    x = layers.Bidirectional(layers.LSTM(config.units, return_sequences=True))(x)
    outputs = layers.TimeDistributed(layers.Dense(config.num_classes, activation="softmax"))(x)
    return keras.Model(features, outputs)


def build_seed_pair(config, features, implementation="projected"):
    """The project's image2text and the stock-layer model, standardised on ``features``, with the same weights."""
    from model import build_image2text

    model = build_image2text(config, lstm_implementation=implementation)
    reference = stock_image2text(config)
    model.get_layer("feature_norm").adapt(features)
    reference.layers[1].adapt(features)
    # Weight order: norm, Dense, encoder, decoder forward then backward, output (both models).
    assert [w.shape for w in model.get_weights()] == [w.shape for w in reference.get_weights()]
    reference.set_weights(model.get_weights())
    return model, reference


@pytest.mark.parametrize("implementation", ["projected", "stock"])
def test_image2text_is_the_cards_design(implementation):
    """Same shapes, and the same numbers as RepeatVector/LSTM/Bidirectional given the same weights."""
    config = CaptionerConfig(units=32, timesteps=50)
    features = np.random.default_rng(0).normal(size=(3, 4, 4, 512)).astype("float32")
    model, reference = build_seed_pair(config, features, implementation)
    assert model.input_shape == (None, 4, 4, 512) and model.output_shape == (None, 50, 128)
    assert model.get_layer("encoder_lstm").output.shape == (None, 32)  # final state only
    assert model.get_layer("decoder_lstm").output.shape == (None, 50, 64)  # bidirectional
    assert isinstance(model.get_layer("next_char"), keras.layers.TimeDistributed)
    np.testing.assert_allclose(model.predict(features, verbose=0), reference.predict(features, verbose=0), atol=1e-5)


def test_projected_image2text_trains_like_the_stock_layers():
    """The hand-written backward pass gives autodiff's gradients: one SGD step (learning rate 1) moves the
    projected image2text's weights exactly as it moves the stock RepeatVector/LSTM/Bidirectional model's."""
    config = CaptionerConfig(units=32, timesteps=50)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 4, 4, 512)).astype("float32")
    targets = rng.integers(0, 128, size=(3, 50))
    model, reference = build_seed_pair(config, features)
    before = model.get_weights()
    for each in (model, reference):
        each.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="sparse_categorical_crossentropy")
        each.train_on_batch(features, targets)
    moved = [after - before for after, before in zip(reference.get_weights(), before)]
    assert max(np.abs(step).max() for step in moved) > 1e-3  # the step did move the weights
    for projected_weight, stock_weight in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(projected_weight, stock_weight, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_save_load_gives_identical_predictions(tmp_path, arch, policy):
    """Loaded under the default float32 policy, a mixed-precision model computes in bfloat16 still, sublayers too."""
    config = small_config(arch=arch)
    features = np.random.default_rng(0).normal(size=(3, 1, 1, 512)).astype("float32")
    with dtype_policy(policy):
        model = build_model(config, feature_sample=features * 2 + 1)  # standardisation statistics must survive saving
    inputs = model_inputs(config, features, np.random.default_rng(1).integers(0, 128, size=(3, 50)))
    model.save(tmp_path / "model.keras")
    restored = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(model.predict(inputs, verbose=0), restored.predict(inputs, verbose=0), atol=1e-6)

    def policies(model):  # every computing layer's, nested ones included
        return [(type(layer).__name__, layer.dtype_policy.name) for layer in model._flatten_layers(include_self=False)
                if not isinstance(layer, keras.layers.InputLayer)]

    assert policies(restored) == policies(model)


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
    assert "feature_shape" not in json.loads((tmp_path / "config.json").read_text())  # it follows from image_size
    assert config.feature_shape == (1, 1, 512) and CaptionerConfig(image_size=224).feature_shape == (7, 7, 512)
    assert CaptionerConfig(image_size=224, feature_layer="conv5").feature_shape == (14, 14, 512)
    (tmp_path / "config.json").write_text('{"units": 8, "colour": "red"}')
    with pytest.raises(ValueError, match="colour"):
        CaptionerConfig.load(tmp_path / "config.json")


def test_an_old_config_loads(tmp_path):
    """Earlier versions wrote arch "seed" and a feature_shape; both still load, and a contradiction is refused."""
    old = {"arch": "seed", "units": 16, "image_size": 32, "feature_shape": [1, 1, 512], "vgg_weights": "none"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = CaptionerConfig.load(tmp_path / "config.json")
    assert (config.arch, config.feature_shape) == ("image2text", (1, 1, 512))
    assert config.recolourings == ("red-blue", "red-green")  # what --recolour made before it took names
    (tmp_path / "config.json").write_text(json.dumps({**old, "feature_shape": [4, 4, 512]}))
    with pytest.raises(ValueError, match="does not follow from image_size"):
        CaptionerConfig.load(tmp_path / "config.json")


@pytest.mark.parametrize("recolourings", [[], ["red-blue", "red-blue"], ["sepia"], "red-blue", [["red-blue"]], None])
def test_recolourings_are_checked(tmp_path, recolourings):
    (tmp_path / "config.json").write_text(json.dumps({"recolour": True, "recolourings": recolourings}))
    with pytest.raises(ValueError, match="recolourings is .*; expected a list of some of red-blue, red-green"):
        CaptionerConfig.load(tmp_path / "config.json")


def test_recolourings_round_trip(tmp_path):
    config = CaptionerConfig(recolour=True, recolourings=["red-yellow", "red-blue"])
    config.save(tmp_path / "config.json")
    assert CaptionerConfig.load(tmp_path / "config.json").recolourings == ("red-yellow", "red-blue")


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="arch is 'perceiver'; expected one of"):
        build_model(small_config(arch="perceiver"))


@pytest.mark.parametrize("settings, message", [
    ({"units": 30, "heads": 4}, "heads is 4; expected a divisor of units"),
    ({"initial_state": "pooled"}, "it has no initial state"),
    ({"blocks": 0}, "blocks is 0; expected a whole number from 1"),
    ({"arch": "attention", "summary_token": True}, "false for attention"),
])
def test_transformer_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        CaptionerConfig(**{"arch": "transformer", **settings})


@pytest.mark.parametrize("arch, loss", [(arch, "crossentropy") for arch in sorted(ARCHITECTURES)]
                         + [("image2text", "ctc")])
def test_each_architecture_memorises_a_few_captions(arch, loss):
    """A handful of images with one caption each must be learnt exactly (a tiny-batch overfit)."""
    from decoding import beam_search, decode_ctc, decode_parallel
    from kana import Vocabulary

    captions = ["アカイマル", "アオイシカク", "キイロイサンカク", "ミドリノマル"]
    vocabulary = Vocabulary.build(captions)
    keras.utils.set_random_seed(0)
    features = np.random.default_rng(0).normal(size=(4, 2, 2, 512)).astype("float32")
    targets = np.stack([vocabulary.encode(caption, 12)[0] for caption in captions])
    config = small_config(arch=arch, units=64, learning_rate=1e-2, dropout=0.0, image_size=64, timesteps=12, loss=loss)
    model = build_model(config, feature_sample=features)
    model.fit(model_inputs(config, features, targets), targets, epochs=300, batch_size=4, verbose=0)
    if ARCHITECTURES[arch].autoregressive:
        decoded = beam_search(step_models(model, config), features, vocabulary, beam_size=2, max_length=11)
    elif loss == "ctc":
        decoded = decode_ctc(model.predict(features, verbose=0), vocabulary)
    else:
        decoded = decode_parallel(model.predict(features, verbose=0), vocabulary)
    predicted = [captions[0].text for captions in decoded]
    assert predicted == captions


def test_ctc_loss_is_the_negative_log_likelihood_of_the_caption_over_the_steps():
    """Two steps, classes (blank, ア, イ): "ア" is read from アア, ア·blank and blank·ア."""
    from model import CaptionCTC

    p = np.array([[[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]], dtype="float32")  # (1, 2 steps, 3 classes)
    likelihood = p[0, 0, 1] * p[0, 1, 1] + p[0, 0, 1] * p[0, 1, 0] + p[0, 0, 0] * p[0, 1, 1]
    loss = keras.ops.convert_to_numpy(CaptionCTC()(np.array([[1, 0]]), p))
    assert loss == pytest.approx(-np.log(likelihood) / 2, rel=1e-4)  # normalised by the 2 steps


def test_likeliest_reference_ctc_is_the_smallest_of_each_photos_caption_losses():
    from batches import CaptionData, with_all_references
    from model import CaptionCTC

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(2, 6)).astype("float32")  # (2 photos, 6 steps, 4 classes)
    captions = np.array([[1, 2, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0], [2, 2, 1, 0, 0, 0]])
    # Photo 0 has two captions, photo 1 one (repeated to fill its row); each caption row carries its photo's.
    data, dropped = with_all_references(CaptionData(np.array([0, 1, 0]), captions))
    assert dropped == 0 and data.targets.shape == (3, 2, 6)
    assert (data.targets[0] == captions[[0, 2]]).all() and (data.targets[1] == captions[[1, 1]]).all()
    each = keras.ops.convert_to_numpy(CaptionCTC(reduction=None)(captions, p[[0, 1, 0]]))
    likeliest = keras.ops.convert_to_numpy(CaptionCTC(likeliest=True, reduction=None)(data.targets[:2], p))
    np.testing.assert_allclose(likeliest, [min(each[0], each[2]), each[1]], rtol=1e-5)


def test_ctc_targets_are_cut_to_what_the_steps_can_align():
    from model import ctc_fits, ctc_steps_needed

    targets = np.array([[1, 1, 2, 0, 0], [1, 2, 3, 4, 0], [1, 1, 1, 1, 0]])
    assert ctc_steps_needed(targets).tolist() == [4, 4, 7]  # アアイ needs a blank between the two ア
    fitted, cut = ctc_fits(targets, 4)
    assert cut == 1 and fitted[:2].tolist() == targets[:2].tolist()
    assert fitted[2].tolist() == [1, 1, 0, 0, 0] and ctc_steps_needed(fitted).max() <= 4


@pytest.mark.parametrize("settings, message", [
    ({"arch": "attention", "loss": "ctc"}, "loss is 'ctc'; expected crossentropy for attention"),
    ({"loss": "hinge"}, "loss is 'hinge'; expected crossentropy or ctc"),
    ({"loss": "ctc", "decoding": "argmax"}, "decoding is 'argmax'; expected ctc-lm or ctc for image2text trained with ctc"),
    ({"loss": "ctc", "lm_weight": -1}, "lm_weight is -1; expected a number from 0 to 10"),
    ({"arch": "attention", "prior_weight": 11}, "prior_weight is 11; expected a number from 0 to 10"),
    ({"prior_weight": 0.5}, "prior_weight is 0.5; expected 0 for image2text"),
    ({"feature_layer": "fc7"}, "feature_layer is 'fc7'; expected pool5 or conv5"),
    ({"feature_layer": ["pool5"]}, "feature_layer is \\['pool5'\\]; expected pool5 or conv5"),
    ({"arch": "showtell", "decoding": "ctc"}, "decoding is 'ctc'; expected beam"),
])
def test_loss_and_decoding_must_agree_with_the_architecture(settings, message):
    with pytest.raises(ValueError, match=message):
        CaptionerConfig(**settings)


def test_the_decoding_follows_the_architecture_and_loss():
    assert CaptionerConfig(arch="image2text").decoding == "argmax"
    assert CaptionerConfig(arch="image2text", loss="ctc").decoding == "ctc-lm"
    assert CaptionerConfig(arch="attention").decoding == "beam"


@pytest.mark.parametrize("arch, options", [("showtell", {}), ("attention", {}), ("transformer", {}),
                                           ("transformer", {"summary_token": True})])
def test_step_models_match_the_training_graph(arch, options):
    """Beam search's one-step models must give the teacher-forced model's probabilities, step by step."""
    config = small_config(arch=arch, image_size=64, timesteps=6, dropout=0.0, **options)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 2, 2, 512)).astype("float32")
    targets = rng.integers(1, 128, size=(3, 6))
    model = build_model(config, feature_sample=features)
    expected = model.predict(model_inputs(config, features, targets), verbose=0)  # (3, 6, 128)
    for steps in [step_models(model, config), *([PrefixSteps(model, config)] if arch == "transformer" else [])]:
        states, tokens = steps.start(features), np.zeros(3, dtype=np.int64)
        for t in range(6):
            probabilities, states = steps.next(tokens, states)
            np.testing.assert_allclose(probabilities, expected[:, t], atol=1e-5)
            tokens = targets[:, t]
        if arch == "transformer":  # positions past its last are not in the model
            with pytest.raises(ValueError, match="at most 6 characters"):
                steps.next(tokens, states)


def test_attention_maps_are_distributions_over_the_grid():
    config = small_config(arch="attention", image_size=96)  # a 3×3 grid
    features = np.random.default_rng(0).normal(size=(2, 3, 3, 512)).astype("float32")
    steps = StepModels(build_model(config, feature_sample=features), config)
    maps = steps.attention_maps(features, [[5, 6, 7], [8]])
    assert [m.shape for m in maps] == [(3, 9), (1, 9)]
    np.testing.assert_allclose([m.sum(axis=1) for m in maps[:1]], 1.0, atol=1e-5)
    assert (maps[0] >= 0).all()
    with pytest.raises(ValueError, match="no attention"):
        StepModels(build_model(small_config(arch="showtell")), small_config(arch="showtell")).attention_maps(
            features, [[5]])


def test_standardisation_keeps_unseen_activations_bounded():
    """A feature that is 0 on every sampled photo must not be divided by a zero spread on a new photo."""
    import keras

    rng = np.random.default_rng(0)
    sample = np.abs(rng.normal(size=(50, 1, 1, 512))).astype("float32")
    sample[..., :100] = 0.0  # dead in the sample
    model = build_model(small_config(arch="showtell"), feature_sample=sample)
    norm = keras.Model(model.inputs[0], model.get_layer("feature_norm").output)
    new = np.abs(rng.normal(size=(4, 1, 1, 512))).astype("float32")
    assert np.abs(norm.predict(new, verbose=0)).max() < 100


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_mixed_bfloat16_trains_with_float32_probabilities(arch):
    """Under Keras' mixed_bfloat16 policy (train.py --precision mixed_bfloat16) the softmax stays float32 and a step trains."""
    config = small_config(arch=arch)
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(size=(4, *config.feature_shape))).astype("float16")  # as the cache stores them
    targets = rng.integers(1, 10, size=(4, config.timesteps)).astype("int32")
    with dtype_policy("mixed_bfloat16"):
        model = build_model(config, features.astype("float32"))
        loss = model.train_on_batch(model_inputs(config, features, targets), targets)
        probabilities = model.predict_on_batch(model_inputs(config, features, targets))
    assert np.isfinite(np.asarray(loss)).all()
    assert keras.backend.standardize_dtype(probabilities.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(probabilities).sum(-1), 1.0, atol=1e-4)


def test_a_mixed_repeated_lstm_rebuilt_from_its_config_keeps_its_policy_and_options():
    """As loading rebuilds it under the global float32 policy: its inner LSTM stays bfloat16 (and off JAX's cuDNN)."""
    from model import RepeatedInputLSTM
    from runtime import lstm_options

    with dtype_policy("mixed_bfloat16"):
        layer = RepeatedInputLSTM(8, 5)
    rebuilt = RepeatedInputLSTM.from_config(layer.get_config())
    assert (rebuilt.lstm.compute_dtype, rebuilt.lstm.variable_dtype) == ("bfloat16", "float32")
    assert rebuilt.lstm.use_cudnn == layer.lstm.use_cudnn == lstm_options(layer.dtype_policy).get("use_cudnn", "auto")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_auto_precisions_are_bfloat16_only_where_measured_faster(monkeypatch, backend):
    """Training: TensorFlow on a bfloat16 CPU, JAX on a GPU. Extraction: TensorFlow on a bfloat16 CPU."""
    assert runtime.training_precision("float32") == "float32"
    assert runtime.training_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert runtime.extraction_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        runtime.training_precision("float16")
    monkeypatch.setattr(runtime.keras.backend, "backend", lambda: backend)
    for device, native in [("cpu", True), ("cpu", False), ("gpu", False), ("gpu", True)]:
        monkeypatch.setattr(runtime, "compute_device", lambda: device)
        monkeypatch.setattr(runtime, "cpu_has_bfloat16", lambda: native)
        bf16_cpu = device == "cpu" and native and backend == "tensorflow"
        training = "mixed_bfloat16" if bf16_cpu or (device == "gpu" and backend == "jax") else "float32"
        assert runtime.training_precision("auto") == training, (device, native)
        assert runtime.extraction_precision("auto") == ("bfloat16" if bf16_cpu else "float32"), (device, native)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_projected_lstm_runs_eagerly_in_the_policys_dtype(policy):
    """Called outside any compiled function too, the projected LSTM computes in the policy's compute dtype."""
    from model import RepeatedInputLSTM

    with dtype_policy(policy):
        layer = RepeatedInputLSTM(8, 5, return_sequences=True, implementation="projected")
        outputs = layer(np.ones((2, 8), "float32"))
    assert tuple(outputs.shape) == (2, 5, 8)
    assert keras.backend.standardize_dtype(outputs.dtype) == ("bfloat16" if policy != "float32" else "float32")


def test_flipped_batches_pair_mirrored_features_with_mirrored_captions():
    """With --flip about half of a shuffled epoch's captions read the mirrored cache and the mirrored targets; validation none."""
    from batches import CaptionBatches, CaptionData

    config = small_config(arch="attention")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, *config.feature_shape)).astype("float16")
    mirrored_features = -features
    targets = rng.integers(1, 128, size=(100, 50)).astype("uint8")
    data = CaptionData(np.repeat(np.arange(20), 5), targets, mirrored_targets=targets[:, ::-1].copy())
    flipped = 0
    for shuffle in (True, False):
        batches = CaptionBatches(config, features, data, 16, shuffle=shuffle, seed=3, mirrored_features=mirrored_features)
        for index in range(len(batches)):
            (x, _), y = batches[index]
            chosen = batches.order[index * 16 : (index + 1) * 16]
            mirrored = batches.mirrored[chosen]
            np.testing.assert_array_equal(x, np.where(mirrored[:, None, None, None], mirrored_features[data.rows[chosen]],
                                                      features[data.rows[chosen]]))
            np.testing.assert_array_equal(y, np.where(mirrored[:, None], data.mirrored_targets[chosen], targets[chosen]))
            flipped += mirrored.sum() if shuffle else 0
            assert shuffle or not mirrored.any()
    assert 30 <= flipped <= 70


def test_recoloured_captions_are_served_with_their_own_features_and_never_mirrored():
    """--recolour: an epoch serves every caption, the recoloured ones with rows of their own cache; --flip mirrors
    only the photos' own captions."""
    from batches import CaptionBatches, CaptionData

    config = small_config(arch="attention")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, *config.feature_shape)).astype("float16")
    targets = rng.integers(1, 128, size=(100, 50)).astype("uint8")
    data = CaptionData(np.repeat(np.arange(20), 5), targets, mirrored_targets=targets[:, ::-1].copy())
    more = [(rng.normal(size=(n, *config.feature_shape)).astype("float16"),
             CaptionData(np.repeat(np.arange(n), 2), rng.integers(1, 128, size=(2 * n, 50)).astype("uint8")))
            for n in (3, 4)]
    batches = CaptionBatches(config, features, data, 16, shuffle=True, seed=3, mirrored_features=-features,
                             recoloured=more)
    expected_x = np.concatenate([features[data.rows], *(f[d.rows] for f, d in more)])
    expected_y = np.concatenate([targets, *(d.targets for _, d in more)])
    served = []
    for index in range(len(batches)):
        (x, _), y = batches[index]
        chosen = batches.order[index * 16 : (index + 1) * 16]
        mirrored = batches.mirrored[chosen]
        assert not mirrored[chosen >= 100].any()
        np.testing.assert_array_equal(x[~mirrored], expected_x[chosen[~mirrored]])
        np.testing.assert_array_equal(y[~mirrored], expected_y[chosen[~mirrored]])
        np.testing.assert_array_equal(x[mirrored], -features[data.rows[chosen[mirrored]]])
        served.extend(chosen)
    assert sorted(served) == list(range(114)) and len(batches) == 8


class NextClass:
    """A stand-in model for own_guesses: after class c it is sure of c + 1, or (``unsure``) splits between c + 1 and
    c + 2."""

    def __init__(self, num_classes: int, unsure: bool = False):
        self.num_classes, self.unsure = num_classes, unsure

    def predict_on_batch(self, inputs):
        _, previous = inputs
        probabilities = np.zeros((*previous.shape, self.num_classes))
        np.put_along_axis(probabilities, ((previous + 1) % self.num_classes)[..., None], 0.5 if self.unsure else 1.0, -1)
        if self.unsure:
            np.put_along_axis(probabilities, ((previous + 2) % self.num_classes)[..., None], 0.5, -1)
        return probabilities


def test_scheduled_sampling_feeds_the_models_own_guesses_by_chance_and_keeps_the_targets():
    """--own-chars: own_guesses draws each step's character from the model's distribution after the caption's own
    characters; an epoch's batches feed them in place of the caption's with the chance the schedule gives."""
    from batches import CaptionBatches, CaptionData
    from model import previous_chars
    from training import OwnChars, own_guesses

    config = small_config(arch="transformer")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, *config.feature_shape)).astype("float16")
    targets = rng.integers(1, 8, size=(100, config.timesteps)).astype("uint8")
    more = [(rng.normal(size=(3, *config.feature_shape)).astype("float16"),
             CaptionData(np.arange(3), rng.integers(1, 8, size=(3, config.timesteps)).astype("uint8")))]
    batches = CaptionBatches(config, features, CaptionData(np.repeat(np.arange(20), 5), targets), 16, shuffle=True,
                             seed=3, recoloured=more)
    served = np.concatenate([targets, more[0][1].targets])
    sure = own_guesses(NextClass(config.num_classes), batches, seed=0, batch_size=7)
    np.testing.assert_array_equal(sure, (previous_chars(served) + 1) % config.num_classes)
    unsure = own_guesses(NextClass(config.num_classes, unsure=True), batches, seed=0, batch_size=7)
    step = (unsure.astype(int) - previous_chars(served)) % config.num_classes
    assert set(np.unique(step)) == {1, 2} and 0.45 < (step == 1).mean() < 0.55

    schedule = OwnChars(batches, share=0.6, epochs=4, seed=0)
    schedule.set_model(NextClass(config.num_classes))
    schedule.on_epoch_begin(0)  # the first epoch is plain teacher forcing: nothing read, nothing fed
    assert batches.own_share == 0 and batches.guesses is None
    (_, fed), y = batches[0]
    np.testing.assert_array_equal(fed, previous_chars(y))
    own_shares = []
    for epoch in (1, 3):
        schedule.on_epoch_begin(epoch)
        assert batches.own_share == pytest.approx(0.6 * epoch / 3)
        own, total = 0, 0
        for index in range(len(batches)):
            (x, fed), y = batches[index]
            chosen = batches.order[index * 16 : (index + 1) * 16]
            np.testing.assert_array_equal(y, served[chosen])  # the targets stay the captions'
            guessed = previous_chars(sure[chosen].astype(np.int32))
            assert ((fed == previous_chars(y)) | (fed == guessed)).all() and (fed[:, 0] == 0).all()
            differs = guessed != previous_chars(y)
            own, total = own + (fed == guessed)[differs].sum(), total + differs.sum()
            np.testing.assert_array_equal(batches[index][0][1], fed)  # the same batch feeds the same characters
        own_shares.append(own / total)
    assert own_shares == pytest.approx([0.2, 0.6], abs=0.03)


def test_length_weighting_draws_long_captions_in_proportion_and_validation_stays_whole():
    """--length-weighting P: a shuffled epoch draws as many captions as there are, each with odds of its length to
    P (a caption twice as long, 2**P as often); without it, or unshuffled, every caption once."""
    from batches import CaptionBatches, CaptionData, caption_odds

    config = small_config(arch="attention")
    features = np.zeros((2, *config.feature_shape), dtype="float16")
    targets = np.zeros((2, 50), dtype="uint8")
    targets[0, :10], targets[1, :40] = 5, 7  # 10 and 40 characters, then the end class
    data = CaptionData(np.array([0, 1]), targets)
    np.testing.assert_allclose(caption_odds(targets, 1.0), [0.2, 0.8])
    np.testing.assert_allclose(caption_odds(targets, 0.5), [1 / 3, 2 / 3])
    np.testing.assert_allclose(caption_odds(np.stack([targets, targets[::-1]], axis=1), 1.0), [0.5, 0.5])  # likeliest
    many = CaptionData(np.repeat(data.rows, 500), np.repeat(targets, 500, axis=0))
    drawn = [CaptionBatches(config, features, many, 100, shuffle=True, seed=seed, length_weighting=1.0).order
             for seed in range(3)]
    long_share = np.mean([np.mean(order >= 500) for order in drawn])
    assert 0.77 < long_share < 0.83 and all(len(order) == 1000 for order in drawn)
    for shuffle, weighting in ((True, 0.0), (False, 1.0)):
        order = CaptionBatches(config, features, many, 100, shuffle=shuffle, seed=0, length_weighting=weighting).order
        assert sorted(order) == list(range(1000))


def test_weighted_length_photo_draws_every_wording_of_a_photo_alike():
    """--weighted-length photo: a caption's odds are its photo's captions' mean length to P, so a photo's short and long
    wordings are drawn alike, and a photo of longer captions more often than one of shorter."""
    from batches import CaptionBatches, CaptionData, caption_odds

    targets = np.zeros((3, 50), dtype="uint8")
    targets[0, :10], targets[1, :30], targets[2, :5] = 5, 7, 9  # photo 0: 10 and 30 characters; photo 1: 5
    photos = np.array([0, 0, 1])
    np.testing.assert_allclose(caption_odds(targets, 1.0, photos), np.array([20, 20, 5]) / 45)
    np.testing.assert_allclose(caption_odds(targets, 1.0), [10 / 45, 30 / 45, 5 / 45])
    config = small_config(arch="attention")
    features = np.zeros((2, *config.feature_shape), dtype="float16")
    data = CaptionData(photos, targets)
    by_photo = CaptionBatches(config, features, data, 2, shuffle=True, seed=0, length_weighting=1.0,
                              weighted_length="photo")
    np.testing.assert_allclose(by_photo.odds, np.array([20, 20, 5]) / 45)
    # a recoloured photo is a photo of its own, though it shares its row number with one of the originals
    more = CaptionData(np.array([1]), targets[:1])
    recoloured = CaptionBatches(config, features, data, 2, shuffle=True, seed=0, length_weighting=1.0,
                                weighted_length="photo", recoloured=[(features, more)])
    np.testing.assert_allclose(recoloured.odds, np.array([20, 20, 5, 10]) / 55)


def test_batches_are_float16_and_threads_keep_their_order():
    """CaptionBatches sends the cache's float16 rows as they are; reading in threads gives the same batches."""
    from batches import CaptionBatches, CaptionData

    config = small_config(arch="attention")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, *config.feature_shape)).astype("float16")
    data = CaptionData(np.repeat(np.arange(20), 5), rng.integers(1, 128, size=(100, 50)).astype("uint8"))
    single = CaptionBatches(config, features, data, 16, shuffle=True, seed=3)
    threaded = CaptionBatches(config, features, data, 16, shuffle=True, seed=3, workers=3)
    for index in range(len(single)):
        (x1, p1), y1 = single[index]
        (x2, p2), y2 = threaded[index]
        assert x1.dtype == np.float16
        np.testing.assert_array_equal(x1, x2), np.testing.assert_array_equal(p1, p2), np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, features[data.rows[single.order[index * 16 : (index + 1) * 16]]])


def char_dropout_outputs(config, photos: int):
    """The previous characters' embeddings after char dropout, in training and in reading, and without it."""
    model = build_model(config)
    embedded = keras.Model(model.inputs, model.get_layer("char_dropout").output)
    features = np.random.default_rng(0).random((photos, *config.feature_shape), dtype=np.float32)
    previous = np.random.default_rng(1).integers(1, 60, size=(photos, config.timesteps))
    trained, read = (keras.ops.convert_to_numpy(embedded([features, previous], training=training))
                     for training in (True, False))
    return trained, read, keras.ops.convert_to_numpy(model.get_layer("char_embedding")(previous))


@pytest.mark.parametrize("arch", ["attention", "showtell"])
def test_char_dropout_hides_whole_previous_characters_in_training_only(arch):
    trained, read, _ = char_dropout_outputs(small_config(arch=arch, timesteps=40, char_dropout=0.5), photos=8)
    hidden = (trained == 0).all(axis=-1)
    assert 0.3 < hidden.mean() < 0.7  # whole characters, about half of them
    assert not ((trained == 0) & ~hidden[..., None]).any()  # nothing else zeroed
    assert not (read == 0).all(axis=-1).any()
    assert "char_dropout" not in [layer.name for layer in build_model(small_config(arch=arch)).layers]


@pytest.mark.parametrize("arch", ["attention", "transformer"])
def test_char_dropout_spans_hide_runs_of_characters_in_training_only(arch):
    config = small_config(arch=arch, timesteps=60, char_dropout=0.4, char_dropout_span=4)
    trained, read, kept = char_dropout_outputs(config, photos=64)
    hidden = (trained == 0).all(axis=-1)
    assert 0.3 < hidden.mean() < 0.5  # about the share asked for
    assert not ((trained == 0) & ~hidden[..., None]).any()  # whole characters, nothing else zeroed
    rows = ["".join("1" if step else "0" for step in row) for row in hidden]
    runs = [len(run) for row in rows for run in row.rstrip("1").split("0") if run]  # not cut short by the end
    assert min(runs) >= 4 and np.mean(runs) > 4  # runs of the span at least, overlapping ones longer
    whole_words = np.mean([row[t : t + 4].all() for row in hidden for t in range(0, 56, 4)])
    assert whole_words > 0.15  # a four-character word hidden whole: about 1 time in 40 with one character at a time
    np.testing.assert_allclose(trained[~hidden], kept[~hidden], rtol=1e-6)  # the kept ones not rescaled
    np.testing.assert_allclose(read, kept, rtol=1e-6)


@pytest.mark.parametrize("arch", ["attention", "showtell"])
def test_a_pooled_initial_state_sees_an_object_alike_in_any_cell(arch):
    """--initial-state pooled: the initial state reads the grid's mean and maximum, so moving what a cell holds to
    another cell leaves it unchanged; the flattened grid's does not."""
    def initial_h(initial_state, features):
        sample = np.random.default_rng(2).normal(size=(16, 1, 1, 512)) * np.ones((1, 4, 4, 1))  # alike in every cell
        model = build_model(small_config(arch=arch, image_size=150, initial_state=initial_state), sample)
        return keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("init_h").output)(
            [features, np.zeros((2, model.inputs[1].shape[1]), "int32")]))

    grid = np.random.default_rng(0).normal(size=(1, 4, 4, 512)).astype("float32")
    moved = np.roll(grid, (1, 2), axis=(1, 2))  # every cell's features in another cell
    features = np.concatenate([grid, moved])
    pooled = initial_h("pooled", features)
    np.testing.assert_allclose(pooled[0], pooled[1], atol=1e-5)
    flat = initial_h("flatten", features)
    assert np.abs(flat[0] - flat[1]).max() > 1e-2
    with pytest.raises(ValueError, match="initial_state"):
        small_config(arch="image2text", initial_state="pooled")


def test_grid_positions_tell_the_attention_where_a_cell_is(tmp_path):
    """--grid-positions: with the same features in every cell, the cells the attention reads differ by where they are
    (without, they are identical); the learnt positions survive saving."""
    features = np.random.default_rng(0).normal(size=(2, 1, 1, 512)) * np.ones((1, 4, 4, 1), "float32")
    previous = np.zeros((2, 50), "int32")

    def cells(model):
        values = keras.Model(model.inputs, model.get_layer("grid_values_flat").output)([features, previous])
        return keras.ops.convert_to_numpy(values).reshape(2, 16, -1)

    plain = build_model(small_config(arch="attention", image_size=150), features)
    assert np.abs(cells(plain) - cells(plain)[:, :1]).max() < 1e-5
    model = build_model(small_config(arch="attention", image_size=150, grid_positions=True), features)
    assert np.abs(cells(model) - cells(model)[:, :1]).max() > 1e-2
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(cells(load_model(tmp_path / "model.keras")), cells(model), atol=1e-6)
    with pytest.raises(ValueError, match="grid_positions"):
        small_config(arch="showtell", grid_positions=True)
