"""`ragdesk history`: every answer made by `ask`, `ask --batch` and `chat`, listed, shown, searched and
exported (`--json` for scripts, Markdown for a person). Reads the history database only.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli import CONTEXT, emit_json, settings_from

__all__ = ["history_group"]


class _DefaultList(click.Group):
    """`ragdesk history` alone lists."""

    def parse_args(self, ctx, args):
        if not args or args[0].startswith("--") and args[0] not in ("--help",):
            args = ["list", *args]
        return super().parse_args(ctx, args)


def _history(ctx):
    from .history import History

    s = settings_from(ctx)
    if not s.history_db.exists():
        return None
    return History(s.history_db)


def _safe(text: str, keep: str = "") -> str:
    """Text from documents and answers never reaches the terminal as control sequences."""
    from ._terminal import safe_text

    return safe_text(text, keep)


@click.group("history", cls=_DefaultList, context_settings=CONTEXT)
def history_group():
    """Every answer made by ask, batch and chat: list, show, search and export conversations.

    \b
    Examples:
      ragdesk history                      # the latest conversations
      ragdesk history show 12              # one conversation, with sources and figures
      ragdesk history search "SAML"        # messages holding every word
      ragdesk history export 12 > chat.md  # Markdown (or --json)
      ragdesk ask "And the default?" --conversation 12
    """


@history_group.command("list", context_settings=CONTEXT)
@click.option("--limit", type=int, default=20, show_default=True, help="How many conversations, newest first.")
@click.option("--json", "json_out", is_flag=True, help="Print the conversations as JSON.")
@click.pass_context
def list_command(ctx, limit, json_out):
    """Conversations, most recently active first.

    \b
    Examples:
      ragdesk history list --limit 5
    """
    import dataclasses

    if limit < 1:
        raise click.UsageError(f"--limit {limit} must be at least 1")
    h = _history(ctx)
    convs = h.conversations(limit=limit) if h else []
    rows = []
    for c in convs:
        msgs = h.messages(c.id)
        rows.append(dataclasses.asdict(c) | {"answers": sum(m.role == "assistant" for m in msgs)})
    if json_out:
        emit_json(rows)
        return
    if not rows:
        click.echo('no conversations yet: ragdesk ask "..." or ragdesk chat')
        return
    click.echo(f"{'id':>5}  {'updated':<20} {'from':<6}{'answers':>8}  {'collection':<12} title")
    for r in rows:
        click.echo(f"{r['id']:>5}  {r['updated_at'][:19]:<20} {r['origin']:<6}{r['answers']:>8}  "
                   f"{_safe(r['collection'])[:12]:<12} {_safe(r['title'])}")


@history_group.command("show", context_settings=CONTEXT)
@click.argument("conversation_id", type=int)
@click.option("--json", "json_out", is_flag=True, help="Print the conversation and its messages as JSON.")
@click.pass_context
def show_command(ctx, conversation_id, json_out):
    """One conversation: every question and answer, with sources, tokens and timings.

    \b
    Examples:
      ragdesk history show 3 --json
    """
    conv, msgs = _load(ctx, conversation_id)
    if json_out:
        emit_json(_as_json(conv, msgs))
        return
    click.echo(_safe(render_markdown(conv, msgs), keep="\n"))


@history_group.command("search", context_settings=CONTEXT)
@click.argument("query")
@click.option("--limit", type=int, default=20, show_default=True, help="How many messages.")
@click.option("--json", "json_out", is_flag=True, help="Print the matches as JSON.")
@click.pass_context
def search_command(ctx, query, limit, json_out):
    """Questions and answers holding every word of QUERY (case-insensitive), newest first.

    \b
    Examples:
      ragdesk history search "port 8740"
    """
    h = _history(ctx)
    found = h.search(query, limit) if h else []
    if json_out:
        emit_json([{"conversation": c.id, "title": c.title, "message": m.id, "role": m.role, "content": m.content,
                    "created_at": m.created_at} for c, m in found])
        return
    if not found:
        click.echo("no messages matched")
    for c, m in found:
        snippet = " ".join(m.content.split())
        click.echo(f"[{c.id}] {_safe(c.title)} - {m.role} {m.created_at[:19]}")
        click.echo("    " + _safe(snippet[:200] + ("..." if len(snippet) > 200 else "")))


@history_group.command("export", context_settings=CONTEXT)
@click.argument("conversation_id", type=int)
@click.option("--json", "json_out", is_flag=True, help="Export as JSON instead of Markdown.")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write to FILE instead of stdout.")
@click.pass_context
def export_command(ctx, conversation_id, json_out, out_path):
    """A conversation as Markdown (or JSON) with its citations and sources.

    \b
    Examples:
      ragdesk history export 3 --out chat-3.md
    """
    import json

    from retrieval.errors import InputError

    conv, msgs = _load(ctx, conversation_id)
    text = json.dumps(_as_json(conv, msgs), indent=2, ensure_ascii=False) if json_out else render_markdown(conv, msgs)
    if out_path is None:
        click.echo(text if json_out else _safe(text, keep="\n"))
        return
    try:
        out_path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {out_path}: {exc.strerror}", "choose a writable path") from None
    click.echo(f"wrote {out_path}", err=True)


def _load(ctx, conversation_id: int):
    from retrieval.errors import InputError

    h = _history(ctx)
    if h is None:
        raise InputError(f"no conversation with id {conversation_id}", 'there is no history yet: ragdesk ask "..."')
    return h.conversation(conversation_id), h.messages(conversation_id)


def _as_json(conv, msgs) -> dict:
    import dataclasses

    return dataclasses.asdict(conv) | {"messages": [m.to_json() for m in msgs]}


def render_markdown(conv, msgs) -> str:
    """A conversation for a person: questions as headings, answers with their status, figures and sources."""
    lines = [f"# {conv.title}", "", f"Conversation {conv.id} ({conv.origin}), collection `{conv.collection}`, "
             f"started {conv.created_at[:19].replace('T', ' ')} UTC", ""]
    for m in msgs:
        if m.role == "user":
            lines += [f"## {' '.join(m.content.split())}", ""]
            continue
        lines += [m.content or "_(no text)_", ""]
        facts = []
        if m.status != "complete":
            facts.append(f"**{m.status}**" + (f": {m.error}" if m.error else ""))
        if m.model:
            facts.append(f"{m.model} on {m.device}")
        if m.usage:
            facts.append(f"{m.usage.get('prompt_tokens', 0)}+{m.usage.get('completion_tokens', 0)} tokens")
        if m.timings.get("ttft_ms"):
            facts.append(f"first token {m.timings['ttft_ms']:.0f} ms, {m.timings.get('tokens_per_s', 0):.1f} tokens/s")
        if facts:
            lines += ["_" + " · ".join(facts) + "_", ""]
        if m.sources:
            lines.append("Sources:")
            for i, p in enumerate(m.sources, 1):
                lines.append(f"{i}. `{p.path}` - {p.heading} ({p.location})")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
