"""Chat history: conversations and their messages, stored in SQLite (`Settings.history_db`).

Each question is stored before it is answered, and each answer is stored as soon as it starts (status
`pending`) and updated while it streams, so closing or killing the app loses nothing: on the next open a
`pending` answer left behind is marked `cancelled` with the error "interrupted". Answers keep their sources,
token usage, timings, cost, model and device. `turns()` gives a conversation back to the engine as context.

Not here: generating answers (engine.py) and showing them (tui/). The schema changes only through the
append-only migrations below. One `History` may be used from several threads (writes are serialized).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from retrieval import Passage
from retrieval.errors import InputError
from retrieval.migrations import Migrations

from .answer import Answer, Turn

__all__ = ["Conversation", "History", "Message", "STATUSES"]

STATUSES = ("pending", "complete", "cancelled", "failed")
DEFAULT_TITLE = "New chat"

migrations = Migrations("history")


@migrations
def m001_create_tables(db: sqlite_utils.Database) -> None:
    db["conversations"].create({"id": int, "title": str, "collection": str, "created_at": str,
                                "updated_at": str}, pk="id")
    db["messages"].create({"id": int, "conversation_id": int, "role": str, "content": str, "status": str,
                           "error": str, "sources": str, "usage": str, "timings": str, "cost": str,
                           "model": str, "device": str, "created_at": str, "updated_at": str}, pk="id",
                          foreign_keys=[("conversation_id", "conversations", "id")])
    db["messages"].create_index(["conversation_id", "id"])


@migrations
def m002_origin_owner_settings(db: sqlite_utils.Database) -> None:
    """Answers from `ask` and batch land here too: where a conversation came from, which process is still
    writing a pending answer (so another process's recovery leaves it alone), and each answer's speculative
    figures and resolved settings."""
    db["conversations"].add_column("origin", str)  # chat, ask, batch
    db["messages"].add_column("owner", int)  # pid of the process writing a pending answer
    db["messages"].add_column("speculative", str)
    db["messages"].add_column("settings", str)


_last_stamp = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
_stamp_lock = threading.Lock()


def _now() -> str:
    """A UTC timestamp that strictly increases within the process, so "most recently active first" never
    ties on a fast machine (two writes in the same microsecond)."""
    global _last_stamp
    with _stamp_lock:
        now = _dt.datetime.now(_dt.timezone.utc)
        _last_stamp = now if now > _last_stamp else _last_stamp + _dt.timedelta(microseconds=1)
        return _last_stamp.isoformat(timespec="microseconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class Conversation:
    id: int
    title: str
    collection: str
    created_at: str
    updated_at: str
    origin: str = "chat"  # chat, ask, batch


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str  # "user" or "assistant"
    content: str
    status: str = "complete"  # pending, complete, cancelled, failed
    error: str = ""
    sources: list[Passage] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)  # prompt_tokens, completion_tokens
    timings: dict[str, Any] = field(default_factory=dict)  # retrieval_ms, ttft_ms, total_ms, tokens_per_s
    cost: dict[str, Any] = field(default_factory=dict)  # input_usd, output_usd, device_usd
    model: str = ""
    device: str = ""
    created_at: str = ""
    speculative: dict[str, Any] = field(default_factory=dict)  # method, draft_tokens, accepted_tokens, steps
    settings: dict[str, Any] = field(default_factory=dict)  # the resolved settings the answer was made with

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sources"] = [p.to_source(i + 1) for i, p in enumerate(self.sources)]
        return out


def _message(row: dict[str, Any]) -> Message:
    sources = [Passage(**p) for p in json.loads(row["sources"] or "[]")]
    return Message(row["id"], row["conversation_id"], row["role"], row["content"] or "", row["status"],
                   row["error"] or "", sources, json.loads(row["usage"] or "{}"), json.loads(row["timings"] or "{}"),
                   json.loads(row["cost"] or "{}"), row["model"] or "", row["device"] or "", row["created_at"],
                   json.loads(row.get("speculative") or "{}"), json.loads(row.get("settings") or "{}"))


def answer_fields(answer: Answer) -> dict[str, Any]:
    """The columns of an assistant message for a finished (or cancelled/failed) `Answer`."""
    return {"content": answer.text, "status": answer.status, "error": answer.error,
            "sources": [dataclasses.asdict(p) for p in answer.sources],
            "usage": dataclasses.asdict(answer.usage), "timings": dataclasses.asdict(answer.timings),
            "cost": dataclasses.asdict(answer.cost), "model": answer.model, "device": answer.device,
            "speculative": dataclasses.asdict(answer.speculative)}


class History:
    """The history database at `path` (created with its folder on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=False))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        with self._lock:
            migrations.apply(self.db)
            self.recover()

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    def recover(self) -> int:
        """Mark answers left `pending` by a process that died as cancelled; returns how many. An answer
        another live process is still writing (a chat app open while `ask` runs) is left alone."""
        with self._lock, self.db.atomic():
            rows = self.db.execute("SELECT id, owner FROM messages WHERE status = 'pending'").fetchall()
            dead = [mid for mid, owner in rows if owner is None or owner == os.getpid() or not _alive(owner)]
            now = _now()
            for mid in dead:
                self.db.execute("UPDATE messages SET status = 'cancelled', error = 'interrupted', updated_at = ? "
                                "WHERE id = ?", [now, mid])
            return len(dead)

    # ---- conversations ----------------------------------------------------------------------------------
    def new_conversation(self, title: str = DEFAULT_TITLE, collection: str = "default", origin: str = "chat") -> int:
        now = _now()
        with self._lock, self.db.atomic():
            return self.db["conversations"].insert({"title": title.strip() or DEFAULT_TITLE,
                                                     "collection": collection, "created_at": now,
                                                     "updated_at": now, "origin": origin}).last_pk

    _CONV = "SELECT id, title, collection, created_at, updated_at, coalesce(origin, 'chat') FROM conversations"

    def conversations(self, limit: int | None = None) -> list[Conversation]:
        """All conversations (or the `limit` latest), most recently active first."""
        with self._lock:
            rows = self.db.execute(self._CONV + " ORDER BY updated_at DESC, id DESC LIMIT ?",
                                   [-1 if limit is None else limit]).fetchall()
        return [Conversation(*r) for r in rows]

    def conversation(self, conv_id: int) -> Conversation:
        with self._lock:
            row = self.db.execute(self._CONV + " WHERE id = ?", [conv_id]).fetchone()
        if row is None:
            raise InputError(f"no conversation with id {conv_id}", "see the ids with: ragdesk history list")
        return Conversation(*row)

    def search(self, query: str, limit: int = 20) -> list[tuple[Conversation, Message]]:
        """Messages whose text holds every word of `query` (case-insensitive), newest first."""
        words = query.split()
        if not words:
            raise InputError("the search is empty", "give some words to look for")
        where = " AND ".join("instr(lower(content), ?) > 0" for _ in words)
        with self._lock:
            rows = list(self.db["messages"].rows_where(where, [w.lower() for w in words], order_by="id DESC",
                                                       limit=limit))
        convs: dict[int, Conversation] = {}
        out = []
        for r in rows:
            cid = r["conversation_id"]
            if cid not in convs:
                convs[cid] = self.conversation(cid)
            out.append((convs[cid], _message(r)))
        return out

    def rename(self, conv_id: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise InputError("a conversation title cannot be empty", "type a title")
        self.conversation(conv_id)
        with self._lock, self.db.atomic():
            self.db.execute("UPDATE conversations SET title = ? WHERE id = ?", [title, conv_id])

    def delete(self, conv_id: int) -> None:
        self.conversation(conv_id)
        with self._lock, self.db.atomic():
            self.db.execute("DELETE FROM messages WHERE conversation_id = ?", [conv_id])
            self.db.execute("DELETE FROM conversations WHERE id = ?", [conv_id])

    def _touch(self, conv_id: int) -> None:
        self.db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", [_now(), conv_id])

    # ---- messages ---------------------------------------------------------------------------------------
    def add_message(self, conv_id: int, role: str, content: str, status: str = "complete",
                    **fields: Any) -> int:
        """Store a message; the first question of an untitled conversation also becomes its title."""
        if role not in ("user", "assistant"):
            raise InputError(f"role {role!r} is not valid", "use user or assistant")
        conv = self.conversation(conv_id)
        if status == "pending":
            fields.setdefault("owner", os.getpid())  # recovery in another process leaves it alone while we live
        row = self._row(content=content, status=status, **fields)
        row.update(conversation_id=conv_id, role=role, created_at=row["updated_at"])
        with self._lock, self.db.atomic():
            msg_id = self.db["messages"].insert(row).last_pk
            if role == "user" and conv.title == DEFAULT_TITLE and content.strip():
                title = " ".join(content.split())
                self.db.execute("UPDATE conversations SET title = ? WHERE id = ?",
                                [title if len(title) <= 48 else title[:47] + "…", conv_id])
            self._touch(conv_id)
        return msg_id

    def update_message(self, msg_id: int, **fields: Any) -> None:
        """Change some columns of a message (content while streaming, then the finished answer's fields)."""
        row = self._row(**fields)
        sets = ", ".join(f"[{k}] = ?" for k in row)
        with self._lock, self.db.atomic():
            cur = self.db.execute(f"UPDATE messages SET {sets} WHERE id = ?", [*row.values(), msg_id])
            if cur.rowcount == 0:
                raise InputError(f"no message with id {msg_id}")
            conv_id = self.db.execute("SELECT conversation_id FROM messages WHERE id = ?", [msg_id]).fetchone()[0]
            self._touch(conv_id)

    def save_answer(self, msg_id: int, answer: Answer) -> None:
        self.update_message(msg_id, **answer_fields(answer))

    @staticmethod
    def _row(**fields: Any) -> dict[str, Any]:
        allowed = {"content", "status", "error", "sources", "usage", "timings", "cost", "model", "device", "owner",
                   "speculative", "settings"}
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(f"unknown message fields: {', '.join(sorted(unknown))}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise InputError(f"status {fields['status']!r} is not valid", f"use one of {', '.join(STATUSES)}")
        row = {k: (json.dumps(v) if k in ("sources", "usage", "timings", "cost", "speculative", "settings") else v)
               for k, v in fields.items()}
        row["updated_at"] = _now()
        return row

    def messages(self, conv_id: int) -> list[Message]:
        with self._lock:
            rows = list(self.db["messages"].rows_where("conversation_id = ?", [conv_id], order_by="id"))
        return [_message(r) for r in rows]

    def message(self, msg_id: int) -> Message:
        with self._lock:
            rows = list(self.db["messages"].rows_where("id = ?", [msg_id]))
        if not rows:
            raise InputError(f"no message with id {msg_id}")
        return _message(rows[0])

    def turns(self, conv_id: int) -> list[Turn]:
        """Earlier exchanges to give the engine as context: each question with its completed answer
        (cancelled, failed and unanswered questions are left out)."""
        turns: list[Turn] = []
        question: Message | None = None
        for m in self.messages(conv_id):
            if m.role == "user":
                question = m
            elif question is not None:
                if m.status == "complete" and m.content.strip():
                    turns.append(Turn(question.content, m.content))
                question = None
        return turns
