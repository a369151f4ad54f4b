"""A named collection: incremental indexing of files and hybrid (dense + BM25) search over their chunks.

Indexing is incremental by content hash: an unchanged file embeds nothing, a changed one replaces its chunks,
a file gone from an indexed folder disappears. Each batch of files is written in one SQLite transaction
together with a bump of the collection's `generation`; the FAISS file is refreshed at the end of the run (also
after Ctrl-C) and rebuilt from stored vectors on open whenever it disagrees with SQLite, so a run killed at
any point leaves an index that opens and answers. Runs on one collection take turns (an advisory lock, see
`_scan.collection_lock`); what the scan cannot read is reported and keeps its documents (`_scan.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ._abstain import META_KEY as _ABSTAIN_KEY
from ._abstain import AbstainRule, Evidence
from ._chunking import ChunkingConfig, chunk_document, chunk_prefix
from ._embedders import Embedder
from ._loaders import SkipFile, load_document
from ._scan import collection_lock, read_regular, scan_paths
from ._store import VectorIndex, get_meta, ids_digest, open_db, set_meta
from .errors import ConfigError, IndexMissingError, InputError

__all__ = ["Collection", "IndexReport", "Passage", "SearchConfig"]

MODES = ("hybrid", "dense", "bm25")


@dataclass(frozen=True)
class SearchConfig:
    """Hybrid search knobs. `rrf_k` is the reciprocal-rank constant; `candidates` how deep each side looks;
    `exact_limit` the collection size above which FAISS switches from exact search to HNSW."""

    # fusion defaults from benchmarks/retrieval_bench.py: a setting of its grid under which hybrid beats
    # dense, BM25 and the baseline on the Python FAQ (verbatim and masked, section and page level) and on the
    # bundled suite
    rrf_k: int = 10
    candidates: int = 100
    dense_weight: float = 1.0
    bm25_weight: float = 0.25
    exact_limit: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256  # recall@10 vs exact at 100K: 0.959 at 96, 0.979 at 256 (benchmarks/retrieval_bench.py)

    def __post_init__(self) -> None:
        for name in ("rrf_k", "candidates", "exact_limit", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.dense_weight < 0 or self.bm25_weight < 0:
            raise ConfigError("dense_weight and bm25_weight must be >= 0")


@dataclass
class Passage:
    """One retrieved chunk, as SPEC.md's source object (`to_source`)."""

    chunk_id: int
    path: str
    title: str
    heading: str
    first: int
    last: int
    unit: str
    text: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)

    def to_source(self, n: int) -> dict:
        return {"n": n, "path": self.path, "heading": self.heading, "lines": [self.first, self.last],
                "unit": self.unit, "score": round(float(self.score), 6), "text": self.text}

    @property
    def location(self) -> str:
        return f"{'p.' if self.unit == 'page' else 'lines '}{self.first}-{self.last}"


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    chunks: int = 0
    embedded: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "removed": self.removed,
                "unchanged": self.unchanged, "skipped": len(self.skipped),
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped], "ignored": self.ignored,
                "chunks": self.chunks, "embedded": self.embedded, "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted}


ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)

_STOPWORDS = frozenset("""a an and are as at be by can do does for from how i if in is it its me my of on or
should so than that the this to was what when where which who why will with you your""".split())


def _fts_query(text: str) -> str:
    words = [w for w in re.findall(r"\w+", text.lower()) if w not in _STOPWORDS]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Collection:
    """One named collection under `root` (a folder holding `index.db` and `vectors.faiss`)."""

    def __init__(self, root: Path, embedder: Embedder, chunking: ChunkingConfig | None = None,
                 search: SearchConfig | None = None, create: bool = True):
        self.root = Path(root)
        self.name = self.root.name
        if not create and not (self.root / "index.db").exists():
            raise IndexMissingError(f"collection {self.name!r} has no index yet",
                                    f"run: ragdesk index PATH --collection {self.name}")
        self.embedder = embedder
        base = chunking or ChunkingConfig()
        self.chunking = dataclasses.replace(base, max_tokens=min(base.max_tokens, embedder.max_tokens))
        self.search_config = search or SearchConfig()
        # two processes creating one collection at once would both run the migrations: take turns (a lock
        # of its own, held for milliseconds, so opening never waits for a whole index run)
        with collection_lock(self.root, "open.lock"):
            self.db = open_db(self.root / "index.db")
        stored = get_meta(self.db, "embedder")
        if stored and stored != embedder.name:
            raise ConfigError(f"collection {self.name!r} was built with embedder {stored!r}, not {embedder.name!r}",
                              f"use the same embedder or re-index with --rebuild")
        self._faiss: VectorIndex | None = None
        self.rebuilt_on_open = False

    # ---- state ------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return int(get_meta(self.db, "generation", "0"))

    def stats(self) -> dict:
        docs = self.db.execute("SELECT count(*) FROM documents").fetchone()[0]
        chunks = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return {"collection": self.name, "documents": docs, "chunks": chunks, "generation": self.generation,
                "embedder": get_meta(self.db, "embedder"), "vector_index": self._wanted_kind(chunks)}

    def identity(self) -> str:
        """A short digest that changes whenever the indexed content changes (stored with eval runs)."""
        rows = self.db.execute("SELECT abspath, sha256 FROM documents ORDER BY abspath").fetchall()
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]

    def _wanted_kind(self, n: int) -> str:
        return "hnsw" if n > self.search_config.exact_limit else "flat"

    # ---- FAISS sync -------------------------------------------------------------------------------------
    def _stored_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.execute("SELECT chunk_id, vec FROM vectors ORDER BY chunk_id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, self.embedder.dim), np.float32)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, vecs

    def vector_index(self) -> VectorIndex:
        """The FAISS index, loaded once; rebuilt from stored vectors when it disagrees with SQLite."""
        if self._faiss is not None and self._faiss.generation == self.generation:
            return self._faiss
        path = self.root / "vectors.faiss"
        loaded = VectorIndex.load(path)
        ids = np.array([r[0] for r in self.db.execute("SELECT chunk_id FROM vectors")], dtype=np.int64)
        if (loaded is None or loaded.generation != self.generation or loaded.ids_digest != ids_digest(ids)
                or loaded.kind != self._wanted_kind(len(ids))):
            loaded = self._rebuild_faiss()
            self.rebuilt_on_open = True
        self._faiss = loaded
        return loaded

    def _rebuild_faiss(self) -> VectorIndex:
        ids, vecs = self._stored_vectors()
        index = VectorIndex.build(ids, vecs, self.embedder.dim, self._wanted_kind(len(ids)), self.generation,
                                  self.search_config.hnsw_m, self.search_config.ef_construction)
        index.save(self.root / "vectors.faiss")
        return index

    def _sync_faiss(self, added: dict[int, np.ndarray], removed: list[int]) -> None:
        """Bring the FAISS file up to the current generation, incrementally where the index type allows."""
        current = self._faiss or VectorIndex.load(self.root / "vectors.faiss")
        now = np.array([r[0] for r in self.db.execute("SELECT chunk_id FROM vectors")], dtype=np.int64)
        kind = self._wanted_kind(len(now))
        expected_before = None
        if current is not None:
            # the file must describe the state before this run's changes for an incremental update
            before = (set(now.tolist()) - set(added)) | set(removed)
            expected_before = ids_digest(np.array(sorted(before), dtype=np.int64))
        incremental = (current is not None and current.ids_digest == expected_before and current.kind == kind
                       and (kind == "flat" or not removed))
        if not incremental:
            self._faiss = self._rebuild_faiss()
            return
        if removed:
            current.index.remove_ids(np.array(removed, dtype=np.int64))
        if added:
            ids = np.array(list(added), dtype=np.int64)
            current.index.add_with_ids(np.stack([added[i] for i in ids]).astype(np.float32), ids)
        current.generation = self.generation
        current.ids_digest = ids_digest(now)
        current.save(self.root / "vectors.faiss")
        self._faiss = current

    # ---- indexing ---------------------------------------------------------------------------------------
    def update(self, paths: Iterable[Path], rebuild: bool = False, progress: ProgressFn | None = None,
               warn: Callable[[str], None] | None = None, batch_chunks: int = 256) -> IndexReport:
        """Index `paths` (files or folders) incrementally; returns what changed.

        One run at a time per collection: a second one reports progress stage "wait" and waits for the lock.
        Whatever cannot be read (a folder, a file, a symlink loop) is skipped by name through `warn` and
        keeps its indexed documents; only files really gone from an indexed folder are removed."""
        progress = progress or (lambda stage, done, total: None)
        with collection_lock(self.root, on_wait=lambda: progress("wait", 0, 0)):
            return self._update(list(paths), rebuild, progress, warn or (lambda msg: None), batch_chunks)

    def _update(self, paths: list[Path], rebuild: bool, progress: ProgressFn, warn: Callable[[str], None],
                batch_chunks: int) -> IndexReport:
        t0 = time.perf_counter()
        report = IndexReport()
        scan = scan_paths(paths, int(self.chunking.max_file_mb * 1_000_000))
        files, roots, report.ignored = scan.files, scan.roots, scan.ignored
        for display, reason in scan.skipped:
            report.skipped.append((display, reason))
            warn(f"skipped {display}: {reason}")
        set_meta_needed = get_meta(self.db, "embedder") is None
        if rebuild:
            with self.db.atomic():
                self.db.execute("DELETE FROM chunks_fts")
                self.db.execute("DELETE FROM vectors")
                self.db.execute("DELETE FROM chunks")
                self.db.execute("DELETE FROM documents")
                self._bump()
            set_meta_needed = True
        if set_meta_needed:
            with self.db.atomic():
                set_meta(self.db, "embedder", self.embedder.name)
                set_meta(self.db, "dim", str(self.embedder.dim))

        known = {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT abspath, id, sha256 FROM documents")}
        seen: set[str] = set()
        added_vecs: dict[int, np.ndarray] = {}
        removed_ids: list[int] = []
        pending: list[tuple[str, str, str, int, object, list]] = []  # abspath, display, sha, size, doc, chunks
        pending_chunks = 0

        def flush() -> None:
            nonlocal pending, pending_chunks
            if not pending:
                return
            texts = [chunk_prefix(doc.title, c.trail) + "\n" + c.text for _, _, _, _, doc, cs in pending for c in cs]
            progress("embed", 0, len(texts))
            vecs = self.embedder.embed(texts) if texts else np.zeros((0, self.embedder.dim), np.float32)
            report.embedded += len(texts)
            row = 0
            with self.db.atomic():
                for abspath, display, sha, size, doc, chunks in pending:
                    old = known.get(abspath)
                    if old:
                        removed_ids.extend(self._delete_doc(old[0]))
                        report.updated += 1
                    else:
                        report.added += 1
                    doc_id = self.db["documents"].insert({
                        "abspath": abspath, "path": display, "title": doc.title, "kind": doc.kind,
                        "unit": doc.unit, "sha256": sha, "size": size, "n_chunks": len(chunks),
                        "indexed_at": _now()}).last_pk
                    for c in chunks:
                        cur = self.db.execute(
                            "INSERT INTO chunks(doc_id, ord, text, trail, first, last, start, end, n_tokens) "
                            "VALUES (?,?,?,?,?,?,?,?,?)",
                            [doc_id, c.ord, c.text, json.dumps(list(c.trail)), c.first, c.last, c.start, c.end,
                             c.n_tokens])
                        cid = cur.lastrowid
                        vec = vecs[row]
                        row += 1
                        self.db.execute("INSERT INTO vectors(chunk_id, vec) VALUES (?, ?)",
                                        [cid, vec.astype(np.float32).tobytes()])
                        self.db.execute("INSERT INTO chunks_fts(rowid, text, heading) VALUES (?, ?, ?)",
                                        [cid, c.text, chunk_prefix(doc.title, c.trail)])
                        added_vecs[cid] = vec
                    report.chunks += len(chunks)
                    known[abspath] = (doc_id, sha)
                self._bump()
            pending, pending_chunks = [], 0

        try:
            for i, (abspath, display) in enumerate(files):
                progress("scan", i, len(files))
                key = str(abspath)
                seen.add(key)
                try:
                    data = read_regular(abspath)
                except OSError as exc:  # kept: `seen` has it, so its indexed document stays
                    report.skipped.append((display, f"unreadable ({exc.strerror or exc})"))
                    warn(f"skipped {display}: unreadable ({exc.strerror or exc})")
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if key in known and known[key][1] == sha:
                    report.unchanged += 1
                    continue
                try:
                    doc = load_document(abspath, display, data=data, warn=warn)
                except SkipFile as exc:
                    report.skipped.append((display, str(exc)))
                    warn(f"skipped {display}: {exc}")
                    if key in known:  # it was indexed before and is now bad: drop the stale chunks
                        with self.db.atomic():
                            removed_ids.extend(self._delete_doc(known.pop(key)[0]))
                            self._bump()
                        report.removed += 1
                    continue
                chunks = chunk_document(doc, self.embedder.count_tokens, self.chunking)
                pending.append((key, display, sha, len(data), doc, chunks))
                pending_chunks += len(chunks)
                if pending_chunks >= batch_chunks:
                    flush()
            flush()
            progress("scan", len(files), len(files))
            # files that were indexed under these roots and are gone now
            # (documents under a folder that could not be listed, or a file not read, are not gone)
            gone = [(ap, v[0]) for ap, v in known.items() if ap not in seen and not scan.kept(ap) and any(
                ap == str(r) or ap.startswith(str(r) + os.sep) for r in roots)]
            if gone:
                with self.db.atomic():
                    for _, doc_id in gone:
                        removed_ids.extend(self._delete_doc(doc_id))
                    self._bump()
                report.removed += len(gone)
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            if added_vecs or removed_ids or rebuild or self._faiss is None:
                progress("vectors", 0, 1)
                self._sync_faiss(added_vecs, removed_ids)
            report.seconds = time.perf_counter() - t0
        return report

    def _bump(self) -> None:
        set_meta(self.db, "generation", str(self.generation + 1))

    def _delete_doc(self, doc_id: int) -> list[int]:
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE doc_id = ?", [doc_id])]
        if ids:
            marks = ",".join("?" * len(ids))
            self.db.execute(f"DELETE FROM chunks_fts WHERE rowid IN ({marks})", ids)
            self.db.execute(f"DELETE FROM vectors WHERE chunk_id IN ({marks})", ids)
            self.db.execute("DELETE FROM chunks WHERE doc_id = ?", [doc_id])
        self.db.execute("DELETE FROM documents WHERE id = ?", [doc_id])
        return ids

    # ---- search -----------------------------------------------------------------------------------------
    def dense_ranking(self, query: str, depth: int, qvec: np.ndarray | None = None,
                      index: VectorIndex | None = None) -> list[tuple[int, float]]:
        index = index or self.vector_index()
        qvec = self.embedder.embed_query(query) if qvec is None else qvec
        scores, ids = index.search(qvec, depth, self.search_config.ef_search)
        return [(int(i), float(s)) for i, s in zip(ids, scores)]

    def bm25_ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        fts = _fts_query(query)
        if not fts:
            return []
        rows = self.db.execute(
            "SELECT rowid, bm25(chunks_fts, 1.0, 0.5) AS s FROM chunks_fts WHERE chunks_fts MATCH ? "
            "ORDER BY s LIMIT ?", [fts, depth]).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Passage]:
        """The top `k` passages for `query`: `dense`, `bm25`, or `hybrid` (weighted reciprocal-rank fusion)."""
        return self.search_with_evidence(query, k, mode)[0]

    def evidence(self, query: str) -> Evidence:
        """The best dense similarity and best BM25 score of `query`, without building passages."""
        return self._evidence(query, {})

    def _evidence(self, query: str, rankings: dict[str, list[tuple[int, float]]]) -> Evidence:
        # both sides are always measured, whatever the mode: the abstention rule reads both
        dense = rankings["dense"] if "dense" in rankings else self.dense_ranking(query, 1)
        bm25 = rankings["bm25"] if "bm25" in rankings else self.bm25_ranking(query, 1)
        # an empty collection or a query of stopwords only: the weakest evidence there is
        return Evidence(max((s for _, s in dense), default=-1.0), max((s for _, s in bm25), default=0.0))

    def search_with_evidence(self, query: str, k: int = 5, mode: str = "hybrid") -> tuple[list[Passage], Evidence]:
        """`search`, plus the raw best dense and BM25 scores behind it (for abstaining; see `abstain_rule`)."""
        if mode not in MODES:
            raise InputError(f"unknown search mode {mode!r}", f"use one of {', '.join(MODES)}")
        if not query.strip():
            raise InputError("the query is empty", "give a question or some words to search for")
        if k < 1:
            raise InputError(f"k={k} must be at least 1")
        cfg = self.search_config
        depth = max(cfg.candidates, k)
        rankings: dict[str, list[tuple[int, float]]] = {}
        if mode == "hybrid":
            # the BM25 query runs while the query is embedded: both release the GIL, and at 100K chunks
            # they cost about the same, so this roughly halves hybrid latency on two or more cores
            index = self.vector_index()  # its freshness check reads SQLite: do it before BM25 holds the connection
            with ThreadPoolExecutor(max_workers=1) as pool:
                bm25 = pool.submit(self.bm25_ranking, query, depth)
                rankings["dense"] = self.dense_ranking(query, depth, index=index)
                rankings["bm25"] = bm25.result()
        elif mode == "dense":
            rankings["dense"] = self.dense_ranking(query, k)
        else:
            rankings["bm25"] = self.bm25_ranking(query, k)
        if mode == "hybrid":
            fused: dict[int, float] = {}
            weights = {"dense": cfg.dense_weight, "bm25": cfg.bm25_weight}
            for name, ranking in rankings.items():
                for rank, (cid, _) in enumerate(ranking):
                    fused[cid] = fused.get(cid, 0.0) + weights[name] / (cfg.rrf_k + rank + 1)
            ordered = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        else:
            ordered = rankings[mode][:k]
        ranks = {name: {cid: r + 1 for r, (cid, _) in enumerate(rk)} for name, rk in rankings.items()}
        return self._passages(ordered, ranks), self._evidence(query, rankings)

    def _passages(self, ordered: list[tuple[int, float]], ranks: dict[str, dict[int, int]]) -> list[Passage]:
        if not ordered:
            return []
        ids = [cid for cid, _ in ordered]
        marks = ",".join("?" * len(ids))
        rows = {r[0]: r for r in self.db.execute(
            f"SELECT c.id, d.path, d.title, c.trail, c.first, c.last, d.unit, c.text FROM chunks c "
            f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})", ids)}
        out = []
        for cid, score in ordered:
            r = rows.get(cid)
            if r is None:
                continue
            trail = tuple(json.loads(r[3]))
            out.append(Passage(cid, r[1], r[2], " > ".join(trail) or r[2], r[4], r[5], r[6], r[7], score,
                               {name: rk[cid] for name, rk in ranks.items() if cid in rk}))
        return out

    # ---- abstention thresholds ---------------------------------------------------------------------------
    def abstain_rule(self) -> AbstainRule | None:
        """The abstention thresholds fitted for this collection (`ragdesk eval calibrate`), or None."""
        raw = get_meta(self.db, _ABSTAIN_KEY)
        return AbstainRule.from_json(raw) if raw else None

    def set_abstain_rule(self, rule: AbstainRule | None) -> None:
        """Store (or, with None, remove) the abstention thresholds; they survive reopening and re-indexing."""
        with self.db.atomic():
            if rule is None:
                self.db.execute("DELETE FROM meta WHERE key = ?", [_ABSTAIN_KEY])
            else:
                set_meta(self.db, _ABSTAIN_KEY, rule.to_json())

    def close(self) -> None:
        self.db.close()
