"""Where did it change? The most likely change point of a stream, by likelihood.

A detector fires some time after a change: ADWIN's kept window, or the PSI
window, starts well before it, so training on "the events since the detector's
window" mixes rows of the old concept into the new model. Once a stream is
known past the change, the maximum-likelihood split into two segments places
the change far more tightly. For a stream of codes (the 0/1 error of each
prediction, or the PSI bin of each value) it is the index `k` maximising

    log L(codes[:k]) + log L(codes[k:]) - log L(codes)

under a categorical model fitted to each part. An estimate counts only when
that log-likelihood ratio clears a threshold, so a stream with no change in
it gives none and the caller keeps the detector's own window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

# Log-likelihood ratio under which a split of a 0/1 stream is not believed. Over
# n candidate splits of a stream with no change, the largest grows like
# log log n: 10 is far beyond it for any stream this service keeps.
MIN_LLR = 10.0
# Neither segment may be shorter than this: a few values at one end would
# otherwise look like a change.
MIN_SEGMENT = 30


@dataclass(frozen=True)
class ChangePoint:
    index: int  # first value of the second segment
    llr: float  # log-likelihood ratio of the split against no split


def _loglik(counts: FloatArray) -> FloatArray:
    """Categorical log-likelihood at the MLE of each row of per-code counts."""
    totals = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = counts * np.log(counts / totals)
    out: FloatArray = np.nan_to_num(terms, nan=0.0).sum(axis=-1)
    return out


def _split_llr(codes: Sequence[int], categories: int, min_segment: int) -> tuple[FloatArray, Any]:
    """Log-likelihood ratio of every admissible split, and the counts before each."""
    values = np.asarray(codes, dtype=np.intp)
    n = len(values)
    onehot = np.zeros((n, categories), dtype=np.float64)
    onehot[np.arange(n), values] = 1.0
    cumulative = np.cumsum(onehot, axis=0)
    k = np.arange(min_segment, n - min_segment + 1)
    before = cumulative[k - 1]
    after = cumulative[-1] - before
    llr = _loglik(before) + _loglik(after) - _loglik(cumulative[-1:])[0]
    return llr, before


def categorical_change_point(
    codes: Sequence[int],
    categories: int,
    *,
    min_segment: int = MIN_SEGMENT,
    min_llr: float | None = None,
) -> ChangePoint | None:
    """The most likely single change of the distribution of `codes` (each in
    `range(categories)`), or None when there is no clear one. The default bar
    grows with the number of categories, as the ratio's noise does."""
    if len(codes) < 2 * min_segment:
        return None
    bar = MIN_LLR + (categories - 2) if min_llr is None else min_llr
    llr, _ = _split_llr(codes, categories, min_segment)
    best = int(np.argmax(llr))
    if llr[best] < bar:
        return None
    return ChangePoint(best + min_segment, float(llr[best]))


def rise_change_point(
    errors: Sequence[int], *, min_segment: int = MIN_SEGMENT, min_llr: float = MIN_LLR
) -> ChangePoint | None:
    """The most likely single rise of a 0/1 stream's rate, or None when there is
    no clear one. A model getting better is not a drift to retrain on."""
    n = len(errors)
    if n < 2 * min_segment:
        return None
    llr, before = _split_llr(errors, 2, min_segment)
    k = np.arange(min_segment, n - min_segment + 1)
    ones_before = before[:, 1]
    ones_after = float(np.sum(np.asarray(errors))) - ones_before
    rise = ones_after / (n - k) > ones_before / k
    llr = np.where(rise, llr, -np.inf)
    best = int(np.argmax(llr))
    if not np.isfinite(llr[best]) or llr[best] < min_llr:
        return None
    return ChangePoint(best + min_segment, float(llr[best]))
