"""`ragdesk ask --batch IN.jsonl --out OUT.jsonl`: answer a file of questions, for overnight work such as a
backlog of tickets, resumable and safe to interrupt.

Each input line is `{"id"?, "question", ...}`; each output line is the `ask --json` object of one answer plus
the input's `id` (the line number, `line-N`, when it has none). Output lines are written whole, by one
writer, flushed one by one, so the file is valid JSONL whenever it is read, also after Ctrl-C or a crash (a
torn last line left by a killed run is cut off on the next run). Re-running skips the ids already in the
output. Bad input lines are named by number and skipped. With `concurrency` > 1 several questions are in
flight at once: that pays off against a server, which batches them; a local model still answers one at a
time. Every answer also goes to history (one conversation per run). Not here: answering (engine.py).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from retrieval.errors import InputError

from .answer import Answer

__all__ = ["BatchItem", "BatchReport", "read_batch", "run_batch"]


@dataclass
class BatchItem:
    id: str
    question: str
    line: int


@dataclass
class BatchReport:
    answered: int = 0
    failed: int = 0
    skipped_done: int = 0  # already in the output
    bad_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    completion_tokens: int = 0
    interrupted: bool = False
    conversation: int | None = None  # the history conversation holding this run's answers

    @property
    def answers_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"answered": self.answered, "failed": self.failed, "skipped_done": self.skipped_done,
                "bad_lines": self.bad_lines, "seconds": round(self.seconds, 2),
                "answers_per_s": round(self.answers_per_s, 3), "tokens_per_s": round(self.tokens_per_s, 2),
                "interrupted": self.interrupted, "conversation": self.conversation}


def read_batch(path: Path, warn: Callable[[str], None]) -> list[BatchItem]:
    """The questions of `path`; bad lines are reported (`warn`) by number and skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"batch file not found: {path}", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "give a UTF-8 JSONL file, one question a line") from None
    items: list[BatchItem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            warn(f"{path}:{lineno}: not JSON ({exc.msg}); skipped")
            continue
        question = obj.get("question") if isinstance(obj, dict) else None
        if not isinstance(question, str) or not question.strip():
            warn(f'{path}:{lineno}: needs a non-empty "question" string; skipped')
            continue
        raw_id = obj.get("id", f"line-{lineno}")
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
            warn(f'{path}:{lineno}: "id" must be a string or a number, not {raw_id!r}; skipped')
            continue
        item_id = str(raw_id)
        if item_id in seen:
            warn(f"{path}:{lineno}: id {item_id!r} appears twice; skipped")
            continue
        seen.add(item_id)
        items.append(BatchItem(item_id, question.strip(), lineno))
    return items


def _done_ids(out: Path, warn: Callable[[str], None]) -> set[str]:
    """Ids already answered in `out`; a torn last line (a killed run) is cut off so the file stays valid."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    done: set[str] = set()
    good_end = 0
    pos = 0
    for raw in data.splitlines(keepends=True):
        pos += len(raw)
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if pos == len(data):  # only the last line can be torn
                warn(f"{out}: its last line was cut off by an interrupted run; removed, that question is redone")
                break
            raise InputError(f"{out}: a line in the middle is not JSON", "is it the output of ragdesk ask --batch?")
        if not raw.endswith(b"\n"):
            warn(f"{out}: its last line was cut off by an interrupted run; removed, that question is redone")
            break
        good_end = pos
        if isinstance(obj, dict) and "id" in obj:
            done.add(str(obj["id"]))
    if good_end < len(data):
        with open(out, "r+b") as fh:
            fh.truncate(good_end)
    return done


def run_batch(engine, items: list[BatchItem], out: Path, concurrency: int = 1, *, sessions=None,
              conversation: Callable[[], int] | None = None, warn: Callable[[str], None] = lambda m: None,
              on_answer: Callable[[BatchReport, int], None] | None = None) -> BatchReport:
    """Answer `items` into `out` (appending), skipping ids already there. Ctrl-C stops cleanly: answers in
    flight are cancelled and not written, so the next run redoes them."""
    report = BatchReport()
    conv_id: int | None = None
    try:
        done = _done_ids(out, warn)
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out, "a", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}", "choose a writable --out path") from None
    todo = [it for it in items if it.id not in done]
    report.skipped_done = len(items) - len(todo)
    cancel = threading.Event()
    t0 = time.perf_counter()

    def answer_one(item: BatchItem) -> Answer:
        return engine.ask(item.question, cancel=cancel)

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="batch")
    pending: dict[Future, BatchItem] = {}
    queue = list(reversed(todo))
    try:
        with fh:
            while queue or pending:
                while queue and len(pending) < max(1, concurrency):
                    item = queue.pop()
                    pending[pool.submit(answer_one, item)] = item
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    item = pending.pop(fut)
                    answer = fut.result()
                    if answer.status == "cancelled" and cancel.is_set():
                        continue
                    record = answer.to_json() | {"id": item.id}
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    fh.flush()
                    if answer.status == "failed":
                        report.failed += 1
                    else:
                        report.answered += 1
                        report.completion_tokens += answer.usage.completion_tokens
                    if sessions is not None and conversation is not None:
                        if conv_id is None:  # created with the first answer: a run with nothing to do adds none
                            conv_id = report.conversation = conversation()
                        sessions.record(conv_id, answer)
                    report.seconds = time.perf_counter() - t0
                    if on_answer:
                        on_answer(report, len(todo))
    except KeyboardInterrupt:
        report.interrupted = True
        cancel.set()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        report.seconds = time.perf_counter() - t0
    return report
