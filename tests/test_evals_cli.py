"""`ragdesk eval` end to end with the hashing embedder and the fake model: a run stored and read back,
compare and its gates (exit 3), the HTML report (plots, escaping), and no network during a full eval."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from assistant.cli import cli
from assistant.models import FakeModel, register_model

SUITE = [
    {"id": "port", "question": "Which port does the server listen on?",
     "answer": "The server listens on port 8740 by default.", "sources": ["guide/install.md"], "expect": "the SERVER listens"},
    {"id": "lockout", "question": "How long is an account locked after failed sign-ins?",
     "answer": "An account is locked for 15 minutes after 8 failed sign-ins.", "sources": ["accounts.md"]},
    {"id": "release", "question": "Which version fixed the sync conflict bug TP-2002?",
     "answer": "Version 3.4.2 fixed it.", "sources": ["notes.txt"]},
    {"id": "swallow", "question": "What is the airspeed of an unladen swallow?", "unanswerable": True},
]

register_model("fake-refuser", lambda settings: FakeModel(reply="I don't know: the documentation does not say."))


@pytest.fixture
def suite(tmp_path) -> Path:
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in SUITE) + "\n")
    return path


def _run(*args):
    result = CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)
    return result


def test_run_is_stored_and_read_back(indexed, suite, ragdesk_env):
    result = _run(str(suite), "--json", "--label", "first")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    m = out["summary"]["metrics"]
    assert m["recall_at_k"]["mean"] == 1.0 and m["recall_at_k"]["n"] == 3
    assert m["refusal_rate"]["n"] == 1 and m["false_refusal_rate"]["mean"] == 0.0
    assert 0 < m["rouge_l"]["mean"] < 1 and m["rouge_l"]["lo"] <= m["rouge_l"]["mean"] <= m["rouge_l"]["hi"]
    assert m["string_presence"]["n"] == 3 and "faithfulness" not in m  # no judge, no judged metrics
    assert m["prompt_tokens"]["total"] > 0 and m["cost_usd"]["mean"] > 0
    assert out["harness"]["stream_s"] > 0 and out["harness"]["total_s"] >= out["harness"]["stream_s"]

    from evals import RunStore

    store = RunStore(ragdesk_env / "evals.db")
    run = store.run(out["run"])
    assert run["config"]["embedder"] == "hashing" and run["config"]["model"] == "fake"
    assert run["collection_identity"] == indexed.identity() and run["index_stats"]["chunks"] > 0
    assert run["versions"]["ragas"] == "0.4.3" and run["label"] == "first"
    samples = store.samples(out["run"])
    assert [s["sample_id"] for s in samples] == ["port", "lockout", "release", "swallow"]
    port = samples[0]
    assert port["answer"].startswith("According to the documentation")
    assert port["contexts"][0]["path"].endswith("install.md")
    assert port["usage"]["completion_tokens"] > 0 and port["timings"]["total_ms"] > 0
    assert port["scores"]["string_presence"] == 1.0 and port["score_status"]["rouge_l"] == "ok"
    assert samples[3]["unanswerable"] and samples[3]["scores"]["recall_at_k"] is None

    table = _run(str(suite))
    assert table.exit_code == 0
    assert "recall_at_k" in table.stdout and "semantic_similarity" in table.stdout and "p95" in table.stdout
    listed = _run("list")
    assert listed.exit_code == 0 and "suite.jsonl" in listed.stdout and "first" in listed.stdout


def test_bad_suite_lines_are_warned_and_empty_suite_fails(indexed, suite, tmp_path):
    with_bad = tmp_path / "bad.jsonl"
    with_bad.write_text(suite.read_text() + "{oops\n")
    result = _run(str(with_bad), "--json")
    assert result.exit_code == 0
    assert "bad.jsonl:5: not valid JSON" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "eval", str(empty)], capture_output=True, text=True)
    if proc.returncode != 1:  # assistant.cli may not run as a module; use the console script
        proc = subprocess.run([str(Path(sys.executable).parent / "ragdesk"), "eval", str(empty)],
                              capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: suite") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_gate_exit_code_and_compare(indexed, suite):
    ok = _run(str(suite), "--fail-under", "recall_at_k=0.9", "--fail-over", "false_refusal_rate=0.5")
    assert ok.exit_code == 0, ok.output
    failed = _run(str(suite), "--fail-under", "recall_at_k=1.01")
    assert failed.exit_code == 3
    assert "gate failed: recall_at_k = 1 is under 1.01" in failed.stderr
    missing = _run(str(suite), "--fail-under", "faithfulness=0.5")  # no judge: no value must not pass
    assert missing.exit_code == 3 and "faithfulness: no value" in missing.stderr
    bad_gate = _run(str(suite), "--fail-under", "nonsense=1")
    assert bad_gate.exit_code == 2 and "unknown metric 'nonsense'" in bad_gate.output

    worse = _run(str(suite), "--model", "fake-refuser", "--json")
    assert worse.exit_code == 0
    cmp = _run("compare", "1", "latest", "--json")
    assert cmp.exit_code == 0, cmp.output
    data = json.loads(cmp.stdout)
    assert data["shared"] == 4 and data["b"] == json.loads(worse.stdout)["run"]
    rouge = data["metrics"]["rouge_l"]
    assert rouge["delta"]["mean"] < 0 and rouge["better"] is False
    fr = data["metrics"]["false_refusal_rate"]
    assert fr["a"] == 0.0 and fr["b"] == 1.0 and fr["delta"]["mean"] == 1.0
    assert data["changed"] and data["changed"][0]["answer_changed"]
    assert data["metrics"]["recall_at_k"]["delta"]["mean"] == 0.0  # retrieval did not change

    gated = _run("compare", "1", "latest", "--max-drop", "rouge_l=0.05")
    assert gated.exit_code == 3 and "rouge_l fell by" in gated.stderr
    assert "samples that changed most" in gated.stdout
    text = _run("compare", "1", "latest")
    assert text.exit_code == 0 and "worse" in text.stdout
    assert _run("compare", "1", "latest", "--fail-under", "false_refusal_rate=2").exit_code == 3


def test_gate_exit_code_through_the_console_script(indexed, suite):
    exe = Path(sys.executable).parent / "ragdesk"
    proc = subprocess.run([str(exe), "eval", str(suite), "--fail-under", "rouge_l=0.99"], capture_output=True,
                          text=True, env=os.environ.copy())
    assert proc.returncode == 3, proc.stderr
    assert "gate failed: rouge_l" in proc.stderr


def test_report_has_plots_and_escapes_text(indexed, sample_docs, suite, tmp_path):
    hostile = sample_docs / "guide" / "xss.md"
    hostile.write_text("# Evil <b>heading</b>\n\nThe port note: <script>alert('x')</script> is 8740 too.\n")
    indexed.update([sample_docs])
    q = tmp_path / "xss.jsonl"
    q.write_text(json.dumps({"id": "x<script>1</script>", "question": "What does the port note <script> say?",
                             "answer": "<script>alert(1)</script>", "sources": ["xss.md"]}) + "\n")
    assert _run(str(q)).exit_code == 0
    out = tmp_path / "out" / "report.html"
    result = _run("report", "latest", "--html", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.count("<svg") >= 5  # metric bars, four latency histograms, tokens/cost
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the passage, as text
    assert "x&lt;script&gt;1&lt;/script&gt;" in page  # the sample id
    assert "recall_at_k" in page and "p95" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_no_network_during_a_full_eval(indexed, suite, monkeypatch, tmp_path, ragdesk_env):
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # where ragas would put its uuid file
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-home" / ".local" / "share"))

    from evals import load_suite, run_suite
    from assistant.settings import load_settings
    from tests.test_evals_metrics import _FakeJudge
    from evals import _ragas

    run_id, run, samples = run_suite(load_settings(), load_suite(suite), suite, judge=_FakeJudge(_ragas).judge)
    m = run["summary"]["metrics"]
    assert m["faithfulness"]["mean"] == 0.5 and m["semantic_similarity"]["n"] == 3
    assert m["rouge_l"]["n"] == 3 and m["context_recall"]["n"] == 3
    assert attempts == []
    assert not (tmp_path / "user-home").exists()  # nothing written to the user's data dir


def test_a_question_the_engine_rejects_fails_only_its_sample(indexed, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [SUITE[0], {"id": "huge", "question": "word " * 5000, "answer": "x", "sources": ["notes.txt"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = _run(str(path), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["summary"]["failed_answers"] == 1 and out["summary"]["metrics"]["rouge_l"]["n"] == 2
