"""The `ragdesk chat` click command: resolves settings and runs the Textual app.

It imports Textual and the app only when the command runs (the CLI lists it lazily), and never torch: the app
loads the engine in a worker after its first frame.
"""

from __future__ import annotations

import click

from assistant.cli import CONTEXT, collection_option

__all__ = ["chat_command"]


@click.command("chat", context_settings=CONTEXT)
@collection_option
@click.option("--model", "-m", default=None, help="Model: preset, HF id, folder or .gguf (default: smollm2-135m).")
@click.option("--speculative", type=click.Choice(["off", "prompt-lookup", "draft"]), default=None,
              help="Speculative decoding method (default: prompt-lookup).")
@click.option("--max-new-tokens", type=int, default=None, help="Longest answer, in model tokens.")
@click.pass_context
def chat_command(ctx, **flags):
    """The terminal chat app: streamed, cited answers, with the history of your conversations.

    Enter sends, Esc cancels the answer being written, ctrl+n starts a new chat, ctrl+o switches collection,
    ctrl+y copies the answer, F1 lists every key, ctrl+p opens the command palette, ctrl+q quits.

    \b
    Examples:
      ragdesk index corpus/ && ragdesk chat
      ragdesk chat --collection team
      RAGDESK_HOME=/tmp/rd ragdesk chat --model qwen2.5-1.5b --speculative draft
    """
    from assistant.cli import settings_from

    settings = settings_from(ctx, **flags)
    from .app import RagdeskApp

    RagdeskApp(settings).run()
