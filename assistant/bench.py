"""`ragdesk bench`: decoding speed with and without speculative decoding, measured side by side in one run.

For each question (a fixed set about the bundled corpus, or `--suite FILE`) and each method, the same engine
answers greedily; the table gives tokens/s (end to end: completion tokens over the time from retrieval to the
last token, prefill included), decoding tokens/s (the tokens after the first over the time after the first:
what the decoding method and dtype change), time to first token and retrieval time, the speed-up of each
method over `off` from the same run, acceptance rates, and whether the outputs were token-for-token identical.
A warm-up answer runs first. It measures, it does not assert: the machine may be noisy, ratios are what count.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path

import click

from retrieval.errors import InputError

from .cli import collection_option
from .settings import DTYPES

__all__ = ["BUNDLED_QUESTIONS", "bench_command", "run_bench"]

BUNDLED_QUESTIONS = [
    "Which port does the Tidepool server listen on by default?",
    "How long does Tidepool keep old file versions and deleted files?",
    "How much does the Team edition cost per user per month?",
    "How many failed sign-ins lock an account, and for how long?",
    "What does error TP-2002 mean and how do I resolve it?",
    "How do I back up the Tidepool database?",
    "Which databases can Tidepool use?",
    "What is the API rate limit for a personal access token?",
]


def _questions(suite: Path | None, limit: int) -> list[str]:
    if suite is None:
        return BUNDLED_QUESTIONS[:limit]
    out = []
    for lineno, line in enumerate(suite.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            question = obj["question"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{suite}:{lineno}: not a suite line with a \"question\"",
                             "each line must be a JSON object with a question") from None
        if not obj.get("unanswerable"):
            out.append(question)
    if not out:
        raise InputError(f"{suite} holds no questions")
    return out[:limit]


def run_bench(engine, questions: list[str], methods: list[str], progress=None) -> dict:
    progress = progress or (lambda msg: None)
    s = engine.settings
    s.speculative = methods[0]
    engine.ask(questions[0])  # warm-up: first-call allocations and kernel selection
    per: dict[str, list] = {m: [] for m in methods}
    for qi, q in enumerate(questions):
        for m in methods:
            s.speculative = m
            progress(f"[{qi + 1}/{len(questions)}] {m}")
            per[m].append(engine.ask(q))
    rows = []
    base = per[methods[0]]
    base_tps = sum(a.usage.completion_tokens for a in base) / max(1e-9, sum(a.timings.generation_ms for a in base) / 1000)
    for m in methods:
        answers = per[m]
        gen_s = sum(a.timings.generation_ms for a in answers) / 1000
        tokens = sum(a.usage.completion_tokens for a in answers)
        drafted = sum(a.speculative.draft_tokens for a in answers)
        accepted = sum(a.speculative.accepted_tokens for a in answers)
        steps = sum(a.speculative.steps for a in answers)
        tps = tokens / gen_s if gen_s else 0.0
        decode_s = sum(max(0.0, a.timings.total_ms - a.timings.ttft_ms) for a in answers) / 1000
        decode_tokens = sum(max(0, a.usage.completion_tokens - 1) for a in answers)
        rows.append({
            "method": m, "answers": len(answers), "completion_tokens": tokens,
            "tokens_per_s": round(tps, 2),
            "decode_tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else None,
            "speedup_vs_off": round(tps / base_tps, 2) if base_tps else None,
            "ttft_ms_p50": round(statistics.median(a.timings.ttft_ms for a in answers), 1),
            "retrieval_ms_p50": round(statistics.median(a.timings.retrieval_ms for a in answers), 1),
            "drafted": drafted, "accepted": accepted,
            "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
            "tokens_per_step": round(tokens / steps, 2) if steps else None,
            "identical_to_off": all(a.token_ids == b.token_ids for a, b in zip(answers, base)),
            "identical_answers": sum(a.token_ids == b.token_ids for a, b in zip(answers, base)),
        })
    return {"model": engine.model_name, "device": engine.device, "dtype": getattr(engine.model, "dtype", ""),
            "questions": len(questions), "rows": rows,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "answers": {m: [a.text for a in per[m]] for m in methods}}


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--suite", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL suite whose questions to use (default: a fixed set about the bundled corpus).")
@click.option("-n", "limit", type=int, default=8, show_default=True, help="How many questions.")
@click.option("--methods", default=None, help="Comma-separated methods (default: off,prompt-lookup[,draft]).")
@click.option("--model", "-m", default=None, help="Model (preset, folder, .gguf).")
@click.option("--draft-model", default=None, help="Draft model; adds the draft method.")
@click.option("--adapter", default=None, help="LoRA adapter folder.")
@click.option("--max-new-tokens", type=int, default=None, help="Answer length cap (default 256).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
              help="Weights' type (default auto: int4-wo on a CPU with native bf16, else float32).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None)
@collection_option
@click.option("--json", "json_out", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def bench_command(ctx, suite, limit, methods, model, draft_model, adapter, max_new_tokens, dtype, device, collection,
                  json_out):
    """Off / prompt-lookup / draft side by side: tokens/s (end to end, decoding), first token.

    \b
    Examples:
      ragdesk bench
      ragdesk bench --dtype float32 -n 4
      ragdesk bench --model qwen2.5-1.5b --draft-model qwen2.5-0.5b
      ragdesk bench --suite corpus/eval.jsonl --json
    """
    from .cli import emit_json, settings_from, stderr
    from .engine import Engine
    from .models import PRESETS

    s = settings_from(ctx, model=model, draft_model=draft_model, adapter=adapter, max_new_tokens=max_new_tokens,
                      dtype=dtype, device=device, collection=collection)
    chosen = methods.split(",") if methods else ["off", "prompt-lookup"]
    if not methods and (s.draft_model or (s.model in PRESETS and PRESETS[s.model].draft)):
        chosen.append("draft")
    if chosen[0] != "off":
        chosen.insert(0, "off")
    s.speculative = "draft" if "draft" in chosen else "off"
    engine = Engine(s).load(progress=lambda msg: stderr(msg + "..."))
    t0 = time.perf_counter()
    result = run_bench(engine, _questions(suite, limit), chosen, progress=stderr)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if json_out:
        emit_json(result)
        return
    click.echo(f"{result['model']} on {result['device']} ({result['dtype']}), {result['questions']} questions, "
               f"peak RSS {result['peak_rss_mb']} MB")
    click.echo(f"{'method':<14}{'tok/s':>8}{'decode':>8}{'speed-up':>9}{'TTFT ms':>9}{'retr ms':>8}{'accept':>8}"
               f"{'tok/step':>9}  identical to off")
    for r in result["rows"]:
        acc = f"{r['acceptance_rate']:.0%}" if r["acceptance_rate"] is not None else "-"
        tps = f"{r['tokens_per_step']:.2f}" if r["tokens_per_step"] else "-"
        dec = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-"
        click.echo(f"{r['method']:<14}{r['tokens_per_s']:>8.1f}{dec:>8}{r['speedup_vs_off']:>8.2f}x"
                   f"{r['ttft_ms_p50']:>9.0f}{r['retrieval_ms_p50']:>8.1f}{acc:>8}{tps:>9}  "
                   f"{r['identical_answers']}/{r['answers']}")
