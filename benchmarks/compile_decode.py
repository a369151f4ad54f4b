"""Static KV cache and a compiled decode step against ragdesk's eager step (issue 11, item 3), on this machine.

One RAG-shaped prompt (the openings of four bundled corpus documents as passages, then a question), then
the same greedy one-token steps with:
  eager/dynamic   what ragdesk does today (DynamicCache, eager forward)
  eager/static    a preallocated StaticCache, eager forward (cache_position passed)
  compiled/static torch.compile of the forward over the StaticCache (inductor, C++ kernels on CPU)
It prints ms per step (median of the timed steps), the compile time, and whether the tokens match the eager
ones. It measures and asserts nothing; the decision (compile only where it pays) is made from its figures.

    python benchmarks/compile_decode.py [--steps 48] [--dtype bfloat16|float32] [--threads 2]

Needs the default model in the models folder (RAGDESK_MODELS_DIR) and a C++ compiler for inductor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prompt_ids(tok) -> list[int]:
    corpus = Path(__file__).resolve().parents[1] / "corpus" / "docs"
    text = "\n\n".join(p.read_text(errors="replace")[:700] for p in sorted(corpus.rglob("*.md"))[:4])
    msgs = [{"role": "system", "content": "Answer from the passages and cite them as [n]."},
            {"role": "user", "content": f"Passages:\n{text}\n\nQuestion: How do I enable single sign-on with SAML?"}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)


def run(model, ids, steps, cache, forward, static: bool):
    import torch

    times, out_ids = [], []
    with torch.inference_mode():
        n = len(ids)
        kw = {"cache_position": torch.arange(n - 1)} if static else {}
        # the prefill runs eagerly (its length differs per question; only the one-token step is compiled)
        model(input_ids=torch.tensor([ids[:-1]]), past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
        last, pos = ids[-1], n - 1
        for _ in range(steps):
            t0 = time.perf_counter()
            kw = {"cache_position": torch.tensor([pos])} if static else {}
            logits = forward(input_ids=torch.tensor([[last]]), past_key_values=cache, use_cache=True, **kw).logits
            last = int(logits[0, -1].argmax())
            times.append(time.perf_counter() - t0)
            out_ids.append(last)
            pos += 1
    return times, out_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, StaticCache

    from assistant.models import resolve_model_folder
    from assistant.settings import load_settings

    torch.set_num_threads(args.threads)
    folder = resolve_model_folder("smollm2-135m", load_settings(), lambda msg: print(msg, file=sys.stderr))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, args.dtype)).eval()
    ids = prompt_ids(tok)
    max_len = len(ids) + args.steps + 8
    warm = 4
    rows = []

    t, ref = run(model, ids, args.steps, DynamicCache(config=model.config), model, False)
    rows.append(("eager/dynamic", t[warm:], ref, 0.0))
    t, out = run(model, ids, args.steps, StaticCache(config=model.config, max_cache_len=max_len), model, True)
    rows.append(("eager/static", t[warm:], out, 0.0))
    compiled = torch.compile(model.forward, dynamic=False)
    t0 = time.perf_counter()
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    t, out = run(model, ids, args.steps, cache, compiled, True)
    first = sum(t[:warm])
    rows.append(("compiled/static", t[warm:], out, time.perf_counter() - t0 - sum(t[warm:]) + first))
    # a second question reuses the compiled graphs: its steps alone show the steady state
    t, out2 = run(model, ids, args.steps, StaticCache(config=model.config, max_cache_len=max_len), compiled, True)
    rows.append(("compiled/static 2nd", t[warm:], out2, 0.0))

    print(f"prompt {len(ids)} tokens, {args.steps} steps ({warm} warm-up not timed), {args.dtype}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    base = statistics.median(rows[0][1])
    for label, times, toks, setup in rows:
        med = statistics.median(times)
        same = sum(a == b for a, b in zip(toks, ref))
        extra = f", setup+compile {setup:.1f} s" if setup else ""
        print(f"  {label:<20} {1000 * med:7.2f} ms/step  {1 / med:6.1f} tok/s  x{base / med:.2f}  "
              f"same tokens {same}/{len(ref)}{extra}")


if __name__ == "__main__":
    main()
