"""Value objects of one answer: what was asked, what came back, what it cost and how fast it was.

Plain dataclasses with no heavy imports, shared by the engine, the CLI, the chat app, history and evals.
`Answer.to_json()` is the object SPEC.md fixes for `ragdesk ask --json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # retrieval's index module pulls in sqlite-utils and pandas; keep this module light
    from retrieval import Passage

__all__ = ["Answer", "AnswerEvent", "Cost", "Retrieved", "SpeculativeStats", "Timings", "TokenArrived",
           "TokenUsage", "Turn"]


@dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    retrieval_ms: float = 0.0
    ttft_ms: float = 0.0  # question received -> first answer token (retrieval and prompt included)
    total_ms: float = 0.0
    tokens_per_s: float = 0.0  # completion tokens / decoding time after the first token
    generation_ms: float = 0.0


@dataclass
class SpeculativeStats:
    method: str = "off"
    draft_tokens: int = 0  # tokens proposed by the candidate generator
    accepted_tokens: int = 0  # of those, tokens the model confirmed
    steps: int = 0  # forward passes of the main model while decoding

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0


@dataclass
class Cost:
    """Dollars for one answer: from the token price table and from the device's time."""

    input_usd: float = 0.0
    output_usd: float = 0.0
    device_usd: float = 0.0

    @property
    def tokens_usd(self) -> float:
        return self.input_usd + self.output_usd


@dataclass
class Turn:
    """One earlier exchange of a conversation, given back to the engine for follow-up questions."""

    question: str
    answer: str


@dataclass
class Answer:
    question: str
    text: str = ""
    sources: list[Passage] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    timings: Timings = field(default_factory=Timings)
    speculative: SpeculativeStats = field(default_factory=SpeculativeStats)
    cost: Cost = field(default_factory=Cost)
    model: str = ""
    device: str = ""
    status: str = "complete"  # complete, cancelled, failed
    error: str = ""
    cited: list[int] = field(default_factory=list)  # [n] numbers that appear in the text and exist
    citation_mode: str = "none"  # "model" (the answer wrote [n]), "attributed" (matched by ragdesk), "none"
    token_ids: list[int] = field(default_factory=list)  # the completion, for lossless checks
    finish_reason: str = ""  # stop, length, cancelled, error (from the model's Completion)
    usage_exact: bool = True  # False: the token counts are an estimate (a server that reports none)
    # set when the engine declined from retrieval evidence without generating: reason, evidence, thresholds
    abstained: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "sources": [p.to_source(i + 1) for i, p in enumerate(self.sources)],
            "usage": {"prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens},
            "usage_exact": self.usage_exact,
            "timings": {"retrieval_ms": round(self.timings.retrieval_ms, 2), "ttft_ms": round(self.timings.ttft_ms, 2),
                        "total_ms": round(self.timings.total_ms, 2),
                        "tokens_per_s": round(self.timings.tokens_per_s, 2)},
            "speculative": {"method": self.speculative.method, "accepted_tokens": self.speculative.accepted_tokens,
                            "draft_tokens": self.speculative.draft_tokens},
            "cost": {"input_usd": self.cost.input_usd, "output_usd": self.cost.output_usd,
                     "device_usd": self.cost.device_usd},
            "cited": self.cited,
            "citation_mode": self.citation_mode,
            "status": self.status,
            "finish_reason": self.finish_reason,
            **({"error": self.error} if self.error else {}),
            **({"abstained": self.abstained} if self.abstained else {}),
            "model": self.model,
            "device": self.device,
        }


@dataclass
class Retrieved:
    """Event: passages are known (before the first token)."""

    passages: list[Passage]


@dataclass
class TokenArrived:
    """Event: more answer text (one or more tokens decoded in one step)."""

    text: str


AnswerEvent = Retrieved | TokenArrived | Answer  # the stream ends with the finished Answer
