"""COCO caption metrics on katakana, each character a token, and the table train.py and evaluate.py print.

BLEU-1..4, ROUGE-L and CIDEr-D come from pycocoevalcap, the reference
implementation of the COCO caption evaluation (its ``Cider`` scorer is
CIDEr-D: clipped n-gram counts and a Gaussian length penalty). None of these
three needs Java; the captions are tokenised here, one token per character,
instead of by the PTB tokenizer, which knows no Japanese.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

import demo
import hard

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")


def characters(text: str) -> str:
    """A caption as pycocoevalcap tokens: its characters separated by spaces."""
    return " ".join(text)


def caption_metrics(candidates: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus-level caption metrics of katakana candidates against their references.

    Args:
        candidates: one caption per image.
        references: the reference captions of each image (at least one each).

    Returns:
        ``{"BLEU-1": ..., "BLEU-4": ..., "ROUGE-L": ..., "CIDEr-D": ...}`` plus
        the per-image CIDEr-D scores under ``"CIDEr-D per image"``.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists.")
    if not candidates:
        raise ValueError("No captions to score.")
    if any(not refs for refs in references):
        raise ValueError("Every image needs at least one reference caption.")
    truths, results = _scorer_inputs(candidates, references)
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(truths, results, verbose=0)
        rouge, _ = Rouge().compute_score(truths, results)
        cider, cider_per_image = Cider().compute_score(truths, results)
    scores = {f"BLEU-{n}": float(value) for n, value in enumerate(bleu, start=1)}
    scores["ROUGE-L"] = float(rouge)
    scores["CIDEr-D"] = float(cider)
    scores["CIDEr-D per image"] = [float(value) for value in np.asarray(cider_per_image)]
    return scores


def cider_scores(candidates: list[str], references: list[list[str]]) -> np.ndarray:
    """Each candidate's CIDEr-D against its own references (n-gram weights from all the references given)."""
    truths, results = _scorer_inputs(candidates, references)
    return np.asarray(Cider().compute_score(truths, results)[1], dtype=np.float64)


def _scorer_inputs(candidates: list[str], references: list[list[str]]) -> tuple[dict, dict]:
    """pycocoevalcap's ``(references, candidates)`` dicts, keyed by position, characters as tokens.

    An empty candidate is scored as one token that matches nothing, since the
    scorers divide by the candidate length.
    """
    results = {index: [characters(caption) or "∅"] for index, caption in enumerate(candidates)}
    truths = {index: [characters(ref) for ref in refs] for index, refs in enumerate(references)}
    return truths, results


def caption_statistics(candidates: list[str], references: list[list[str]], ended: list[bool]) -> dict[str, float]:
    """Exact matches, lengths and unended captions, as shares and means."""
    return {
        "exact match": float(np.mean([caption in refs for caption, refs in zip(candidates, references)])),
        "mean length": float(np.mean([len(caption) for caption in candidates])),
        "mean reference length": float(np.mean([np.mean([len(ref) for ref in refs]) for refs in references])),
        "never ended": float(np.mean([not flag for flag in ended])),
    }


def score(captions: list[tuple[str, bool]], references: list[list[str]], scenes=None) -> dict:
    """All the numbers for ``(caption, ended)`` pairs against katakana references.

    Args:
        captions: ``(caption, ended)`` per image.
        references: the katakana reference captions of each image.
        scenes: for generated data, what each image shows: adds "scene accuracy" for the
            demo's scenes, and hard.py's attribute scores for the hard benchmark's.

    Returns:
        ``caption_metrics`` and ``caption_statistics`` in one dict, with
        "scene accuracy" where every image has a scene, and "images".
    """
    texts = [text for text, _ in captions]
    result = caption_metrics(texts, references)
    result.update(caption_statistics(texts, references, [ended for _, ended in captions]))
    if scenes is not None and all(isinstance(scene, dict) for scene in scenes):
        result.update(hard.score(texts, scenes))
    elif scenes is not None and all(scene is not None for scene in scenes):
        result["scene accuracy"] = demo.scene_accuracy(texts, scenes)
    result["images"] = len(texts)
    return result


def format_table(result: dict) -> str:
    """``score``'s result as a two-column table."""
    names = [name for name in (*METRIC_NAMES, "exact match", "never ended", "scene accuracy", *hard.ATTRIBUTES,
                               hard.ANY_CANDIDATE) if name in result]
    names += [name for name in hard.by_objects_names() if name in result]
    width = max(len(name) for name in (*names, "mean length")) + 2
    lines = [f"{'metric':<{width}}{'value':>8}"]
    lines += [f"{name:<{width}}{result[name]:>8.3f}" for name in names]
    lines.append(f"{'mean length':<{width}}{result['mean length']:>8.1f}  (references {result['mean reference length']:.1f})")
    lines.append(f"{'images':<{width}}{result['images']:>8d}")
    return "\n".join(lines)
