"""Abstention from retrieval evidence: whether a question is out of the documents' reach, decided from how
well its best passages match, not from what a model writes.

`Evidence` is the best dense (cosine) similarity and the best BM25 score a query got against a collection.
`AbstainRule` abstains when both fall below their thresholds (a question neither means nor says anything
the documents do); it is fitted elsewhere (`ragdesk eval calibrate`, evals/_calibrate.py) and stored in the
collection's meta table, so it travels with the index it was fitted on. Not here: fitting, and what the
assistant says when it abstains (assistant/engine.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .errors import ConfigError

__all__ = ["AbstainRule", "Evidence"]

META_KEY = "abstain_rule"


@dataclass(frozen=True)
class Evidence:
    """The best scores of one query: `dense` a cosine similarity (-1..1), `bm25` a positive BM25 score (0 when
    no word of the query occurs in the collection)."""

    dense: float
    bm25: float

    def to_dict(self) -> dict:
        return {"dense": round(self.dense, 6), "bm25": round(self.bm25, 6)}


@dataclass
class AbstainRule:
    """Abstain when best dense < `dense` AND best BM25 < `bm25`. An infinite threshold means that side alone
    decides (`inf` never vetoes); `-inf` on either side means the rule never abstains."""

    dense: float
    bm25: float
    suite: str = ""  # the suite it was fitted on, its digest, the collection's identity and when
    suite_digest: str = ""
    collection_identity: str = ""
    fitted_at: str = ""
    max_false_refusal: float = 0.0  # the budget the fit was held to
    train: dict = field(default_factory=dict)  # figures on the whole suite
    cv: dict = field(default_factory=dict)  # k-fold figures (each fold fitted without the questions it scores)

    def abstains(self, ev: Evidence) -> bool:
        return ev.dense < self.dense and ev.bm25 < self.bm25

    def thresholds(self) -> dict:
        fmt = lambda v: v if math.isfinite(v) else ("inf" if v > 0 else "-inf")  # noqa: E731 - JSON has no inf
        return {"dense": fmt(self.dense), "bm25": fmt(self.bm25)}

    def to_json(self) -> str:
        data = asdict(self)
        data.update(self.thresholds())
        return json.dumps(data, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "AbstainRule":
        try:
            data = json.loads(text)
            data["dense"], data["bm25"] = float(data["dense"]), float(data["bm25"])
            return AbstainRule(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"the stored abstention thresholds are unreadable ({exc})",
                              "refit them: ragdesk eval calibrate SUITE") from None
