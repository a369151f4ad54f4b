"""On-disk layout of one collection: SQLite (documents, chunks, stored vectors, FTS5) and the FAISS file.

SQLite is the source of truth. The FAISS file is a cache of the stored vectors, stamped with the SQLite
`generation` it was built from and a digest of its chunk ids; a file that disagrees (a run killed between the
SQLite commit and the FAISS write, a stale copy) is rebuilt from the vectors on open, without re-embedding.
The file is written to a temporary name and `os.replace`d, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from .migrations import Migrations

__all__ = ["VectorIndex", "open_db"]

migrations = Migrations("index")


@migrations
def m001_create_tables(db: sqlite_utils.Database) -> None:
    db["documents"].create({"id": int, "abspath": str, "path": str, "title": str, "kind": str, "unit": str,
                            "sha256": str, "size": int, "n_chunks": int, "indexed_at": str}, pk="id")
    db["documents"].create_index(["abspath"], unique=True)
    db["chunks"].create({"id": int, "doc_id": int, "ord": int, "text": str, "trail": str, "first": int,
                         "last": int, "start": int, "end": int, "n_tokens": int}, pk="id",
                        foreign_keys=[("doc_id", "documents", "id")])
    db["chunks"].create_index(["doc_id"])
    db["vectors"].create({"chunk_id": int, "vec": bytes}, pk="chunk_id")
    db.execute("CREATE VIRTUAL TABLE chunks_fts USING fts5(text, heading, tokenize='porter unicode61')")
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert_all([{"key": "generation", "value": "0"}])


def open_db(path: Path) -> sqlite_utils.Database:
    path.parent.mkdir(parents=True, exist_ok=True)
    # shareable across threads: the chat app opens a collection in one worker thread and searches it from
    # others (sqlite3 is serialized, threadsafety 3)
    db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    migrations.apply(db)
    return db


def get_meta(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else default


def set_meta(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [key, value])


_MAGIC = b"RDFAISS1"


@dataclass
class VectorIndex:
    """A FAISS index keyed by chunk id plus the stamp that ties it to one SQLite state."""

    index: object  # faiss.Index (IndexIDMap2 around Flat or HNSW)
    generation: int
    ids_digest: str
    kind: str  # "flat" or "hnsw"

    @staticmethod
    def build(ids: np.ndarray, vecs: np.ndarray, dim: int, kind: str, generation: int,
              hnsw_m: int = 32, ef_construction: int = 80) -> "VectorIndex":
        import faiss

        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = ef_construction
        else:
            inner = faiss.IndexFlatIP(dim)
        index = faiss.IndexIDMap2(inner)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids.astype(np.int64))
        return VectorIndex(index, generation, ids_digest(ids), kind)

    def save(self, path: Path) -> None:
        import faiss

        data = faiss.serialize_index(self.index).tobytes()
        header = json.dumps({"generation": self.generation, "ids_digest": self.ids_digest, "kind": self.kind,
                             "ntotal": int(self.index.ntotal)}).encode()
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(_MAGIC + struct.pack("<I", len(header)) + header + data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> "VectorIndex | None":
        """The stored index, or None when the file is missing or unreadable (the caller rebuilds)."""
        import faiss

        try:
            raw = path.read_bytes()
            if not raw.startswith(_MAGIC):
                return None
            (n,) = struct.unpack("<I", raw[8:12])
            header = json.loads(raw[12:12 + n])
            index = faiss.deserialize_index(np.frombuffer(raw[12 + n:], dtype=np.uint8))
        except Exception:  # truncated or foreign file: treat as missing
            return None
        return VectorIndex(index, int(header["generation"]), header["ids_digest"], header["kind"])

    def search(self, query: np.ndarray, k: int, ef_search: int = 96) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self.index.ntotal == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = max(ef_search, k)
        scores, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:16]
