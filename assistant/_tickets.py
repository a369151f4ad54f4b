"""Support tickets for fine-tuning: reading them (JSONL or CSV) and rendering them into masked training rows.

A ticket is one conversation ending in the agent's reply. Three shapes are read (SPEC.md): `{"question",
"answer"}`, `{"subject", "body", "answer"}`, and OpenAI-style `{"messages": [{"role", "content"}, ...]}`; an
optional `"split": "test"` marks the fixed held-out set. Bad rows are returned as problems naming the file and
line (the caller reports them) and skipped; a file with no usable row is an `InputError`.

Rendering uses the model's own chat template (the one `TransformersModel.encode_chat` uses at answer time) and
labels only the assistant replies (plus the template's end-of-turn token, so the model learns to stop);
everything else is -100. Not here: batching, training (finetune.py).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import InputError

__all__ = ["SUPPORT_PROMPT", "Ticket", "read_tickets", "render_ticket", "support_messages"]

SUPPORT_PROMPT = ("You are a friendly, precise customer-support agent for Tidepool, a self-hosted file sync and "
                  "sharing server. Answer the customer's question in a few sentences with concrete steps.")

ROLES = ("system", "user", "assistant")


@dataclass
class Ticket:
    """One conversation; `messages` has no system prompt unless the ticket brought its own."""

    messages: list[dict[str, str]]
    split: str = "train"
    line: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def reply(self) -> str:
        return self.messages[-1]["content"]


def support_messages(question: str, system: str = SUPPORT_PROMPT) -> list[dict[str, str]]:
    """The prompt a fine-tuned model sees for a question (the same one training renders, minus the reply)."""
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{key}" must be a non-empty string')
    return value.strip()


def _ticket_from_row(row) -> Ticket:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    split = str(row.get("split") or "train").strip().lower()
    if "messages" in row and row["messages"] not in (None, ""):
        msgs = row["messages"]
        if isinstance(msgs, str):  # a CSV cell holding JSON
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError as exc:
                raise ValueError(f'"messages" is not valid JSON ({exc.msg})') from None
        if not isinstance(msgs, list) or not msgs:
            raise ValueError('"messages" must be a non-empty list')
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f'messages[{i}] needs "role" (system, user or assistant) and "content" (string)')
            clean.append({"role": m["role"], "content": m["content"].strip()})
        if clean[-1]["role"] != "assistant" or not clean[-1]["content"]:
            raise ValueError("the last message must be a non-empty assistant reply")
        if not any(m["role"] == "user" for m in clean):
            raise ValueError("no user message")
        return Ticket(clean, split)
    if "answer" not in row and "question" not in row and "subject" not in row:
        raise ValueError('needs "question" and "answer", "subject", "body" and "answer", or "messages"')
    answer = _text(row, "answer")
    if row.get("question") not in (None, ""):
        question = _text(row, "question")
    else:
        question = f"{_text(row, 'subject')}\n\n{_text(row, 'body')}"
    extra = {k: v for k, v in row.items() if k not in ("question", "subject", "body", "answer", "split")}
    return Ticket([{"role": "user", "content": question}, {"role": "assistant", "content": answer}], split,
                  extra=extra)


def read_tickets(path: str | Path) -> tuple[list[Ticket], list[str]]:
    """(tickets, problems): each problem is 'FILE:LINE: why' for a row that was skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ticket file not found: {path}", "pass a .jsonl or .csv file of support tickets")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})", "save the file as UTF-8") from None
    if not text.strip():
        raise InputError(f"{path}: the ticket file is empty",
                         'write one ticket a line, e.g. {"question": "...", "answer": "..."}')
    rows: list[tuple[int, object]] = []
    problems: list[tuple[int, str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        if not reader.fieldnames:
            raise InputError(f"{path}: no CSV header", "the first line must name the columns (question,answer)")
        start = reader.line_num + 1
        for row in reader:
            if None in row:  # more cells than header columns
                problems.append((start, f"{len(row[None])} more cells than the header has columns"))
            else:
                rows.append((start, {k.strip(): v for k, v in row.items() if k}))
            start = reader.line_num + 1
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append((n, f"not valid JSON ({exc.msg} at column {exc.colno})"))
    tickets: list[Ticket] = []
    for n, row in rows:
        try:
            ticket = _ticket_from_row(row)
        except ValueError as exc:
            problems.append((n, str(exc)))
            continue
        ticket.line = n
        tickets.append(ticket)
    problems_text = [f"{path}:{n}: {why}" for n, why in sorted(problems)]
    if not tickets:
        problems = problems_text
        first = problems[0] if problems else f"{path}: no tickets"
        more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
        raise InputError(f"no usable tickets: {first}{more}",
                         'each row needs "question"+"answer", "subject"+"body"+"answer" or "messages"')
    return tickets, problems_text


def render_ticket(tokenizer, ticket: Ticket, system: str = SUPPORT_PROMPT,
                  max_length: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one ticket: the chat template over the whole conversation, labels equal to the
    ids on assistant-reply tokens (and the end-of-turn token that closes each reply), -100 everywhere else.

    Spans are found in characters (each reply sits between the rendered prompt-so-far and the rendered
    conversation-so-far) and mapped to tokens through the tokenizer's offsets, so merges across a boundary
    cannot shift them. `max_length` > 0 cuts the row on the right."""
    msgs = list(ticket.messages)
    if msgs[0]["role"] != "system" and system:
        msgs = [{"role": "system", "content": system}, *msgs]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise InputError(f"line {ticket.line}: the model's chat template does not render this conversation "
                             "incrementally", "use tickets with one user question and one reply")
        # the reply itself, then the template's closing text up to the first whitespace (the end-of-turn token)
        head = upto[len(before):]
        cut = head.find(m["content"]) + len(m["content"]) if m["content"] in head else len(head)
        tail = head[cut:]
        closing = re.match(r"\S*", tail).end()
        spans.append((len(before), len(before) + cut + closing))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [-100] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a < e for s, e in spans):
            labels[t] = ids[t]
    if max_length and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels
