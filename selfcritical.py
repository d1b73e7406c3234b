"""Self-critical sequence training: an autoregressive captioner fine-tuned on its own captions' CIDEr-D.

After the cross-entropy epochs (``train.py --self-critical N``), each batch of
training photos is captioned twice by the model itself: ``SAMPLES_PER_PHOTO``
captions drawn from its softmax, one character at a time, and its greedy
caption. A sample's reward is its CIDEr-D against the photo's human captions,
less a baseline: the greedy caption's (Rennie et al., 2017), or the mean of
the photo's other samples (``samples``; Luo, 2020), which is as often above a
sample as below it. With ``--self-critical-reward cider+objects`` the reward
is CIDEr-D plus ``OBJECTS_WEIGHT`` times how well the objects the caption
names agree with those each reference names (``object_agreement``): CIDEr-D
pays a caption for the n-grams it shares with the references, so naming an
object twice, in another place, costs it little. A caption that never ends (cut at the length limit)
earns nothing: CIDEr-D alone pays a long unended caption for the words it
gets right, and the model learns not to end. The model then
takes a step on the samples as targets, each character's cross-entropy
weighted by its sample's advantage: samples that beat their baseline become
likelier and the others less likely, which is the REINFORCE gradient of the
expected reward. The step is Keras' own ``train_on_batch`` with per-character
sample weights, so every backend runs it.
"""

from __future__ import annotations

import collections
import functools
import math

import keras
import numpy as np
from tqdm import tqdm

import hard
from batches import length_odds
from decoding import beam_search, sample_captions
from kana import Vocabulary
from metrics import cider_scores
from model import CaptionerConfig, StepModels, model_inputs

SAMPLES_PER_PHOTO = 5  # captions drawn per photo and step
BASELINES = ("greedy", "samples")  # what a sample's reward is measured against (the module's docstring)
PHOTOS_PER_BATCH = 32  # photos per step: 32 × 5 sampled captions
REWARDS = ("cider", "cider+objects")  # what a caption earns (the module's docstring)
OBJECTS_WEIGHT = 2.0  # cider+objects: CIDEr-D + this × object_agreement (CIDEr-D of training captions: about 3)
MAX_LENGTH_WEIGHTING = 4.0  # --self-critical-length-weighting: the highest power of a photo's caption length


@functools.lru_cache(maxsize=65_536)
def _objects(katakana: str) -> collections.Counter:
    """The (colour, kind, count, position) mentions a caption names (hard.parse), counted."""
    return collections.Counter(hard.parse(katakana))


def object_agreement(captions: list[str], references: list[list[str]]) -> np.ndarray:
    """Per caption, the F1 of the objects it names against each of its references' (``hard.parse``: colour, kind,
    count and position), averaged over the references: 1 where it names what each of them names, no more, no less.

    A caption and a reference that name no object agree (1): on captions the
    hard benchmark's grammar does not read, the reward is CIDEr-D's alone.
    """
    scores = np.zeros(len(captions))
    for index, (caption, refs) in enumerate(zip(captions, references)):
        named = _objects(caption)
        agreements = []
        for reference in refs:
            wanted = _objects(reference)
            shared, total = sum((named & wanted).values()), sum(named.values()) + sum(wanted.values())
            agreements.append(1.0 if total == 0 else 2.0 * shared / total)
        scores[index] = np.mean(agreements) if agreements else 0.0
    return scores


def reward_scores(captions: list[str], references: list[list[str]], reward: str = "cider") -> np.ndarray:
    """What each caption earns against its references: CIDEr-D, and with ``cider+objects`` the objects it
    names agreed (``OBJECTS_WEIGHT`` × ``object_agreement``)."""
    scores = cider_scores(captions, references)
    if reward == "cider+objects":
        scores = scores + OBJECTS_WEIGHT * object_agreement(captions, references)
    return scores


def train_step(model: keras.Model, steps: StepModels, config: CaptionerConfig, vocabulary: Vocabulary,
               features: np.ndarray, references: list[list[str]], rng: np.random.Generator,
               baseline: str = "greedy", reward: str = "cider") -> dict[str, float]:
    """One self-critical step on a batch of photos; returns the mean sample and greedy reward (``REWARDS``;
    under the keys ``sample_cider`` and ``greedy_cider``, whatever the reward)."""
    features = np.asarray(features, dtype=np.float32)
    samples = sample_captions(steps, features, SAMPLES_PER_PHOTO, config.timesteps, rng)
    greedy = [best[0] for best in beam_search(steps, features, vocabulary, 1, 1, config.timesteps - 1)]
    repeated = [refs for refs in references for _ in range(SAMPLES_PER_PHOTO)]
    rewards = reward_scores(samples.texts(vocabulary) + [caption.text for caption in greedy],
                            repeated + list(references), reward)
    rewards *= np.concatenate([samples.ended, [caption.ended for caption in greedy]])  # unended: no reward
    sampled, greedy_rewards = rewards[: len(repeated)], rewards[len(repeated):]
    inputs = np.repeat(features, SAMPLES_PER_PHOTO, axis=0)
    model.train_on_batch(model_inputs(config, inputs, samples.targets), samples.targets,
                         sample_weight=samples.weights(advantages(sampled, greedy_rewards, baseline)))
    return {"sample_cider": float(sampled.mean()), "greedy_cider": float(greedy_rewards.mean())}


def advantages(sampled: np.ndarray, greedy: np.ndarray, baseline: str) -> np.ndarray:
    """Each sample's reward less its baseline.

    Args:
        sampled: the rewards of ``(photos × SAMPLES_PER_PHOTO)`` samples, each photo's together.
        greedy: the rewards of the photos' greedy captions.
        baseline: ``greedy``, or ``samples``: the mean reward of the photo's other samples.
    """
    if baseline == "greedy":
        return sampled - np.repeat(greedy, SAMPLES_PER_PHOTO)
    per_photo = sampled.reshape(-1, SAMPLES_PER_PHOTO)
    others = (per_photo.sum(axis=1, keepdims=True) - per_photo) / (SAMPLES_PER_PHOTO - 1)
    return (per_photo - others).reshape(-1)


def compile_for(model: keras.Model, learning_rate: float) -> keras.Model:
    """A fresh Adam at the fine-tuning rate; the loss is the per-character cross-entropy the weights scale."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    return model


def run_epoch(model: keras.Model, steps: StepModels, config: CaptionerConfig, vocabulary: Vocabulary, features,
              photos: np.ndarray, references: list[list[str]], seed: int, progress: bool = True,
              baseline: str = "greedy", reward: str = "cider", length_weighting: float = 0.0) -> dict[str, float]:
    """One pass over ``photos`` (cache rows) in a seeded order; the mean rewards of its steps.

    ``steps``: ``model``'s step models (they share its weights, so they are built once per stage).
    ``references[row]``: the human captions of cache row ``row``.
    ``length_weighting``: above 0, the pass draws as many photos as there are, with replacement, each with odds of
    its references' mean length in characters to this power (photos of more to say are drawn more often).
    """
    rng = np.random.default_rng(seed)
    if length_weighting:
        lengths = [max(1.0, float(np.mean([len(caption) for caption in references[row]] or [1]))) for row in photos]
        order = rng.choice(photos, size=len(photos), p=length_odds(np.array(lengths), length_weighting))
    else:
        order = rng.permutation(photos)
    totals = {"sample_cider": 0.0, "greedy_cider": 0.0}
    num_batches = math.ceil(len(order) / PHOTOS_PER_BATCH)
    with tqdm(total=num_batches, desc="self-critical", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), PHOTOS_PER_BATCH):
            rows = np.sort(order[start : start + PHOTOS_PER_BATCH])
            result = train_step(model, steps, config, vocabulary, features[rows], [references[r] for r in rows], rng,
                                baseline, reward)
            for name, value in result.items():
                totals[name] += value * len(rows)
            bar.update(1)
            bar.set_postfix(sample=f"{result['sample_cider']:.2f}", greedy=f"{result['greedy_cider']:.2f}")
    return {name: total / max(1, len(order)) for name, total in totals.items()}
