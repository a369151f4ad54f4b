"""Append-only, named SQLite migrations, shared by the index, chat history and eval runs.

A migration is a function `mNNN_description(db)` registered in order; applied names are recorded in the
`_migrations` table, so applying the list twice changes nothing. Never edit or reorder a released migration:
add a new one.
"""

from __future__ import annotations

import datetime as _dt
from typing import Callable

import sqlite_utils

__all__ = ["Migrations"]


class Migrations:
    def __init__(self, name: str):
        self.name = name  # the family: "index", "history", "evals"
        self.steps: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []

    def __call__(self, fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
        self.steps.append((fn.__name__, fn))
        return fn

    def apply(self, db: sqlite_utils.Database) -> list[str]:
        """Apply the migrations not yet applied, each in its own transaction; returns their names."""
        if "_migrations" not in db.table_names():
            db["_migrations"].create({"family": str, "name": str, "applied_at": str}, pk=("family", "name"))
        done = {r["name"] for r in db["_migrations"].rows_where("family = ?", [self.name])}
        applied = []
        for name, fn in self.steps:
            if name in done:
                continue
            with db.atomic():
                fn(db)
                db["_migrations"].insert({"family": self.name, "name": name,
                                          "applied_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            applied.append(name)
        return applied
