"""Comparing two stored runs and gating on metrics (for CI).

`compare_runs` pairs samples by id and gives, per metric, the change of the mean with a paired-bootstrap 95%
interval, plus the samples whose score moved most. Gates: `METRIC[.STAT]=VALUE`, where STAT is mean (the
default), lo, hi, p50 or p95; `--fail-under` fails when the value is below, `--fail-over` when above, and
`--max-drop` (compare only) when B - A falls by more than VALUE. A metric with no value fails its gate: CI
must not pass because a metric silently vanished. Not here: printing (cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.errors import InputError

from ._metrics import METRICS
from ._stats import paired_bootstrap

__all__ = ["Gate", "check_gates", "compare_runs", "parse_gate"]

STATS = ("mean", "lo", "hi", "p50", "p95")


@dataclass(frozen=True)
class Gate:
    metric: str
    stat: str
    kind: str  # under, over, drop
    value: float

    def describe(self) -> str:
        op = {"under": ">=", "over": "<=", "drop": "drop <="}[self.kind]
        name = self.metric + ("" if self.stat == "mean" else f".{self.stat}")
        return f"{name} {op} {self.value:g}"


def parse_gate(text: str, kind: str) -> Gate:
    name, sep, raw = text.partition("=")
    metric, _, stat = name.strip().partition(".")
    stat = stat or "mean"
    if not sep or not metric:
        raise InputError(f"gate {text!r} is not METRIC=VALUE", "e.g. --fail-under recall_at_k=0.8")
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r} in gate {text!r}", "one of: " + ", ".join(METRICS))
    if stat not in STATS:
        raise InputError(f"unknown statistic {stat!r} in gate {text!r}", "one of: " + ", ".join(STATS))
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"gate {text!r}: {raw!r} is not a number", "e.g. --fail-under rouge_l=0.3") from None
    return Gate(metric, stat, kind, value)


def check_gates(summary: dict, gates: list[Gate], deltas: dict | None = None) -> list[str]:
    """One message per failed gate (empty when all pass)."""
    failed = []
    metrics = summary.get("metrics", {})
    for g in gates:
        if g.kind == "drop":
            delta = (deltas or {}).get(g.metric, {}).get("delta", {}).get("mean")
            if delta is None:
                failed.append(f"{g.metric}: no paired values to compare (gate {g.describe()})")
            elif delta < -g.value:
                failed.append(f"{g.metric} fell by {-delta:.4g} (gate {g.describe()})")
            continue
        value = metrics.get(g.metric, {}).get(g.stat)
        if value is None:
            failed.append(f"{g.metric}: no value in this run (gate {g.describe()})")
        elif g.kind == "under" and value < g.value:
            failed.append(f"{g.metric}{'' if g.stat == 'mean' else '.' + g.stat} = {value:.4g} is under "
                          f"{g.value:g}")
        elif g.kind == "over" and value > g.value:
            failed.append(f"{g.metric}{'' if g.stat == 'mean' else '.' + g.stat} = {value:.4g} is over "
                          f"{g.value:g}")
    return failed


def compare_runs(run_a: dict, samples_a: list[dict], run_b: dict, samples_b: list[dict], by: str = "",
                 top: int = 5) -> dict:
    """Deltas B - A per metric over shared sample ids, and the `top` samples that changed most on `by`."""
    a_by_id = {s["sample_id"]: s for s in samples_a}
    shared = [(a_by_id[s["sample_id"]], s) for s in samples_b if s["sample_id"] in a_by_id]
    ma, mb = run_a["summary"].get("metrics", {}), run_b["summary"].get("metrics", {})
    deltas: dict[str, dict] = {}
    for name, info in METRICS.items():
        if name not in ma and name not in mb:
            continue
        xa = [a["scores"].get(name) for a, _ in shared]
        xb = [b["scores"].get(name) for _, b in shared]
        d = paired_bootstrap(xa, xb)
        better = None
        if d.mean is not None and d.lo is not None and (d.lo > 0 or d.hi < 0):
            better = (d.lo > 0) == info.higher_is_better
        deltas[name] = {"a": ma.get(name, {}).get("mean"), "b": mb.get(name, {}).get("mean"),
                        "delta": d.to_dict(), "significant": better is not None, "better": better,
                        "parse_failures": [ma.get(name, {}).get("parse_failure", 0),
                                           mb.get(name, {}).get("parse_failure", 0)]}
    by = by or next((m for m in ("semantic_similarity", "rouge_l", "recall_at_k") if m in deltas), "")
    moved = []
    for a, b in shared:
        va, vb = a["scores"].get(by), b["scores"].get(by)
        changed_answer = a["answer"] != b["answer"]
        if va is None or vb is None:
            continue
        moved.append({"sample_id": b["sample_id"], "question": b["question"], "metric": by, "a": va, "b": vb,
                      "delta": vb - va, "answer_a": a["answer"], "answer_b": b["answer"],
                      "answer_changed": changed_answer})
    moved.sort(key=lambda m: (-abs(m["delta"]), m["sample_id"]))
    warnings = []
    if run_a.get("suite_sha") != run_b.get("suite_sha"):
        warnings.append("the runs used different suite files")
    if run_a.get("collection_identity") != run_b.get("collection_identity"):
        warnings.append("the runs used different indexed content")
    only = len(samples_a) + len(samples_b) - 2 * len(shared)
    if only:
        warnings.append(f"{only} samples are in only one of the runs and are left out of the deltas")
    return {"a": run_a["id"], "b": run_b["id"], "shared": len(shared), "metrics": deltas, "by": by,
            "changed": moved[:top], "warnings": warnings}
