"""The judge path against an OpenAI-compatible server: a tiny HTTP server on 127.0.0.1 that answers ragas'
structured prompts with canned JSON verdicts (streamed, as ragdesk's server backend asks), and with unparseable text for one question, which must show up
as a counted parse failure rather than a score."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from assistant.cli import cli
from tests.test_evals_cli import SUITE

VERDICTS = {
    "StatementGeneratorOutput": {"statements": ["The server uses a port.", "The port is documented."]},
    "NLIStatementOutput": {"statements": [
        {"statement": "The server uses a port.", "reason": "stated", "verdict": 1},
        {"statement": "The port is documented.", "reason": "not stated", "verdict": 0}]},
    "AnswerRelevanceOutput": {"question": "Which port does the server listen on?", "noncommittal": 0},
    "ContextPrecisionOutput": {"reason": "useful", "verdict": 1},
}


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append(body)
        text = json.dumps(body)
        kind = next((k for k in VERDICTS if k in text), None)
        if kind == "StatementGeneratorOutput" and "locked" in text:
            content = "Sorry, I cannot produce JSON for that."  # the judge misbehaves on one question
        else:
            content = json.dumps(VERDICTS[kind]) if kind else "{}"
        base = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model", "m")}
        chunks = [base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": content}}]},
                  base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  base | {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}]
        data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    _Handler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_judge(indexed, tmp_path, judge_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = tmp_path / "suite.jsonl"
    suite.write_text("\n".join(json.dumps(s) for s in SUITE) + "\n")
    result = CliRunner().invoke(cli, ["eval", str(suite), "--judge", judge_server + "#test-judge", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    m = out["summary"]["metrics"]
    assert _Handler.requests and {r["model"] for r in _Handler.requests} == {"test-judge"}
    # lockout: the judge's statements are unparseable -> a parse failure, not a score
    assert m["faithfulness"]["parse_failure"] == 1 and m["faithfulness"]["n"] == 2
    assert m["faithfulness"]["mean"] == 0.5
    assert m["llm_context_precision"]["mean"] == pytest.approx(1.0) and m["llm_context_precision"]["n"] == 3
    assert m["answer_relevancy"]["n"] == 3 and m["answer_relevancy"]["parse_failure"] == 0
    assert out["summary"]["judge_parse_failures"] == 1 and out["summary"]["judge_calls"] > 9

    from evals import RunStore
    from assistant.settings import load_settings

    store = RunStore(load_settings().evals_db)
    lockout = next(s for s in store.samples(out["run"]) if s["sample_id"] == "lockout")
    assert lockout["score_status"]["faithfulness"] == "parse_failure"
    assert lockout["scores"]["faithfulness"] is None and lockout["score_notes"]["faithfulness"]
    assert store.run(out["run"])["judge"].endswith("#test-judge")
    table = CliRunner().invoke(cli, ["eval", "report", "latest", "--html", str(tmp_path / "r.html")])
    assert table.exit_code == 0 and "parse failure" in (tmp_path / "r.html").read_text()


def test_unreachable_judge_is_an_error_not_a_parse_failure(indexed, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps(SUITE[0]) + "\n")
    result = CliRunner().invoke(cli, ["eval", str(suite), "--judge", "http://127.0.0.1:9/v1", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)["summary"]["metrics"]
    assert m["faithfulness"]["error"] == 1 and m["faithfulness"]["parse_failure"] == 0
    assert m["rouge_l"]["n"] == 1  # the other metrics still ran
