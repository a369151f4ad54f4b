"""Stored eval runs: one SQLite file (Settings.evals_db) with a row per run and a row per sample.

A run keeps everything needed to trust and reproduce it: the resolved settings, library versions, the
model and the identity of the indexed collection, the suite's digest, the aggregated summary, and per sample
the answer, retrieved contexts, usage, timings and scores. The schema changes only through the append-only
migrations below; a run is written in one transaction. Not here: computing scores (`_harness.py`).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import sqlite_utils

from retrieval.errors import InputError
from retrieval.migrations import Migrations

__all__ = ["RunStore", "migrations"]

migrations = Migrations("evals")

_JSON_RUN = ("config", "versions", "index_stats", "summary", "harness")
_JSON_SAMPLE = ("gold_sources", "expect", "contexts", "usage", "timings", "cost", "speculative", "scores",
                "score_status", "score_notes")


@migrations
def m001_create_tables(db: sqlite_utils.Database) -> None:
    db["runs"].create({"id": int, "created_at": str, "suite": str, "suite_sha": str, "n_samples": int,
                       "model": str, "adapter": str, "speculative": str, "judge": str, "collection": str,
                       "collection_identity": str, "index_stats": str, "config": str, "versions": str,
                       "summary": str, "harness": str, "label": str}, pk="id")
    db["samples"].create({"run_id": int, "idx": int, "sample_id": str, "question": str, "reference": str,
                          "unanswerable": int, "gold_sources": str, "expect": str, "answer": str,
                          "contexts": str, "status": str, "error": str, "declined": int, "usage": str,
                          "timings": str, "cost": str, "speculative": str, "scores": str, "score_status": str,
                          "score_notes": str},
                         pk=("run_id", "sample_id"), foreign_keys=[("run_id", "runs", "id")])
    db["samples"].create_index(["run_id", "idx"])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.path)
        self.db.execute("PRAGMA busy_timeout=5000")
        migrations.apply(self.db)

    def save(self, run: dict[str, Any], samples: list[dict[str, Any]]) -> int:
        """Store one run and its samples atomically; returns the run id."""
        row = {k: (json.dumps(v) if k in _JSON_RUN else v) for k, v in run.items()}
        row.setdefault("created_at", _now())
        row.pop("id", None)
        with self.db.atomic():
            run_id = self.db["runs"].insert(row).last_pk
            self.db["samples"].insert_all(
                [{"run_id": run_id, "idx": i, **{k: (json.dumps(v) if k in _JSON_SAMPLE else v)
                                                  for k, v in s.items()}} for i, s in enumerate(samples)])
        return int(run_id)

    def resolve(self, ref: str | int) -> int:
        """A run id from `ref`: a number, `latest` or `previous`."""
        text = str(ref).strip().lower()
        if text in ("latest", "last", "previous"):
            ids = [r[0] for r in self.db.execute("SELECT id FROM runs ORDER BY id DESC LIMIT 2").fetchall()]
            want = 0 if text != "previous" else 1
            if len(ids) <= want:
                raise InputError(f"there is no {text} run in {self.path}", "run a suite first: ragdesk eval SUITE")
            return ids[want]
        try:
            run_id = int(text.lstrip("#"))
        except ValueError:
            raise InputError(f"{ref!r} is not a run id", "use a number from `ragdesk eval list`, or latest/previous"
                             ) from None
        if not self.db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone():
            raise InputError(f"run {run_id} does not exist in {self.path}", "see `ragdesk eval list`")
        return run_id

    def run(self, ref: str | int) -> dict[str, Any]:
        run_id = self.resolve(ref)
        row = dict(self.db["runs"].get(run_id))
        for k in _JSON_RUN:
            row[k] = json.loads(row[k]) if row.get(k) else {}
        return row

    def samples(self, ref: str | int) -> list[dict[str, Any]]:
        run_id = self.resolve(ref)
        out = []
        for row in self.db["samples"].rows_where("run_id = ?", [run_id], order_by="idx"):
            row = dict(row)
            for k in _JSON_SAMPLE:
                row[k] = json.loads(row[k]) if row.get(k) else ({} if k not in ("gold_sources", "contexts",
                                                                                  "expect") else [])
            row["unanswerable"] = bool(row["unanswerable"])
            row["declined"] = bool(row["declined"])
            out.append(row)
        return out

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, created_at, suite, n_samples, model, speculative, judge, collection, summary, label "
            "FROM runs ORDER BY id DESC LIMIT ?", [limit]).fetchall()
        keys = ["id", "created_at", "suite", "n_samples", "model", "speculative", "judge", "collection",
                "summary", "label"]
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            d["summary"] = json.loads(d["summary"]) if d["summary"] else {}
            out.append(d)
        return out

    def close(self) -> None:
        self.db.close()
