"""The chat app's real engine path, a child process (assistant/_engine_process.py), end to end with the fake
model registered in the child: streamed answers, cancel, a killed child shown as a failed answer with its
partial text kept, the restart on the next question, and the child stopped when the app closes."""

from __future__ import annotations

import functools
import os
import signal
import time

from assistant import _engine_process
from assistant.history import History
from assistant.models import FakeModel, register_model
from assistant.settings import load_settings
from assistant.tui.app import RagdeskApp
from tests.test_tui import SIZE, ask, run_async, send_key, wait_for

SLOW_REPLY = " ".join(f"word{i}" for i in range(80)) + " [1]"


def register_slow_fake() -> None:
    """Runs in the child: a fake that takes 40 ms a token, so an answer can be cancelled or killed midway."""
    register_model("fake-slow", lambda settings: FakeModel(reply=SLOW_REPLY, delay_s=0.04))


@run_async
async def test_answers_cancel_crash_and_restart_in_the_child_process(indexed, monkeypatch):
    monkeypatch.setenv("RAGDESK_MODEL", "fake-slow")
    monkeypatch.setattr(_engine_process, "EngineProcess",
                        functools.partial(_engine_process.EngineProcess, setup=register_slow_fake))
    app = RagdeskApp(load_settings())  # no engine_factory: the child-process path
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.engine is not None, timeout=60, what="the child's engine")
        child = app.engine
        assert child.alive and child.pid != os.getpid() and app.status.model == "fake"

        # 1. streamed in pieces, then complete
        await ask(pilot, "Which port does the server listen on?", wait=False)
        lengths = set()
        while app.generating is not None:
            lengths.add(len(app.chat.answers()[-1].text))
            await pilot.pause(0.02)
        box = app.chat.answers()[-1]
        assert box.status == "complete" and box.text == SLOW_REPLY
        assert len(lengths - {0, len(SLOW_REPLY)}) >= 3  # seen growing, not only at the end
        assert box.sources and box.sources[0].path.endswith("guide/install.md")  # Passages came through the pipe

        # 2. Esc stops it within a decoding step or two; the partial text is kept, marked cancelled
        await ask(pilot, "Tell me everything", wait=False)
        await wait_for(pilot, lambda: len(app.chat.answers()[-1].text) > 30, what="some tokens")
        send_key(app, "escape", "\x1b")
        t0 = time.monotonic()
        await wait_for(pilot, lambda: app.generating is None, what="the cancel")
        assert time.monotonic() - t0 < 2.0
        box = app.chat.answers()[-1]
        assert box.status == "cancelled" and 30 < len(box.text) < len(SLOW_REPLY)
        assert SLOW_REPLY.startswith(box.text)

        # 3. the child is killed mid-answer: a failed answer that keeps what had arrived
        await ask(pilot, "And again", wait=False)
        await wait_for(pilot, lambda: len(app._live.get(app.generating or -1, "")) > 30, what="some tokens")
        pid = child.pid
        os.kill(pid, signal.SIGKILL)
        await wait_for(pilot, lambda: app.generating is None, what="the failure")
        box = app.chat.answers()[-1]
        assert box.status == "failed" and "model process stopped" in str(box.query_one(".meta").render())
        assert len(box.text) > 30 and SLOW_REPLY.startswith(box.text)
        assert not child.alive

        # 4. the next question starts a new child and is answered
        await ask(pilot, "Which port?", wait=False)
        await wait_for(pilot, lambda: app.generating is None, timeout=90, what="the answer from a new child")
        box = app.chat.answers()[-1]
        assert box.status == "complete" and box.text == SLOW_REPLY
        assert child.alive and child.pid != pid
        conv, last_pid = app.conversation_id, child.pid
    # 5. closing the app stopped the child
    assert not child.alive
    try:
        os.kill(last_pid, 0)
        gone = False
    except ProcessLookupError:
        gone = True
    assert gone or os.waitpid(last_pid, os.WNOHANG)
    msgs = History(load_settings().history_db).messages(conv)
    assert [m.role for m in msgs] == ["user", "assistant"] * 4
    assert [m.status for m in msgs[1::2]] == ["complete", "cancelled", "failed", "complete"]
    assert "model process stopped" in msgs[5].error and len(msgs[5].content) > 30
    assert SLOW_REPLY.startswith(msgs[5].content)


def test_the_apps_engine_leaves_the_screen_a_core(monkeypatch):
    import torch

    from assistant._engine_process import app_decode_threads
    from assistant.settings import load_settings

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert app_decode_threads(load_settings()).decode_threads == 1
    assert app_decode_threads(load_settings({"decode_threads": 2})).decode_threads == 2  # the user's choice
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert app_decode_threads(load_settings()).decode_threads == 1
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert app_decode_threads(load_settings({"threads": 4})).decode_threads == 4
