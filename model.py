"""The caption models, in plain Keras 3 (runs on the TensorFlow, JAX and torch backends).

Every model reads cached VGG16 pool5 features, never pixels: the frozen VGG16
runs once per image in features.py, not at every training step.

``--arch seed`` is the design of the original keras-image2text, kept exactly:

    pool5 (4, 4, 512) -> Flatten -> Dense(units) -> RepeatVector(50)
      -> LSTM(units) encoder -> RepeatVector(50)
      -> Bidirectional(LSTM(units)) decoder -> TimeDistributed(Dense(128, softmax))

It writes all 50 characters at once, none of them seeing the others, and on
captions worded several ways it learns the average caption and ignores the
image. ``--arch showtell`` (Vinyals et al., Show and Tell) is autoregressive:
the image sets the LSTM's initial state, and each step reads the previous
character and predicts the next (teacher forcing in training, beam search in
decoding.py at inference).
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from fileio import read_json, write_json


@dataclasses.dataclass
class CaptionerConfig:
    """Everything needed to rebuild a model and feed it; saved as config.json."""

    arch: str = "seed"  # which builder in ARCHITECTURES made the model
    units: int = 768  # LSTM and Dense width (768 in the original)
    timesteps: int = 50  # characters per caption, end class included
    num_classes: int = 128  # softmax width: the end class plus up to 127 characters
    image_size: int = 150  # images are letterboxed to image_size × image_size
    feature_shape: tuple = (4, 4, 512)  # VGG16 pool5 at that image size
    vgg_weights: str = "imagenet"  # "imagenet", "none" (seeded random) or a weights file
    learning_rate: float = 1e-3  # Adam's
    embedding_dim: int = 64  # showtell: width of the character embedding
    dropout: float = 0.3  # showtell: dropout on the image vector and the LSTM outputs

    def save(self, path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path) -> "CaptionerConfig":
        data = read_json(path, "Model config")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has settings this version does not know: {', '.join(unknown)}")
        data["feature_shape"] = tuple(data.get("feature_shape", cls.feature_shape))
        return cls(**data)


def build_seed(config: CaptionerConfig) -> keras.Model:
    """The card's non-autoregressive design (see the module docstring)."""
    features = keras.Input(shape=config.feature_shape, name="features")  # (batch, 4, 4, 512)
    x = layers.Normalization(axis=(1, 2, 3), name="feature_norm")(features)  # per-feature standardisation
    x = layers.Flatten(name="flatten")(x)  # (batch, 8192)
    x = layers.Dense(config.units, activation="relu", name="image_projection")(x)  # (batch, units)
    x = layers.RepeatVector(config.timesteps, name="repeat_image")(x)  # (batch, 50, units)
    x = layers.LSTM(config.units, name="encoder_lstm")(x)  # (batch, units)
    x = layers.RepeatVector(config.timesteps, name="repeat_state")(x)  # (batch, 50, units)
    x = layers.Bidirectional(
        layers.LSTM(config.units, return_sequences=True), name="decoder_lstm"
    )(x)  # (batch, 50, 2 * units)
    probabilities = layers.TimeDistributed(
        layers.Dense(config.num_classes, activation="softmax"), name="next_char"
    )(x)  # (batch, 50, 128)
    return keras.Model(features, probabilities, name="seed")


def build_showtell(config: CaptionerConfig) -> keras.Model:
    """Show and Tell: the image initialises an LSTM that reads character t-1 and predicts character t.

    Inputs are the features and the previous characters (the caption shifted
    right behind the end class, see ``previous_chars``); the output has the
    seed model's shape, so training and the loss are the same.
    """
    features = keras.Input(shape=config.feature_shape, name="features")  # (batch, 4, 4, 512)
    previous = keras.Input(shape=(config.timesteps,), dtype="int32", name="previous_chars")  # (batch, 50)
    x = layers.Normalization(axis=(1, 2, 3), name="feature_norm")(features)  # per-feature standardisation
    x = layers.Flatten(name="flatten")(x)  # (batch, 8192)
    x = layers.Dropout(config.dropout, name="image_dropout")(x)
    initial_h = layers.Dense(config.units, activation="tanh", name="init_h")(x)  # (batch, units)
    initial_c = layers.Dense(config.units, activation="tanh", name="init_c")(x)  # (batch, units)
    embedded = layers.Embedding(config.num_classes, config.embedding_dim, name="char_embedding")(previous)  # (batch, 50, E)
    outputs, _, _ = layers.LSTM(config.units, return_sequences=True, return_state=True, name="decoder_lstm")(
        embedded, initial_state=[initial_h, initial_c]
    )  # (batch, 50, units)
    outputs = layers.Dropout(config.dropout, name="output_dropout")(outputs)
    probabilities = layers.Dense(config.num_classes, activation="softmax", name="next_char")(outputs)  # (batch, 50, 128)
    return keras.Model([features, previous], probabilities, name="showtell")


ARCHITECTURES = {"seed": build_seed, "showtell": build_showtell}
AUTOREGRESSIVE = {"showtell"}  # architectures that read the previous character


def previous_chars(targets):
    """Teacher-forcing inputs: each caption shifted right by one, behind the end class (the start token)."""
    import numpy as np

    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def model_inputs(config: CaptionerConfig, features, targets):
    """What the model is fed in training: the features, and for autoregressive models the previous characters."""
    return (features, previous_chars(targets)) if config.arch in AUTOREGRESSIVE else features


def build_model(config: CaptionerConfig, feature_sample=None) -> keras.Model:
    """Builds and compiles the architecture ``config.arch`` names.

    Args:
        config: the settings.
        feature_sample: training features ``(n, 4, 4, 512)`` whose per-feature
            mean and variance the model standardises its input with (saved in
            the model). VGG16 features of different photos share most of their
            magnitude (the background), so standardising is what lets the
            image-specific part through.
    """
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    model = ARCHITECTURES[config.arch](config)
    if feature_sample is not None:
        model.get_layer("feature_norm").adapt(feature_sample)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        # Integer targets: the same loss as one-hot cross-entropy over the 128
        # classes, without building (batch, 50, 128) one-hot arrays.
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def load_model(path) -> keras.Model:
    """Loads a saved ``.keras`` model in safe mode (no arbitrary code from the file).

    Raises:
        ValueError: the file is not a loadable Keras model (damaged, truncated, another format).
    """
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; the user needs one message
        raise ValueError(f"{path} could not be loaded as a Keras model ({type(error).__name__}: {error})") from None

