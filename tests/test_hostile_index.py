"""Hostile folders for `ragdesk index` (issue 12): unreadable folders and files, huge one-paragraph files,
named pipes, symlink loops, two runs at once, NUL bytes late in a text file, truncated PDFs.

Tests run as root, where chmod 000 stops nothing: the unreadable cases make the very call the scan uses
(os.scandir for a folder, os.open for a file) raise PermissionError for one path; a real chmod test runs too
when the suite is not root.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval import ChunkingConfig, Collection, HashingEmbedder, chunk_document
from retrieval._loaders import _load_text

REPO = Path(__file__).resolve().parents[1]
PDF = REPO / "corpus/docs/billing/subscription-terms.pdf"


def make_coll(tmp_path, chunking=None):
    return Collection(tmp_path / "home" / "collections" / "default", HashingEmbedder(), chunking)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def doc_paths(coll) -> list[str]:
    return sorted(r[0] for r in coll.db.execute("SELECT path FROM documents"))


def cli(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", "from assistant.cli import main; main()", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


THREE = {"a.md": "# Alpha\n\nAlpha text about ports.\n", "sub/b.md": "# Beta\n\nBeta text about quotas.\n",
         "sub/c.md": "# Gamma\n\nGamma text about tokens.\n"}


# ---- 1. unreadable folders and files keep their documents ---------------------------------------------------

def test_unreadable_folder_is_reported_and_its_documents_kept(tmp_path, monkeypatch):
    docs = write(tmp_path / "docs", THREE)
    coll = make_coll(tmp_path)
    assert coll.update([docs]).added == 3

    blocked = os.path.realpath(docs / "sub")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.realpath(path) == blocked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    warnings = []
    r = coll.update([docs], warn=warnings.append)
    assert r.removed == 0 and r.unchanged == 1
    assert [(p, why) for p, why in r.skipped] == [(str(docs / "sub") + os.sep, "folder unreadable (Permission denied)")]
    assert warnings == [f"skipped {docs / 'sub'}{os.sep}: folder unreadable (Permission denied)"]
    assert len(doc_paths(coll)) == 3
    assert any("Gamma" in p.text for p in coll.search("gamma tokens", k=3))

    # readable again, and one file really deleted: only that one goes
    monkeypatch.setattr(os, "scandir", real_scandir)
    (docs / "sub/c.md").unlink()
    r = coll.update([docs])
    assert (r.removed, r.unchanged, r.skipped) == (1, 2, [])
    assert doc_paths(coll) == sorted(str(docs / p) for p in ("a.md", "sub/b.md"))


def test_unreadable_file_is_reported_and_its_document_kept(tmp_path, monkeypatch):
    docs = write(tmp_path / "docs", THREE)
    coll = make_coll(tmp_path)
    coll.update([docs])
    (docs / "sub/b.md").write_text("# Beta\n\nChanged, but cannot be read now.\n")

    blocked = os.path.realpath(docs / "sub/b.md")
    real_open = os.open

    def fake_open(path, flags, *args, **kw):
        if os.path.realpath(path) == blocked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)
    warnings = []
    r = coll.update([docs], warn=warnings.append)
    assert (r.removed, r.updated, r.unchanged) == (0, 0, 2)
    assert r.skipped == [(str(docs / "sub/b.md"), "unreadable (Permission denied)")]
    assert warnings == [f"skipped {docs / 'sub/b.md'}: unreadable (Permission denied)"]
    assert len(doc_paths(coll)) == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_real_chmod_000_folder_keeps_documents(tmp_path):
    docs = write(tmp_path / "docs", THREE)
    coll = make_coll(tmp_path)
    coll.update([docs])
    (docs / "sub").chmod(0)
    try:
        r = coll.update([docs])
    finally:
        (docs / "sub").chmod(0o755)
    assert r.removed == 0 and len(doc_paths(coll)) == 3 and "sub" in r.skipped[0][0]


# ---- 2. chunking is linear; a size limit -------------------------------------------------------------------

def one_paragraph(n_bytes: int) -> str:
    s = "The sync server keeps a block journal and replays it after a crash, see TP-2002 for details. "
    return (s * (n_bytes // len(s) + 1))[:n_bytes]


def test_chunking_one_huge_paragraph_is_linear_and_covers_everything():
    # 0.5 MB against 4 MB: quadratic chunking (the old code) spent ~7x more per MB at 4 MB, linear ~1x.
    # Rounds alternate the sizes and keep each one's best, so a busy machine slows both alike; the
    # collector is off while timing, as its full passes grow with the live objects, not with the work.
    emb = HashingEmbedder()
    cfg = ChunkingConfig(max_tokens=emb.max_tokens)
    small, big = (_load_text(one_paragraph(n), "big.txt") for n in (500_000, 4_000_000))
    best = {id(small): float("inf"), id(big): float("inf")}
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            for doc in (small, big):
                t0 = time.perf_counter()
                chunks = chunk_document(doc, emb.count_tokens, cfg)
                best[id(doc)] = min(best[id(doc)], time.perf_counter() - t0)
    finally:
        gc.enable()
    per_mb_small, per_mb_big = best[id(small)] / 0.5, best[id(big)] / 4
    assert per_mb_big < 2 * per_mb_small, f"{per_mb_small:.3f} s/MB at 0.5 MB, {per_mb_big:.3f} s/MB at 4 MB"
    text = big.text
    # coverage: chunks are slices and leave no non-blank character out
    pos = 0
    for c in sorted(chunks, key=lambda c: c.start):
        assert text[c.start:c.end] == c.text and c.n_tokens <= 128
        assert text[pos:c.start].strip() == "", (pos, c.start)
        pos = max(pos, c.end)
    assert text[pos:].strip() == ""
    assert len(chunks) > 10_000


def test_files_over_max_file_mb_are_skipped_by_name_size_and_limit(tmp_path):
    docs = write(tmp_path / "docs", {"small.md": "# Small\n\nfits.\n", "big.txt": one_paragraph(30_000)})
    coll = make_coll(tmp_path, ChunkingConfig(max_file_mb=0.02))
    warnings = []
    r = coll.update([docs], warn=warnings.append)
    assert r.added == 1 and doc_paths(coll) == [str(docs / "small.md")]
    assert warnings == [f"skipped {docs / 'big.txt'}: too large (0.03 MB, the limit is 0.02 MB: "
                        "raise max_file_mb to index it)"]
    assert ChunkingConfig().max_file_mb == 50.0
    with pytest.raises(Exception, match="max_file_mb=0"):
        ChunkingConfig(max_file_mb=0)


# ---- 3. named pipes ------------------------------------------------------------------------------------------

def test_named_pipe_in_folder_or_given_is_skipped_not_read(tmp_path):
    docs = write(tmp_path / "docs", {"a.md": "# Alpha\n\nAlpha text.\n"})
    os.mkfifo(docs / "pipe.md")
    try:
        res = cli(["index", str(docs)], tmp_path, timeout=60)
        res2 = cli(["index", str(docs / "pipe.md")], tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("index hung on a named pipe")
    assert res.returncode == 0, res.stderr
    assert f"warning: skipped {docs / 'pipe.md'}: not a regular file (named pipe)" in res.stderr
    assert "1 added" in res.stdout and "1 skipped" in res.stdout
    assert res2.returncode == 0 and "Traceback" not in res2.stderr
    assert f"skipped {docs / 'pipe.md'}: not a regular file (named pipe)" in res2.stderr


# ---- 4. symlink loops ----------------------------------------------------------------------------------------

def test_symlink_loops_are_reported_and_the_rest_indexed(tmp_path):
    docs = write(tmp_path / "docs", THREE)
    os.symlink("self.md", docs / "self.md")
    os.symlink("pong.txt", docs / "sub" / "ping.txt")
    os.symlink("ping.txt", docs / "sub" / "pong.txt")
    os.symlink("..", docs / "sub" / "up")  # a folder cycle: never followed
    coll = make_coll(tmp_path)
    warnings = []
    r = coll.update([docs], warn=warnings.append)
    assert r.added == 3 and len(doc_paths(coll)) == 3
    assert sorted(r.skipped) == sorted((str(docs / p), "symlink loop") for p in
                                       ("self.md", "sub/ping.txt", "sub/pong.txt"))
    assert f"skipped {docs / 'self.md'}: symlink loop" in warnings
    # a loop given by name is a skip too, not a traceback
    r = coll.update([docs / "self.md"])
    assert r.skipped == [(str(docs / "self.md"), "symlink loop")] and r.removed == 0
    res = cli(["index", str(docs / "self.md")], tmp_path)
    assert res.returncode == 0 and f"skipped {docs / 'self.md'}: symlink loop" in res.stderr, res.stderr


def test_links_to_one_file_index_it_once_and_a_dangling_link_is_named(tmp_path):
    docs = write(tmp_path / "docs", {"a.md": "# Alpha\n\nAlpha text.\n", "t.md": "# Target\n\nLinked text.\n"})
    os.symlink("t.md", docs / "link.md")
    coll = make_coll(tmp_path)
    r = coll.update([docs])
    assert (r.added, r.updated, r.embedded) == (2, 0, 2) and doc_paths(coll) == [str(docs / "a.md"),
                                                                               str(docs / "link.md")]
    (docs / "t.md").unlink()
    r = coll.update([docs])
    assert r.skipped == [(str(docs / "link.md"), "broken symbolic link")] and r.removed == 1
    assert doc_paths(coll) == [str(docs / "a.md")]


# ---- 5. two runs at once -------------------------------------------------------------------------------------

def corpus(root: Path, n: int) -> Path:
    words = "port sync library block version share token quota error server client admin".split()
    for i in range(n):
        body = "\n\n".join(" ".join(words[(i + j + k) % len(words)] for k in range(60)) + "."
                           for j in range(20))
        write(root, {f"d{i // 50}/f{i:04d}.md": f"# Doc {i}\n\n{body}\n"})
    return root


def run_two(tmp_path, docs):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", "from assistant.cli import main; main()", "index", str(docs), "--json"]
    return [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]


def test_two_index_runs_at_once_both_succeed(tmp_path, ragdesk_env):
    import json

    n = 300
    docs = corpus(tmp_path / "docs", n)
    procs = run_two(tmp_path, docs)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    added = sorted(json.loads(out)["added"] for out, _ in outs)
    unchanged = sorted(json.loads(out)["unchanged"] for out, _ in outs)
    assert added == [0, n] and unchanged == [0, n]
    coll = Collection(ragdesk_env / "collections" / "default", HashingEmbedder(), create=False)
    assert len(doc_paths(coll)) == n
    assert coll.vector_index().index.ntotal == coll.stats()["chunks"]


def test_second_run_waits_for_the_lock_and_says_so(tmp_path, ragdesk_env):
    import json

    docs = corpus(tmp_path / "docs", 20)
    folder = ragdesk_env / "collections" / "default"
    folder.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", "from assistant.cli import main; main()", "index", str(docs), "--json"]
    errs = [tmp_path / f"err{i}.txt" for i in range(2)]
    waiting = "waiting for another index run on collection default..."
    with open(folder / "index.lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # stands in for a long first run
        procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=err.open("w"),
                                  text=True) for err in errs]
        deadline = time.monotonic() + 90
        while not all(waiting in err.read_text() for err in errs):  # both have reached the lock
            assert all(p.poll() is None for p in procs), "a run went ahead while the collection was locked"
            assert time.monotonic() < deadline, [err.read_text() for err in errs]
            time.sleep(0.2)
        time.sleep(0.5)
        assert all(p.poll() is None for p in procs)
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0 and "Traceback" not in err.read_text(), err.read_text()[-2000:]
    assert sorted(json.loads(out)["added"] for out in outs) == [0, 20]


# ---- 6. NUL bytes after the first 8 KB -----------------------------------------------------------------------

def test_nul_bytes_late_in_a_text_file_make_it_binary(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    head = ("plain words " * 1000).encode()  # 12 KB of text first
    (docs / "log.txt").write_bytes(head + b"\x00\x00\x00tail")
    (docs / "ok.md").write_text("# Ok\n\nfine.\n")
    coll = make_coll(tmp_path)
    r = coll.update([docs])
    assert r.added == 1 and r.skipped == [(str(docs / "log.txt"), f"binary file (NUL byte at offset {len(head)})")]
    assert coll.db.execute("SELECT count(*) FROM chunks WHERE instr(text, char(0)) > 0").fetchone()[0] == 0


# ---- 7. loader warnings name their file ----------------------------------------------------------------------

@pytest.mark.skipif(not PDF.exists(), reason="bundled PDF not present")
def test_truncated_pdf_warnings_name_the_file_once(tmp_path, capfd):
    docs = tmp_path / "docs"
    docs.mkdir()
    data = PDF.read_bytes()
    (docs / "cut.pdf").write_bytes(data[:-3])  # "%%EOF" cut short: pypdf recovers, with a warning
    (docs / "broken.pdf").write_bytes(data[:-6])  # no EOF marker at all: pypdf gives up
    coll = make_coll(tmp_path)
    warnings = []
    r = coll.update([docs], warn=warnings.append)
    assert r.added == 1 and [p for p, _ in r.skipped] == [str(docs / "broken.pdf")]
    cut = [w for w in warnings if "cut.pdf" in w]
    assert cut == [f"{docs / 'cut.pdf'}: EOF marker seems truncated"]
    broken = [w for w in warnings if w.startswith(f"{docs / 'broken.pdf'}: ")]
    assert f"{docs / 'broken.pdf'}: EOF marker not found" in broken and len(broken) == len(set(broken))
    assert all(w.startswith((str(docs / "cut.pdf"), str(docs / "broken.pdf"), "skipped ")) for w in warnings)
    assert "EOF marker" not in capfd.readouterr().err  # nothing bare on stderr
