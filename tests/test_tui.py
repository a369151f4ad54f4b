"""Behaviour of `ragdesk chat` with App.run_test(): streaming, cancelling, history across restarts, error
states, literal markup, keys and the command palette. The engine uses the FakeModel (no torch)."""

from __future__ import annotations

import asyncio
import functools
import html
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Static

from assistant.engine import Engine
from assistant.history import History
from assistant.models import FakeModel
from assistant.settings import load_settings
from assistant.tui._screens import CollectionScreen, ConfirmScreen, HelpScreen, RenameScreen
from assistant.tui._widgets import AnswerBox, ChatView, ConversationList, Notice, SourcesPanel
from assistant.tui.app import RagdeskApp
from retrieval import Collection, get_embedder

LONG_REPLY = " ".join(f"word{i}" for i in range(60)) + " [1]"
SIZE = (150, 44)


def run_async(fn):
    """Run an async test with asyncio.run (no pytest async plugin needed); fixtures pass through."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def make_app(collection, **fake) -> tuple[RagdeskApp, FakeModel]:
    model = FakeModel(**fake)
    return RagdeskApp(load_settings(), engine_factory=lambda s: Engine(s, model=model, collection=collection)), model


async def wait_for(pilot, cond, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def ready(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.engine is not None, what="the engine")


def send_key(app, key: str, char: str | None = None) -> None:
    """Deliver a key as the terminal driver does. (pilot.press waits for the app to go idle, which it does not
    while tokens stream, so it cannot show what happens during an answer.)"""
    event = events.Key(key, char if char is not None else (key if len(key) == 1 else None))
    event.set_sender(app)
    app._driver.send_message(event)


async def ask(pilot, question: str, wait: bool = True) -> None:
    app = pilot.app
    before = len(app.chat.answers())
    app.query_one("#prompt").value = question
    send_key(app, "enter", "\r")
    await wait_for(pilot, lambda: len(app.chat.answers()) > before, what="the question to be taken")
    if wait:
        await wait_for(pilot, lambda: pilot.app.generating is None, what="the answer")


def screen_text(app) -> str:
    svg = app.export_screenshot()
    text = html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")
    return text


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def wait_for_notification(pilot, pattern: str, what: str) -> None:
    """`App.notify` posts a message, so a notification shows up a moment after the code that raised it."""
    await wait_for(pilot, lambda: any(re.search(pattern, n) for n in notifications(pilot.app)), what=what)


@run_async
async def test_send_streams_and_stores(indexed):
    app, _ = make_app(indexed, delay_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Which port does the server listen on?", wait=False)
        await wait_for(pilot, lambda: app.chat.answers() and len(app.chat.answers()[-1].text) > 0, what="tokens")
        box = app.chat.answers()[-1]
        lengths = [len(box.text)]
        for _ in range(4):
            await pilot.pause(0.1)
            lengths.append(len(box.text))
        assert lengths == sorted(lengths) and lengths[-1] > lengths[0], lengths  # it grows while streaming
        assert app.generating is not None and box.status == "pending"
        await wait_for(pilot, lambda: app.generating is None)
        assert box.status == "complete" and box.text.endswith("[1]") and "server listens" in box.text
        assert r"[\[1\]](cite:1)" in box.markdown.source  # citations become links to their passage
        panel = app.query_one(SourcesPanel)
        assert panel.passages and panel.passages[0].path.endswith("install.md")
        assert re.search(r"\d+\.\d tok/s · TTFT \d+ ms · \d+\+\d+ tokens · \$0\.\d{6}", str(app.status.render_text()))
        conv = app.conversation_id
    h = History(load_settings().history_db)
    msgs = h.messages(conv)
    assert [(m.role, m.status) for m in msgs] == [("user", "complete"), ("assistant", "complete")]
    assert msgs[1].content == box.text and msgs[1].sources[0].path.endswith("install.md")
    assert msgs[1].usage["completion_tokens"] > 5 and msgs[1].timings["ttft_ms"] > 0
    assert h.conversation(conv).title == "Which port does the server listen on?"


@run_async
async def test_escape_cancels_and_keeps_partial_text(indexed):
    app, _ = make_app(indexed, delay_s=0.03, reply=LONG_REPLY)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Tell me everything", wait=False)
        await wait_for(pilot, lambda: len(app.chat.answers()[-1].text) > 20, what="some tokens")
        send_key(app, "escape", "\x1b")
        await wait_for(pilot, lambda: app.generating is None, what="the cancel")
        box = app.chat.answers()[-1]
        assert box.status == "cancelled" and box.has_class("cancelled")
        assert 0 < len(box.text) < len(LONG_REPLY)
        await wait_for_notification(pilot, "cancelled", "the cancel notification")
        conv = app.conversation_id
    m = History(load_settings().history_db).messages(conv)[1]
    assert m.status == "cancelled" and m.content == box.text and LONG_REPLY.startswith(m.content)


@run_async
async def test_closing_mid_answer_stores_partial_answer(indexed):
    app, _ = make_app(indexed, delay_s=0.05, reply=LONG_REPLY)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Long question", wait=False)
        await wait_for(pilot, lambda: len(app._live.get(app.generating or -1, "")) > 10, what="some tokens")
        conv = app.conversation_id
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3  # closing does not wait for the whole answer
    m = History(load_settings().history_db).messages(conv)[1]
    assert m.status == "cancelled" and len(m.content) > 10 and LONG_REPLY.startswith(m.content)


@run_async
async def test_switch_conversations_and_restart_continues_with_context(indexed):
    app, _ = make_app(indexed)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "How long is the lockout?")
        first = app.conversation_id
        await pilot.press("ctrl+n")
        assert app.conversation_id is None and not app.chat.answers()
        await ask(pilot, "Which port?")
        second = app.conversation_id
        assert second != first
        clist = app.query_one(ConversationList)
        assert [clist.get_option_at_index(i).id for i in range(clist.option_count)] == [str(second), str(first)]
        clist.focus()
        clist.highlighted = 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.conversation_id == first)
        assert "How long is the lockout?" in screen_text(app) and "Which port?" not in screen_text(app).split(
            "Conversations")[1].split("│")[1]

    app2, model2 = make_app(indexed)
    async with app2.run_test(size=SIZE) as pilot:
        await ready(pilot)
        clist = app2.query_one(ConversationList)
        titles = [str(clist.get_option_at_index(i).prompt) for i in range(clist.option_count)]
        assert titles == ["Which port?", "How long is the lockout?"]
        clist.focus()
        clist.highlighted = 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: app2.conversation_id == first)
        assert len(app2.chat.answers()) == 1 and "Lockout" in app2.chat.answers()[0].text
        await ask(pilot, "And after that?")
        # the earlier exchange went to the model as context
        assert "How long is the lockout?" in model2.last_prompt and "And after that?" in model2.last_prompt
        assert len(History(load_settings().history_db).messages(first)) == 4


@run_async
async def test_generation_error_is_shown_and_app_survives(indexed):
    app, model = make_app(indexed, fail=True)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Which port?")
        box = app.chat.answers()[-1]
        assert box.status == "failed" and box.has_class("failed")
        await wait_for_notification(pilot, "fake model was told to fail", "the error notification")
        assert "fake model was told to fail" in screen_text(app)
        assert "Traceback" not in screen_text(app)
        model.fail = False
        await ask(pilot, "Which port?")  # still alive and answering
        assert app.chat.answers()[-1].status == "complete"
        conv = app.conversation_id
    assert [m.status for m in History(load_settings().history_db).messages(conv)] == [
        "complete", "failed", "complete", "complete"]


@run_async
async def test_missing_index_offers_to_index_the_corpus():
    app = RagdeskApp(load_settings(), engine_factory=lambda s: Engine(s, model=FakeModel()))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query(Notice) and app.query(Notice).first().has_class("warning"),
                       what="the notice")
        notice = app.query_one(Notice)
        assert notice.text.startswith("Nothing to answer from yet: collection 'default' has no index yet.")
        assert "ragdesk index PATH --collection default" in notice.text
        assert "Nothing to answer from yet" in screen_text(app) and "Index the bundled corpus" in screen_text(app)
        assert app.engine is None and app.status.state == "not ready"
        await ask(pilot, "Which port?")  # asking anyway gives a failed answer, not a crash
        assert app.chat.answers()[-1].status == "failed"
        await pilot.click("#index-corpus")
        await wait_for(pilot, lambda: app.engine is not None, timeout=60, what="indexing and loading")
        await wait_for_notification(pilot, r"^Indexed \d\d+ documents", "the indexing notification")
        await ask(pilot, "Which port does Tidepool listen on?")
        box = app.chat.answers()[-1]
        assert box.status == "complete" and box.sources and "corpus" in box.sources[0].path


@run_async
async def test_missing_model_is_a_friendly_message(indexed, monkeypatch):
    monkeypatch.setenv("RAGDESK_MODEL", "no-such-model")
    app = RagdeskApp(load_settings())  # the real engine path: opens the collection, then fails on the model
    async with app.run_test(size=SIZE) as pilot:
        # the real engine path starts a child process (a spawn that imports torch): slow on a loaded machine
        await wait_for(pilot, lambda: app.query(".notice.error"), timeout=90, what="the error notice")
        # the notice is mounted before it is drawn: wait for the screen, not only the widget tree
        await wait_for(pilot, lambda: "The model could not be loaded" in screen_text(app), timeout=10,
                       what="the error notice on screen")
        text = screen_text(app)
        assert "The model could not be loaded: unknown model 'no-such-model'" in app.query_one(Notice).text
        assert "The model could not be loaded" in text
        assert "Traceback" not in text and app.is_running


@run_async
async def test_markup_in_documents_questions_and_answers_is_literal(tmp_path):
    docs = tmp_path / "m"
    docs.mkdir()
    (docs / "x.md").write_text("# Markup\n\nThe text [bold]stays[/bold] and [link=https://x.test]this[/link] too.\n")
    coll = Collection(load_settings().collection_path(), get_embedder("hashing"))
    coll.update([docs])
    app, _ = make_app(coll, reply="Shown [bold]as is[/bold] and [link=https://x.test]plain[/link] [red]x [1]")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Is [italic]this[/italic] literal?")
        app.show_source(1)
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "Is [italic]this[/italic] literal?" in text
        for literal in ("Shown [bold]as is[/bold]", "[link=https://x.test]plain[/link]", "[red]x"):
            assert literal in text, literal
        assert "The text [bold]stays[/bold]" in text
        assert app.chat.answers()[-1].status == "complete"


@run_async
async def test_citation_link_shows_the_passage(indexed):
    app, _ = make_app(indexed)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "How long is the lockout?")
        box = app.chat.answers()[-1]
        from textual.widgets import Markdown

        app.post_message(Markdown.LinkClicked(box.markdown, "cite:1"))
        await pilot.pause(0.1)
        passage = str(app.query_one("#passage").render())
        assert box.sources[0].text.split("\n")[-1][:30] in passage and box.sources[0].path in passage


@run_async
async def test_help_lists_every_binding_and_palette_has_every_action(indexed):
    app, _ = make_app(indexed)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = {row[0] for row in app.screen.rows}
        for b in [*RagdeskApp.BINDINGS, *ConversationList.BINDINGS]:
            assert b.key in keys
        assert {"ctrl+p", "ctrl+q", "enter"} <= keys
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        actions = {a for _, a, _ in RagdeskApp.PALETTE}
        for b in [*RagdeskApp.BINDINGS, *ConversationList.BINDINGS]:
            name = b.action.removeprefix("app.").split("(")[0]
            assert name in actions or name == "select_answer", name
        await pilot.press("ctrl+p")
        await pilot.press(*"Switch collection")
        await wait_for(pilot, lambda: "Switch collection" in screen_text(app), what="palette hit")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CollectionScreen), what="the collection picker")


@run_async
async def test_rename_copy_delete_and_switch_collection(indexed, sample_docs):
    other = Collection(load_settings().collection_path("other"), get_embedder("hashing"))
    other.update([sample_docs / "guide"])
    other.close()
    seen = []

    def factory(s):
        seen.append(s.collection)
        return Engine(s, model=FakeModel())  # opens the settings' collection itself

    app = RagdeskApp(load_settings(), engine_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Which port?")
        await pilot.press("ctrl+y")
        assert app.clipboard == app.chat.answers()[-1].text and app.clipboard.endswith("[1]")
        await pilot.press("f2")
        assert isinstance(app.screen, RenameScreen)
        app.screen.query_one("Input").value = "Ports [b]chat[/b]"
        await pilot.press("enter")
        conv = app.conversation_id
        assert app.history.conversation(conv).title == "Ports [b]chat[/b]"
        assert "Ports [b]chat[/b]" in screen_text(app)
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, CollectionScreen) and app.screen.names == ["default", "other"]
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: seen == ["default", "other"] and app.engine is not None, what="reload")
        assert app.settings.collection == "other" and "collection other" in str(app.status.render_text())
        app.query_one(ConversationList).focus()
        await pilot.press("delete")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.history.conversations(), what="the delete")
        assert app.conversation_id is None


@run_async
async def test_key_press_reaches_the_screen_while_streaming(indexed):
    """UI latency: keys typed into the input show up quickly while tokens stream in."""
    app, _ = make_app(indexed, delay_s=0.01, reply=" ".join(["tok"] * 400))
    latencies = []
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Stream a lot", wait=False)
        await wait_for(pilot, lambda: len(app.chat.answers()[-1].text) > 40, what="streaming")
        prompt = app.query_one("#prompt")
        for ch in "abcdefgh":
            t0 = time.perf_counter()
            send_key(app, ch)
            while not prompt.value.endswith(ch):
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - t0) * 1000)
        assert app.generating is not None  # still streaming while we typed
    latencies.sort()
    assert latencies[len(latencies) // 2] < 100, latencies


def test_first_frame_imports_no_torch(tmp_path):
    script = textwrap.dedent(f"""
        import asyncio, sys, threading
        from assistant.settings import load_settings
        from assistant.tui.app import RagdeskApp
        assert not {{'torch', 'transformers', 'faiss', 'sentence_transformers'}} & set(sys.modules), 'import'
        gate = threading.Event()
        def factory(s):
            gate.wait(10)
            raise RuntimeError('stop here')
        async def main():
            app = RagdeskApp(load_settings(), engine_factory=factory)
            async with app.run_test() as pilot:
                await pilot.pause(0.2)
                assert 'first_frame' in app.timings
                heavy = {{'torch', 'transformers', 'faiss', 'sentence_transformers'}} & set(sys.modules)
                gate.set()
                print('heavy', sorted(heavy))
        asyncio.run(main())
    """)
    env = {"RAGDESK_HOME": str(tmp_path / "home"), "RAGDESK_EMBEDDER": "minilm", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy []" in out.stdout


@run_async
async def test_streaming_answer_shows_finished_lines_as_markdown_and_the_last_as_plain_text(indexed):
    """While an answer streams, the Markdown gets only finished lines (appended, not re-parsed) and the line
    being written is a plain-text tail; the finished answer is one Markdown, the tail gone."""
    first = "1. **Stop** the server [1].\n2. Edit `server.toml`.\n\n"
    second = " ".join(f"then{i}" for i in range(40))
    app, _ = make_app(indexed, delay_s=0.03, reply=first + second)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "How do I change the port?", wait=False)
        await wait_for(pilot, lambda: "then3" in app.chat.answers()[-1].text, what="the last line")
        box = app.chat.answers()[-1]
        await pilot.pause(0.1)  # one frame later the screen shows it
        assert app.generating is not None and box.status == "pending"
        assert box.markdown.source.strip() == first.strip()  # the finished lines, as Markdown
        tail = box.query_one(".tail", Static)
        shown = str(tail.render())
        assert shown.startswith("then0 then1 then2") and "server.toml" not in shown
        assert tail.styles.height.value % AnswerBox.TAIL_STEP == 0 and tail.styles.height.value >= 1
        screen = screen_text(app)
        assert "Stop the server" in screen and "**" not in screen  # the list is rendered, not raw Markdown
        assert "then0 then1" in screen
        await wait_for(pilot, lambda: app.generating is None, what="the answer")
        assert not box.query(".tail") and box.text == first + second
        assert box.markdown.source.startswith("1. **Stop**") and "then39" in box.markdown.source


@run_async
async def test_tokens_reach_the_markdown_once_a_frame_not_once_a_token(indexed, monkeypatch):
    reply = " ".join(f"w{i}" for i in range(200))  # under max_new_tokens
    app, _ = make_app(indexed, delay_s=0.002, reply=reply)  # ~500 tokens/s, far more than the frame rate
    appends = []
    original = AnswerBox.append

    async def counting(self, fragment):
        appends.append(fragment)
        await original(self, fragment)

    monkeypatch.setattr(AnswerBox, "append", counting)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        t0 = time.monotonic()
        await ask(pilot, "Tell me everything")
        elapsed = time.monotonic() - t0
        box = app.chat.answers()[-1]
        assert box.status == "complete" and box.text == reply
    assert reply.startswith("".join(appends).strip()) and len(appends) > 1
    assert len(appends) <= elapsed * 30 * 1.5 + 2 and len(appends) < 200 / 3


@run_async
async def test_chat_answers_go_through_the_shared_sessions_service(indexed):
    """Chat writes history the way ask and batch do: origin, settings and speculative figures included."""
    app, _ = make_app(indexed)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "Which port does the server use?")
    h = History(load_settings().history_db)
    conv = h.conversations()[0]
    answer = h.messages(conv.id)[1]
    assert conv.origin == "chat" and answer.status == "complete" and "[1]" in answer.content
    assert answer.settings["collection"] == "default" and answer.speculative["method"] == "off"
