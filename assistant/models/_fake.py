"""A stand-in generator for tests of the app, the harness and the engine, registered like real models
(`--model fake`). Word-level "tokens", a canned grounded answer that quotes the first passage and cites [1],
an optional delay per token so streaming can be watched, and an optional failure after N pieces. Not a
stand-in where speed or concurrency is the point: it sleeps, it does not compute."""

from __future__ import annotations

import re
import time

from ..answer import SpeculativeStats, TokenUsage
from ._base import ChatModel, Completion

__all__ = ["FakeModel"]


class FakeModel(ChatModel):
    def __init__(self, reply: str | None = None, delay_s: float = 0.0, fail: bool = False,
                 fail_after: int | None = None):
        self.name = "fake"
        self.reply = reply
        self.delay_s = delay_s
        self.fail = fail
        self.fail_after = fail_after
        self.context_length = 4096
        self.last_prompt = ""
        self.prompts: list[str] = []
        self.vocab: dict[str, int] = {}  # piece -> id, so equal answers have equal token ids

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _reply(self) -> str:
        if self.reply is not None:
            return self.reply
        passage = ""
        if "\n[1] " in self.last_prompt:  # the first numbered passage: "[1] path (heading)\ntext"
            first = self.last_prompt.split("\n[1] ", 1)[1].split("\n\n[2] ")[0].split("\n\nQuestion: ")[0]
            header, _, body = first.partition("\n")
            passage = f"{header}: {' '.join(body.split())[:200]}"
        return (f"According to the documentation, {passage.strip()} [1]" if passage
                else "I don't know: the passages do not say.")

    def stream(self, messages, config, cancel=None):
        self.last_prompt = "\n".join(m["content"] for m in messages)
        self.prompts.append(self.last_prompt)
        if self.fail:
            raise RuntimeError("the fake model was told to fail")
        prompt_tokens = self.count_messages(messages)
        pieces = re.findall(r"\s*\S+", self._reply())[: config.max_new_tokens]
        text, finish, error = "", "stop", ""
        for i, piece in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if self.fail_after is not None and i >= self.fail_after:
                finish, error = "error", "RuntimeError: the fake model failed mid-answer"
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            text += piece
            yield piece
        else:
            finish = "length" if len(pieces) >= config.max_new_tokens else "stop"
        ids = [self.vocab.setdefault(p, len(self.vocab)) for p in re.findall(r"\s*\S+", text)]
        yield Completion(text=text, finish_reason=finish, error=error, usage=TokenUsage(prompt_tokens, len(ids)),
                         speculative=SpeculativeStats("off", 0, 0, len(ids)), token_ids=ids)
