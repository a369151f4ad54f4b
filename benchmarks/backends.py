"""Local transformers against a real vLLM server, on the same suite, model and prompts, in one run.

Configurations: the in-process model with speculative decoding off and with prompt lookup (concurrency 1:
a local model answers one question at a time), and vLLM serving the same converted SmolLM2-135M folder,
plain and with its ngram speculation, each at concurrency 1 and 4. Every configuration goes through the
eval harness (the path `ragdesk eval` takes), so the table holds answers/s, aggregate completion tokens/s,
time to first token p50/p95 and the quality metrics with their 95% intervals, which should agree. It
measures, it asserts nothing: run it on a quiet machine and compare ratios.

    python benchmarks/backends.py [--limit 24] [--max-new-tokens 64] [--json-out FILE]

Needs the vLLM venv (`bash .ci/vllm-env`), and indexes corpus/docs into a temporary home with MiniLM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = ("recall_at_k", "rouge_l", "semantic_similarity", "string_presence", "refusal_rate", "false_refusal_rate")


def run_config(label: str, model: str, speculative: str, concurrency: int, args, items) -> dict:
    from assistant.settings import load_settings
    from evals._harness import run_suite

    s = load_settings({"model": model, "speculative": speculative, "concurrency": concurrency,
                       "max_new_tokens": args.max_new_tokens})
    print(f"-- {label}", file=sys.stderr, flush=True)
    run_id, run, samples = run_suite(s, items, args.suite, label=label)
    m = run["summary"]["metrics"]
    tp = run["summary"]["throughput"]
    row = {"config": label, "run": run_id, "answers_per_s": tp["answers_per_s"], "tokens_per_s": tp["tokens_per_s"],
           "ttft_p50_ms": m["ttft_ms"]["p50"], "ttft_p95_ms": m["ttft_ms"]["p95"],
           "quality": {k: m[k] for k in METRICS if k in m},
           "speculative": {"methods": sorted({x["speculative"]["method"] for x in samples}),
                           "drafted": sum(x["speculative"]["draft_tokens"] for x in samples),
                           "accepted": sum(x["speculative"]["accepted_tokens"] for x in samples)}}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default=str(REPO / "corpus" / "eval.jsonl"))
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()

    from tests._vllm import vllm_server, vllm_skip_reason

    home = tempfile.mkdtemp(prefix="ragdesk-backends-")
    os.environ.setdefault("RAGDESK_MODELS_DIR", str(Path.home() / ".cache" / "ragdesk-test-models"))
    os.environ.update(RAGDESK_HOME=home, RAGDESK_EMBEDDER="minilm", RAGAS_DO_NOT_TRACK="true")
    from assistant.models import resolve_model_folder
    from assistant.settings import load_settings
    from evals._suite import load_suite
    from retrieval import Collection, get_embedder

    s = load_settings()
    Collection(s.collection_path(), get_embedder("minilm")).update([REPO / "corpus" / "docs"])
    folder = resolve_model_folder("smollm2-135m", s, progress=lambda m: print(m, file=sys.stderr))
    items = load_suite(Path(args.suite))[: args.limit]
    rows = [run_config("local off", "smollm2-135m", "off", 1, args, items),
            run_config("local prompt-lookup", "smollm2-135m", "prompt-lookup", 1, args, items)]
    reason = vllm_skip_reason()
    if reason:
        print(f"vLLM skipped: {reason}", file=sys.stderr)
    else:
        for ngram in (False, True):
            t0 = time.perf_counter()
            with vllm_server(folder, "smollm2", ngram=ngram) as url:
                print(f"vLLM {'ngram' if ngram else 'plain'} ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                for c in (1, 4):
                    rows.append(run_config(f"vLLM {'ngram' if ngram else 'plain'} c{c}", f"{url}#smollm2", "off", c,
                                           args, items))
    print(f"{len(items)} questions, max {args.max_new_tokens} new tokens, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'config':<22}{'answers/s':>10}{'tok/s':>8}{'TTFT p50':>10}{'p95':>8}{'accepted':>16}  "
          + "  ".join(f"{k[:14]:>22}" for k in METRICS))
    for r in rows:
        q = "  ".join(f"{_ci(r['quality'].get(k)):>22}" for k in METRICS)
        sp = r["speculative"]
        acc = f"{sp['accepted']}/{sp['drafted']}" if sp["drafted"] else "-"
        print(f"{r['config']:<22}{r['answers_per_s']:>10.3f}{r['tokens_per_s']:>8.1f}{r['ttft_p50_ms']:>10.0f}"
              f"{r['ttft_p95_ms']:>8.0f}{acc:>16}  {q}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


def _ci(e) -> str:
    if not e or e.get("mean") is None:
        return "-"
    return f"{e['mean']:.3f} [{e['lo']:.2f},{e['hi']:.2f}]"


if __name__ == "__main__":
    main()
