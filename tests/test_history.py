"""The chat history store: migrations, conversations, messages with their answer data, recovery, turns."""

from __future__ import annotations

import threading

import pytest

from assistant.answer import Answer, Cost, Timings, TokenUsage, Turn
from assistant.history import History, migrations
from retrieval import Passage
from retrieval.errors import InputError


def _passage(n: int = 1) -> Passage:
    return Passage(n, f"docs/p{n}.md", "P", "Ports", 3, 9, "line", f"text [bold]{n}[/bold]", 0.5 / n,
                   {"dense": n, "bm25": n})


def test_migrations_are_idempotent(tmp_path):
    h = History(tmp_path / "h.db")
    schema = h.db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert migrations.apply(h.db) == []
    assert h.db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert [r["name"] for r in h.db["_migrations"].rows_where("family = 'history'")] == ["m001_create_tables",
                                                                                 "m002_origin_owner_settings"]
    h.close()
    h2 = History(tmp_path / "h.db")  # reopening applies nothing new
    assert h2.db.execute("SELECT count(*) FROM _migrations WHERE family = 'history'").fetchone()[0] == 2


def test_conversation_lifecycle(tmp_path):
    h = History(tmp_path / "h.db")
    a = h.new_conversation(collection="team")
    b = h.new_conversation("Second")
    assert h.conversation(a).title == "New chat" and h.conversation(a).collection == "team"
    h.add_message(a, "user", "  Which   port does the server use?  ")
    assert h.conversation(a).title == "Which port does the server use?"  # first question titles it
    h.add_message(a, "user", "another question")
    assert h.conversation(a).title == "Which port does the server use?"
    assert [c.id for c in h.conversations()] == [a, b]  # most recently active first
    h.rename(b, "  Renamed   chat ")
    assert h.conversation(b).title == "Renamed chat"
    with pytest.raises(InputError):
        h.rename(b, "   ")
    h.delete(a)
    assert [c.id for c in h.conversations()] == [b]
    assert h.messages(a) == []
    with pytest.raises(InputError):
        h.conversation(a)


def test_long_question_title_is_cut(tmp_path):
    h = History(tmp_path / "h.db")
    c = h.new_conversation()
    h.add_message(c, "user", "word " * 40)
    assert len(h.conversation(c).title) == 48 and h.conversation(c).title.endswith("…")


def test_answer_round_trip(tmp_path):
    h = History(tmp_path / "h.db")
    c = h.new_conversation()
    h.add_message(c, "user", "q?")
    mid = h.add_message(c, "assistant", "", status="pending")
    h.update_message(mid, content="partial")
    assert h.message(mid).content == "partial" and h.message(mid).status == "pending"
    ans = Answer("q?", "full answer [1]", [_passage(1), _passage(2)], TokenUsage(120, 7),
                 Timings(1.5, 40.0, 90.0, 55.5, 80.0), cost=Cost(0.1, 0.2, 0.3), model="fake", device="cpu")
    h.save_answer(mid, ans)
    m = h.messages(c)[1]
    assert (m.role, m.content, m.status, m.model, m.device) == ("assistant", "full answer [1]", "complete", "fake", "cpu")
    assert m.sources == [_passage(1), _passage(2)]
    assert m.usage == {"prompt_tokens": 120, "completion_tokens": 7}
    assert m.timings["ttft_ms"] == 40.0 and m.timings["tokens_per_s"] == 55.5
    assert m.cost == {"input_usd": 0.1, "output_usd": 0.2, "device_usd": 0.3}
    with pytest.raises(InputError):
        h.update_message(mid, status="weird")
    with pytest.raises(TypeError):
        h.update_message(mid, colour="red")
    with pytest.raises(InputError):
        h.update_message(99999, content="x")


def test_pending_answers_are_marked_cancelled_on_reopen(tmp_path):
    h = History(tmp_path / "h.db")
    c = h.new_conversation()
    h.add_message(c, "user", "q?")
    mid = h.add_message(c, "assistant", "half an ans", status="pending")
    # the process dies here: no close, no final update
    h2 = History(tmp_path / "h.db")
    m = h2.message(mid)
    assert (m.status, m.error, m.content) == ("cancelled", "interrupted", "half an ans")
    assert h2.recover() == 0


def test_turns_keep_only_completed_exchanges(tmp_path):
    h = History(tmp_path / "h.db")
    c = h.new_conversation()
    h.add_message(c, "user", "q1")
    h.add_message(c, "assistant", "a1")
    h.add_message(c, "user", "q2")
    h.add_message(c, "assistant", "a2 partial", status="cancelled")
    h.add_message(c, "user", "q3")
    h.add_message(c, "assistant", "", status="failed", error="boom")
    h.add_message(c, "user", "q4")  # not answered yet
    h.add_message(c, "assistant", "a4")
    assert h.turns(c) == [Turn("q1", "a1"), Turn("q4", "a4")]


def test_writes_from_many_threads(tmp_path):
    h = History(tmp_path / "h.db")
    c = h.new_conversation()
    mid = h.add_message(c, "assistant", "", status="pending")

    def worker(i):
        for j in range(20):
            h.add_message(c, "user", f"{i}-{j}")
            h.update_message(mid, content=f"{i}-{j}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(h.messages(c)) == 1 + 4 * 20
