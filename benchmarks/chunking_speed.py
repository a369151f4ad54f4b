"""Chunking time per MB for one-paragraph text files of growing size (issue 12: chunking was quadratic).

Loads and chunks a single paragraph of 0.25, 1, 4 and 16 MB with the plain-text loader and prints seconds
per MB for each, plus the ratio of each size's s/MB to the smallest one's, measured in the same run: a linear
chunker keeps the ratio near 1 (it was ~3x per doubling before). The token counter is the hashing embedder's
by default (no model needed); --embedder minilm uses the real tokenizer. It measures chunking only, not
embedding or storage.

    python benchmarks/chunking_speed.py [--sizes 0.25,1,4,16] [--embedder hashing|minilm]
"""

from __future__ import annotations

import argparse
import time


def one_paragraph(n_bytes: int) -> str:
    s = "The sync server keeps a block journal and replays it after a crash, see TP-2002 for details. "
    return (s * (n_bytes // len(s) + 1))[:n_bytes]


def main() -> None:
    from retrieval import ChunkingConfig, chunk_document, get_embedder
    from retrieval._loaders import _load_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.25,1,4,16", help="sizes in MB, comma-separated")
    ap.add_argument("--embedder", default="hashing", help="whose token counter to use")
    args = ap.parse_args()
    emb = get_embedder(args.embedder)
    cfg = ChunkingConfig(max_tokens=emb.max_tokens)
    chunk_document(_load_text(one_paragraph(50_000), "warmup.txt"), emb.count_tokens, cfg)  # warm up
    base = None
    print(f"{'MB':>6} {'seconds':>8} {'s/MB':>7} {'vs first':>8} {'chunks':>7}")
    for mb in (float(x) for x in args.sizes.split(",")):
        text = one_paragraph(int(mb * 1_000_000))
        t0 = time.perf_counter()
        chunks = chunk_document(_load_text(text, "big.txt"), emb.count_tokens, cfg)
        secs = time.perf_counter() - t0
        per_mb = secs / mb
        base = base or per_mb
        print(f"{mb:>6g} {secs:>8.2f} {per_mb:>7.3f} {per_mb / base:>7.2f}x {len(chunks):>7}")


if __name__ == "__main__":
    main()
