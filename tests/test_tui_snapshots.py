"""How `ragdesk chat` looks (pytest-textual-snapshot): a restored conversation with its sources and a passage,
the "no index yet" state, and the help screen. Review changed SVGs under tests/__snapshots__/ before running
with --snapshot-update."""

from __future__ import annotations

import time

from assistant.engine import Engine
from assistant.history import History
from assistant.models import FakeModel
from assistant.settings import load_settings
from assistant.tui._widgets import Notice
from assistant.tui.app import RagdeskApp
from retrieval import Passage

SIZE = (140, 36)


def _steady_cursor(app) -> None:
    """A blinking cursor is on or off depending on when the screenshot is taken; keep it on."""
    from textual.widgets import Input

    for widget in app.query(Input):
        widget.cursor_blink = False


async def _until(pilot, cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        await pilot.pause(0.02)
    assert cond()


def _history_with_a_conversation() -> int:
    h = History(load_settings().history_db)
    conv = h.new_conversation()
    h.add_message(conv, "user", "Which port does the server listen on?")
    sources = [
        {"chunk_id": 1, "path": "docs/install/linux.md", "title": "Installing", "heading": "Installing > Ports",
         "first": 12, "last": 19, "unit": "line", "score": 0.0325,
         "text": "The server listens on port 8740 by default. Change `port` in the [server] section.",
         "ranks": {"dense": 1, "bm25": 1}},
        {"chunk_id": 7, "path": "docs/reference/configuration.md", "title": "Configuration",
         "heading": "Configuration > [server]", "first": 40, "last": 52, "unit": "line", "score": 0.0161,
         "text": "[bold]port[/bold] (integer, default 8740): the TCP port.", "ranks": {"dense": 3, "bm25": 2}},
    ]
    mid = h.add_message(conv, "assistant", "", status="pending")
    h.update_message(mid, content="The server listens on port **8740** by default [1]. You can change it with "
                                  "`port` in the `[server]` section [2]; text like [bold]this[/bold] stays as is.",
                     status="complete", sources=sources, usage={"prompt_tokens": 412, "completion_tokens": 38},
                     timings={"retrieval_ms": 4.0, "ttft_ms": 180.0, "total_ms": 900.0, "tokens_per_s": 52.3},
                     cost={"input_usd": 0.0000618, "output_usd": 0.0000228, "device_usd": 0.0000125},
                     model="fake", device="cpu")
    h.add_message(conv, "user", "And the cancelled one?")
    h.add_message(conv, "assistant", "It was cut off here", status="cancelled")
    h.close()
    return conv


def test_restored_conversation_with_sources(snap_compare, indexed):
    conv = _history_with_a_conversation()
    app = RagdeskApp(load_settings(), engine_factory=lambda s: Engine(s, model=FakeModel(), collection=indexed))

    async def run_before(pilot):
        _steady_cursor(pilot.app)
        await _until(pilot, lambda: app.engine is not None and app.status.state == "ready")
        await app.open_conversation(conv)
        answers = app.chat.answers()
        app.select_answer_box(answers[0])
        app.show_source(2)
        await _until(pilot, lambda: all(box.markdown.children for box in app.chat.answers()))
        _steady_cursor(pilot.app)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_no_index_yet(snap_compare):
    app = RagdeskApp(load_settings(), engine_factory=lambda s: Engine(s, model=FakeModel()))

    async def run_before(pilot):
        _steady_cursor(pilot.app)
        await _until(pilot, lambda: app.query(Notice) and app.query(Notice).first().has_class("warning"))
        _steady_cursor(pilot.app)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, indexed):
    app = RagdeskApp(load_settings(), engine_factory=lambda s: Engine(s, model=FakeModel(), collection=indexed))

    async def run_before(pilot):
        _steady_cursor(pilot.app)
        await _until(pilot, lambda: app.engine is not None and app.status.state == "ready")
        await pilot.press("f1")
        _steady_cursor(pilot.app)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
