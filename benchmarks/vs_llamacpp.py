"""ragdesk's local decoding against llama.cpp on the same GGUF, the same prompts and the same threads (issue 11).

ragdesk loads the folder converted from the GGUF (the default preset, SmolLM2-135M-Instruct Q4_1) in each
`--dtype` asked for (default: bfloat16, int8-wo, int4-wo) and decodes greedily with `off` and
`prompt-lookup`; llama.cpp (through llama-cpp-python) loads the GGUF itself and decodes greedily with the
same chat-templated prompt tokens, the same answer length cap and the same thread count. Prompts are grounded
RAG prompts (the bundled bench questions with passages retrieved from `RAGDESK_HOME`'s collection, or corpus
documents when there is no index). Figures: decode tokens/s (prefill excluded: time from the first token to
the last), and peak RSS of this process.

llama-cpp-python is not a ragdesk dependency and is never installed by it; when it is absent the llama.cpp
rows are skipped with the install command. Building it takes ~11 minutes on 2 cores:

    pip install llama-cpp-python==0.3.36

Not here: sampling, batching, GPU offload.

    RAGDESK_MODELS_DIR=~/.cache/ragdesk-test-models PYTHONPATH=. .venv/bin/python benchmarks/vs_llamacpp.py
    ... benchmarks/vs_llamacpp.py --threads 2 -n 4 --dtypes int4-wo --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA_INSTALL = "pip install llama-cpp-python==0.3.36"


def rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def ragdesk_rows(model, prompts: list[list[int]], max_new: int, settings) -> list[dict]:
    from assistant._decoding import DecodingConfig, DecodingStats, PromptLookupCandidates, SpeculativeConfig, \
        greedy_decode

    rows = []
    cfg = DecodingConfig(max_new, settings.repetition_penalty, model.stop_ids)
    list(greedy_decode(model.model, prompts[0], DecodingConfig(8, 1.0, model.stop_ids)))  # warm-up
    for method in ("off", "prompt-lookup"):
        tokens, seconds, outputs = 0, 0.0, []
        for ids in prompts:
            cand = (PromptLookupCandidates(SpeculativeConfig(lookup_tokens=settings.lookup_tokens,
                                                             max_ngram=settings.lookup_ngram))
                    if method == "prompt-lookup" else None)
            stats = DecodingStats()
            t_first = None
            for _ in greedy_decode(model.model, ids, cfg, cand, None, stats):
                if t_first is None:
                    t_first, n_first = time.perf_counter(), len(stats.tokens)
            t_end = time.perf_counter()
            if t_first is not None and len(stats.tokens) > n_first:
                tokens += len(stats.tokens) - n_first
                seconds += t_end - t_first
            outputs.append(stats.tokens)
        rows.append({"engine": "ragdesk", "dtype": model.dtype, "method": method,
                     "decode_tokens_per_s": round(tokens / seconds, 2) if seconds else None,
                     "outputs": outputs})
    return rows


def llamacpp_row(gguf: Path, prompts: list[list[int]], max_new: int, threads: int, penalty: float,
                 stop_ids) -> dict | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        print(f"llama-cpp-python is not installed: llama.cpp rows skipped (to add them: {LLAMA_INSTALL}, "
              "~11 min build)", file=sys.stderr)
        return None
    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens, seconds, outputs = 0, 0.0, []
    for ids in prompts:
        llm.reset()
        out: list[int] = []
        t_first = None
        # same greedy choice; llama.cpp's repeat penalty also covers the prompt window, so the outputs may
        # differ from ragdesk's (speed is what this row is for)
        for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=penalty, reset=True):
            if tok in stop_ids:
                break
            if t_first is None:
                t_first = time.perf_counter()
            out.append(tok)
            if len(out) >= max_new:
                break
        t_end = time.perf_counter()
        if t_first is not None and len(out) > 1:
            tokens += len(out) - 1
            seconds += t_end - t_first
        outputs.append(out)
    return {"engine": "llama.cpp", "dtype": gguf.stem.rsplit(".", 1)[-1], "method": "off",
            "decode_tokens_per_s": round(tokens / seconds, 2) if seconds else None, "outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=4, help="questions (default 4)")
    ap.add_argument("--dtypes", default="bfloat16,int8-wo,int4-wo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--gguf", type=Path, default=None, help="default: the preset's GGUF in the models folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from assistant.models import PRESETS, load_model, models_dir
    from assistant.settings import load_settings
    from profile_decode import prompts as build_prompts

    settings = load_settings({"threads": args.threads})
    gguf = args.gguf or models_dir(settings) / "gguf" / PRESETS[settings.model].gguf_name
    rows, prompts = [], None
    for dtype in args.dtypes.split(","):
        settings.dtype = dtype
        model = load_model(settings.model, settings)
        if prompts is None:
            prompts = build_prompts(model, settings, args.n)
            stop_ids = set(model.stop_ids)
        rows += ragdesk_rows(model, prompts, args.max_new_tokens, settings)
        del model
    row = llamacpp_row(gguf, prompts, args.max_new_tokens, args.threads, settings.repetition_penalty, stop_ids) \
        if gguf.exists() else None
    if row:
        rows.append(row)
    elif not gguf.exists():
        print(f"no GGUF at {gguf}: llama.cpp row skipped", file=sys.stderr)
    base = rows[0]["outputs"]
    own_off = {r["dtype"]: r["outputs"] for r in rows if r["engine"] == "ragdesk" and r["method"] == "off"}
    for r in rows:
        # the speculative path's promise is its own dtype's greedy output: bf16/int near-ties may flip
        r["identical_to_own_off"] = (sum(a == b for a, b in zip(r["outputs"], own_off[r["dtype"]]))
                                     if r["dtype"] in own_off else None)
        r["identical_to_first"] = sum(a == b for a, b in zip(r.pop("outputs"), base))
    out = {"model": settings.model, "threads": args.threads, "questions": len(prompts), "gguf": str(gguf),
           "load_average": os.getloadavg(), "peak_rss_mb": rss_mb(), "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['model']}, {out['threads']} threads, {out['questions']} questions, load average "
          f"{out['load_average'][0]:.2f}, peak RSS {out['peak_rss_mb']} MB")
    print(f"{'engine':<11}{'weights':<10}{'method':<15}{'decode tok/s':>13}  same tokens as row 1 / as its own off")
    for r in rows:
        tps = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-"
        own = f"{r['identical_to_own_off']}/{len(prompts)}" if r["identical_to_own_off"] is not None else "-"
        print(f"{r['engine']:<11}{r['dtype']:<10}{r['method']:<15}{tps:>13}  {r['identical_to_first']}/{len(prompts)}"
              f" / {own}")


if __name__ == "__main__":
    main()
