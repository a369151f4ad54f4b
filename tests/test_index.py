import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval import Collection, HashingEmbedder
from retrieval._store import VectorIndex, open_db
from retrieval.errors import ConfigError, IndexMissingError, InputError
from retrieval.migrations import Migrations


def make(tmp_path, emb=None):
    return Collection(tmp_path / "home" / "collections" / "default", emb or HashingEmbedder())


def test_incremental_add_change_delete(tmp_path, sample_docs):
    emb = HashingEmbedder()
    coll = make(tmp_path, emb)
    r1 = coll.update([sample_docs])
    assert (r1.added, r1.updated, r1.removed) == (3, 0, 0) and r1.chunks > 3
    assert emb.calls == r1.embedded == r1.chunks

    # unchanged: embeds nothing
    r2 = coll.update([sample_docs])
    assert (r2.added, r2.updated, r2.unchanged, r2.embedded) == (0, 0, 3, 0)
    assert emb.calls == r1.embedded

    # change one file: only its chunks are embedded and replaced
    (sample_docs / "guide/accounts.md").write_text("# Accounts\n\n## Lockout\n\nLocked for 45 minutes after 3 failures.\n")
    r3 = coll.update([sample_docs])
    assert (r3.updated, r3.unchanged) == (1, 2) and 0 < r3.embedded < r1.embedded
    texts = " ".join(p.text for p in coll.search("locked minutes failures", k=5))
    assert "45 minutes" in texts and "15 minutes" not in texts

    # delete one file: it disappears from every mode
    (sample_docs / "notes.txt").unlink()
    r4 = coll.update([sample_docs])
    assert r4.removed == 1
    for mode in ("hybrid", "dense", "bm25"):
        assert all(p.path != str(sample_docs / "notes.txt") and "notes.txt" not in p.path
                   for p in coll.search("release notes sync conflict", k=10, mode=mode))
    assert coll.stats()["documents"] == 2


def test_search_modes_return_cited_passages(indexed):
    for mode in ("hybrid", "dense", "bm25"):
        hits = indexed.search("which port does the server listen on", k=3, mode=mode)
        assert hits, mode
        src = hits[0].to_source(1)
        assert set(src) >= {"n", "path", "heading", "lines", "score", "text"}
    top = indexed.search("port 8740", k=1, mode="bm25")[0]
    assert "8740" in top.text and top.heading.endswith("Ports") and top.path.endswith("install.md")
    assert top.first <= 7 <= top.last  # the paragraph sits on line 7 of install.md


def test_hybrid_ranks_by_reciprocal_rank_fusion(indexed):
    hits = indexed.search("failed sign-ins lock", k=3)
    cfg = indexed.search_config
    weight = {"dense": cfg.dense_weight, "bm25": cfg.bm25_weight}
    assert any(len(h.ranks) == 2 for h in hits)
    for h in hits:
        expected = sum(weight[name] / (cfg.rrf_k + r) for name, r in h.ranks.items())
        assert h.score == pytest.approx(expected)
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_bad_files_are_counted_and_do_not_stop_the_run(tmp_path, sample_docs):
    (sample_docs / "empty.md").write_text("")
    (sample_docs / "blob.txt").write_bytes(b"\x00\x01" * 50)
    (sample_docs / "photo.png").write_bytes(b"\x89PNG")
    warnings = []
    report = make(tmp_path).update([sample_docs], warn=warnings.append)
    assert report.added == 3 and len(report.skipped) == 2 and report.ignored == 1
    assert any("empty.md" in w and "empty" in w for w in warnings)
    assert any("blob.txt" in w and "binary" in w for w in warnings)


def test_faiss_file_that_disagrees_is_rebuilt_on_open(tmp_path, sample_docs):
    coll = make(tmp_path)
    coll.update([sample_docs])
    before = [p.chunk_id for p in coll.search("port", k=3, mode="dense")]
    path = coll.root / "vectors.faiss"
    # a stale file: built from a subset, stamped with an old generation
    ids, vecs = coll._stored_vectors()
    VectorIndex.build(ids[:1], vecs[:1], coll.embedder.dim, "flat", 0).save(path)
    again = make(tmp_path)
    assert [p.chunk_id for p in again.search("port", k=3, mode="dense")] == before
    assert again.rebuilt_on_open
    # a corrupt file too
    path.write_bytes(b"garbage")
    third = make(tmp_path)
    assert [p.chunk_id for p in third.search("port", k=3, mode="dense")] == before and third.rebuilt_on_open


def test_hnsw_beyond_the_exact_limit_matches_exact(tmp_path, sample_docs):
    from retrieval import SearchConfig

    big = sample_docs / "big.md"
    big.write_text("# Big\n\n" + "\n\n".join(f"## S{i}\n\nTopic {i} covers quota {i * 7} and port {i}." for i in range(60)))
    exact = Collection(tmp_path / "exact", HashingEmbedder())
    exact.update([sample_docs])
    approx = Collection(tmp_path / "approx", HashingEmbedder(), search=SearchConfig(exact_limit=10))
    approx.update([sample_docs])
    assert approx.vector_index().kind == "hnsw" and exact.vector_index().kind == "flat"
    q = "topic 12 covers quota 84"
    assert [p.text for p in approx.search(q, k=5, mode="dense")] == [p.text for p in exact.search(q, k=5, mode="dense")]


def test_errors(tmp_path, sample_docs):
    with pytest.raises(IndexMissingError, match="ragdesk index"):
        Collection(tmp_path / "nope", HashingEmbedder(), create=False)
    coll = make(tmp_path)
    with pytest.raises(InputError, match="path not found: .*missing"):
        coll.update([tmp_path / "missing"])
    coll.update([sample_docs])
    with pytest.raises(InputError, match="empty"):
        coll.search("   ")
    with pytest.raises(InputError, match="unknown search mode"):
        coll.search("port", mode="fuzzy")
    with pytest.raises(ConfigError, match="was built with embedder"):
        Collection(coll.root, HashingEmbedder(dim=32))


def test_migrations_are_idempotent(tmp_path):
    db = open_db(tmp_path / "x.db")
    tables = sorted(db.table_names())
    from retrieval._store import migrations

    assert migrations.apply(db) == []
    assert sorted(db.table_names()) == tables
    m = Migrations("demo")

    @m
    def m001_t(db):
        db["t"].create({"id": int}, pk="id")

    assert m.apply(db) == ["m001_t"] and m.apply(db) == []


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from retrieval import Collection, HashingEmbedder

    class Slow(HashingEmbedder):
        def embed(self, texts, batch_size=64):
            time.sleep(0.15)
            return super().embed(texts, batch_size)

    coll = Collection(Path(sys.argv[1]), Slow())
    print("start", flush=True)
    coll.update([Path(sys.argv[2])], batch_chunks=1)
    print("done", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_index_run_leaves_an_index_that_opens_and_answers(tmp_path, sig):
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(40):
        (docs / f"d{i:02}.md").write_text(f"# Doc {i}\n\nThe answer number {i} is port {8000 + i}.\n")
    root = tmp_path / "coll"
    script = tmp_path / "k.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(docs)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"start"
    time.sleep(2.0)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    coll = Collection(root, HashingEmbedder())
    n = coll.stats()["documents"]
    assert 0 < n < 40, n  # killed part-way: some documents committed, not all
    hits = coll.search("answer number port", k=3)
    assert hits and all(h.text for h in hits)
    assert coll.vector_index().index.ntotal == coll.stats()["chunks"]
    # and the next run finishes the job without re-embedding what was committed
    report = coll.update([docs])
    assert report.unchanged == n and report.added == 40 - n
    assert coll.stats()["documents"] == 40
