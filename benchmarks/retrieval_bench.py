"""Retrieval benchmark (issue 2): quality on a public QA set, indexing overhead, query latency at scale.

1. Quality. 175 questions from the Python FAQ (`python3.11-doc`, see `_public_qa.py`), searched in a
   ragdesk collection (retrieval.Collection + get_embedder("minilm"), ragdesk's own HTML loader and chunker)
   that holds the FAQ pages among other Python doc pages as distractors. Section level: a hit is a chunk of
   the gold FAQ page whose heading trail contains the question's heading. Document level: chunks deduped to
   pages, a hit is the gold page. Modes dense / bm25 / hybrid, next to a hand-written baseline
   (SentenceTransformer.encode of whole pages, truncated by the model, + faiss.IndexFlatIP; document level
   only). Two variants: "verbatim" (the FAQ as shipped: the question is its section's heading, so it is in
   the indexed text word for word) and "masked" (headings and contents links read "FAQ entry N").
   Then a grid over SearchConfig's fusion knobs.
2. Indexing throughput: Collection.update on fresh collections vs plain SentenceTransformer.encode of the
   very texts the collection embedded, interleaved in the same run.
3. Query latency p50/p95 of hybrid search (query embedding included) at ~1K/10K/100K chunks of real doc
   text, and HNSW recall@10 against exact search per ef_search. Only the QA corpus's chunks get real
   embeddings; the other chunks get a real chunk's vector plus Gaussian noise (cosine ~0.86 to it), because
   embedding 100K chunks on a 2-core CPU takes hours. Latency does not depend on what the vectors say; the
   HNSW recall is measured on this partly synthetic vector set and is an estimate.

Not here: answer quality (ragdesk eval), generation speed (ragdesk bench). Nothing is downloaded.

    .venv/bin/python benchmarks/retrieval_bench.py --quick
    .venv/bin/python benchmarks/retrieval_bench.py --json-out benchmarks/results/retrieval.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _public_qa as qa  # noqa: E402
from retrieval import Collection, Embedder, SearchConfig, get_embedder, load_document  # noqa: E402
from retrieval._chunking import chunk_prefix  # noqa: E402

MODES = ("dense", "bm25", "hybrid")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class ProxyEmbedder(Embedder):
    """Wraps the real embedder: times `embed`, memoises query vectors (quality runs only), and (scale runs
    only) answers unseen texts with a noisy copy of a real vector instead of running the model."""

    def __init__(self, inner: Embedder, memo_queries: bool = False, reuse: dict | None = None, name=None):
        self.inner, self.memo, self.reuse = inner, {} if memo_queries else None, reuse
        self.name, self.dim, self.max_tokens = name or inner.name, inner.dim, inner.max_tokens
        self.embed_s, self.real, self.synthetic = 0.0, 0, 0
        if reuse is not None:
            self._pool = np.stack(list(reuse.values())) if reuse else np.zeros((1, inner.dim), np.float32)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        t = time.perf_counter()
        if self.reuse is None:
            out = self.inner.embed(texts, batch_size)
            self.real += len(texts)
        else:
            out = np.empty((len(texts), self.dim), np.float32)
            for i, text in enumerate(texts):
                if text in self.reuse:
                    out[i] = self.reuse[text]
                    self.real += 1
                    continue
                seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
                rng = np.random.default_rng(seed)
                noise = rng.standard_normal(self.dim).astype(np.float32)
                v = self._pool[seed % len(self._pool)] + 0.6 * noise / np.linalg.norm(noise)
                out[i] = v / np.linalg.norm(v)
                self.synthetic += 1
        self.embed_s += time.perf_counter() - t
        return out

    def embed_query(self, text: str) -> np.ndarray:
        if self.memo is None:
            return self.inner.embed_query(text)
        if text not in self.memo:
            self.memo[text] = self.inner.embed_query(text)
        return self.memo[text]

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def stored_texts(col: Collection) -> dict[str, np.ndarray]:
    """text-as-embedded -> stored vector, for every chunk of `col`."""
    rows = col.db.execute("SELECT d.title, c.trail, c.text, v.vec FROM chunks c JOIN documents d ON d.id = c.doc_id "
                          "JOIN vectors v ON v.chunk_id = c.id").fetchall()
    return {chunk_prefix(t, tuple(json.loads(tr))) + "\n" + x: np.frombuffer(v, np.float32).copy()
            for t, tr, x, v in rows}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([f"\n== {title}", line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ---- 1. quality -------------------------------------------------------------------------------------------
def scores(first_hits: list[int | None]) -> dict:
    n = len(first_hits)
    out = {f"recall@{k}": sum(1 for r in first_hits if r is not None and r <= k) / n for k in (1, 5, 10)}
    out["mrr@10"] = sum(1 / r for r in first_hits if r is not None and r <= 10) / n
    return out


def rel_of(path: str, corpus: Path) -> str:
    return str(Path(path).resolve().relative_to(corpus.resolve()))


def judge(col: Collection, pairs, corpus: Path, mode: str, masked: bool) -> tuple[dict, dict]:
    """(section-level, document-level) scores of one mode."""
    sec, doc = [], []
    for p in pairs:
        heading = (p.masked_heading() + "¶") if masked else p.heading
        chunks = col.search(p.question, k=10, mode=mode)
        sec.append(next((i for i, ps in enumerate(chunks, 1) if rel_of(ps.path, corpus) == p.rel
                         and heading in ps.heading.split(" > ")), None))
        pages: list[str] = []
        for ps in col.search(p.question, k=50, mode=mode):
            r = rel_of(ps.path, corpus)
            if r not in pages:
                pages.append(r)
        doc.append(pages.index(p.rel) + 1 if p.rel in pages else None)
    return scores(sec), scores(doc)


def baseline(model, files: list[Path], corpus: Path, pairs) -> dict:
    """Whole pages (the same text ragdesk's loader extracts) encoded once, truncated by the model."""
    import faiss

    rels = [str(f.relative_to(corpus)) for f in files]
    texts = [load_document(f).text for f in files]
    vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    q = model.encode([p.question for p in pairs], normalize_embeddings=True, convert_to_numpy=True)
    _, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), 10)
    hits = []
    for p, row in zip(pairs, ids):
        ranked = [rels[i] for i in row if i >= 0]
        hits.append(ranked.index(p.rel) + 1 if p.rel in ranked else None)
    return scores(hits)


def quality(args, emb, work: Path, result: dict) -> dict[str, np.ndarray]:
    root = qa.require_docs()
    pairs = qa.faq_pairs(root)
    if args.questions:
        pairs = pairs[:: max(1, len(pairs) // args.questions)][: args.questions]
    faq = qa.html_files(root / "faq")
    estimate = lambda p: max(1, len(load_document(p).text) // 700)
    distractors = qa.select_distractors(root, args.distractor_chunks, estimate)
    corpus = work / "qa_corpus"
    qa.copy_corpus(root, faq + distractors, corpus)
    files = sorted(corpus.rglob("*.html"))
    proxy = ProxyEmbedder(emb, memo_queries=True)
    col = Collection(work / "qa_collection", proxy)
    log(f"quality: indexing {len(files)} pages ({len(faq)} FAQ) with ragdesk, {len(pairs)} questions")
    rep = col.update([corpus])
    st = col.stats()
    result["quality_corpus"] = {"pages": st["documents"], "chunks": st["chunks"], "faq_pages": len(faq),
                                "questions": len(pairs), "index_seconds": round(rep.seconds, 1),
                                "sections": sorted({str(Path(f).relative_to(corpus).parts[0]) for f in files})}
    cache = stored_texts(col)
    log(f"quality: {st['chunks']} chunks in {rep.seconds:.0f}s; baseline encodes {len(files)} whole pages")
    from sentence_transformers import SentenceTransformer
    from retrieval._embedders import minilm_path

    plain = SentenceTransformer(minilm_path(), device="cpu", local_files_only=True)
    base = baseline(plain, files, corpus, pairs)
    import faiss

    faiss.omp_set_num_threads(1)  # searching only from here; threads just wait on each other when loaded
    out: dict = {}
    for variant in ("verbatim", "masked"):
        if variant == "masked":
            by_page: dict[str, list] = {}
            for p in pairs + [q for q in qa.faq_pairs(root) if q not in pairs]:
                by_page.setdefault(p.rel, []).append(p)
            for rel, ps in by_page.items():
                (corpus / rel).write_text(qa.mask_faq_html((root / rel).read_text(encoding="utf-8"), ps),
                                          encoding="utf-8")
            rep = col.update([corpus])
            log(f"quality: masked FAQ re-indexed incrementally ({rep.updated} pages, {rep.embedded} chunks)")
            cache.update(stored_texts(col))
            base_v = baseline(plain, files, corpus, pairs)
        else:
            base_v = base
        res = {"baseline_doc": base_v}
        for mode in MODES:
            res[f"{mode}_section"], res[f"{mode}_doc"] = judge(col, pairs, corpus, mode, variant == "masked")
        out[variant] = res
        grid = []
        for rrf_k in args.grid_rrf_k:
            for cand in args.grid_candidates:
                for dw, bw in args.grid_weights:
                    col.search_config = SearchConfig(rrf_k=rrf_k, candidates=cand, dense_weight=dw, bm25_weight=bw)
                    s, d = judge(col, pairs, corpus, "hybrid", variant == "masked")
                    grid.append({"rrf_k": rrf_k, "candidates": cand, "dense_weight": dw, "bm25_weight": bw,
                                 "section": s, "doc": d})
        col.search_config = SearchConfig()
        res["grid"] = grid
        log(f"quality: {variant} done")
    result["quality"] = out
    col.close()
    return cache


def print_quality(result: dict) -> None:
    qc = result["quality_corpus"]
    print(f"\nQA corpus: {qc['pages']} Python-doc pages ({qc['faq_pages']} FAQ), {qc['chunks']} chunks, "
          f"{qc['questions']} FAQ questions; sections {', '.join(qc['sections'])}")
    for variant, res in result["quality"].items():
        rows = []
        for mode in MODES:
            rows.append([f"ragdesk {mode} (section)", *res[f"{mode}_section"].values()])
        for mode in MODES:
            rows.append([f"ragdesk {mode} (page)", *res[f"{mode}_doc"].values()])
        rows.append(["baseline: whole-page encode + FlatIP (page)", *res["baseline_doc"].values()])
        print(table(f"quality, {variant} FAQ headings", ["system (level)", "R@1", "R@5", "R@10", "MRR@10"], rows))
        g = sorted(res["grid"], key=lambda r: -(r["section"]["mrr@10"] + r["doc"]["mrr@10"]))
        print(table(f"hybrid fusion grid, {variant} (sorted by section MRR + page MRR)",
                    ["rrf_k", "cand", "w_dense", "w_bm25", "sec R@1", "sec R@10", "sec MRR", "page R@1",
                     "page MRR"],
                    [[r["rrf_k"], r["candidates"], r["dense_weight"], r["bm25_weight"], r["section"]["recall@1"],
                      r["section"]["recall@10"], r["section"]["mrr@10"], r["doc"]["recall@1"], r["doc"]["mrr@10"]]
                     for r in g]))


# ---- 2. indexing throughput ------------------------------------------------------------------------------
def throughput(args, emb, work: Path, result: dict) -> None:
    root = qa.require_docs()
    files = qa.html_files(root / "library")[-200:]  # not in the QA corpus, so nothing is cached anywhere
    pick, total = [], 0
    for f in files:
        if total >= args.tp_chunks:
            break
        pick.append(f)
        total += max(1, len(load_document(f).text) // 700)
    emb.embed(["warm-up text " * 20] * 64)  # threads and allocator warm
    rounds = []
    for r in range(args.tp_rounds):
        order = ("update", "encode") if r % 2 == 0 else ("encode", "update")
        row = {}
        texts = None
        for step in order:
            if step == "update":
                proxy = ProxyEmbedder(emb)
                folder = work / f"tp_{r}"
                shutil.rmtree(folder, ignore_errors=True)
                col = Collection(folder, proxy)
                t = time.perf_counter()
                rep = col.update(pick)
                row["update_s"] = time.perf_counter() - t
                row["chunks"], row["embed_inside_update_s"] = rep.chunks, proxy.embed_s
                texts = list(stored_texts(col))
                col.close()
            else:
                if texts is None:  # encode first: collect the same texts without timing them
                    tmp = Collection(work / f"tp_texts_{r}", ProxyEmbedder(emb, reuse={}))
                    tmp.update(pick)
                    texts = list(stored_texts(tmp))
                    tmp.close()
                t = time.perf_counter()
                emb.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)
                row["encode_s"] = time.perf_counter() - t
                row["encoded"] = len(texts)
        rounds.append(row)
        log(f"throughput round {r + 1}: {row}")
    upd = sum(r["chunks"] for r in rounds) / sum(r["update_s"] for r in rounds)
    enc = sum(r["encoded"] for r in rounds) / sum(r["encode_s"] for r in rounds)
    inside = sum(r["embed_inside_update_s"] for r in rounds) / sum(r["update_s"] for r in rounds)
    result["throughput"] = {"pages": len(pick), "rounds": rounds, "update_chunks_per_s": upd,
                            "encode_chunks_per_s": enc, "ratio_update_to_encode": upd / enc,
                            "overhead_vs_encode": enc / upd - 1, "embedding_share_of_update": inside}


def print_throughput(result: dict) -> None:
    t = result["throughput"]
    rows = [[i + 1, r["chunks"], r["update_s"], r["chunks"] / r["update_s"], r["encode_s"],
             r["encoded"] / r["encode_s"], r["embed_inside_update_s"] / r["update_s"]]
            for i, r in enumerate(t["rounds"])]
    print(table(f"indexing throughput ({t['pages']} library pages, fresh collection each round, order alternates)",
                ["round", "chunks", "update s", "update ch/s", "encode s", "encode ch/s", "embed share"], rows))
    print(f"Collection.update {t['update_chunks_per_s']:.1f} chunks/s vs SentenceTransformer.encode "
          f"{t['encode_chunks_per_s']:.1f} chunks/s: ratio {t['ratio_update_to_encode']:.3f}, overhead "
          f"{100 * t['overhead_vs_encode']:+.1f}% (goal < 10%); embedding is "
          f"{100 * t['embedding_share_of_update']:.1f}% of update time")


# ---- 3. latency at scale ---------------------------------------------------------------------------------
def grow(col: Collection, files: list[Path], start: int, target: int) -> int:
    """Add `files[start:]` in groups until the collection holds >= target chunks; returns the next index."""
    i = start
    while col.stats()["chunks"] < target and i < len(files):
        have = col.stats()["chunks"]
        # the first group measures chunks per page; later groups aim just under the target
        n = max(1, min(2000, int(0.9 * (target - have) / max(5.0, have / i)) + 1)) if i else 8
        col.update(files[i:i + n])
        i += n
        log(f"  {col.name}: {col.stats()['chunks']} chunks from {i} pages")
    return i


def scale(args, emb, work: Path, cache: dict, result: dict) -> None:
    pairs = qa.faq_pairs()
    queries = [p.question for p in pairs][: args.latency_queries]
    originals = [qa.PY_DOCS / "faq" / f.name for f in qa.html_files(qa.PY_DOCS / "faq")]
    originals += qa.select_distractors(qa.PY_DOCS, args.distractor_chunks,
                                       lambda p: max(1, len(load_document(p).text) // 700))
    files = qa.scale_files(originals)
    if not cache:  # run without the quality part: a small pool of real vectors from the FAQ pages
        pool = [t for f in originals[:9] for t in _texts_of(f, emb)][: args.pool_chunks]
        cache = dict(zip(pool, emb.embed(pool)))
    import faiss
    import torch

    # one query is too small to gain from threads; on a loaded machine thread barriers only add waiting
    threads = (torch.get_num_threads(), faiss.omp_get_max_threads())
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    result["scale_threads"] = {"torch": 1, "faiss_omp": 1}
    qvecs = emb.embed([*queries])
    out = []
    for target in args.sizes:
        cfg = SearchConfig(exact_limit=args.exact_limit)
        proxy = ProxyEmbedder(emb, reuse=cache, name="minilm+reused-vectors")
        folder = work / f"scale_{target}"
        shutil.rmtree(folder, ignore_errors=True)
        col = Collection(folder, proxy, search=cfg)
        t = time.perf_counter()
        grow(col, files, 0, target)
        st = col.stats()
        build_s = time.perf_counter() - t
        col.vector_index()
        for q in queries[:10]:  # warm-up: FAISS, SQLite page cache, tokenizer
            col.search(q, k=10, mode="hybrid")
        total, dense, bm25, qemb = [], [], [], []
        for q, qv in zip(queries, qvecs):
            t0 = time.perf_counter()
            col.search(q, k=10, mode="hybrid")
            t1 = time.perf_counter()
            emb.embed_query(q)
            t2 = time.perf_counter()
            col.dense_ranking(q, cfg.candidates, qvec=qv)
            t3 = time.perf_counter()
            col.bm25_ranking(q, cfg.candidates)
            t4 = time.perf_counter()
            total.append(1e3 * (t1 - t0)), qemb.append(1e3 * (t2 - t1))
            dense.append(1e3 * (t3 - t2)), bm25.append(1e3 * (t4 - t3))
        row = {"target": target, "chunks": st["chunks"], "pages": st["documents"], "vector_index": st["vector_index"],
               "real_vectors": proxy.real, "synthetic_vectors": proxy.synthetic, "build_s": build_s,
               "hybrid_p50_ms": pct(total, 50), "hybrid_p95_ms": pct(total, 95), "query_embed_p50_ms": pct(qemb, 50),
               "dense_faiss_p50_ms": pct(dense, 50), "bm25_fts_p50_ms": pct(bm25, 50),
               "bm25_fts_p95_ms": pct(bm25, 95)}
        if st["vector_index"] == "hnsw":
            row["hnsw"] = hnsw_recall(col, qvecs, args.ef_values)
        out.append(row)
        log(f"scale {target}: {json.dumps({k: v for k, v in row.items() if k != 'hnsw'}, default=str)}")
        col.close()
        shutil.rmtree(folder, ignore_errors=True)
    result["scale"] = out
    torch.set_num_threads(threads[0])
    faiss.omp_set_num_threads(threads[1])


def _texts_of(path: Path, emb) -> list[str]:
    from retrieval import ChunkingConfig, chunk_document

    doc = load_document(path)
    return [chunk_prefix(doc.title, c.trail) + "\n" + c.text
            for c in chunk_document(doc, emb.count_tokens, ChunkingConfig(max_tokens=emb.max_tokens))]


def hnsw_recall(col: Collection, qvecs: np.ndarray, ef_values: list[int]) -> list[dict]:
    import faiss

    ids, vecs = col._stored_vectors()
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(np.ascontiguousarray(vecs))
    _, truth = exact.search(np.ascontiguousarray(qvecs, dtype=np.float32), 10)
    index = col.vector_index()
    rows = []
    for ef in ef_values:
        rec, lat = [], []
        for q, t in zip(qvecs, truth):
            t0 = time.perf_counter()
            _, got = index.search(q, 10, ef)
            lat.append(1e3 * (time.perf_counter() - t0))
            rec.append(len(set(got.tolist()) & set(ids[t].tolist())) / 10)
        rows.append({"ef_search": ef, "recall@10": float(np.mean(rec)), "min_recall@10": float(np.min(rec)),
                     "p50_ms": pct(lat, 50)})
    return rows


def print_scale(result: dict) -> None:
    rows = [[r["chunks"], r["pages"], r["vector_index"], f"{r['real_vectors']}/{r['synthetic_vectors']}",
             r["hybrid_p50_ms"], r["hybrid_p95_ms"], r["query_embed_p50_ms"], r["dense_faiss_p50_ms"],
             r["bm25_fts_p50_ms"], r["bm25_fts_p95_ms"]] for r in result["scale"]]
    print(table("hybrid query latency (ms, k=10, query embedding included; parts timed separately; "
                "torch and faiss at 1 thread)",
                ["chunks", "pages", "index", "real/synth vecs", "p50", "p95", "embed p50", "faiss p50",
                 "fts p50", "fts p95"], rows))
    for r in result["scale"]:
        if "hnsw" in r:
            print(table(f"HNSW recall@10 vs exact at {r['chunks']} chunks (M=32, efConstruction=80)",
                        ["ef_search", "recall@10", "min", "faiss p50 ms"],
                        [[h["ef_search"], h["recall@10"], h["min_recall@10"], h["p50_ms"]] for h in r["hnsw"]]))


# ---- main ------------------------------------------------------------------------------------------------
def machine() -> dict:
    import faiss
    import sentence_transformers
    import sqlite3
    import torch

    return {"nproc": os.cpu_count(), "sched_cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
            "faiss": faiss.__version__, "sqlite": sqlite3.sqlite_version}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (~3 minutes on an idle 2-core CPU)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--work-dir", type=Path, help="where collections go (default: a temp dir, removed after)")
    ap.add_argument("--only", choices=["quality", "throughput", "scale"], action="append")
    ap.add_argument("--sizes", dest="sizes_override", type=int, nargs="+", help="chunk counts for the latency runs")
    args = ap.parse_args(argv)
    q = args.quick
    args.questions = 60 if q else 0
    args.distractor_chunks = 300 if q else 1500
    args.grid_rrf_k = [10, 60]
    args.grid_candidates = [50] if q else [50, 100]
    args.grid_weights = [(1.0, 1.0), (1.0, 0.5), (0.5, 1.0)] + ([] if q else [(1.0, 0.25)])
    args.tp_chunks, args.tp_rounds = (120, 2) if q else (250, 2)
    args.sizes = [1000, 5000] if q else [1000, 10000, 100000]
    args.exact_limit = 2000 if q else SearchConfig().exact_limit
    args.ef_values = [16, 32, 64, 96, 128] if q else [16, 32, 64, 96, 128, 256]
    args.latency_queries = 60 if q else 150
    args.pool_chunks = 256
    if args.sizes_override:
        args.sizes = args.sizes_override
    parts = args.only or ["quality", "throughput", "scale"]

    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
                    "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "search_config_defaults": asdict(SearchConfig())}
    m = result["machine"]
    print(f"ran: {result['command']}\nmachine: nproc={m['nproc']} torch threads={m['torch_threads']} "
          f"loadavg at start={tuple(round(x, 1) for x in m['loadavg_start'])} (shared machine: other jobs run, "
          f"absolute times are noisy; ratios are measured in one run)\n{m['python']} torch {m['torch']} "
          f"sentence-transformers {m['sentence_transformers']} faiss {m['faiss']} sqlite {m['sqlite']}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ragdesk-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    emb = get_embedder("minilm")
    emb.embed(["warm up"] * 8)
    cache: dict = {}
    try:
        if "quality" in parts:
            cache = quality(args, emb, work, result)
            print_quality(result)
        if "throughput" in parts:
            throughput(args, emb, work, result)
            print_throughput(result)
        if "scale" in parts:
            scale(args, emb, work, cache, result)
            print_scale(result)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\ntotal {result['seconds']:.0f}s; loadavg at end {tuple(round(x, 1) for x in os.getloadavg())}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
