"""Does the LoRA adapter help? Base model vs base + adapter on the held-out support tickets.

For every ticket marked "split": "test" (never trained on), both models write a reply (greedy, the model's
chat template with the support system prompt the adapter was trained with, no retrieval, the settings'
repetition penalty) and each reply is scored against the agent's real reply with ROUGE-L F1 (word LCS) and
the cosine similarity of all-MiniLM-L6-v2 embeddings. The effect is the paired difference (adapter - base)
with a bootstrap 95% confidence interval. The adapter is loaded the way `--adapter` loads it at answer time
(TransformersModel -> PeftModel.from_pretrained + merge_and_unload).

Not here: retrieval-grounded answering (that is `ragdesk eval`), training (`ragdesk finetune`).

    python benchmarks/finetune_effect.py --adapter ~/.local/share/ragdesk/adapters/tickets \
        --tickets corpus/tickets.jsonl --out benchmarks/results/finetune_effect.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = re.findall(r"\w+", candidate.lower()), re.findall(r"\w+", reference.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def bootstrap_ci(diffs: list[float], n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `diffs` (paired differences), resampling tickets."""
    rng = random.Random(seed)
    k = len(diffs)
    means = sorted(sum(diffs[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def generate(model, prompts: list[list[dict]], max_new_tokens: int, repetition_penalty: float,
             batch_size: int) -> list[str]:
    """Greedy replies, batched with left padding (same tokens as one-at-a-time greedy up to float noise)."""
    import torch

    tok = model.tokenizer
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids = [model.encode_chat(p) for p in prompts[i: i + batch_size]]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids], device=model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
        with torch.no_grad():
            gen = model.model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                       eos_token_id=list(model.stop_ids), pad_token_id=tok.pad_token_id)
        out += [tok.decode(row[width:].tolist(), skip_special_tokens=True).strip() for row in gen]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", required=True, help="adapter folder written by ragdesk finetune")
    ap.add_argument("--tickets", default="corpus/tickets.jsonl")
    ap.add_argument("--model", default=None, help="base model (default: the one the adapter was trained on)")
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="score only the first N test tickets (0 = all)")
    ap.add_argument("--bootstrap", type=int, default=5000)
    ap.add_argument("--out", default="", help="write the JSON result here")
    args = ap.parse_args(argv)

    from assistant.finetune import SUPPORT_PROMPT, read_tickets, support_messages
    from assistant.models import TransformersModel, resolve_model_folder
    from assistant.settings import load_settings
    from retrieval import get_embedder

    settings = load_settings()
    meta_path = Path(args.adapter).expanduser() / "finetune_config.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"config": {}}
    model_name = args.model or meta["config"].get("model") or settings.model
    system = meta["config"].get("system_prompt", SUPPORT_PROMPT)
    tickets, problems = read_tickets(args.tickets)
    for p in problems:
        print(f"warning: skipped {p}", file=sys.stderr)
    test = [t for t in tickets if t.split == "test"][: args.limit or None]
    if not test:
        print(f"error: no tickets with \"split\": \"test\" in {args.tickets}", file=sys.stderr)
        return 1
    prompts = [support_messages(t.question, system) for t in test]
    refs = [t.reply for t in test]
    folder = resolve_model_folder(model_name, settings, lambda m: print(m, file=sys.stderr))

    replies, seconds = {}, {}
    for label, adapter in (("base", ""), ("adapter", str(Path(args.adapter).expanduser()))):
        model = TransformersModel(folder, model_name, settings.device, settings.dtype, settings.threads, adapter)
        generate(model, prompts[:1], 4, settings.repetition_penalty, 1)  # warm-up
        t0 = time.perf_counter()
        replies[label] = generate(model, prompts, args.max_new_tokens, settings.repetition_penalty, args.batch_size)
        seconds[label] = round(time.perf_counter() - t0, 1)
        print(f"{label}: {len(test)} replies in {seconds[label]} s", file=sys.stderr)
        del model

    embedder = get_embedder("minilm")
    ref_vecs = embedder.embed(refs)
    scores: dict[str, dict[str, list[float]]] = {}
    for label, texts in replies.items():
        vecs = embedder.embed(texts)
        scores[label] = {"rouge_l": [rouge_l_f1(c, r) for c, r in zip(texts, refs)],
                         "cosine": [float(v @ w) for v, w in zip(vecs, ref_vecs)]}
    table = []
    for metric in ("rouge_l", "cosine"):
        base, tuned = scores["base"][metric], scores["adapter"][metric]
        diffs = [b - a for a, b in zip(base, tuned)]
        lo, hi = bootstrap_ci(diffs, args.bootstrap)
        table.append({"metric": metric, "base": sum(base) / len(base), "adapter": sum(tuned) / len(tuned),
                      "diff": sum(diffs) / len(diffs), "ci95": [lo, hi],
                      "adapter_wins": sum(d > 0 for d in diffs), "n": len(diffs)})

    print(f"\n{len(test)} held-out tickets, {model_name} vs + adapter {args.adapter} "
          f"(greedy, {args.max_new_tokens} new tokens, no retrieval)")
    print(f"{'metric':<10}{'base':>8}{'adapter':>9}{'diff':>9}   95% CI (paired bootstrap)   adapter better")
    for row in table:
        print(f"{row['metric']:<10}{row['base']:>8.4f}{row['adapter']:>9.4f}{row['diff']:>+9.4f}   "
              f"[{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]{'':<10}{row['adapter_wins']}/{row['n']}")
    result = {"model": model_name, "adapter": args.adapter, "tickets": args.tickets, "n": len(test),
              "max_new_tokens": args.max_new_tokens, "generation_seconds": seconds, "table": table,
              "examples": [{"id": t.extra.get("id"), "question": t.question, "reference": r,
                            "base": b, "adapter": a}
                           for t, r, b, a in zip(test, refs, replies["base"], replies["adapter"])]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
