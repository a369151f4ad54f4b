"""The one place answers are written to history: the chat app, `ask` and `ask --batch` all go through a
`Sessions` service, so every answer is stored the same way (question first, the answer as it streams, then
its sources, usage, timings, speculative figures, model and resolved settings).

A `Recording` is one question being answered: `start` stores the question and a pending answer, `sources`
and `progress` update it (progress at most every `save_every_s`, so streaming costs a few writes a second),
`finish` stores the final `Answer` (complete, cancelled or failed: the partial text is kept either way).
Not here: the SQL (history.py), generating answers (engine.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .answer import Answer, Turn
from .history import History, answer_fields

__all__ = ["Recording", "Sessions"]

SAVE_EVERY_S = 0.25


@dataclass
class Recording:
    conversation_id: int
    message_id: int
    question: str
    text: str = ""
    last_save: float = 0.0


class Sessions:
    """History writes for chat, ask and batch. `settings` (a dict, secrets already masked) is stored with
    each finished answer."""

    def __init__(self, history: History, settings: dict[str, Any] | None = None, save_every_s: float = SAVE_EVERY_S):
        self.history = history
        self.settings = settings or {}
        self.save_every_s = save_every_s

    @classmethod
    def open(cls, settings) -> "Sessions":
        return cls(History(settings.history_db), settings.to_dict())

    def new_conversation(self, collection: str, origin: str = "chat", title: str = "") -> int:
        return self.history.new_conversation(title or "New chat", collection=collection, origin=origin)

    def latest_conversation(self) -> int | None:
        convs = self.history.conversations(limit=1)
        return convs[0].id if convs else None

    def turns(self, conversation_id: int | None) -> list[Turn]:
        return self.history.turns(conversation_id) if conversation_id is not None else []

    def start(self, conversation_id: int, question: str) -> Recording:
        """Store the question, then a pending answer (so a crash from here on still leaves both)."""
        self.history.add_message(conversation_id, "user", question)
        msg_id = self.history.add_message(conversation_id, "assistant", "", status="pending")
        return Recording(conversation_id, msg_id, question, last_save=time.monotonic())

    def sources(self, rec: Recording, passages: Sequence) -> None:
        self.history.update_message(rec.message_id, sources=[dataclasses.asdict(p) for p in passages])

    def progress(self, rec: Recording, piece: str) -> None:
        rec.text += piece
        now = time.monotonic()
        if now - rec.last_save >= self.save_every_s:
            self.history.update_message(rec.message_id, content=rec.text)
            rec.last_save = now

    def finish(self, rec: Recording, answer: Answer) -> None:
        self.history.update_message(rec.message_id, **answer_fields(answer), settings=self.settings)

    def abandon(self, rec: Recording, status: str = "cancelled", error: str = "closed") -> None:
        """The answer ended without an `Answer` (the app closed): keep what streamed, marked as such."""
        self.history.update_message(rec.message_id, content=rec.text, status=status, error=error)

    def record(self, conversation_id: int, answer: Answer) -> Recording:
        """Store a question and its finished answer at once (batch answers)."""
        rec = self.start(conversation_id, answer.question)
        self.finish(rec, answer)
        return rec

    def close(self) -> None:
        self.history.close()
