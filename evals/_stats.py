"""Small statistics for eval runs: bootstrap intervals, paired bootstrap deltas, percentiles.

Pure numpy, deterministic (fixed seed) so the same run always prints the same interval. Not here: which
metric means what (`_metrics.py`), storage (`_runs.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Interval", "bootstrap", "paired_bootstrap", "percentile"]

RESAMPLES = 2000
SEED = 20240611


@dataclass
class Interval:
    """A mean with its 95% bootstrap interval over `n` values (`None` mean when there were no values)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 6)  # noqa: E731
        return {"mean": r(self.mean), "lo": r(self.lo), "hi": r(self.hi), "n": self.n}


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def bootstrap(values: Sequence[float | None], resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Mean of the defined values and the 2.5/97.5 percentiles of the means of `resamples` resamples."""
    x = _clean(values)
    if len(x) == 0:
        return Interval(None, None, None, 0)
    if len(x) == 1 or np.all(x == x[0]):
        return Interval(float(x.mean()), float(x.mean()), float(x.mean()), len(x))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)  # (resamples,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Interval(float(x.mean()), float(lo), float(hi), len(x))


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], resamples: int = RESAMPLES,
                     seed: int = SEED) -> Interval:
    """Mean of b - a over the pairs where both are defined, with a bootstrap interval over pairs."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
             and not math.isnan(x) and not math.isnan(y)]
    return bootstrap([y - x for x, y in pairs], resamples, seed)


def percentile(values: Sequence[float | None], q: float) -> float | None:
    x = _clean(values)
    return float(np.percentile(x, q)) if len(x) else None
