"""The caption models, in plain Keras 3 (runs on the TensorFlow, JAX and torch backends).

Every model reads cached VGG16 pool5 features (or conv5_3's, ``feature_layer``), never pixels: the frozen VGG16
runs once per image in features.py, not at every training step.

``--arch image2text`` is the design of the original keras-image2text, kept exactly:

    pool5 (4, 4, 512) -> Flatten -> Dense(units) -> RepeatVector(50)
      -> LSTM(units) encoder -> RepeatVector(50)
      -> Bidirectional(LSTM(units)) decoder -> TimeDistributed(Dense(128, softmax))

(each RepeatVector + LSTM pair is one ``RepeatedInputLSTM``, the same
numbers computed with half the work).

It writes all 50 characters at once, none of them seeing the others. Trained
with the original's per-step cross-entropy (``loss="crossentropy"``), on
captions worded several ways, it learns the average caption at each position
and names no photo. Trained with CTC (``loss="ctc"``, ``CaptionCTC``), the
same layers may place each character a step earlier or later, and the
caption is read by CTC decoding (decoding.py).

``--arch showtell`` (Vinyals et al., Show and Tell) is autoregressive:
the image sets the LSTM's initial state, and each step reads the previous
character and predicts the next (teacher forcing in training, beam search in
decoding.py at inference, through ``StepModels``). ``--arch attention`` (Xu
et al., Show, Attend and Tell) starts the same way, and at every step also
looks at the pool5 grid (4×4 cells at 150 px, 7×7 at 224 px): an additive
attention over the cells, queried with the LSTM's previous state, feeds a
context vector into the LSTM with the previous character, and into the output
layer. ``--arch transformer`` (Vaswani et al.) replaces that LSTM with
Transformer blocks: each character attends to the characters before it and
to the grid's cells; beam search runs it on the caption so far at every step
(``PrefixSteps``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import zipfile
from typing import Callable

import keras
import numpy as np
from keras import layers, ops

import runtime
from features import FEATURE_LAYERS, feature_shape
from fileio import atomic_path, read_json, write_json
from kana import END, NUM_CLASSES, TIMESTEPS
from recolour import RECOLOURINGS, SWAPS

# Names of the layers that StepModels and the input standardisation reach by name.
FEATURE_NORM = "feature_norm"
CHAR_EMBEDDING = "char_embedding"
DECODER = "decoder_lstm"
OUTPUT = "next_char"
ATTRIBUTES = "attributes"  # attention with attributes: the frozen ridge layer that attributes.fit sets
ATTRIBUTE_SUMMARY = "attribute_summary"  # what it reads: the normalised grid's mean and maximum

# What the code supports, for command-line options and for config.json files (which may come from anywhere).
# image_size stops at twice ImageNet's 224: VGG16's first block already holds 1.6 GB for a batch of 32 photos there.
LIMITS = {"units": (1, 4096), "timesteps": (2, 256), "num_classes": (2, 4096), "image_size": (32, 448),
          "embedding_dim": (1, 4096), "blocks": (1, 24), "heads": (1, 64), "char_dropout_span": (1, 16)}
MAX_ATTRIBUTES = 4096
VGG_PRECISIONS = ("float32", "bfloat16")
MODEL_PRECISIONS = ("float32", "mixed_bfloat16")

# How a model is trained, and how its outputs are read: beam search (greedy at beam 1) for autoregressive models;
# for image2text, the likeliest character per step up to the end class (argmax), the same with repeated characters
# written once (collapse), or CTC decoding (the end class as CTC's blank: repeats merged, blanks removed), with the
# run's language model of the training captions (ctc-lm, the default for CTC runs) or without it (ctc).
LOSSES = ("crossentropy", "ctc")
# What a CTC run is trained on: each human caption of a photo as a target of its own, or, at every step, only the
# one the model finds likeliest (hard EM over a photo's captions: the model settles on one wording per photo).
REFERENCES = ("each", "likeliest")
# Adam's learning rate over a run: constant, or a cosine decay from learning_rate at the first step to
# FINAL_LEARNING_RATE of it at the last step of the epochs the run was started with.
SCHEDULES = ("constant", "cosine")
FINAL_LEARNING_RATE = 0.01
# Whose length sets a caption's odds under length_weighting: the caption's own (a photo's long wordings are drawn
# more often than its short ones), or the mean of its photo's captions (every wording of a photo alike).
WEIGHTED_LENGTHS = ("caption", "photo")

# What the autoregressive models' initial state is made from: the flattened grid (Show and Tell's: a weight per cell
# and channel), or the grid's mean and maximum over its cells (the probe's view: an object is seen alike in any cell).
INITIAL_STATES = ("flatten", "pooled")

# Old names of architectures, still read from config.json and --arch.
ARCHITECTURE_ALIASES = {"seed": "image2text"}


@dataclasses.dataclass
class CaptionerConfig:
    """Everything needed to rebuild a model and feed it; saved as config.json."""

    arch: str = "image2text"  # which entry of ARCHITECTURES made the model
    units: int = 768  # LSTM and Dense width (768 in the original)
    timesteps: int = TIMESTEPS  # characters per caption, end class included
    num_classes: int = NUM_CLASSES  # softmax width: the end class plus up to num_classes - 1 characters
    image_size: int = 150  # images are letterboxed to image_size × image_size
    feature_layer: str = "pool5"  # the VGG16 grid the model reads: pool5 (the card's) or conv5 (conv5_3, before it)
    vgg_weights: str = "imagenet"  # "imagenet", "synthetic" (pretrain.py), "none" (seeded random) or a weights file
    vgg_precision: str = "float32"  # the arithmetic the features were extracted in: float32 or bfloat16
    precision: str = "float32"  # the Keras dtype policy the model trains in: float32 or mixed_bfloat16
    learning_rate: float = 1e-3  # Adam's
    embedding_dim: int = 64  # autoregressive models: width of the character embedding
    dropout: float = 0.3  # autoregressive models: dropout on the image features and the LSTM outputs
    vocabulary: str | None = None  # the fingerprint of the run's vocab.json (None in runs made before it was kept)
    loss: str = "crossentropy"  # crossentropy (per step, against the caption's exact positions) or ctc (image2text)
    decoding: str | None = None  # beam, argmax, collapse, ctc or ctc-lm; None: what the architecture and loss imply
    lm_weight: float = 0.5  # ctc-lm: the language model's weight beside CTC's (lm.py)
    prior_weight: float = 0.0  # autoregressive models, decoding: the language model's share taken out (PriorSubtracted)
    references: str = "each"  # CTC: each human caption a target, or per photo the likeliest of them (REFERENCES)
    weight_average: float = 0.0  # the kept model's weights: an average over training steps with this momentum; 0 = the last step's
    schedule: str = "constant"  # Adam's learning rate over the run: constant or cosine (SCHEDULES)
    flip: bool = False  # training: each caption, at random, of its photo mirrored left to right, ヒダリ and ミギ swapped
    recolour: bool = False  # training: also the photos recoloured by each of recolourings (recolour.py)
    recolourings: tuple[str, ...] = SWAPS  # recolour: which RECOLOURINGS (red and blue, red and green swapped)
    char_dropout: float = 0.0  # autoregressive models, training: the share of previous characters hidden from the decoder
    char_dropout_span: int = 1  # ... hidden in runs of this many characters (SpanDropout), so whole words are hidden
    own_chars: float = 0.0  # autoregressive models, training: up to this share of the characters fed, its own guesses
    length_weighting: float = 0.0  # training: each epoch draws captions with odds of their length to this power; 0 = each once
    weighted_length: str = "caption"  # length_weighting: a caption's own length or its photo's mean (WEIGHTED_LENGTHS)
    initial_state: str = "flatten"  # autoregressive models: the decoder's initial state from the grid (INITIAL_STATES)
    grid_positions: bool = False  # attention: a learnt vector per grid cell added to what it attends over
    attributes: int = 0  # attention: caption n-grams read off the image, fed to every step (attributes.py); 0 = none
    blocks: int = 2  # transformer: decoder blocks (self-attention over the characters, attention over the grid)
    heads: int = 4  # transformer: attention heads in each block; units must be a multiple of it
    summary_token: bool = False  # transformer: one more cell to attend over, read off the whole flattened grid

    def __post_init__(self):
        """Checks every setting's type and range: a config.json may come from anywhere."""
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name} is {getattr(self, name)!r}; expected {expected}")

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        check("arch", isinstance(self.arch, str) and self.arch in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            check(name, isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                  f"a whole number from {low} to {high}")
        check("vgg_weights", isinstance(self.vgg_weights, str) and self.vgg_weights.strip() != "",
              "imagenet, synthetic, none or a weights file")
        check("vgg_precision", self.vgg_precision in (*VGG_PRECISIONS, "auto"), " or ".join(VGG_PRECISIONS))
        check("precision", self.precision in (*MODEL_PRECISIONS, "auto"), " or ".join(MODEL_PRECISIONS))
        check("learning_rate", is_number(self.learning_rate) and self.learning_rate > 0, "a number above 0")
        check("dropout", is_number(self.dropout) and 0 <= self.dropout < 1, "a number from 0 to below 1")
        check("vocabulary", self.vocabulary is None or isinstance(self.vocabulary, str), "a fingerprint string")
        check("loss", self.loss in LOSSES, " or ".join(LOSSES))
        check("feature_layer", isinstance(self.feature_layer, str) and self.feature_layer in FEATURE_LAYERS,
              " or ".join(FEATURE_LAYERS))
        check("references", self.references in REFERENCES and (self.references == "each" or self.loss == "ctc"),
              f"{' or '.join(REFERENCES)} (likeliest with loss ctc)")
        check("lm_weight", is_number(self.lm_weight) and 0 <= self.lm_weight <= 10, "a number from 0 to 10")
        check("prior_weight", is_number(self.prior_weight) and 0 <= self.prior_weight <= 10, "a number from 0 to 10")
        check("weight_average", is_number(self.weight_average) and 0 <= self.weight_average < 1,
              "a number from 0 to below 1")
        check("char_dropout", is_number(self.char_dropout) and 0 <= self.char_dropout < 1,
              "a number from 0 to below 1")
        check("own_chars", is_number(self.own_chars) and 0 <= self.own_chars <= 1, "a number from 0 to 1")
        check("length_weighting", is_number(self.length_weighting) and 0 <= self.length_weighting <= 4,
              "a number from 0 to 4")
        check("weighted_length", self.weighted_length in WEIGHTED_LENGTHS, " or ".join(WEIGHTED_LENGTHS))
        check("schedule", self.schedule in SCHEDULES, " or ".join(SCHEDULES))
        check("initial_state", self.initial_state in INITIAL_STATES, " or ".join(INITIAL_STATES))
        check("flip", isinstance(self.flip, bool) and not (self.flip and self.references != "each"),
              "true or false (false with references likeliest)")
        check("recolour", isinstance(self.recolour, bool) and not (self.recolour and self.references != "each"),
              "true or false (false with references likeliest)")
        check("recolourings", isinstance(self.recolourings, (list, tuple)) and self.recolourings
              and all(isinstance(name, str) and name in RECOLOURINGS for name in self.recolourings)
              and len(set(self.recolourings)) == len(self.recolourings),
              f"a list of some of {', '.join(RECOLOURINGS)}, each once")
        self.recolourings = tuple(self.recolourings)
        autoregressive = ARCHITECTURES[self.arch].autoregressive
        check("loss", not (autoregressive and self.loss == "ctc"), f"crossentropy for {self.arch} (ctc is for image2text)")
        check("prior_weight", autoregressive or not self.prior_weight,
              f"0 for {self.arch} (the prior is taken out of an autoregressive model's steps)")
        check("own_chars", autoregressive or not self.own_chars,
              f"0 for {self.arch} (it is not fed the characters before)")
        check("initial_state", (autoregressive and self.arch != "transformer") or self.initial_state == "flatten",
              f"flatten for {self.arch} ("
              + ("it has no initial state)" if autoregressive else "its layers are the card's)"))
        check("summary_token", isinstance(self.summary_token, bool) and (self.arch == "transformer"
                                                                         or not self.summary_token),
              f"true or false (false for {self.arch}: it is a transformer's extra cell)")
        check("heads", self.arch != "transformer" or self.units % self.heads == 0,
              f"a divisor of units ({self.units}) for transformer: each head reads units / heads channels")
        check("grid_positions", isinstance(self.grid_positions, bool) and (self.arch == "attention"
                                                                           or not self.grid_positions),
              f"true or false (false for {self.arch}: only attention attends over the grid)")
        check("attributes", isinstance(self.attributes, int) and not isinstance(self.attributes, bool)
              and 0 <= self.attributes <= MAX_ATTRIBUTES and (self.arch == "attention" or not self.attributes),
              f"a whole number from 0 to {MAX_ATTRIBUTES} (0 for {self.arch}: attributes are for attention)")
        if self.decoding is None:
            self.decoding = "beam" if autoregressive else "ctc-lm" if self.loss == "ctc" else "argmax"
        allowed = ("beam",) if autoregressive else ("ctc-lm", "ctc") if self.loss == "ctc" else ("argmax", "collapse")
        check("decoding", self.decoding in allowed, f"{' or '.join(allowed)} for {self.arch} trained with {self.loss}")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """The VGG16 grid's shape at ``image_size`` and ``feature_layer``: the shape of the model's input."""
        return feature_shape(self.image_size, self.feature_layer)

    def save(self, path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path) -> "CaptionerConfig":
        """Reads config.json, including those of earlier versions (``arch: seed``, a stored ``feature_shape``)."""
        data = read_json(path, "Model config")
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a model config (a JSON object of settings).")
        data = dict(data)
        stored_shape = data.pop("feature_shape", None)  # earlier versions stored it; it follows from image_size
        data["arch"] = ARCHITECTURE_ALIASES.get(data.get("arch"), data.get("arch", cls.arch))
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has settings this version does not know: {', '.join(unknown)}")
        try:
            config = cls(**data)
            for name in ("vgg_precision", "precision"):
                if getattr(config, name) == "auto":
                    raise ValueError(f"{name} is 'auto'; a saved run records the precision it used")
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if stored_shape is not None and (not isinstance(stored_shape, list)
                                         or tuple(stored_shape) != config.feature_shape):
            raise ValueError(f"{path}: feature_shape {stored_shape} does not follow from image_size {config.image_size}.")
        return config


def architecture_name(name: str) -> str:
    """``--arch``'s value as ARCHITECTURES names it; an old name is accepted with a note on stderr."""
    if name in ARCHITECTURE_ALIASES:
        print(f"note: --arch {name} is now called {ARCHITECTURE_ALIASES[name]}.", file=sys.stderr)
        return ARCHITECTURE_ALIASES[name]
    return name


def repeated_input_lstm(projected, recurrent_kernel, timesteps: int, unroll: int = 1):
    """Every step's output of an LSTM, from a zero state, whose input projection is the same at every step.

    The gradient is written out (backpropagation through time) rather than
    left to autodiff, which on the TensorFlow backend is the slower half of
    training: its loop gradient reads, transposes and accumulates the
    recurrent kernel's ``(units, 4 * units)`` gradient at every step. Here
    each backward step only carries the state's gradient back through one
    matmul, and the kernel's gradient is one large matmul over all steps.

    Args:
        projected: ``x·W + b``, the input's projection, ``(batch, 4 * units)``.
        recurrent_kernel: ``U``, ``(units, 4 * units)``, gates in Keras' order (i, f, g, o).
        timesteps: how many steps to run.
        unroll: steps per loop iteration (``ops.scan``'s ``unroll``).

    Returns:
        The outputs h of every step, ``(timesteps, batch, units)``.
    """
    units = recurrent_kernel.shape[0]

    @ops.custom_gradient
    def run(projected, recurrent_kernel):
        zeros = ops.zeros_like(projected[:, :units])  # (batch, units): the initial h and c

        def step(carry, _):
            h, c, _ = carry
            z = projected + ops.matmul(h, recurrent_kernel)  # (batch, 4 * units): only the recurrent part per step
            i, f, g, o = ops.split(z, 4, axis=-1)
            i, f, g, o = ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)
            c = f * c + i * g
            h = o * ops.tanh(c)
            carry = (h, c, ops.concatenate([i, f, g, o], axis=-1))  # the gates, kept for the backward pass
            return carry, carry  # (Keras' TensorFlow scan needs outputs shaped like the carry)

        _, (hs, cs, gates) = ops.scan(step, (zeros, zeros, ops.zeros_like(projected)), length=timesteps,
                                      unroll=unroll)  # hs, cs: (timesteps, batch, units); gates: (..., 4 * units)

        def gradient(*args, upstream=None):  # TensorFlow and JAX pass the upstream gradient, torch the upstream kwarg
            if upstream is None:
                (upstream,) = args  # (timesteps, batch, units): d loss / d h of every step
            first = ops.expand_dims(zeros, 0)
            previous_cs = ops.concatenate([first, cs[:-1]], axis=0)  # c(t - 1)
            previous_hs = ops.concatenate([first, hs[:-1]], axis=0)  # h(t - 1)
            kernel_transposed = ops.transpose(recurrent_kernel)  # (4 * units, units), once, not at every step

            def back(carry, step_inputs):
                dh_later, dc_later, _ = carry  # what step t + 1 sends back to h(t) and c(t)
                dh_output, c, previous_c, gate = step_inputs
                i, f, g, o = ops.split(gate, 4, axis=-1)
                dh = dh_output + dh_later
                tanh_c = ops.tanh(c)
                dc = dc_later + dh * o * (1 - tanh_c * tanh_c)
                dz = ops.concatenate([dc * g * i * (1 - i), dc * previous_c * f * (1 - f),
                                      dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=-1)  # (batch, 4 * units)
                carry = (ops.matmul(dz, kernel_transposed), dc * f, dz)
                return carry, carry

            _, (_, _, dzs) = ops.scan(back, (zeros, zeros, ops.zeros_like(projected)),
                                      (upstream, cs, previous_cs, gates), reverse=True, unroll=unroll)
            d_projected = ops.sum(dzs, axis=0)  # (batch, 4 * units): the same projection fed every step
            d_kernel = ops.matmul(ops.transpose(ops.reshape(previous_hs, (-1, units))),
                                  ops.reshape(dzs, (-1, 4 * units)))  # (units, 4 * units), one matmul for all steps
            return d_projected, d_kernel

        return hs, gradient

    return run(projected, recurrent_kernel)


@keras.saving.register_keras_serializable(package="captioner")
class RepeatedInputLSTM(layers.Layer):
    """``RepeatVector(timesteps)`` then ``LSTM(units)``: an LSTM reading the same input vector at every step.

    The input's projection ``x·W + b`` is then the same at every step, so the
    ``projected`` implementation computes it once and only ``h·U`` per step,
    halving the work of the card's LSTMs (their input is as wide as their
    state), with its backward pass written out (``repeated_input_lstm``).
    ``stock`` runs the stock ``keras.layers.LSTM`` (cuDNN on a GPU) on the
    repeated input. Both use the same weights (those of the inner
    ``lstm`` layer, so they give the same numbers); ``auto`` picks the one
    ``bench.py`` measured faster on the backend (``runtime.LSTM_FASTEST``).

    With ``reverse=True`` it is the backward half of a ``Bidirectional``: over
    identical inputs, reading backwards is the same computation, with the
    outputs in reverse time order.
    """

    def __init__(self, units: int, timesteps: int, return_sequences: bool = False, reverse: bool = False,
                 implementation: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if implementation not in ("auto", "projected", "stock"):
            raise ValueError(f"implementation must be auto, projected or stock, not {implementation!r}")
        self.units, self.timesteps = units, timesteps
        self.return_sequences, self.reverse, self.implementation = return_sequences, reverse, implementation
        self.lstm = layers.LSTM(units, return_sequences=return_sequences, name="lstm", dtype=self.dtype_policy,
                                **runtime.lstm_options(self.dtype_policy))

    def build(self, input_shape):
        self.lstm.build((input_shape[0], self.timesteps, input_shape[-1]))

    def call(self, inputs):
        implementation = self.implementation
        if implementation == "auto":
            implementation = runtime.lstm_implementation()
        if implementation == "stock":
            outputs = self.lstm(ops.repeat(ops.expand_dims(inputs, 1), self.timesteps, axis=1))
        else:
            outputs = self._projected(inputs)
        if self.return_sequences and self.reverse:
            outputs = ops.flip(outputs, axis=1)
        return outputs

    def _projected(self, inputs):
        cell = self.lstm.cell
        projected = ops.matmul(inputs, cell.kernel) + cell.bias  # (batch, 4 * units), once for all steps
        recurrent_kernel = ops.cast(cell.recurrent_kernel, projected.dtype)  # a tensor (the variable read once), autocast
        states = repeated_input_lstm(projected, recurrent_kernel, self.timesteps, runtime.lstm_unroll())
        if self.return_sequences:
            return ops.transpose(states, (1, 0, 2))  # (batch, timesteps, units)
        return states[-1]  # (batch, units)

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], self.timesteps, self.units)
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "timesteps": self.timesteps,
                "return_sequences": self.return_sequences, "reverse": self.reverse,
                "implementation": self.implementation}


def build_image2text(config: CaptionerConfig, lstm_implementation: str = "auto") -> keras.Model:
    """The card's non-autoregressive design (see the module docstring).

    Both LSTMs read one vector repeated over the 50 steps, so they are built
    as ``RepeatedInputLSTM``: the same weights and numbers as RepeatVector +
    LSTM (and a Bidirectional pair for the decoder), with the input projection
    computed once (``lstm_implementation``: auto, projected or stock).
    """
    def repeated_lstm(name, **options):
        return RepeatedInputLSTM(config.units, config.timesteps, implementation=lstm_implementation, name=name, **options)

    features = keras.Input(shape=config.feature_shape, name="features")  # (batch, 4, 4, 512)
    x = layers.Normalization(axis=(1, 2, 3), name=FEATURE_NORM)(features)  # per-feature standardisation
    x = layers.Flatten(name="flatten")(x)  # (batch, 8192)
    x = layers.Dense(config.units, activation="relu", name="image_projection")(x)  # (batch, units)
    state = repeated_lstm("encoder_lstm")(x)  # RepeatVector(50) -> LSTM: (batch, units), the final state
    forward = repeated_lstm("decoder_forward", return_sequences=True)(state)  # RepeatVector(50) -> LSTM
    backward = repeated_lstm("decoder_backward", return_sequences=True, reverse=True)(state)  # ... go_backwards
    x = layers.Concatenate(name=DECODER)([forward, backward])  # Bidirectional: (batch, 50, 2 * units)
    probabilities = layers.TimeDistributed(
        layers.Dense(config.num_classes, activation="softmax", dtype="float32"), dtype="float32", name=OUTPUT
    )(x)  # (batch, 50, 128), float32 under mixed precision too
    return keras.Model(features, probabilities, name="image2text")


def previous_char_embedding(config: CaptionerConfig, previous):
    """The embedded previous characters; with ``char_dropout``, in training, some hidden (their embedding zeroed).

    Hiding whole characters (word dropout, Bowman et al. 2016) makes the
    decoder lean on the image rather than on the characters it has written:
    the colour it has just named must not decide the kind it names next.
    Decoding (decoding.StepModels) reads the embedding layer directly.
    """
    embedded = layers.Embedding(config.num_classes, config.embedding_dim, name=CHAR_EMBEDDING)(previous)
    if config.char_dropout and config.char_dropout_span > 1:
        embedded = SpanDropout(config.char_dropout, config.char_dropout_span, name="char_dropout")(embedded)
    elif config.char_dropout:
        embedded = layers.Dropout(config.char_dropout, noise_shape=(None, config.timesteps, 1), name="char_dropout")(
            embedded)
    return embedded


@keras.saving.register_keras_serializable(package="captioner")
class SpanDropout(layers.Layer):
    """In training, zeroes runs of ``span`` consecutive steps of a ``(batch, steps, width)`` sequence, about
    ``rate`` of the steps in all; the identity otherwise.

    Character by character, word dropout seldom hides a whole word (each of
    キイロイ's four characters hidden at 0.3: 1 time in 120), so the colour
    just written still decides the kind written after it. Hiding runs hides
    words, as span masking does (SpanBERT, Joshi et al. 2020). Runs start at
    each step with the probability that leaves a step unhidden ``1 - rate``
    of the time; the kept steps are not rescaled (a hidden character is an
    unknown one, not noise around the mean).
    """

    def __init__(self, rate: float, span: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.span, self.seed = float(rate), int(span), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or not self.rate:
            return inputs
        start_rate = 1.0 - (1.0 - self.rate) ** (1.0 / self.span)
        starts = ops.cast(keras.random.uniform(ops.shape(inputs)[:2], seed=self.seed_generator) < start_rate,
                          "int32")
        started = ops.cumsum(starts, axis=1)  # runs started up to each step
        before = ops.pad(started, [[0, 0], [self.span, 0]])[:, : ops.shape(inputs)[1]]  # ... up to span steps ago
        kept = ops.cast(ops.equal(started, before), inputs.dtype)  # no run started in the last span steps
        return inputs * ops.expand_dims(kept, -1)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "span": self.span, "seed": self.seed}


def initial_state(config: CaptionerConfig, grid):
    """The decoder's initial ``h`` and ``c``, each ``(batch, units)``, from the (normalised) feature grid.

    ``flatten`` (Show and Tell's) gives each cell's channels weights of their
    own, so an object is learnt anew in every cell it may sit in; ``pooled``
    reads the grid's mean and maximum over its cells, as probe.py does, so an
    object is seen alike wherever it is (where it is, the attention finds).
    """
    if config.initial_state == "pooled":
        summary = layers.Concatenate(name="grid_summary")([layers.GlobalAveragePooling2D(name="grid_mean")(grid),
                                                           layers.GlobalMaxPooling2D(name="grid_max")(grid)])
    else:
        summary = layers.Flatten(name="flatten")(grid)  # (batch, cells * 512)
    initial_h = layers.Dense(config.units, activation="tanh", name="init_h")(summary)
    initial_c = layers.Dense(config.units, activation="tanh", name="init_c")(summary)
    return initial_h, initial_c


def build_showtell(config: CaptionerConfig) -> keras.Model:
    """Show and Tell: the image initialises an LSTM that reads character t-1 and predicts character t.

    Inputs are the features and the previous characters (the caption shifted
    right behind the end class, see ``previous_chars``); the output has the
    image2text model's shape, so training and the loss are the same.
    """
    features = keras.Input(shape=config.feature_shape, name="features")  # (batch, 4, 4, 512)
    previous = keras.Input(shape=(config.timesteps,), dtype="int32", name="previous_chars")  # (batch, 50)
    x = layers.Normalization(axis=(1, 2, 3), name=FEATURE_NORM)(features)  # per-feature standardisation
    x = layers.Dropout(config.dropout, name="image_dropout")(x)
    initial_h, initial_c = initial_state(config, x)
    embedded = previous_char_embedding(config, previous)  # (batch, 50, E)
    outputs, _, _ = layers.LSTM(config.units, return_sequences=True, return_state=True, name=DECODER,
                                **runtime.lstm_options())(
        embedded, initial_state=[initial_h, initial_c]
    )  # (batch, 50, units)
    outputs = layers.Dropout(config.dropout, name="output_dropout")(outputs)
    probabilities = layers.Dense(config.num_classes, activation="softmax", dtype="float32", name=OUTPUT)(
        outputs
    )  # (batch, 50, 128), float32 under mixed precision too
    return keras.Model([features, previous], probabilities, name="showtell")


@keras.saving.register_keras_serializable(package="captioner")
class GridAttention(layers.Layer):
    """Additive (Bahdanau) attention of a query over the cells of a feature grid.

    The grid arrives flattened, ``(batch, cells * width)``, because it travels
    through the RNN as a state that never changes (Keras 3 RNNs take no
    per-sequence constants). Returns ``(context, weights)``: the weighted mean
    of the cells ``(batch, width)`` and the weights ``(batch, cells)``.
    """

    def __init__(self, cells: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.cells, self.width = cells, width
        self.query_projection = layers.Dense(width, use_bias=False, name="query_projection", dtype=self.dtype_policy)
        self.score = layers.Dense(1, use_bias=False, name="score", dtype=self.dtype_policy)

    def build(self, query_shape, values_shape=None, keys_shape=None):
        self.query_projection.build(query_shape)
        self.score.build((None, self.cells, self.width))

    def call(self, query, values, keys):
        values = ops.reshape(values, (-1, self.cells, self.width))  # (batch, cells, width)
        keys = ops.reshape(keys, (-1, self.cells, self.width))  # (batch, cells, width)
        energy = ops.tanh(keys + ops.expand_dims(self.query_projection(query), 1))  # (batch, cells, width)
        scores = ops.squeeze(self.score(energy), -1)  # (batch, cells)
        # One cell (a 32 px photo's 1×1 grid) gets all the weight; softmax would say so with a warning.
        weights = ops.ones_like(scores) if self.cells == 1 else ops.softmax(scores, axis=-1)
        context = ops.sum(values * ops.expand_dims(weights, -1), axis=1)  # (batch, width)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "cells": self.cells, "width": self.width}


@keras.saving.register_keras_serializable(package="captioner")
class GridPositions(layers.Layer):
    """Adds a learnt vector to each cell of a ``(batch, cells, width)`` grid: where the cell is (or, in the
    transformer, to each character of ``(batch, timesteps, width)``: where in the caption it is).

    Attention over the grid otherwise sees what is in a cell but not where the
    cell is (the cells share their projections), so a caption that names
    objects left to right can only find "the object on the left" through
    whatever position the features happen to carry.
    """

    def build(self, input_shape):
        self.positions = self.add_weight(shape=tuple(input_shape[1:]), name="positions",
                                         initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, grid):
        return grid + ops.cast(self.positions, grid.dtype)


@keras.saving.register_keras_serializable(package="captioner")
class AttentionLSTMCell(layers.Layer):
    """One Show-Attend-and-Tell step: attend with h(t-1), then run an LSTM cell on [character, context].

    States: ``[h, c, values, keys]``; the last two are the projected grid,
    passed through unchanged. With ``attributes``, a fifth state, the photo's
    attributes (attributes.py), passes through too and joins the LSTM's input
    at every step. Output: ``[h(t), context]``.
    """

    def __init__(self, units: int, cells: int, attributes: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.cells, self.attributes = units, cells, attributes
        self.state_size = [units, units, cells * units, cells * units] + ([attributes] if attributes else [])
        self.output_size = 2 * units
        # Sublayers take this layer's dtype policy, so a mixed-precision model loads mixed whatever the global policy.
        self.attention = GridAttention(cells, units, name="attention", dtype=self.dtype_policy)
        self.lstm = layers.LSTMCell(units, name="lstm", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.attention.build((None, self.units))
        self.lstm.build((None, input_shape[-1] + self.units + self.attributes))

    def attention_weights(self, states):
        """The weights over the grid cells that the next step attends with, given the states before it."""
        h, _, values, keys = states[:4]
        return self.attention(h, values, keys)[1]

    def call(self, inputs, states, training=False):
        h, c, values, keys, *attributes = states
        context, _ = self.attention(h, values, keys)
        output, (h, c) = self.lstm(ops.concatenate([inputs, context, *attributes], axis=-1), [h, c], training=training)
        return ops.concatenate([output, context], axis=-1), [h, c, values, keys, *attributes]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "cells": self.cells, "attributes": self.attributes}


def build_attention(config: CaptionerConfig) -> keras.Model:
    """Show, Attend and Tell: Show and Tell plus soft attention over the pool5 grid at every step.

    The initial state comes from the grid as in showtell (``initial_state``),
    so the model starts from what Show and Tell knows; attention adds a look at
    one region per character (which ``predict.py --attention`` can draw). With
    ``grid_positions`` each cell's projection carries where the cell is; with
    ``attributes``, every step also reads the photo's attributes, a frozen
    linear read of the grid's mean and maximum that attributes.fit sets.
    """
    rows, cols, channels = config.feature_shape
    cells = rows * cols
    features = keras.Input(shape=config.feature_shape, name="features")  # (batch, rows, cols, 512)
    previous = keras.Input(shape=(config.timesteps,), dtype="int32", name="previous_chars")  # (batch, 50)
    normalised = layers.Normalization(axis=(1, 2, 3), name=FEATURE_NORM)(features)
    x = layers.Dropout(config.dropout, name="image_dropout")(normalised)
    initial_h, initial_c = initial_state(config, x)
    grid = layers.Reshape((cells, channels), name="grid")(x)  # (batch, cells, 512)
    values = layers.Dense(config.units, name="grid_values")(grid)  # (batch, cells, units)
    if config.grid_positions:
        values = GridPositions(name="grid_positions")(values)  # keys and context then say where, too
    keys = layers.Dense(config.units, name="grid_keys")(values)  # (batch, cells, units)
    values = layers.Flatten(name="grid_values_flat")(values)  # (batch, cells * units): RNN states are flat
    keys = layers.Flatten(name="grid_keys_flat")(keys)
    embedded = previous_char_embedding(config, previous)  # (batch, 50, E)
    states = [initial_h, initial_c, values, keys]
    if config.attributes:
        summary = layers.Concatenate(name=ATTRIBUTE_SUMMARY)([
            layers.GlobalAveragePooling2D(name="attribute_mean")(normalised),
            layers.GlobalMaxPooling2D(name="attribute_max")(normalised)])
        states.append(layers.Dense(config.attributes, trainable=False, name=ATTRIBUTES)(summary))  # (batch, attributes)
    outputs, *_ = layers.RNN(
        AttentionLSTMCell(config.units, cells, config.attributes), return_sequences=True, return_state=True,
        name=DECODER,
    )(embedded, initial_state=states)  # (batch, 50, 2 * units): [h, context]
    outputs = layers.Dropout(config.dropout, name="output_dropout")(outputs)
    probabilities = layers.Dense(config.num_classes, activation="softmax", dtype="float32", name=OUTPUT)(
        outputs
    )  # (batch, 50, 128), float32 under mixed precision too
    return keras.Model([features, previous], probabilities, name="attention")


def build_transformer(config: CaptionerConfig) -> keras.Model:
    """A Transformer decoder (Vaswani et al. 2017) over the characters, attending over the feature grid's cells.

    Each of ``blocks`` pre-normalised blocks lets every character look back
    at the ones before it (causal self-attention) and at the grid's cells,
    each with ``heads`` heads, then a feed-forward layer. The cells and the
    characters carry learnt positions. Where attention's one LSTM state must
    remember what it has named, here each character can look at every one
    written before it, and each head at other cells. With ``summary_token``
    the cells are joined by one read off the whole flattened grid (a weight
    per cell and channel, like attention's initial state), so that what is
    true of the whole photo (in colour or grey) is one look away.
    """
    rows, cols, channels = config.feature_shape
    features = keras.Input(shape=config.feature_shape, name="features")  # (batch, rows, cols, 512)
    previous = keras.Input(shape=(config.timesteps,), dtype="int32", name="previous_chars")  # (batch, 50)
    x = layers.Normalization(axis=(1, 2, 3), name=FEATURE_NORM)(features)
    x = layers.Dropout(config.dropout, name="image_dropout")(x)
    grid = layers.Reshape((rows * cols, channels), name="grid")(x)  # (batch, cells, 512)
    memory = layers.Dense(config.units, name="grid_values")(grid)  # (batch, cells, units)
    if config.summary_token:  # what attention's initial state reads, as one more cell
        summary = layers.Dense(config.units, name="grid_summary")(layers.Flatten(name="flatten")(x))
        memory = layers.Concatenate(axis=1, name="cells_and_summary")([layers.Reshape((1, config.units))(summary),
                                                                       memory])  # (batch, 1 + cells, units)
    memory = GridPositions(name="grid_positions")(memory)
    memory = layers.LayerNormalization(name="grid_norm")(memory)  # (batch, [1 +] cells, units)
    chars = layers.Dense(config.units, name="char_projection")(previous_char_embedding(config, previous))
    chars = GridPositions(name="char_positions")(chars)  # (batch, 50, units)
    chars = layers.Dropout(config.dropout, name="char_input_dropout")(chars)
    key_dim = config.units // config.heads
    for block in range(config.blocks):
        def residual(name, inner, inputs):
            """inputs + dropout(inner(layer-normalised inputs))"""
            normalised = layers.LayerNormalization(name=f"block{block}_{name}_norm")(inputs)
            return layers.Add(name=f"block{block}_{name}")(
                [inputs, layers.Dropout(config.dropout, name=f"block{block}_{name}_dropout")(inner(normalised))])

        self_attention = layers.MultiHeadAttention(config.heads, key_dim, name=f"block{block}_self_attention")
        grid_attention = layers.MultiHeadAttention(config.heads, key_dim, name=f"block{block}_grid_attention")
        hidden = layers.Dense(4 * config.units, activation="gelu", name=f"block{block}_hidden")
        back = layers.Dense(config.units, name=f"block{block}_back")
        chars = residual("self", lambda h: self_attention(h, h, use_causal_mask=True), chars)
        chars = residual("look", lambda h: grid_attention(h, memory), chars)
        chars = residual("mix", lambda h: back(hidden(h)), chars)
    chars = layers.LayerNormalization(name="final_norm")(chars)
    probabilities = layers.Dense(config.num_classes, activation="softmax", dtype="float32", name=OUTPUT)(
        chars
    )  # (batch, 50, 128), float32 under mixed precision too
    return keras.Model([features, previous], probabilities, name="transformer")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One entry of ARCHITECTURES.

    Attributes:
        build: makes the (uncompiled) model from a config.
        autoregressive: whether the model reads the previous characters
            (trained with teacher forcing, decoded by beam search).
        initial_states: autoregressive models: the layers whose outputs are the
            decoder's initial states, in the order the decoder takes them.
    """

    build: Callable[[CaptionerConfig], keras.Model]
    autoregressive: bool
    initial_states: tuple[str, ...] = ()


ARCHITECTURES = {
    "image2text": Architecture(build_image2text, autoregressive=False),
    "showtell": Architecture(build_showtell, autoregressive=True, initial_states=("init_h", "init_c")),
    "attention": Architecture(build_attention, autoregressive=True,
                              initial_states=("init_h", "init_c", "grid_values_flat", "grid_keys_flat")),
    "transformer": Architecture(build_transformer, autoregressive=True),  # decoded by PrefixSteps
}


def initial_state_layers(config: CaptionerConfig) -> tuple[str, ...]:
    """The layers whose outputs are an autoregressive model's initial decoder states, in the decoder's order."""
    return architecture(config).initial_states + ((ATTRIBUTES,) if config.attributes else ())


def architecture(config: CaptionerConfig) -> Architecture:
    """The ARCHITECTURES entry of ``config.arch``.

    Raises:
        ValueError: no architecture has that name.
    """
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[config.arch]


def previous_chars(targets):
    """Teacher-forcing inputs: each caption shifted right by one, behind the end class (the start token)."""
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def model_inputs(config: CaptionerConfig, features, targets):
    """What the model is fed in training: the features, and for autoregressive models the previous characters."""
    return (features, previous_chars(targets)) if architecture(config).autoregressive else features


def build_model(config: CaptionerConfig, feature_sample=None, decay_steps: int = 1) -> keras.Model:
    """Builds and compiles the architecture ``config.arch`` names.

    Args:
        config: the settings.
        feature_sample: training features ``(n, 4, 4, 512)`` whose per-feature
            mean and variance the model standardises its input with (saved in
            the model). VGG16 features of different photos share most of their
            magnitude (the background), so standardising is what lets the
            image-specific part through.
        decay_steps: training steps in all, for ``schedule="cosine"``.
    """
    model = architecture(config).build(config)
    if feature_sample is not None:
        adapt_feature_norm(model.get_layer(FEATURE_NORM), feature_sample)
    return compile_model(model, config, decay_steps)


def compile_model(model: keras.Model, config: CaptionerConfig, decay_steps: int = 1) -> keras.Model:
    """Adam, and cross-entropy over the classes at every step or (``loss="ctc"``) CTC over the caption.

    With ``weight_average``, Adam also keeps an exponential moving average of
    the weights (Polyak averaging), which training.Checkpointer evaluates and saves.
    """
    learning_rate = config.learning_rate
    if config.schedule == "cosine":  # saved with the optimizer in checkpoint.keras: --resume goes on along it
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(1, decay_steps),
                                                               alpha=FINAL_LEARNING_RATE)
    optimizer = keras.optimizers.Adam(learning_rate, use_ema=config.weight_average > 0,
                                      ema_momentum=config.weight_average or 0.99)
    if config.loss == "ctc":
        model.compile(optimizer=optimizer, loss=CaptionCTC(likeliest=config.references == "likeliest"))
        return model
    model.compile(
        optimizer=optimizer,
        # Integer targets: the same loss as one-hot cross-entropy over the 128
        # classes, without building (batch, 50, 128) one-hot arrays.
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@keras.saving.register_keras_serializable(package="captioner")
class CaptionCTC(keras.losses.Loss):
    """Connectionist temporal classification of a caption by the model's per-step softmax.

    Targets are the usual rows of class indices, the caption then end classes
    (``(batch, timesteps)``). The end class is CTC's blank: the model may write
    each character at any step, repeated over several steps, with blanks
    between; the caption is what remains after merging repeats and removing
    blanks. Normalised by the number of steps, so that its scale is that of
    the per-step cross-entropy. Targets must fit the steps (``ctc_fits``).

    ``likeliest``: each target is a photo's captions ``(batch, references,
    timesteps)``, and the loss is the smallest of theirs (hard EM: the model
    learns the wording it already finds likeliest for the photo, not a blend).
    A photo with fewer captions repeats one.
    """

    def __init__(self, name="caption_ctc", likeliest: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.likeliest = likeliest

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")  # (batch, timesteps), or (batch, references, timesteps)
        batch, steps = ops.shape(y_pred)[0], ops.shape(y_pred)[1]
        # The model's output is a softmax; its log is a set of logits whose softmax is the same distribution.
        logits = ops.log(ops.maximum(ops.cast(y_pred, "float32"), 1e-7))  # (batch, timesteps, classes)
        if self.likeliest:
            references = ops.shape(labels)[1]
            logits = ops.repeat(logits, references, axis=0)  # each photo's steps once per caption
            labels = ops.reshape(labels, (-1, steps))
        label_lengths = ops.sum(ops.cast(ops.not_equal(labels, 0), "int32"), axis=1)
        output_lengths = ops.full((ops.shape(labels)[0],), steps, dtype="int32")
        losses = ops.ctc_loss(labels, logits, label_lengths, output_lengths, mask_index=0)
        if self.likeliest:
            losses = ops.min(ops.reshape(losses, (batch, references)), axis=1)
        return losses / ops.cast(steps, losses.dtype)

    def get_config(self):
        return {**super().get_config(), "likeliest": self.likeliest}


def _ctc_prefix_steps(targets: np.ndarray) -> np.ndarray:
    """Per target row and position, the fewest output steps CTC needs for the caption up to there.

    Each character takes a step, and a character repeating the one before it
    takes one more, for the blank between them.
    """
    targets = np.asarray(targets)
    characters = targets != 0
    repeats = np.zeros_like(characters)
    repeats[:, 1:] = characters[:, 1:] & (targets[:, 1:] == targets[:, :-1])
    return np.cumsum(characters.astype(np.int64) + repeats, axis=1)


def ctc_steps_needed(targets: np.ndarray) -> np.ndarray:
    """The fewest output steps CTC needs for each target row."""
    return _ctc_prefix_steps(targets)[:, -1]


def ctc_fits(targets: np.ndarray, timesteps: int) -> tuple[np.ndarray, int]:
    """Cuts each target row to its longest beginning CTC can align with ``timesteps`` steps.

    Returns the rows and how many were cut.
    """
    targets = np.array(targets, copy=True)
    too_long = _ctc_prefix_steps(targets) > timesteps  # the characters past what fits
    targets[too_long] = 0
    return targets, int(too_long.any(axis=1).sum())


def adapt_feature_norm(norm: layers.Normalization, feature_sample, floor: float = 0.1) -> None:
    """Sets the input standardisation from a sample of training features, with a floor on each feature's spread.

    A quarter of VGG16's pool5 units can be zero on every sampled photo (dead
    ReLUs, the letterbox's padding) and non-zero on a new one; divided by a
    zero spread they would reach 1e8 and saturate the model. Each spread is
    therefore at least ``floor`` times the median spread of the features that vary.
    """
    norm.adapt(feature_sample)
    variance = keras.ops.convert_to_numpy(norm.adapt_variance)
    varying = variance[variance > 0]
    minimum = (floor * float(np.median(np.sqrt(varying)))) ** 2 if varying.size else 1.0
    norm.adapt_variance.assign(np.maximum(variance, minimum))
    norm.finalize_state()


def save_model(model: keras.Model, path) -> None:
    """Saves ``model`` atomically: a reader finds the old file or the new one, never half of one."""
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def load_model(path) -> keras.Model:
    """Loads a saved ``.keras`` model in safe mode (no arbitrary code from the file).

    Raises:
        ValueError: the file is not a loadable Keras model (damaged, truncated, another format).
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is damaged or truncated: it is not a Keras model archive; copy it again or retrain")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; the user needs one message
        raise ValueError(f"{path} could not be loaded as a Keras model ({type(error).__name__}: {error})") from None


class StepModels:
    """The pieces of a trained autoregressive model that beam search calls, found by layer name.

    ``start(features)`` gives the initial per-image decoder states (the
    architecture's ``initial_states``); ``next(tokens, states)`` gives the
    next character's probabilities and the new states. Beam search treats
    states as opaque per-beam arrays.
    """

    def __init__(self, model: keras.Model, config: CaptionerConfig):
        initial = [model.get_layer(name).output for name in initial_state_layers(config)]
        token = keras.Input(shape=(1,), dtype="int32", name="token")  # (batch, 1)
        states = [keras.Input(shape=tuple(state.shape[1:]), name=f"state_{i}") for i, state in enumerate(initial)]
        embedded = model.get_layer(CHAR_EMBEDDING)(token)  # (batch, 1, E)
        decoder = model.get_layer(DECODER)
        output, *next_states = decoder(embedded, initial_state=states)
        probabilities = model.get_layer(OUTPUT)(output)  # (batch, 1, classes)
        self.initial = keras.Model(model.inputs[0], initial)
        self.step = keras.Model([token, *states], [probabilities, *next_states])
        # Attention models: which grid cells the next character looks at, given the states before it.
        cell = getattr(decoder, "cell", None)
        self.attention = keras.Model(states, cell.attention_weights(states)) if isinstance(cell, AttentionLSTMCell) else None

    def start(self, features: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(state) for state in self.initial.predict_on_batch(features)]

    def next(self, tokens: np.ndarray, states: list[np.ndarray]):
        probabilities, *states = self.step.predict_on_batch([tokens[:, None].astype("int32"), *states])
        return np.asarray(probabilities)[:, 0], [np.asarray(state) for state in states]

    def attention_maps(self, features: np.ndarray, captions: list[list[int]]) -> list[np.ndarray]:
        """Per image, the attention weights ``(characters, cells)`` behind each character of its caption.

        The captions (class indices, without the end class) are fed back one
        character at a time, as when they were written.
        """
        if self.attention is None:
            raise ValueError("This model has no attention (train with --arch attention).")
        states = self.start(features)
        longest = max((len(caption) for caption in captions), default=0)
        padded = np.zeros((len(captions), longest + 1), dtype=np.int64)  # END first: the start token
        for row, caption in enumerate(captions):
            padded[row, 1 : len(caption) + 1] = caption
        maps = []
        for step in range(longest):
            maps.append(np.asarray(self.attention.predict_on_batch(states)))  # (batch, cells)
            _, states = self.next(padded[:, step], states)
        stacked = np.stack(maps, axis=1) if maps else np.zeros((len(captions), 0, 0))  # (batch, longest, cells)
        return [stacked[row, : len(caption)] for row, caption in enumerate(captions)]


class PrefixSteps:
    """``StepModels``' interface for a model that reads the whole caption so far (the transformer).

    Its state per beam is the features, the characters fed so far (END
    first, the start token; END-padded after) and how many there are;
    ``next`` runs the model on them and reads the next character at that
    position. Every step recomputes the whole prefix (no cache of keys and
    values): a caption of n characters costs n calls over all timesteps.
    Decoding uses ``CachedSteps``; this is the reference that bench.py and the
    tests hold it to.
    """

    attention = None  # no single map per character: predict.py --attention refuses it

    def __init__(self, model: keras.Model, config: CaptionerConfig):
        self.model, self.timesteps = model, config.timesteps

    def start(self, features: np.ndarray) -> list[np.ndarray]:
        features = np.asarray(features, dtype=np.float32)
        prefix = np.full((len(features), self.timesteps), END, dtype=np.int32)
        return [features, prefix, np.zeros(len(features), dtype=np.int32)]

    def next(self, tokens: np.ndarray, states: list[np.ndarray]):
        features, prefix, written = states
        position = int(written[0]) if len(written) else 0  # every beam has written as many
        if position >= self.timesteps:
            raise ValueError(f"the model writes at most {self.timesteps} characters, end class included")
        prefix = prefix.copy()
        prefix[:, position] = tokens
        probabilities = np.asarray(self.model.predict_on_batch([features, prefix]))[:, position]
        return probabilities, [features, prefix, written + 1]


class CachedSteps:
    """``StepModels``' interface for the transformer, one character per call: each block's keys and values kept.

    ``PrefixSteps`` runs the model over the whole caption again for every
    character. Here a beam's state is, for each block, the keys and values
    of the grid's cells (read off the features once, by ``start``:
    ``(beam, cells, heads, key_dim)``) and those of the characters written so
    far (``(beam, timesteps, heads, key_dim)``, zero after them); ``next``
    runs only the new character through the blocks and adds its keys and
    values at its position, in place: ``next`` takes over the states it is
    given (beam search and sampling never reuse them; beam search's reordering
    copies them). Causal self-attention lets no character see a
    later one, so the probabilities are the teacher-forced model's (a test
    holds them to it). The layers are the trained model's own, found by name,
    and the step runs as one compiled Keras model.
    """

    attention = None  # no single map per character: predict.py --attention refuses it

    def __init__(self, model: keras.Model, config: CaptionerConfig, keep_grid: bool = True):
        self.timesteps, self.blocks = config.timesteps, config.blocks
        self.cells = _GridKeys(model, config, keep_grid)
        self.step = _TransformerStep(model, config, keep_grid)

    def start(self, features: np.ndarray) -> list[np.ndarray]:
        grid = self.cells.predict_on_batch(np.asarray(features, dtype=np.float32))
        grid = [np.asarray(part, dtype=np.float32) for part in (grid if isinstance(grid, (list, tuple)) else [grid])]
        shape = (len(features), self.timesteps, self.step.heads, self.step.key_dim)
        caches = [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.blocks)]  # keys, values per block
        return [*grid, *caches, np.zeros(len(features), dtype=np.int32)]

    def next(self, tokens: np.ndarray, states: list[np.ndarray]):
        *kept, written = states
        if len(written) and int(written.max()) >= self.timesteps:
            raise ValueError(f"the model writes at most {self.timesteps} characters, end class included")
        grid = kept[: len(kept) - 2 * self.blocks]
        inputs = [np.asarray(tokens, dtype=np.int32)[:, None], written[:, None].astype(np.int32), *kept]
        probabilities, *added = self.step.predict_on_batch(inputs)  # each block's new character's keys, values
        caches, rows = kept[len(grid):], np.arange(len(written))
        for cache, new in zip(caches, added):
            cache[rows, written] = np.asarray(new, dtype=np.float32)  # in place: the states are handed over
        return np.asarray(probabilities, dtype=np.float32), [*grid, *caches, written + 1]


class _GridKeys(keras.Model):
    """Each block's keys and values of the grid's cells (``CachedSteps.start``); with ``keep_grid`` False, the cells
    themselves, every block's keys and values of them computed again at every step (bench.py's comparison)."""

    def __init__(self, model: keras.Model, config: CaptionerConfig, keep_grid: bool = True):
        super().__init__(name="grid_keys")
        self.cells = keras.Model(model.inputs[0], model.get_layer("grid_norm").output)
        self.looks = [model.get_layer(f"block{block}_grid_attention") for block in range(config.blocks)]
        self.keep_grid = keep_grid

    def call(self, features):
        memory = self.cells(features)
        if not self.keep_grid:
            return [memory]
        return [dense(memory) for look in self.looks for dense in (look.key_dense, look.value_dense)]


class _TransformerStep(keras.Model):
    """One character through the transformer's blocks (``CachedSteps``), with the trained model's layers."""

    def __init__(self, model: keras.Model, config: CaptionerConfig, keep_grid: bool = True):
        super().__init__(name="transformer_step")
        self.timesteps, self.blocks, self.heads = config.timesteps, config.blocks, config.heads
        self.keep_grid = keep_grid
        self.key_dim = config.units // config.heads
        self.embedding, self.projection = model.get_layer(CHAR_EMBEDDING), model.get_layer("char_projection")
        self.positions, self.final_norm = model.get_layer("char_positions"), model.get_layer("final_norm")
        self.output_layer = model.get_layer(OUTPUT)
        names = ("self_norm", "self_attention", "look_norm", "grid_attention", "mix_norm", "hidden", "back")
        self.block_layers = [{name: model.get_layer(f"block{block}_{name}") for name in names}
                             for block in range(config.blocks)]

    def call(self, inputs):
        # (beam, 1) each; the cells' keys and values per block (or the cells, (beam, cells, units)); the characters'
        token, position, *kept = inputs
        grid, caches = kept[: len(kept) - 2 * self.blocks], kept[len(kept) - 2 * self.blocks :]
        x = self.projection(self.embedding(token))  # (beam, 1, units)
        x = x + ops.cast(ops.take(self.positions.positions, position, axis=0), x.dtype)
        here = ops.expand_dims(ops.expand_dims(ops.equal(ops.arange(self.timesteps)[None, :], position), -1), -1)
        visible = ops.reshape(ops.less_equal(ops.arange(self.timesteps)[None, :], position),
                              (-1, 1, 1, self.timesteps))  # (beam, heads, query, key): this character and before
        new_caches = []
        for block, (layer, keys, values) in enumerate(zip(self.block_layers, caches[0::2], caches[1::2])):
            attention = layer["self_attention"]
            h = layer["self_norm"](x)
            new_keys, new_values = attention.key_dense(h), attention.value_dense(h)  # (beam, 1, heads, dim)
            keys = ops.where(here, ops.cast(new_keys, "float32"), keys)  # (beam, timesteps, heads, dim)
            values = ops.where(here, ops.cast(new_values, "float32"), values)
            query = attention.query_dense(h)
            attended = ops.dot_product_attention(query, ops.cast(keys, query.dtype), ops.cast(values, query.dtype),
                                                 mask=visible, scale=1.0 / math.sqrt(self.key_dim))
            x = x + attention.output_dense(attended)
            if self.keep_grid:
                look = layer["grid_attention"]
                query = look.query_dense(layer["look_norm"](x))
                attended = ops.dot_product_attention(query, ops.cast(grid[2 * block], query.dtype),
                                                     ops.cast(grid[2 * block + 1], query.dtype),
                                                     scale=1.0 / math.sqrt(self.key_dim))
                x = x + look.output_dense(attended)
            else:
                x = x + layer["grid_attention"](layer["look_norm"](x), grid[0])
            x = x + layer["back"](layer["hidden"](layer["mix_norm"](x)))
            new_caches += [new_keys[:, 0], new_values[:, 0]]  # CachedSteps.next writes them into the caches
        return [self.output_layer(self.final_norm(x))[:, 0], *new_caches]


def step_models(model: keras.Model, config: CaptionerConfig):
    """What beam search and sampling call for an autoregressive model: ``StepModels``, or ``CachedSteps``."""
    return CachedSteps(model, config) if config.arch == "transformer" else StepModels(model, config)
