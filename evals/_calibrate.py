"""Fitting the abstention thresholds of a collection on a suite (`ragdesk eval calibrate`).

Retrieval only, no generation: each question's best dense similarity and best BM25 score are measured, and
the rule "abstain when dense < a AND bm25 < b" is fitted to refuse as many of the suite's unanswerable
questions as possible while declining at most a budget of its answerable ones. Candidate thresholds are the
midpoints between neighbouring observed scores (plus "never" and "always" on each side), so a threshold sits
halfway between the questions it separates; among equally good pairs the lowest are kept, which declines
least on questions the suite did not contain. With a handful of unanswerable questions the train figures
flatter the rule, so stratified k-fold figures (each fold scored by thresholds fitted without it) are
reported and stored too. Not here: applying the rule (assistant/engine.py) or storing it
(retrieval/_index.py).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from retrieval import AbstainRule, Collection, Evidence
from retrieval.errors import InputError

from ._stats import bootstrap
from ._suite import SuiteItem, suite_digest

__all__ = ["Calibration", "calibrate", "fit_thresholds"]

SEED = 20240611


def _candidates(values: np.ndarray) -> np.ndarray:
    uniq = np.unique(values)
    mids = (uniq[:-1] + uniq[1:]) / 2
    return np.concatenate([[-math.inf], mids, [math.inf]])


def fit_thresholds(dense: Sequence[float], bm25: Sequence[float], unanswerable: Sequence[bool],
                   max_false_refusal: float) -> tuple[float, float]:
    """(a, b) for "abstain when dense < a and bm25 < b": most unanswerable questions refused with at most
    `max_false_refusal` of the answerable ones declined; (-inf, -inf) when none can be refused."""
    d, b = np.asarray(dense, float), np.asarray(bm25, float)
    u = np.asarray(unanswerable, bool)
    ca, cb = _candidates(d), _candidates(b)
    below_a = (d[:, None] < ca[None, :]).astype(float)  # (n, na)
    below_b = (b[:, None] < cb[None, :]).astype(float)  # (n, nb)
    refused = (below_a * u[:, None]).T @ below_b  # (na, nb) unanswerable questions refused
    false = (below_a * ~u[:, None]).T @ below_b  # (na, nb) answerable questions declined
    allowed = false <= math.floor(max_false_refusal * int((~u).sum()) + 1e-9)
    best = np.where(allowed, refused, -1).max()
    if best <= 0:
        return -math.inf, -math.inf
    ties = allowed & (refused == best)
    ties &= false == np.where(ties, false, np.inf).min()
    ia, ib = np.nonzero(ties)
    pick = np.lexsort((ia, ia + ib))[0]  # lowest thresholds first
    return float(ca[ia[pick]]), float(cb[ib[pick]])


def _figures(declined: Sequence[bool], unanswerable: Sequence[bool]) -> dict:
    dec, u = np.asarray(declined, bool), np.asarray(unanswerable, bool)
    rr = bootstrap(dec[u].astype(float).tolist())
    fr = bootstrap(dec[~u].astype(float).tolist())
    return {"refusal_rate": rr.to_dict(), "false_refusal_rate": fr.to_dict(), "refused": int((dec & u).sum()),
            "unanswerable": int(u.sum()), "false_refusals": int((dec & ~u).sum()), "answerable": int((~u).sum())}


def _folds(unanswerable: np.ndarray, k: int) -> np.ndarray:
    """A fold number per question, each class dealt round-robin after a seeded shuffle (stratified)."""
    rng = np.random.default_rng(SEED)
    fold = np.zeros(len(unanswerable), int)
    for cls in (True, False):
        idx = np.flatnonzero(unanswerable == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


@dataclass
class Calibration:
    rule: AbstainRule
    evidence: list[Evidence]
    items: list[SuiteItem]
    folds: int


def calibrate(collection: Collection, items: list[SuiteItem], suite_path: Path | str, *,
              max_false_refusal: float = 0.02, folds: int = 5,
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Measure every question's evidence, fit the thresholds, and score them on the suite and by k-fold."""
    if not 0 <= max_false_refusal < 1:
        raise InputError(f"max false refusal {max_false_refusal} is not a share", "give a number in [0, 1), e.g. 0.02")
    if folds < 2:
        raise InputError(f"--folds {folds} must be at least 2")
    n_unans = sum(i.unanswerable for i in items)
    if n_unans == 0:
        raise InputError(f"suite {suite_path} has no unanswerable question to fit abstention on",
                         'mark questions the documents cannot answer with "unanswerable": true')
    if n_unans == len(items):
        raise InputError(f"suite {suite_path} has only unanswerable questions: false refusals cannot be measured",
                         "add answerable questions (with their reference answer)")
    if collection.stats()["chunks"] == 0:
        raise InputError(f"collection {collection.name!r} is empty",
                         f"run: ragdesk index PATH --collection {collection.name}")
    progress = progress or (lambda done, total: None)
    evidence = []
    for n, item in enumerate(items):
        progress(n, len(items))
        evidence.append(collection.evidence(item.question))
    progress(len(items), len(items))
    d = np.array([e.dense for e in evidence])
    b = np.array([e.bm25 for e in evidence])
    u = np.array([i.unanswerable for i in items])
    a_thr, b_thr = fit_thresholds(d, b, u, max_false_refusal)
    train = _figures((d < a_thr) & (b < b_thr), u)
    k = min(folds, n_unans, len(items) - n_unans)
    cv: dict = {}
    if k >= 2:
        fold = _folds(u, k)
        held = np.zeros(len(items), bool)
        for f in range(k):
            fa, fb = fit_thresholds(d[fold != f], b[fold != f], u[fold != f], max_false_refusal)
            held[fold == f] = (d[fold == f] < fa) & (b[fold == f] < fb)
        cv = {"folds": k, **_figures(held, u)}
    rule = AbstainRule(a_thr, b_thr, suite=str(suite_path), suite_digest=suite_digest(suite_path),
                       collection_identity=collection.identity(),
                       fitted_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       max_false_refusal=max_false_refusal, train=train, cv=cv)
    return Calibration(rule, evidence, items, k)
