"""Where one decoding step of the default local model spends its time (issue 11).

Runs the real `greedy_decode` (not a copy of it) on grounded prompts and times each part of a step by wrapping
the pieces the loop calls: the model's forward pass, logits processing (repetition penalty + greedy choice),
the candidate lookup (prompt lookup's n-gram search and its strategy update), KV cache cropping, and the
incremental detokenizer that `TransformersModel.stream` runs on each step. What is left of the step's wall time
is Python bookkeeping in the loop itself. Prints ms per step and the share of each, for `off` and
`prompt-lookup` (and `prompt-lookup-always`, the policy that proposes on every match, with `--methods`),
with the acceptance and how many outputs are token-for-token those of the first method. `--attention
ragdesk_sdpa,sdpa --repeat 3` alternates attention implementations (ragdesk's against transformers' own) in
one run. `--busy` runs a `nice -n 19` busy loop alongside (a loaded machine) and stops it at the end.

Prompts: the bundled bench questions with passages retrieved from the collection when `RAGDESK_HOME` holds an
index, else the first corpus documents as passages. Not here: end-to-end tokens/s (that is `ragdesk bench`).

    RAGDESK_MODELS_DIR=~/.cache/ragdesk-test-models PYTHONPATH=. .venv/bin/python benchmarks/profile_decode.py
    ... benchmarks/profile_decode.py --dtype int8-wo -n 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTS = ("forward", "logits", "lookup", "crop", "detokenize")


class Clock:
    """Accumulates seconds per part; `wrap` returns a timed version of a callable."""

    def __init__(self):
        self.spent = dict.fromkeys(PARTS, 0.0)

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - t
        return timed


class TimedModel:
    """Stands in for the transformers model: times each `__call__` (kept in `calls`, so the prefill, the
    first call, can be taken out), passes everything else through."""

    def __init__(self, model, clock: Clock):
        self._model, self._clock, self.calls = model, clock, []

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self._model(*args, **kwargs)
        finally:
            self.calls.append(time.perf_counter() - t)
            self._clock.spent["forward"] += self.calls[-1]

    def __getattr__(self, name):
        return getattr(self._model, name)


def prompts(model, settings, n: int) -> list[list[int]]:
    from assistant.bench import BUNDLED_QUESTIONS
    from assistant.engine import build_messages

    questions = BUNDLED_QUESTIONS[:n]
    try:
        from assistant.engine import Engine

        engine = Engine(settings, model=model).load()
        budget = engine.context_budget()
        return [model.encode_chat(build_messages(q, engine.retrieve(q), (), model.count_tokens, budget))
                for q in questions]
    except Exception as exc:  # no index: plain documents as passages
        print(f"(no collection: {exc}; using corpus documents as passages)", file=sys.stderr)
        from retrieval import Passage

        docs = sorted((ROOT / "corpus" / "docs").rglob("*.md"))[:3]
        passages = [Passage(i, str(d), d.stem, d.stem, 1, 30, "lines", d.read_text()[:1500], 1.0)
                    for i, d in enumerate(docs)]
        return [model.encode_chat(build_messages(q, passages)) for q in questions]


def profile(model, ids_list, method: str, settings, max_new: int) -> dict:
    from assistant import _decoding
    from assistant._decoding import DecodingConfig, DecodingStats, PromptLookupCandidates, SpeculativeConfig
    from assistant.models._transformers import IncrementalDetokenizer

    clock = Clock()
    saved = {name: getattr(_decoding, name) for name in ("_pick_tokens", "_penalize", "_crop_to")
             if hasattr(_decoding, name)}
    for name, fn in saved.items():
        setattr(_decoding, name, clock.wrap("crop" if name == "_crop_to" else "logits", fn))
    timed = TimedModel(model.model, clock)
    steps = tokens = drafted = accepted = 0
    wall = 0.0
    outputs = []
    try:
        for ids in ids_list:
            cand = None
            if method.startswith("prompt-lookup"):
                cand = PromptLookupCandidates(SpeculativeConfig(lookup_tokens=settings.lookup_tokens,
                                                                max_ngram=settings.lookup_ngram),
                                              cost_aware=method == "prompt-lookup")
                cand.get_candidates = clock.wrap("lookup", cand.get_candidates)
                cand.update_candidate_strategy = clock.wrap("lookup", cand.update_candidate_strategy)
            detok = IncrementalDetokenizer(model.tokenizer)
            add = clock.wrap("detokenize", detok.add)
            stats = DecodingStats()
            cfg = DecodingConfig(max_new, settings.repetition_penalty, model.stop_ids)
            timed.calls.clear()
            t0 = time.perf_counter()
            for step in _decoding.greedy_decode(timed, ids, cfg, cand, None, stats):
                add(step)
            # the prefill (first forward call) is not a decoding step
            prefill = timed.calls[0] if len(ids) > 1 else 0.0
            clock.spent["forward"] -= prefill
            wall += time.perf_counter() - t0 - prefill
            steps += stats.steps
            tokens += len(stats.tokens)
            outputs.append(stats.tokens)
            drafted += stats.draft_tokens
            accepted += stats.accepted_tokens
    finally:
        for name, fn in saved.items():
            setattr(_decoding, name, fn)
    spent = dict(clock.spent)
    spent["bookkeeping"] = max(0.0, wall - sum(spent.values()))
    return {"method": method, "steps": steps, "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "drafted": drafted, "accepted": accepted, "outputs": outputs,
            "ms_per_step": round(wall / steps * 1000, 3),
            "parts_ms_per_step": {k: round(v / steps * 1000, 3) for k, v in spent.items()},
            "share": {k: round(v / wall, 3) for k, v in spent.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=4, help="questions (default 4)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--methods", default="off,prompt-lookup",
                    help="off, prompt-lookup (cost-aware), prompt-lookup-always (proposes on every match)")
    ap.add_argument("--attention", default="",
                    help="comma list of attention implementations to alternate (e.g. ragdesk_sdpa,sdpa; default: "
                         "the one the model loads with)")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole set this many times, alternated")
    ap.add_argument("--busy", action="store_true",
                    help="run a `nice -n 19` busy loop next to it (a loaded machine), stopped at the end")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: must be at least 1")

    from assistant.models import load_model
    from assistant.settings import load_settings

    flags = {"dtype": args.dtype, "threads": args.threads}
    settings = load_settings(flags)
    model = load_model(settings.model, settings)
    ids_list = prompts(model, settings, args.n)
    profile(model, ids_list[:1], "off", settings, 16)  # warm-up
    busy = None
    if args.busy:
        import subprocess

        busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
    try:
        results = []
        attentions = [a for a in args.attention.split(",") if a] or [model.model.config._attn_implementation]
        if "ragdesk_sdpa" in attentions:
            from assistant.models import _attention

            _attention._register()  # only CPU models switch to it on their own
        for _ in range(args.repeat):
            for attention in attentions:
                model.model.set_attn_implementation(attention)
                for m in args.methods.split(","):
                    results.append({**profile(model, ids_list, m, settings, args.max_new_tokens),
                                    "attention": attention})
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    base = results[0]["outputs"]
    for r in results:
        r["identical_to_first"] = sum(a == b for a, b in zip(r.pop("outputs"), base))
    out = {"model": model.name, "busy_loop": args.busy, "dtype": model.dtype, "threads": settings.threads or __import__("torch").get_num_threads(),
           "prompt_tokens": [len(i) for i in ids_list], "load_average": os.getloadavg(), "results": results}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['model']} ({out['dtype']}, {out['threads']} threads), prompts of {out['prompt_tokens']} tokens, "
          f"load average {out['load_average'][0]:.2f}")
    for r in results:
        print(f"\n{r['method']} ({r['attention']}): {r['ms_per_step']:.2f} ms/step, {r['tokens']} tokens in "
              f"{r['steps']} steps, "
              f"{r['tokens_per_s']:.1f} tokens/s, {r['accepted']}/{r['drafted']} proposed tokens accepted, "
              f"{r['identical_to_first']}/{len(ids_list)} outputs identical to {results[0]['method']} "
              f"({results[0]['attention']})")
        for part, ms in r["parts_ms_per_step"].items():
            print(f"  {part:<12}{ms:>8.3f} ms {r['share'][part]:>6.1%}")


if __name__ == "__main__":
    main()
