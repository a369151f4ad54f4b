"""The `ragdesk` command line: one click group whose commands import their heavy parts only when run.

Results go to stdout (`--json` for scripts), diagnostics and progress bars to stderr. A `RagdeskError`
becomes one line and exit 1; usage errors exit 2; a failed eval gate exits 3. `ragdesk --help` imports no
torch, faiss or textual.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import click

from retrieval.errors import RagdeskError

__all__ = ["cli", "main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class LazyGroup(click.Group):
    """Commands named here live in other modules and are imported when used (or when help lists them)."""

    lazy = {
        "chat": ("assistant.tui.command", "chat_command"),
        "eval": ("evals.cli", "eval_group"),
        "finetune": ("assistant.finetune_cli", "finetune_command"),
        "bench": ("assistant.bench", "bench_command"),
    }

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                missing = getattr(exc, "name", "") or str(exc)
                return _unavailable(name, missing)
        return super().get_command(ctx, name)


def _unavailable(name: str, missing: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"(unavailable: {missing} is not installed)")
    def cmd():
        raise RagdeskError(f"`ragdesk {name}` needs {missing}, which is not installed",
                           "pip install 'ragdesk[eval]'" if name == "eval" else "pip install ragdesk")
    return cmd


def settings_from(ctx: click.Context, **flags):
    """Settings with the flags the user actually typed on top (flags > env > ragdesk.toml > defaults)."""
    from .settings import load_settings

    given = {}
    root = ctx.find_root()
    for source in (root.params, flags):
        for key, value in source.items():
            if key in ("json_out",) or value is None:
                continue
            given[key] = value
    return load_settings(given)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def stderr(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(package_name="ragdesk", prog_name="ragdesk")
@click.option("--home", default=None, help="State folder (default: RAGDESK_HOME or the user data dir).")
@click.option("--collection", "-c", default=None, help="Collection to use (default: default).")
def cli(home, collection):
    """ragdesk: answers from your own documents with a local language model.

    \b
    Examples:
      ragdesk index corpus/                 # build or update the index
      ragdesk search "reset a password"     # ranked, cited passages
      ragdesk ask "Which port does the server use?"
      ragdesk chat                          # the terminal app
      ragdesk eval corpus/eval.jsonl        # quality, latency and cost
    """


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rebuild", is_flag=True, help="Drop the collection's index and embed everything again.")
@click.option("--json", "json_out", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def index(ctx, paths, rebuild, json_out):
    """Add, update and remove documents (md, rst, txt, html, pdf) incrementally.

    \b
    Examples:
      ragdesk index corpus/
      ragdesk index ~/docs/handbook.pdf notes/ --collection team
      ragdesk index corpus/ --rebuild
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from retrieval import Collection, get_embedder
    from retrieval._chunking import ChunkingConfig

    s = settings_from(ctx)
    for p in paths:
        if not p.exists():
            raise RagdeskError(f"path not found: {p}", "check the spelling, or index an existing folder")
    stderr(f"loading embedder {s.embedder}...")
    embedder = get_embedder(s.embedder)
    coll = Collection(s.collection_path(), embedder, ChunkingConfig(s.chunk_tokens, s.chunk_overlap))
    warnings: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_err_console(), transient=True) as bar:
        task = bar.add_task("scanning", total=None)

        def progress(stage, done, total):
            label = {"scan": "indexing files", "embed": f"embedding {total} chunks", "vectors": "writing vectors"}
            if stage == "scan":
                bar.update(task, description=label[stage], completed=done, total=total)
            else:
                bar.update(task, description=label.get(stage, stage))

        try:
            report = coll.update(list(paths), rebuild=rebuild, progress=progress, warn=warnings.append)
        except KeyboardInterrupt:
            stderr("interrupted: the index keeps every file finished so far; run the same command to continue")
            sys.exit(130)
    for w in warnings:
        stderr(f"warning: {w}")
    if json_out:
        emit_json(report.to_dict() | {"collection": coll.name})
        return
    click.echo(f"{coll.name}: {report.added} added, {report.updated} updated, {report.removed} removed, "
               f"{report.unchanged} unchanged, {len(report.skipped)} skipped; {report.chunks} chunks embedded "
               f"in {report.seconds:.1f}s ({coll.stats()['chunks']} in the collection)")
    if report.ignored:
        click.echo(f"({report.ignored} files of unsupported types ignored)")


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


@cli.command(context_settings=CONTEXT)
@click.argument("query")
@click.option("-k", "top_k", type=int, default=None, help="How many passages (default 5).")
@click.option("--mode", "search_mode", type=click.Choice(["hybrid", "dense", "bm25"]), default=None,
              help="Retrieval mode (default hybrid).")
@click.option("--json", "json_out", is_flag=True, help="Print the source objects as a JSON list.")
@click.pass_context
def search(ctx, query, top_k, search_mode, json_out):
    """Ranked passages for QUERY: path, heading, lines, score, text.

    \b
    Examples:
      ragdesk search "how do I change the port"
      ragdesk search "TP-2002" --mode bm25 -k 3 --json
    """
    from retrieval import Collection, get_embedder

    s = settings_from(ctx, search_mode=search_mode)
    coll = Collection(s.collection_path(), get_embedder(s.embedder), create=False)
    passages = coll.search(query, k=top_k or 5, mode=s.search_mode)
    if json_out:
        emit_json([p.to_source(i + 1) for i, p in enumerate(passages)])
        return
    if not passages:
        click.echo("no passages matched")
    for i, p in enumerate(passages, 1):
        click.echo(click.style(f"[{i}] {p.path}", bold=True) + f"  {p.heading}  ({p.location}, score {p.score:.4f})")
        snippet = " ".join(p.text.split())
        click.echo("    " + (snippet[:300] + ("..." if len(snippet) > 300 else "")))


def _answer_options(fn):
    options = [
        click.option("-k", "top_k", type=int, default=None, help="Passages to retrieve (default 4)."),
        click.option("--model", "-m", default=None, help="Preset, model folder, .gguf file or cached HF id."),
        click.option("--adapter", default=None, type=click.Path(), help="LoRA adapter folder (ragdesk finetune)."),
        click.option("--speculative", type=click.Choice(["off", "prompt-lookup", "draft"]), default=None,
                     help="Speculative decoding method (default prompt-lookup)."),
        click.option("--draft-model", default=None, help="Draft model for --speculative draft."),
        click.option("--max-new-tokens", type=int, default=None, help="Longest answer in tokens (default 256)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8", "int8-wo",
                                                  "int4-wo"]), default=None),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


@cli.command(context_settings=CONTEXT)
@click.argument("question")
@_answer_options
@click.option("--json", "json_out", is_flag=True, help="Print answer, sources, usage and timings as JSON.")
@click.pass_context
def ask(ctx, question, json_out, **flags):
    """One grounded answer to QUESTION, streamed, then its numbered sources.

    \b
    Examples:
      ragdesk ask "Which port does Tidepool listen on?"
      ragdesk ask "How do I enable SSO?" --speculative off --json
      ragdesk ask "..." --model qwen2.5-1.5b --speculative draft
    """
    from .answer import Answer, TokenArrived
    from .engine import Engine

    s = settings_from(ctx, **flags)
    if not question.strip():
        raise RagdeskError("the question is empty", 'ask something, e.g. ragdesk ask "How do I reset a password?"')
    engine = Engine(s).load(progress=lambda msg: stderr(msg + "..."))
    answer: Answer | None = None
    for event in engine.stream(question):
        if isinstance(event, TokenArrived) and not json_out:
            click.echo(event.text, nl=False)
            sys.stdout.flush()
        elif isinstance(event, Answer):
            answer = event
    if answer.status == "failed":
        raise RagdeskError(f"generation failed: {answer.error}")
    if json_out:
        emit_json(answer.to_json())
        return
    click.echo("\n")
    if answer.citation_mode == "attributed":
        click.echo("(the model cited nothing; * marks the passages that hold the answer's words)")
    for i, p in enumerate(answer.sources, 1):
        mark = "*" if i in answer.cited else " "
        click.echo(f"{mark}[{i}] {p.path} - {p.heading} ({p.location})")
    t, u = answer.timings, answer.usage
    stderr(f"\n{answer.model} on {answer.device}: {u.prompt_tokens}+{u.completion_tokens} tokens, first token "
           f"{t.ttft_ms:.0f} ms, {t.tokens_per_s:.1f} tokens/s, {answer.speculative.method} accepted "
           f"{answer.speculative.accepted_tokens}/{answer.speculative.draft_tokens}, "
           f"cost ${answer.cost.tokens_usd + answer.cost.device_usd:.6f}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "json_out", is_flag=True, help="Print as JSON.")
@click.option("--settings", "show_settings", is_flag=True, help="List every setting with its value and meaning.")
@click.option("--fetch", "fetch", multiple=True, metavar="NAME",
              help="Fetch and convert a preset (or .gguf) now instead of on first use; repeatable.")
@click.pass_context
def models(ctx, json_out, show_settings, fetch):
    """What is installed and cached, which device is used, and what a model needs in memory.

    \b
    Examples:
      ragdesk models
      ragdesk models --settings
      ragdesk models --fetch qwen2.5-1.5b --fetch qwen2.5-0.5b
    """
    from .model_info import describe_models, dtype_lines

    s = settings_from(ctx)
    for name in fetch:
        from .models import resolve_model_folder

        folder = resolve_model_folder(name, s, progress=lambda msg: stderr(msg + "..."))
        stderr(f"{name}: ready in {folder}")
    if show_settings:
        from .settings import Settings

        docs = Settings.docs()
        rows = [{"name": k, "value": v, "env": "RAGDESK_" + k.upper(), "doc": docs[k]} for k, v in s.to_dict().items()]
        if json_out:
            emit_json(rows)
        else:
            for r in rows:
                click.echo(f"{r['name']:<22} {str(r['value']):<28} {r['doc']}")
        return
    info = describe_models(s)
    if json_out:
        emit_json(info)
        return
    click.echo(f"device: {info['device']} ({info['dtype']})   models folder: {info['models_dir']}")
    for m in info["presets"]:
        state = "cached" if m["cached"] else "not fetched"
        tp = "  [third-party repackaging]" if m["third_party"] else ""
        mem = f", needs ~{m['memory_mb']} MB at {m['context']} tokens" if m.get("memory_mb") else ""
        default = " (default)" if m["name"] == s.model else ""
        click.echo(f"  {m['name']:<14}{default:<10} {state:<12} {m['description']}{tp}{mem}")
        for line in dtype_lines(m):
            click.echo(line)
    click.echo(f"embedder: {info['embedder']}")
    if info["adapters"]:
        click.echo("adapters:")
        for a in info["adapters"]:
            click.echo(f"  {a}")


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="ragdesk", standalone_mode=False)
        if isinstance(code, int) and code:  # ctx.exit(n) returns n when click is not standalone
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        stderr("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except RagdeskError as exc:
        stderr(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        stderr("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
