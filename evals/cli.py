"""`ragdesk eval`: run a suite, list runs, compare two runs, write an HTML report.

`ragdesk eval SUITE ...` runs a suite (the group treats an unknown first word as the suite path, so `run` is
optional); `compare`, `report` and `list` are subcommands. A failed gate exits 3 and names the metric.
Imports nothing heavy at module level: ragas, torch and the engine load inside the commands.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import click

# light: assistant.cli imports only click at module level (it is what imports this module, lazily)
from assistant.cli import CONTEXT, _answer_options

__all__ = ["GATE_EXIT", "eval_group"]

GATE_EXIT = 3  # documented: a --fail-under / --fail-over / --max-drop gate failed


class SuiteDefaultGroup(click.Group):
    """A group whose unknown first argument is the suite of the `run` command."""

    default_command = "run"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=SuiteDefaultGroup, context_settings=CONTEXT)
def eval_group():
    """Measure answer quality, retrieval, refusals, latency and token cost on a suite, and keep every run.

    \b
    Examples:
      ragdesk eval corpus/eval.jsonl                       # run, store, print the table
      ragdesk eval corpus/eval.jsonl --speculative off --fail-under recall_at_k=0.8
      ragdesk eval corpus/eval.jsonl --judge smollm2-135m  # add LLM-judged metrics
      ragdesk eval corpus/eval.jsonl --judge http://127.0.0.1:8080/v1#qwen2.5
      ragdesk eval list
      ragdesk eval compare previous latest
      ragdesk eval report latest --html report.html

    Exit status: 0 ok, 1 bad input, 2 usage error, 3 a gate failed.
    """


def _gates(fail_under, fail_over, max_drop=()):
    """Parsed gates; a malformed one is a usage error (exit 2), found before any work is done."""
    from retrieval.errors import InputError

    from ._compare import parse_gate

    try:
        return ([parse_gate(g, "under") for g in fail_under] + [parse_gate(g, "over") for g in fail_over]
                + [parse_gate(g, "drop") for g in max_drop])
    except InputError as exc:
        raise click.UsageError(str(exc)) from None


def _enforce(ctx, failed: list[str]) -> None:
    from assistant.cli import stderr

    if failed:
        for msg in failed:
            stderr(f"gate failed: {msg}")
        # SystemExit, not ctx.exit: ragdesk's main() runs click with standalone_mode=False, where click
        # returns ctx.exit's code instead of exiting with it
        sys.exit(GATE_EXIT)


_gate_options = [
    click.option("--fail-under", multiple=True, metavar="METRIC=VALUE",
                 help="Exit 3 when METRIC[.stat] is below VALUE (repeatable), e.g. recall_at_k=0.8."),
    click.option("--fail-over", multiple=True, metavar="METRIC=VALUE",
                 help="Exit 3 when METRIC[.stat] is above VALUE, e.g. ttft_ms.p95=2000."),
]


def _with(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco


@eval_group.command("run", context_settings=CONTEXT)
@click.argument("suite", type=click.Path(path_type=Path))
@_answer_options
@click.option("--judge", default=None, metavar="J",
              help="Add LLM-judged metrics: a model name/path, or an OpenAI-compatible URL (URL#model).")
@_with(_gate_options)
@click.option("--concurrency", type=int, default=None,
              help="Questions answered at once (default 1); pays off against a server, which batches them.")
@click.option("--limit", type=int, default=None, help="Only the first N questions.")
@click.option("--label", default="", help="A note stored with the run.")
@click.option("--json", "json_out", is_flag=True, help="Print the run (summary, ids, timings) as JSON.")
@click.pass_context
def run_command(ctx, suite, judge, fail_under, fail_over, limit, label, json_out, **flags):
    """Run every question of SUITE through the answer pipeline, score it, store it, print the table.

    \b
    Examples:
      ragdesk eval corpus/eval.jsonl
      ragdesk eval corpus/eval.jsonl --model qwen2.5-1.5b --speculative draft --json
      ragdesk eval my.jsonl --fail-under rouge_l=0.25 --fail-over false_refusal_rate=0.1
    """
    from assistant._terminal import safe_text
    from assistant.cli import emit_json, settings_from, stderr

    from ._harness import run_suite
    from ._suite import load_suite

    gates = _gates(fail_under, fail_over)
    settings = settings_from(ctx, **flags)
    items = load_suite(suite, warn=lambda msg: stderr(f"warning: {safe_text(msg)}"))
    if limit is not None:
        items = items[: max(limit, 0)] or items[:1]
    with _progress() as bar:
        task = bar.add_task(f"answering {len(items)} questions", total=len(items))

        def progress(stage, done, total):
            what = "answering" if stage == "answer" else "scoring"
            bar.update(task, description=f"{what}", completed=done, total=total or None)

        run_id, run, samples = run_suite(settings, items, suite, judge=judge, progress=progress,
                                         say=lambda msg: bar.console.print(msg + "..."), label=label)
    if json_out:
        emit_json({"run": run_id, "suite": str(suite), "model": run["model"], "summary": run["summary"],
                   "harness": run["harness"], "versions": run["versions"]})
    else:
        _print_summary(run)
    h = run["harness"]
    stderr(f"run {run_id} stored in {settings.evals_db}; {h['total_s']:.1f}s in all, {h['stream_s']:.1f}s "
           f"answering, harness overhead {h['overhead_excl_load_pct']:.1f}% (+{h['load_s']:.1f}s loading)")
    from ._compare import check_gates

    _enforce(ctx, check_gates(run["summary"], gates))


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "$":
        return f"${v:.6f}"
    if unit:
        return f"{v:.1f}"
    return f"{v:.3f}"


def _print_summary(run: dict) -> None:
    from ._metrics import METRICS

    metrics = run["summary"]["metrics"]
    click.echo(f"run {run['id']}: {run['suite']} - {run['n_samples']} questions, model {run['model']}, "
               f"speculative {run['speculative']}" + (f", judge {run['judge']}" if run["judge"] else ""))
    click.echo(f"{'metric':<22}{'mean':>12}  {'95% interval':<22}{'n':>4}  notes")
    group = None
    for name, info in METRICS.items():
        e = metrics.get(name)
        if e is None:
            continue
        if info.group != group:
            group = info.group
            click.echo(click.style(f"-- {group}", dim=True))
        interval = f"[{_fmt(e['lo'], info.unit)}, {_fmt(e['hi'], info.unit)}]" if e["mean"] is not None else ""
        notes = []
        if e.get("parse_failure"):
            notes.append(f"{e['parse_failure']} judge parse failures")
        if e.get("error"):
            notes.append(f"{e['error']} errors")
        if e.get("undefined"):
            notes.append(f"{e['undefined']} undefined")
        if "p50" in e and e["p50"] is not None:
            notes.append(f"p50 {_fmt(e['p50'], info.unit)}  p95 {_fmt(e['p95'], info.unit)}")
            if info.group == "cost":
                notes.append(f"total {_fmt(e['total'], info.unit)}")
        click.echo(f"{name:<22}{_fmt(e['mean'], info.unit):>12}  {interval:<22}{e['n']:>4}  {'; '.join(notes)}")
    s = run["summary"]
    tp = s.get("throughput")
    if tp:
        click.echo(f"throughput: {tp['answers_per_s']:.3f} answers/s, {tp['tokens_per_s']:.1f} completion tokens/s "
                   f"at concurrency {tp['concurrency']} ({tp['wall_s']:.1f} s answering)")
    if s.get("failed_answers"):
        click.echo(f"{s['failed_answers']} answers failed (see the report)")


def _store(ctx):
    from assistant.cli import settings_from

    from ._runs import RunStore

    settings = settings_from(ctx)
    return RunStore(settings.evals_db)


@eval_group.command("compare", context_settings=CONTEXT)
@click.argument("run_a")
@click.argument("run_b")
@click.option("--by", default="", help="Metric that ranks the changed samples (default semantic_similarity).")
@click.option("--top", type=int, default=5, show_default=True, help="How many changed samples to show.")
@_with(_gate_options)
@click.option("--max-drop", multiple=True, metavar="METRIC=DELTA",
              help="Exit 3 when METRIC's mean falls by more than DELTA from RUN_A to RUN_B.")
@click.option("--json", "json_out", is_flag=True, help="Print the comparison as JSON.")
@click.pass_context
def compare_command(ctx, run_a, run_b, by, top, fail_under, fail_over, max_drop, json_out):
    """Per-metric change from RUN_A to RUN_B (paired bootstrap over shared samples) and the samples that
    changed most. Gates apply to RUN_B (and to the change, with --max-drop).

    \b
    Examples:
      ragdesk eval compare 3 4
      ragdesk eval compare previous latest --max-drop rouge_l=0.05 --fail-under recall_at_k=0.8
    """
    from assistant.cli import emit_json

    from ._compare import check_gates, compare_runs

    gates = _gates(fail_under, fail_over, max_drop)
    store = _store(ctx)
    a, b = store.run(run_a), store.run(run_b)
    result = compare_runs(a, store.samples(run_a), b, store.samples(run_b), by=by, top=top)
    if json_out:
        emit_json(result)
    else:
        _print_compare(result, a, b)
    _enforce(ctx, check_gates(b["summary"], gates, result["metrics"]))


def _print_compare(result: dict, a: dict, b: dict) -> None:
    from assistant._terminal import safe_text
    from assistant.cli import stderr

    from ._metrics import METRICS

    for w in result["warnings"]:
        stderr(f"warning: {safe_text(w)}")
    click.echo(f"run {a['id']} ({a['model']}, {a['speculative']}) -> run {b['id']} ({b['model']}, "
               f"{b['speculative']}): {result['shared']} shared samples")
    click.echo(f"{'metric':<22}{'A':>11}{'B':>11}{'B - A':>11}  {'95% interval':<24}")
    for name, d in result["metrics"].items():
        unit = METRICS[name].unit
        dm = d["delta"]
        interval = f"[{_fmt(dm['lo'], unit)}, {_fmt(dm['hi'], unit)}]" if dm["mean"] is not None else ""
        mark = {True: click.style(" better", fg="green"), False: click.style(" worse", fg="red"), None: ""}[
            d["better"]]
        click.echo(f"{name:<22}{_fmt(d['a'], unit):>11}{_fmt(d['b'], unit):>11}{_fmt(dm['mean'], unit):>11}  "
                   f"{interval:<24}{mark}")
    if result["changed"]:
        click.echo(f"\nsamples that changed most on {result['by']}:")
        for c in result["changed"]:
            # suite text and answers (which quote documents) are shown with their control characters visible
            click.echo(f"  {safe_text(c['sample_id'])}: {c['a']:.3f} -> {c['b']:.3f}  "
                       f"{safe_text(c['question'][:70])}")
            if c["answer_changed"]:
                click.echo(f"      A: {safe_text(' '.join(c['answer_a'].split())[:100])}")
                click.echo(f"      B: {safe_text(' '.join(c['answer_b'].split())[:100])}")


@eval_group.command("calibrate", context_settings=CONTEXT)
@click.argument("suite", type=click.Path(path_type=Path), required=False)
@click.option("--collection", "-c", default=None, help="Collection to fit for (default: default).")
@click.option("--max-false-refusal", type=float, default=0.02, show_default=True,
              help="Most answerable questions of the suite the thresholds may decline (a share).")
@click.option("--folds", type=int, default=5, show_default=True, help="Folds for the cross-validated figures.")
@click.option("--dry-run", is_flag=True, help="Print the fit without storing it.")
@click.option("--clear", is_flag=True, help="Remove the collection's stored thresholds (it then never abstains).")
@click.option("--json", "json_out", is_flag=True, help="Print the thresholds and figures as JSON.")
@click.pass_context
def calibrate_command(ctx, suite, max_false_refusal, folds, dry_run, clear, json_out, **flags):
    """Fit when to abstain from retrieval evidence alone, on SUITE's answerable and unanswerable questions,
    and store the thresholds with the collection. Retrieval only: no model is loaded.

    The rule: decline (the refusal and the closest passages, no generation) when a question's best dense
    similarity AND its best BM25 score are both below their thresholds. The fit refuses as many
    unanswerable questions as it can while declining at most --max-false-refusal of the answerable ones;
    k-fold figures show what to expect on questions it was not fitted on. Set abstain = "off" to ignore.

    \b
    Examples:
      ragdesk eval calibrate corpus/eval.jsonl
      ragdesk eval calibrate my.jsonl --collection team --max-false-refusal 0.05 --dry-run
      ragdesk eval calibrate --clear
    """
    from assistant.cli import emit_json, settings_from, stderr
    from retrieval.errors import InputError

    from ._calibrate import calibrate
    from ._suite import load_suite

    settings = settings_from(ctx, **flags)
    collection = _open_collection(settings)
    if clear:
        collection.set_abstain_rule(None)
        click.echo(f"abstention thresholds removed from collection {collection.name!r}")
        return
    if suite is None:
        raise InputError("calibrate needs a SUITE", "e.g. ragdesk eval calibrate corpus/eval.jsonl")
    items = load_suite(suite, warn=lambda msg: stderr(f"warning: {msg}"))
    with _progress() as bar:
        task = bar.add_task(f"retrieving for {len(items)} questions", total=len(items))
        result = calibrate(collection, items, suite, max_false_refusal=max_false_refusal, folds=folds,
                           progress=lambda done, total: bar.update(task, completed=done))
    rule = result.rule
    if not dry_run:
        collection.set_abstain_rule(rule)
    if json_out:
        emit_json({"collection": collection.name, "stored": not dry_run, "rule": "dense < a and bm25 < b",
                   "thresholds": rule.thresholds(), "suite": rule.suite, "suite_digest": rule.suite_digest,
                   "fitted_at": rule.fitted_at, "max_false_refusal": max_false_refusal, "train": rule.train,
                   "cv": rule.cv})
        return
    _print_calibration(result, collection.name, dry_run)


def _open_collection(settings):
    from retrieval import Collection, SearchConfig, get_embedder
    from retrieval._chunking import ChunkingConfig

    return Collection(settings.collection_path(), get_embedder(settings.embedder),
                      ChunkingConfig(settings.chunk_tokens, settings.chunk_overlap), SearchConfig(), create=False)


def _print_calibration(result, collection: str, dry_run: bool) -> None:
    import numpy as np

    rule = result.rule
    t = rule.train
    click.echo(f"{rule.suite}: {len(result.items)} questions ({t['answerable']} answerable, {t['unanswerable']} "
               f"unanswerable), collection {collection}")
    click.echo(f"{'evidence':<10}{'answerable: min':>16}{'median':>9}{'max':>9}{'unanswerable: min':>19}"
               f"{'median':>9}{'max':>9}")
    u = np.array([i.unanswerable for i in result.items])
    for side in ("dense", "bm25"):
        v = np.array([getattr(e, side) for e in result.evidence])
        a, n = v[~u], v[u]
        click.echo(f"{side:<10}{a.min():>16.3f}{np.median(a):>9.3f}{a.max():>9.3f}{n.min():>19.3f}"
                   f"{np.median(n):>9.3f}{n.max():>9.3f}")
    if not math.isfinite(rule.dense) and rule.dense < 0:
        click.echo(f"no thresholds refuse an unanswerable question within the budget of "
                   f"{rule.max_false_refusal:.1%} false refusals: the collection will not abstain")
    else:
        fmt = lambda x: f"{x:.4f}" if math.isfinite(x) else "inf (no limit)"  # noqa: E731
        click.echo(f"rule: abstain when best dense similarity < {fmt(rule.dense)} and best BM25 score < "
                   f"{fmt(rule.bm25)}")

    def line(name, f):
        rr, fr = f["refusal_rate"], f["false_refusal_rate"]
        click.echo(f"{name:<12} refusal rate {rr['mean']:.3f} [{rr['lo']:.3f}, {rr['hi']:.3f}] "
                   f"({f['refused']}/{f['unanswerable']}), false refusal rate {fr['mean']:.3f} "
                   f"[{fr['lo']:.3f}, {fr['hi']:.3f}] ({f['false_refusals']}/{f['answerable']})")

    line("on the suite", t)
    if rule.cv:
        line(f"{rule.cv['folds']}-fold", rule.cv)
    click.echo(("not stored (--dry-run)" if dry_run else
                f"stored with collection {collection} (suite digest {rule.suite_digest}, {rule.fitted_at}); "
                f"answers abstain below them unless abstain = \"off\""))


@eval_group.command("list", context_settings=CONTEXT)
@click.option("--limit", type=int, default=20, show_default=True, help="How many runs, newest first.")
@click.option("--json", "json_out", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
def list_command(ctx, limit, json_out):
    """Stored runs, newest first.

    \b
    Examples:
      ragdesk eval list
      ragdesk eval list --limit 5 --json
    """
    from assistant.cli import emit_json

    runs = _store(ctx).list(limit)
    if json_out:
        emit_json(runs)
        return
    if not runs:
        click.echo("no runs yet: ragdesk eval SUITE")
        return
    heads = ("recall_at_k", "rouge_l", "semantic_similarity", "faithfulness")
    click.echo(f"{'id':>4}  {'created':<20} {'suite':<24}{'n':>4}  {'model':<16}{'spec':<14}"
               + "".join(f"{h[:10]:>11}" for h in heads))
    for r in runs:
        m = r["summary"].get("metrics", {})
        vals = "".join(f"{_fmt(m.get(h, {}).get('mean')):>11}" for h in heads)
        click.echo(f"{r['id']:>4}  {r['created_at'][:19]:<20} {Path(r['suite']).name[:23]:<24}{r['n_samples']:>4}  "
                   f"{r['model'][:15]:<16}{r['speculative'][:13]:<14}{vals}" + (f"  {r['label']}" if r["label"] else ""))


@eval_group.command("report", context_settings=CONTEXT)
@click.argument("run")
@click.option("--html", "html_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the self-contained HTML page.")
@click.pass_context
def report_command(ctx, run, html_path):
    """A self-contained HTML report of RUN: metric bars with intervals, latency, tokens and cost, and every
    sample with its question, answer, sources and scores.

    \b
    Examples:
      ragdesk eval report latest --html report.html
    """
    from ._report import render_report

    store = _store(ctx)
    record, samples = store.run(run), store.samples(run)
    page = render_report(record, samples)
    tmp = html_path.with_name(html_path.name + ".tmp")
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(html_path)
    except OSError as exc:
        from retrieval.errors import InputError

        with contextlib.suppress(OSError):  # a half-written page must not stay behind
            tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write the report to {html_path}: {exc.strerror or exc}",
                         "give --html a path in a folder you can write to, e.g. --html report.html") from None
    click.echo(str(html_path))
    sys.stdout.flush()
