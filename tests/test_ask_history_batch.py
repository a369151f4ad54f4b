"""Every answer lands in history (ask, batch), `ragdesk history` lists/shows/searches/exports them,
`ask --continue` carries the earlier turns, and `ask --batch` is resumable, names bad lines and survives a
torn output line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from assistant.cli import cli
from assistant.history import History
from assistant.models import FakeModel, register_model
from assistant.settings import load_settings

RECORDING = FakeModel()  # one instance behind the name, so the test can read the prompts it was given
register_model("fake-recording", lambda settings: RECORDING)


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_ask_is_stored_and_continued(indexed):
    first = run("ask", "Which port does the server use?", "--json")
    assert first.exit_code == 0, first.output
    conv = json.loads(first.stdout)["conversation"]
    h = History(load_settings().history_db)
    msgs = h.messages(conv)
    assert [m.role for m in msgs] == ["user", "assistant"] and msgs[0].content == "Which port does the server use?"
    answer = msgs[1]
    assert answer.status == "complete" and "[1]" in answer.content and answer.sources
    assert answer.usage["completion_tokens"] > 0 and answer.timings["total_ms"] > 0
    assert answer.settings["model"] == "fake" and answer.speculative["method"] == "off"
    assert h.conversation(conv).origin == "ask"

    RECORDING.prompts.clear()
    second = run("ask", "And how do I change it?", "--continue", "--model", "fake-recording", "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["conversation"] == conv
    assert "Which port does the server use?" in RECORDING.prompts[0] and answer.content[:40] in RECORDING.prompts[0]
    third = run("ask", "Unrelated?", "--model", "fake-recording")
    assert third.exit_code == 0
    assert len(h.conversations()) == 2  # a plain ask starts a new conversation
    bad = CliRunner().invoke(cli, ["ask", "q", "--conversation", "999"])
    assert "no conversation with id 999" in str(bad.exception)


def test_continue_with_no_history_is_a_one_line_error(indexed):
    from assistant.cli import main
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["ask", "q", "--continue"])
    assert exc.value.code == 1


def test_history_commands(indexed, tmp_path):
    run("ask", "Which port does the server use?")
    run("ask", "How long is an account locked?")
    listed = json.loads(run("history", "--json").stdout)
    assert [c["title"] for c in listed] == ["How long is an account locked?", "Which port does the server use?"]
    assert all(c["origin"] == "ask" and c["answers"] == 1 for c in listed)
    plain = run("history")
    assert plain.exit_code == 0 and "Which port does the server use?" in plain.stdout
    conv = listed[1]["id"]
    shown = json.loads(run("history", "show", str(conv), "--json").stdout)
    assert shown["messages"][1]["sources"][0]["n"] == 1 and shown["messages"][0]["content"].startswith("Which port")
    md = run("history", "export", str(conv)).stdout
    assert md.startswith("# Which port does the server use?") and "## Which port" in md and "Sources:" in md
    out = tmp_path / "c.md"
    assert run("history", "export", str(conv), "--out", str(out)).exit_code == 0 and out.read_text() == md
    found = json.loads(run("history", "search", "ACCOUNT locked", "--json").stdout)
    assert found and all(f["conversation"] == listed[0]["id"] for f in found)
    missing = CliRunner().invoke(cli, ["history", "show", "999"])
    assert missing.exit_code == 1 and "no conversation with id 999" in str(missing.exception)


def test_batch_resumes_names_bad_lines_and_records_history(indexed, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "question": "Which port?"}\nnot json\n{"question": "Lockout?"}\n'
                   '{"id": "a", "question": "dup"}\n{"id": "c", "question": ""}\n{"id": "d", "question": "Trash?"}\n')
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(cli, ["ask", "--batch", str(src), "--out", str(out), "--concurrency", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert f"{src}:2: not JSON" in res.stderr and f"{src}:4: id 'a' appears twice" in res.stderr
    assert f"{src}:5: needs a non-empty" in res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == ["a", "d", "line-3"]
    assert all(x["status"] == "complete" and x["sources"] and x["usage"]["completion_tokens"] > 0 for x in lines)
    summary = json.loads(res.stdout)
    assert summary["answered"] == 3 and len(summary["bad_lines"]) == 3 and summary["answers_per_s"] > 0
    h = History(load_settings().history_db)
    conv = h.conversation(summary["conversation"])
    assert conv.origin == "batch" and sum(m.role == "assistant" for m in h.messages(conv.id)) == 3

    # a killed run leaves a torn last line: it is cut off and that question is answered again
    data = out.read_text().splitlines(keepends=True)
    out.write_text("".join(data[:2]) + data[2][:25])
    again = CliRunner().invoke(cli, ["ask", "--batch", str(src), "--out", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert "cut off" in again.stderr and json.loads(again.stdout)["answered"] == 1
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == ["a", "d", "line-3"]
    nothing = json.loads(CliRunner().invoke(cli, ["ask", "--batch", str(src), "--out", str(out), "--json"]).stdout)
    assert nothing["answered"] == 0 and nothing["skipped_done"] == 3 and nothing["conversation"] is None


def test_batch_usage_errors(indexed, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "q"}\n')
    assert CliRunner().invoke(cli, ["ask", "--batch", str(src)]).exit_code == 2  # no --out
    assert CliRunner().invoke(cli, ["ask", "q", "--batch", str(src), "--out", "o.jsonl"]).exit_code == 2
    assert CliRunner().invoke(cli, ["ask", "q", "--concurrency", "2"]).exit_code == 2
