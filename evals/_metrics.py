"""Metrics that need no language model: retrieval against gold sources, refusals, latency and token cost,
plus the table of every metric the harness reports (its group and whether higher is better).

Retrieval is judged at the document level: a passage is relevant when its path contains a gold fragment
(`guide/install.md` matches `docs/guide/install.md`; so does the fragment `install.md`). Each gold source is
credited once, at the first passage that matches it, so five chunks of one relevant file do not make a
perfect ranking. Not here: the ragas metrics (`_ragas.py`) and intervals (`_stats.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["METRICS", "MetricInfo", "matches", "refusal_scores", "retrieval_scores"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    group: str  # retrieval, answer, judge, refusal, latency, cost
    higher_is_better: bool = True
    unit: str = ""  # "" for 0..1 scores
    doc: str = ""


METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("recall_at_k", "retrieval", doc="share of gold sources found in the top-k passages"),
    MetricInfo("mrr", "retrieval", doc="1 / rank of the first passage from a gold source"),
    MetricInfo("ndcg", "retrieval", doc="nDCG@k, binary gain, each gold source credited once"),
    MetricInfo("context_precision", "answer",
               doc="ragas non-LLM context precision against the gold passages (string similarity)"),
    MetricInfo("context_recall", "answer", doc="ragas non-LLM context recall against the gold passages"),
    MetricInfo("rouge_l", "answer", doc="ragas ROUGE-L F1 of the answer against the reference"),
    MetricInfo("string_presence", "answer", doc="ragas string presence of the expected text in the answer"),
    MetricInfo("semantic_similarity", "answer", doc="ragas cosine similarity of answer and reference"),
    MetricInfo("faithfulness", "judge", doc="ragas faithfulness: share of answer claims the passages support"),
    MetricInfo("answer_relevancy", "judge", doc="ragas answer relevancy (judge + embedder)"),
    MetricInfo("llm_context_precision", "judge", doc="ragas LLM context precision with reference"),
    MetricInfo("refusal_rate", "refusal", doc="unanswerable questions the assistant declined"),
    MetricInfo("false_refusal_rate", "refusal", higher_is_better=False,
               doc="answerable questions the assistant declined"),
    MetricInfo("ttft_ms", "latency", False, "ms", "question to first token"),
    MetricInfo("total_ms", "latency", False, "ms", "question to finished answer"),
    MetricInfo("retrieval_ms", "latency", False, "ms", "retrieval time"),
    MetricInfo("tokens_per_s", "latency", True, "tok/s", "decoding speed after the first token"),
    MetricInfo("prompt_tokens", "cost", False, "tokens", "prompt tokens per answer"),
    MetricInfo("completion_tokens", "cost", False, "tokens", "completion tokens per answer"),
    MetricInfo("cost_usd", "cost", False, "$", "price table + device time per answer"),
]}


def _norm(path: str) -> str:
    path = path.replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def matches(path: str, fragment: str) -> bool:
    """Whether a passage's path ends with or contains the gold fragment."""
    frag = _norm(fragment).strip()
    return bool(frag) and frag in _norm(path)


def retrieval_scores(paths: Sequence[str], gold: Sequence[str], k: int | None = None) -> dict[str, float | None]:
    """recall@k, MRR and nDCG@k of the ranked passage `paths` against gold fragments (all None without gold)."""
    gold = [g for g in gold if _norm(g).strip()]
    if not gold:
        return {"recall_at_k": None, "mrr": None, "ndcg": None}
    ranked = list(paths)[: k if k else len(paths)]
    credited: set[int] = set()
    gains: list[int] = []
    first_hit = None
    for rank, path in enumerate(ranked, 1):
        hit = [i for i, g in enumerate(gold) if matches(path, g)]
        if hit and first_hit is None:
            first_hit = rank
        new = [i for i in hit if i not in credited]
        credited.update(new)
        gains.append(1 if new else 0)
    dcg = sum(g / math.log2(r + 1) for r, g in enumerate(gains, 1))
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(gold), len(ranked)) + 1))
    return {"recall_at_k": len(credited) / len(gold), "mrr": 1 / first_hit if first_hit else 0.0,
            "ndcg": dcg / ideal if ideal else 0.0}


def refusal_scores(declined: bool, unanswerable: bool) -> dict[str, float | None]:
    """Per sample: a declined unanswerable question counts towards refusal_rate, a declined answerable one
    towards false_refusal_rate; the other metric is undefined for that sample."""
    if unanswerable:
        return {"refusal_rate": 1.0 if declined else 0.0, "false_refusal_rate": None}
    return {"refusal_rate": None, "false_refusal_rate": 1.0 if declined else 0.0}
