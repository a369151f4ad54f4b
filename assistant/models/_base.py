"""The one interface every generator implements: a chat model that streams text for a list of chat
messages and finishes with a `Completion` record.

Callers (the engine, the judge, bench) hand over messages and a `GenerationConfig` and get text pieces and
usage back, nothing else: token ids, tokenizers, KV caches and candidate generators stay inside the model.
Capabilities are attributes, so the engine can ask instead of guessing. Not here: finding or fetching a model
(`_presets.py`, `__init__.load_model`), any concrete backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator

from ..answer import SpeculativeStats, TokenUsage
from .._decoding import SpeculativeConfig

__all__ = ["ChatModel", "Completion", "GenerationConfig", "Messages"]

Messages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode one answer. Greedy always; `speculative` is ragdesk-side speculative decoding, which
    only models with `supports_speculative` use (a server does its own)."""

    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    speculative: SpeculativeConfig = field(default_factory=lambda: SpeculativeConfig("off"))


@dataclass
class Completion:
    """How a streamed answer ended. `text` is the whole answer (also when cancelled or failed: the partial
    text is kept); `usage_exact` says whether the token counts are the model's own or an estimate."""

    text: str = ""
    finish_reason: str = "stop"  # stop, length, cancelled, error
    usage: TokenUsage = field(default_factory=TokenUsage)
    usage_exact: bool = True
    speculative: SpeculativeStats = field(default_factory=SpeculativeStats)
    error: str = ""
    token_ids: list[int] = field(default_factory=list)  # local models only: for lossless checks
    server_timings: dict = field(default_factory=dict)  # what a server reported about its own timing


class ChatModel(ABC):
    """A generator of answers. Subclasses implement `stream` and `count_tokens`; the rest has defaults.

    `stream` yields `str` pieces as they are decoded, then exactly one `Completion`. Problems that stop an
    answer before it starts (a server that refuses the connection, an unknown model) raise `ModelError`;
    problems after the first piece end the stream with `finish_reason="error"` and the partial text."""

    name: str = "model"
    device: str = "cpu"
    dtype: str = ""
    context_length: int = 2048
    supports_adapters: bool = False  # can apply a LoRA adapter folder
    supports_speculative: bool = False  # uses GenerationConfig.speculative (ragdesk-side)
    supports_concurrency: bool = False  # several streams may run at once (a server batches them)
    remote: bool = False  # generation happens in another process or machine
    token_counts_exact: bool = True  # count_tokens is the model's tokenizer, not an estimate

    @abstractmethod
    def stream(self, messages: Messages, config: GenerationConfig,
               cancel: threading.Event | None = None) -> Iterator[str | Completion]:
        """Text pieces of the answer to `messages`, then the `Completion`."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in `text` (exact when `token_counts_exact`, else a safe over-estimate)."""

    def count_messages(self, messages: Messages) -> int:
        """Prompt tokens for `messages` with the chat template: a few tokens of template per message."""
        return sum(self.count_tokens(m["content"]) + 4 for m in messages) + 2

    def complete(self, messages: Messages, config: GenerationConfig | None = None) -> Completion:
        """The whole answer at once (the judge uses this)."""
        done = None
        for piece in self.stream(messages, config or GenerationConfig()):
            if isinstance(piece, Completion):
                done = piece
        return done

    def memory_estimate(self, context: int) -> dict[str, int]:
        return {"weights_bytes": 0, "kv_cache_bytes": 0}

    def close(self) -> None:
        """Release what the model holds (connections, threads)."""
