"""The `ragdesk` command line: one click group whose commands import their heavy parts only when run.

Results go to stdout (`--json` for scripts), diagnostics and progress bars to stderr. A `RagdeskError`
becomes one line and exit 1; usage errors exit 2; a failed eval gate exits 3. `ragdesk --help` imports no
torch, faiss or textual.
"""

from __future__ import annotations

import importlib
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
        "history": ("assistant.history_cli", "history_group"),
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
    from ._terminal import safe_json

    click.echo(safe_json(obj, indent=2))


def collection_option(fn):
    """`--collection/-c` after a subcommand (`ragdesk search q -c team`); it wins over the one before it."""
    return click.option("--collection", "-c", default=None, metavar="NAME",
                        help="Collection to use (default: default); also accepted before the command.")(fn)


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
@collection_option
@click.option("--rebuild", is_flag=True, help="Drop the collection's index and embed everything again.")
@click.option("--json", "json_out", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def index(ctx, paths, collection, rebuild, json_out):
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

    import os

    from ._oserrors import ensure_home
    from ._terminal import safe_text

    s = settings_from(ctx, collection=collection)
    for p in paths:
        if not os.path.lexists(p):  # a symlink loop "exists": the index reports it by name
            raise RagdeskError(f"path not found: {p}", "check the spelling, or index an existing folder")
    ensure_home(s.home_path)
    stderr(f"loading embedder {s.embedder}...")
    embedder = get_embedder(s.embedder)
    coll = Collection(s.collection_path(), embedder,
                      ChunkingConfig(s.chunk_tokens, s.chunk_overlap, max_file_mb=s.max_file_mb))
    warnings: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_err_console(), transient=True) as bar:
        task = bar.add_task("scanning", total=None)

        def progress(stage, done, total):
            label = {"scan": "indexing files", "embed": f"embedding {total} chunks", "vectors": "writing vectors",
                     "wait": f"waiting for another index run on collection {coll.name}..."}
            if stage == "wait":  # printed, not only in the transient bar: the wait may be long
                bar.console.print(label[stage], markup=False, highlight=False)
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
        stderr(f"warning: {safe_text(w)}")
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
@click.option("-k", "top_k", type=click.IntRange(min=1), default=None, metavar="N",
              help="How many passages (default 5).")
@click.option("--mode", "search_mode", type=click.Choice(["hybrid", "dense", "bm25"]), default=None,
              help="Retrieval mode (default hybrid).")
@collection_option
@click.option("--json", "json_out", is_flag=True, help="Print the source objects as a JSON list.")
@click.pass_context
def search(ctx, query, top_k, search_mode, collection, json_out):
    """Ranked passages for QUERY: path, heading, lines, score, text.

    \b
    Examples:
      ragdesk search "how do I change the port"
      ragdesk search "TP-2002" --mode bm25 -k 3 --json
      ragdesk search "backup schedule" --collection team
    """
    from retrieval import Collection, get_embedder

    from ._terminal import safe_text

    s = settings_from(ctx, search_mode=search_mode, collection=collection)
    coll = Collection(s.collection_path(), get_embedder(s.embedder), create=False)
    passages = coll.search(query, k=top_k or 5, mode=s.search_mode)
    if json_out:
        emit_json([p.to_source(i + 1) for i, p in enumerate(passages)])
        return
    if not passages:
        click.echo("no passages matched")
    for i, p in enumerate(passages, 1):
        click.echo(click.style(f"[{i}] {safe_text(p.path)}", bold=True)
                   + f"  {safe_text(p.heading)}  ({p.location}, score {p.score:.4f})")
        snippet = safe_text(" ".join(p.text.split()))
        click.echo("    " + (snippet[:300] + ("..." if len(snippet) > 300 else "")))


def _answer_options(fn):
    options = [
        collection_option,
        click.option("-k", "top_k", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Passages to retrieve (default 4)."),
        click.option("--model", "-m", default=None,
                     help="Preset, model folder, .gguf file, cached HF id, or a server: http://HOST:PORT/v1#NAME."),
        click.option("--base-url", default=None,
                     help="OpenAI-compatible server (vLLM, llama.cpp, Ollama) for --model NAME; or RAGDESK_BASE_URL."),
        click.option("--adapter", default=None, type=click.Path(), help="LoRA adapter folder (ragdesk finetune)."),
        click.option("--speculative", type=click.Choice(["off", "prompt-lookup", "draft"]), default=None,
                     help="Speculative decoding method (default prompt-lookup)."),
        click.option("--draft-model", default=None, help="Draft model for --speculative draft."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Longest answer in tokens (default 256)."),
        click.option("--context-window", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Prompt + answer token budget (default 0: the model's, at most 4096)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8", "int8-wo",
                                                  "int4-wo"]), default=None,
                     help="Weights' type (default auto: int4-wo on a CPU with native bf16, else float32; bfloat16 "
                          "on CUDA, float16 on MPS)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


@cli.command(context_settings=CONTEXT)
@click.argument("question", required=False)
@_answer_options
@click.option("--continue", "-C", "continue_", is_flag=True, help="Continue the latest conversation (its earlier turns are the context).")
@click.option("--conversation", "conversation_id", type=int, default=None, help="Continue conversation ID (see ragdesk history).")
@click.option("--batch", "batch_in", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Answer every question of a JSONL file ({\"id\", \"question\"} a line) instead of QUESTION.")
@click.option("--out", "batch_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --batch: the JSONL file answers are appended to (resumable).")
@click.option("--concurrency", type=int, default=None, help="With --batch: questions in flight at once (default 1).")
@click.option("--json", "json_out", is_flag=True, help="Print answer, sources, usage and timings as JSON.")
@click.pass_context
def ask(ctx, question, json_out, continue_, conversation_id, batch_in, batch_out, **flags):
    """One grounded answer to QUESTION, streamed, then its numbered sources. Every answer is kept in
    history (ragdesk history).

    \b
    Examples:
      ragdesk ask "Which port does Tidepool listen on?"
      ragdesk ask "And how do I change it?" --continue
      ragdesk ask "How do I enable SSO?" --speculative off --json
      ragdesk ask "..." --model qwen2.5-1.5b --speculative draft
      ragdesk ask "..." --model http://127.0.0.1:8000/v1#smollm2
      ragdesk ask --batch tickets.jsonl --out answers.jsonl --concurrency 4
    """
    from .engine import Engine
    from .sessions import Sessions

    s = settings_from(ctx, **flags)
    if batch_in is not None:
        if question is not None or continue_ or conversation_id is not None:
            raise click.UsageError("--batch answers a file: give no QUESTION, --continue or --conversation")
        if batch_out is None:
            raise click.UsageError("--batch needs --out FILE for the answers")
        return _ask_batch(s, batch_in, batch_out, json_out)
    if batch_out is not None or flags.get("concurrency") is not None:
        raise click.UsageError("--out and --concurrency go with --batch")
    if question is None or not question.strip():
        raise RagdeskError("the question is empty", 'ask something, e.g. ragdesk ask "How do I reset a password?"')
    sessions = Sessions.open(s)
    if conversation_id is not None:
        conv = sessions.history.conversation(conversation_id).id
    elif continue_:
        conv = sessions.latest_conversation()
        if conv is None:
            raise RagdeskError("there is no conversation to continue yet", "ask without --continue first")
    else:
        conv = None
    turns = sessions.turns(conv)
    engine = Engine(s).load(progress=lambda msg: stderr(msg + "..."))
    if conv is None:
        conv = sessions.new_conversation(s.collection, origin="ask")
    answer = _stream_answer(engine, sessions, conv, question, turns, echo=not json_out)
    if json_out:
        emit_json(answer.to_json() | {"conversation": conv})
        if answer.status == "failed":
            sys.exit(1)
        return
    if answer.status == "failed":
        raise RagdeskError(f"generation failed: {answer.error}")
    _print_sources(answer)
    t, u = answer.timings, answer.usage
    approx = "" if answer.usage_exact else "~"
    stderr(f"\n{answer.model} on {answer.device}: {approx}{u.prompt_tokens}+{approx}{u.completion_tokens} tokens, "
           f"first token {t.ttft_ms:.0f} ms, {t.tokens_per_s:.1f} tokens/s, {answer.speculative.method} accepted "
           f"{answer.speculative.accepted_tokens}/{answer.speculative.draft_tokens}, "
           f"cost ${answer.cost.tokens_usd + answer.cost.device_usd:.6f}; conversation {conv} "
           f"(ragdesk ask --continue)")


def _stream_answer(engine, sessions, conv: int, question: str, turns, echo: bool):
    """Stream one answer to stdout (when `echo`) while recording it in history; Ctrl-C keeps the partial
    answer, marked cancelled."""
    from ._terminal import safe_text
    from .answer import Answer, Retrieved, TokenArrived

    rec = sessions.start(conv, question)
    answer = None
    try:
        for event in engine.stream(question, turns):
            if isinstance(event, Retrieved):
                sessions.sources(rec, event.passages)
            elif isinstance(event, TokenArrived):
                sessions.progress(rec, event.text)
                if echo:  # answers quote documents: no control sequence reaches the terminal
                    click.echo(safe_text(event.text, keep="\n\t"), nl=False)
                    sys.stdout.flush()
            elif isinstance(event, Answer):
                answer = event
    except KeyboardInterrupt:
        sessions.abandon(rec, "cancelled", "interrupted")
        raise
    except BaseException as exc:
        sessions.abandon(rec, "failed", str(exc) or type(exc).__name__)
        raise
    sessions.finish(rec, answer)
    return answer


def _print_sources(answer) -> None:
    from ._terminal import safe_text

    click.echo("\n")
    if answer.citation_mode == "attributed":
        click.echo("(the model cited nothing; * marks the passages that hold the answer's words)")
    for i, p in enumerate(answer.sources, 1):
        mark = "*" if i in answer.cited else " "
        click.echo(f"{mark}[{i}] {safe_text(p.path)} - {safe_text(p.heading)} ({p.location})")


def _ask_batch(s, batch_in: Path, batch_out: Path, json_out: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .batch import read_batch, run_batch
    from .engine import Engine
    from .sessions import Sessions

    warnings: list[str] = []
    items = read_batch(batch_in, warn=lambda m: (warnings.append(m), stderr(f"warning: {m}")))
    if not items:
        raise RagdeskError(f"{batch_in} holds no questions", 'write one {"id": ..., "question": ...} a line')
    engine = Engine(s).load(progress=lambda msg: stderr(msg + "..."))
    if s.concurrency > 1 and not engine.model.supports_concurrency:
        stderr(f"note: {engine.model_name} is a local model and answers one question at a time; --concurrency "
               "pays off against a server (--model http://HOST:PORT/v1#NAME)")
    sessions = Sessions.open(s)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[rate]}"), console=_err_console(), transient=True) as bar:
        task = bar.add_task("answering", total=len(items), rate="")

        def on_answer(report, total):
            bar.update(task, total=total, completed=report.answered + report.failed,
                       rate=f"{report.answers_per_s:.2f} answers/s")

        report = run_batch(engine, items, batch_out, s.concurrency, sessions=sessions,
                           conversation=lambda: sessions.new_conversation(s.collection, origin="batch",
                                                                          title=f"batch {batch_in.name}"),
                           warn=lambda m: stderr(f"warning: {m}"), on_answer=on_answer)
    report.bad_lines = warnings
    summary = (f"{report.answered} answered, {report.failed} failed, {report.skipped_done} already in {batch_out}, "
               f"{len(warnings)} bad lines skipped; {report.answers_per_s:.2f} answers/s, "
               f"{report.tokens_per_s:.1f} tokens/s"
               + (f"; history conversation {report.conversation}" if report.conversation else ""))
    if json_out:
        emit_json(report.to_dict() | {"out": str(batch_out)})
    else:
        click.echo(summary)
    if report.interrupted:
        stderr(f"interrupted: every finished answer is in {batch_out}; run the same command to continue")
        sys.exit(130)


@cli.command(context_settings=CONTEXT)
@click.option("--json", "json_out", is_flag=True, help="Print as JSON.")
@click.option("--settings", "show_settings", is_flag=True, help="List every setting with its value and meaning.")
@click.option("--fetch", "fetch", multiple=True, metavar="NAME",
              help="Fetch and convert a preset (or .gguf) now instead of on first use; repeatable.")
@click.option("--url", default=None, metavar="URL",
              help="List what an OpenAI-compatible server serves (http://HOST:PORT/v1): ids, context lengths.")
@click.pass_context
def models(ctx, json_out, show_settings, fetch, url):
    """What is installed and cached, which device is used, and what a model needs in memory.

    \b
    Examples:
      ragdesk models
      ragdesk models --settings
      ragdesk models --fetch qwen2.5-1.5b --fetch qwen2.5-0.5b
      ragdesk models --url http://localhost:8000/v1
    """
    from .model_info import describe_models, dtype_lines

    s = settings_from(ctx)
    if url:
        return _served_models(url, s, json_out)
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


def _served_models(url: str, s, json_out: bool) -> None:
    from .models import ServerModel, parse_server_spec

    parsed = parse_server_spec(url) if url.startswith(("http://", "https://")) else None
    if parsed is None:
        raise RagdeskError(f"--url {url!r} is not a server URL", "write it as http://HOST:PORT/v1")
    server = ServerModel(parsed[0], api_key=s.api_key, request_timeout=s.request_timeout,
                         connect_timeout=s.connect_timeout)
    try:
        rows = [{"id": m["id"], "context_length": m["context_length"]} for m in server.served_models()]
    finally:
        server.close()
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['id']:<40} {r['context_length'] or '-'}")


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
        stderr(f"error: {_one_line(str(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        stderr("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - only the disk's errors (unwritable folder, full disk) end here
        from ._oserrors import disk_problem

        problem = disk_problem(exc)
        if problem is None:
            raise  # a programming error keeps its traceback
        stderr(f"error: {_one_line(problem)}")
        sys.exit(1)


def _one_line(message: str) -> str:
    from ._terminal import safe_text

    return safe_text(message)
