"""Retrieval quality on the bundled eval suite: dense, BM25 and hybrid search next to a hand-written baseline.

The baseline is what a user would write by hand: sentence-transformers encodes each whole document (the model
truncates it to its window) into a `faiss.IndexFlatIP`, and the question is matched against documents. ragdesk's
modes are judged at the document level too (chunks collapsed to their documents, first occurrence wins), so
the comparison is fair. Needs an index of corpus/ in the current RAGDESK_HOME (`ragdesk index corpus/`).

    python benchmarks/suite_retrieval.py [--suite corpus/eval.jsonl] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def doc_ranks(paths: list[str], gold: list[str]) -> int | None:
    """1-based rank of the first document that matches a gold source fragment, or None."""
    seen: list[str] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    for rank, p in enumerate(seen, 1):
        if any(p.endswith(g) or g in p for g in gold):
            return rank
    return None


def summarise(ranks: list[int | None]) -> dict:
    n = len(ranks)
    return {"recall@1": sum(r == 1 for r in ranks if r) / n, "recall@4": sum(r <= 4 for r in ranks if r) / n,
            "recall@10": sum(r <= 10 for r in ranks if r) / n,
            "mrr@10": sum(1 / r for r in ranks if r and r <= 10) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="corpus/eval.jsonl")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    import faiss

    from assistant.settings import load_settings
    from retrieval import Collection, get_embedder

    items = [json.loads(line) for line in Path(args.suite).read_text().splitlines() if line.strip()]
    items = [i for i in items if i.get("sources")]
    s = load_settings()
    emb = get_embedder(s.embedder)
    coll = Collection(s.collection_path(), emb, create=False)
    results = {}
    for mode in ("dense", "bm25", "hybrid"):
        ranks = [doc_ranks([p.path for p in coll.search(i["question"], k=40, mode=mode)], i["sources"])
                 for i in items]
        results[mode] = summarise(ranks)

    # the hand-written baseline: one vector per whole document
    docs = coll.db.execute("SELECT d.path, group_concat(c.text, ' ') FROM documents d JOIN chunks c "
                           "ON c.doc_id = d.id GROUP BY d.id ORDER BY d.id").fetchall()
    vecs = emb.embed([text for _, text in docs])
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    ranks = []
    for i in items:
        _, ids = index.search(emb.embed([i["question"]]), 10)
        ranks.append(doc_ranks([docs[j][0] for j in ids[0] if j >= 0], i["sources"]))
    results["baseline (whole-document encode + IndexFlatIP)"] = summarise(ranks)

    print(f"{len(items)} answerable questions, {len(docs)} documents, {coll.stats()['chunks']} chunks, "
          f"document-level matching")
    print(f"{'system':<48}{'R@1':>7}{'R@4':>7}{'R@10':>7}{'MRR@10':>8}")
    for name, r in results.items():
        print(f"{name:<48}{r['recall@1']:>7.3f}{r['recall@4']:>7.3f}{r['recall@10']:>7.3f}{r['mrr@10']:>8.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
