"""The server backend against a fake OpenAI-compatible server on 127.0.0.1 that does on demand what a real one
does only on a bad day: cuts a stream, sends an error event, rate-limits, stalls past the timeout, refuses the
key, does not know the model. Each test scripts the chat endpoint; the server records every request (path,
headers, body) so tests can assert what ragdesk sent as well as what it made of the answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from assistant.cli import cli, main
from assistant.models import GenerationConfig, ServerModel, load_model
from assistant.models._base import Completion
from assistant.settings import load_settings
from retrieval.errors import ModelError

KEY = "sk-secret-123"
MESSAGES = [{"role": "system", "content": "Answer from the passages."},
            {"role": "user", "content": "Which port does the server listen on?"}]
CONFIG = GenerationConfig(64, 1.0)


# ---- the fake server ----------------------------------------------------------------------------------------
def chunk(content=None, finish=None, **extra):
    """One `chat.completion.chunk` as vLLM streams it."""
    delta = {} if content is None else {"content": content}
    choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices} | extra


def usage_chunk(prompt, completion, **extra):
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}} | extra


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, as uvicorn (vLLM) serves them
    server: "FakeServer"

    def log_message(self, *args):
        pass

    def _record(self, body):
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})

    def do_GET(self):  # noqa: N802 - http.server API
        self._record(None)
        if self.path == "/v1/models":
            if self.server.models_status != 200:
                return self.send_json(self.server.models_status, {"error": {"message": "no"}})
            return self.send_json(200, {"object": "list", "data": self.server.models})
        if self.path == "/props" and self.server.props is not None:
            return self.send_json(200, self.server.props)
        if self.path == "/metrics" and self.server.metrics is not None:
            return self.send_text(200, self.server.metrics())
        self.send_json(404, {"detail": "Not Found"})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self._record(body)
        if self.path == "/tokenize" and self.server.tokenize == "llamacpp":  # {"content"} only, no count
            return self.send_json(200, {"tokens": list(range(2 * len(body.get("content", "").split())))})
        if self.path == "/tokenize" and self.server.tokenize:
            text = " ".join(m["content"] for m in body["messages"]) if "messages" in body else body["prompt"]
            n = 2 * len(text.split()) + (5 if "messages" in body else 0)  # not what the estimate would say
            return self.send_json(200, {"count": n, "tokens": list(range(n)), "max_model_len": 2048})
        if self.path == "/v1/chat/completions":
            n = sum(r["path"] == "/v1/chat/completions" for r in self.server.requests)
            return self.server.chat(self, body, n)
        self.send_json(404, {"detail": "Not Found"})

    # ---- replies ------------------------------------------------------------------------------------------
    def send_json(self, status, obj, headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self, chunked=True):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:  # an HTTP/1.0-style body: it ends when the socket closes, so a cut looks like an ending
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._chunked = chunked

    def event(self, obj):
        """One SSE event; False once the client has gone away."""
        raw = (obj if isinstance(obj, str) else f"data: {json.dumps(obj)}\n\n").encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw) if self._chunked else raw)
            self.wfile.flush()
            return True
        except OSError:
            self.server.disconnected.set()
            self.close_connection = True
            return False

    def end_sse(self):
        self.event("data: [DONE]\n\n")
        if self._chunked:
            self.wfile.write(b"0\r\n\r\n")

    def cut(self):
        """Close the socket mid-body (no [DONE], no last chunk)."""
        self.close_connection = True
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)


def answer(pieces, usage=(11, 5), final_extra=None):
    """A chat script: stream `pieces`, a finish chunk, the usage chunk, [DONE]."""
    def chat(h, body, n):
        h.start_sse()
        for p in pieces:
            h.event(chunk(p))
        h.event(chunk(finish="stop"))
        h.event(usage_chunk(*usage, **(final_extra or {})))
        h.end_sse()
    return chat


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.models = [{"id": "m", "object": "model", "owned_by": "test", "max_model_len": 2048}]
        self.models_status = 200
        self.tokenize = False
        self.props = None  # llama.cpp's /props; None: 404
        self.metrics = None  # a callable giving the /metrics text; None: 404 (no metrics)
        self.chat = answer(["Hello", " world"])
        self.disconnected = threading.Event()
        self.stop = threading.Event()  # ends scripted sleeps at teardown

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def chats(self):
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]


@pytest.fixture
def fake():
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


def run(model, cancel=None, on_piece=None):
    """(pieces, Completion) of one streamed answer."""
    pieces, done = [], None
    for item in model.stream(MESSAGES, CONFIG, cancel):
        if isinstance(item, Completion):
            done = item
        else:
            pieces.append(item)
            if on_piece:
                on_piece(item)
    return pieces, done


def one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and KEY not in msg, msg
    return msg


# ---- a normal answer ----------------------------------------------------------------------------------------
def test_streamed_answer_usage_context_and_estimated_counts(fake):
    fake.chat = answer(["The server", " listens on", " port 8740 [1]."], usage=(123, 9))
    model = ServerModel(fake.url, "m", api_key=KEY).connect()
    assert model.context_length == 2048  # vLLM's max_model_len from /v1/models
    assert model.token_counts_exact is False  # /tokenize answered 404
    assert model.count_tokens("x" * 30) == 11  # the labelled over-estimate: 30 chars / 3 + 1
    pieces, done = run(model)
    assert pieces == ["The server", " listens on", " port 8740 [1]."]
    assert done.text == "".join(pieces) and done.finish_reason == "stop" and done.error == ""
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (123, 9) and done.usage_exact
    sent = fake.chats()[0]
    assert sent["body"]["model"] == "m" and sent["body"]["stream"] is True
    assert sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["body"]["max_tokens"] == 64 and sent["body"]["temperature"] == 0.0
    assert sent["body"]["messages"] == MESSAGES
    # the key goes as a bearer header on every request, the ragdesk-side ones (/tokenize, /metrics) included
    assert {r["headers"].get("authorization") for r in fake.requests} == {f"Bearer {KEY}"}
    model.close()


def test_server_tokenizer_makes_counts_exact(fake):
    fake.tokenize = True
    model = ServerModel(fake.url, "m").connect()
    assert model.token_counts_exact is True
    assert model.count_tokens("one two three") == 6  # the server's count, not 13 chars / 3 + 1 = 5
    assert model.count_messages(MESSAGES) == 2 * 11 + 5  # the server renders the chat template itself
    tokenized = [r["body"] for r in fake.requests if r["path"] == "/tokenize"]
    assert tokenized[-1]["messages"] == MESSAGES and tokenized[-1]["add_generation_prompt"] is True
    # llama.cpp's /tokenize counts text but takes no messages: the texts are counted, plus a template margin
    fake.tokenize = "llamacpp"
    model = ServerModel(fake.url, "m").connect()
    assert model.token_counts_exact is True and model.count_tokens("one two three") == 6
    assert model.count_messages(MESSAGES) == (2 * 4 + 8) + (2 * 7 + 8) + 8
    # no usage chunk from the server: the counts come from its tokenizer, but are labelled not exact
    fake.chat = lambda h, body, n: (h.start_sse(), h.event(chunk("a b")), h.event(chunk(finish="length")),
                                    h.end_sse())
    _, done = run(model)
    assert done.finish_reason == "length" and done.usage_exact is False
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (46, 4)  # count_messages, count_tokens


# ---- broken streams -----------------------------------------------------------------------------------------
def test_reply_cut_mid_stream_is_failed_with_partial_text(fake):
    def chat(h, body, n):
        h.start_sse()
        h.event(chunk("Port"))
        h.event(chunk(" 87"))
        h.cut()
    fake.chat = chat
    pieces, done = run(ServerModel(fake.url, "m", retries=0))
    assert pieces == ["Port", " 87"] and done.text == "Port 87"
    assert done.finish_reason == "error" and fake.url in done.error and "\n" not in done.error
    assert done.usage_exact is False and done.usage.completion_tokens > 0  # an estimate, not made-up exactness


def test_body_that_just_stops_is_failed_too(fake):
    """An HTTP/1.0-style stream (no chunked encoding) that the server closes early ends like a normal body;
    only the missing finish_reason / [DONE] tells that the answer is incomplete."""
    def chat(h, body, n):
        h.start_sse(chunked=False)
        h.event(chunk("Port"))
        h.event(chunk(" 87"))
    fake.chat = chat
    pieces, done = run(ServerModel(fake.url, "m", retries=0))
    assert done.text == "Port 87" and done.finish_reason == "error"
    assert fake.url in done.error and "ended before" in done.error


def test_error_event_mid_stream(fake):
    def chat(h, body, n):
        h.start_sse()
        h.event(chunk("Port"))
        h.event({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}})
        h.end_sse()
    fake.chat = chat
    pieces, done = run(ServerModel(fake.url, "m"))
    assert pieces == ["Port"] and done.text == "Port" and done.finish_reason == "error"
    assert fake.url in done.error and "CUDA out of memory" in done.error and "\n" not in done.error


def test_old_vllm_error_object_mid_stream(fake):
    """Older vLLM streams its ErrorResponse flat ({"object": "error", "message": ...}), which the client does
    not recognise as an error."""
    def chat(h, body, n):
        h.start_sse()
        h.event(chunk("Port"))
        h.event({"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400})
        h.end_sse()
    fake.chat = chat
    _, done = run(ServerModel(fake.url, "m"))
    assert done.text == "Port" and done.finish_reason == "error" and "prompt too long" in done.error


def test_rate_limited_then_answered(fake):
    stream = answer(["fine"])

    def chat(h, body, n):
        if n == 1:  # the first try is rate-limited; the client waits what retry-after-ms says and retries
            return h.send_json(429, {"error": {"message": "slow down"}}, [("retry-after-ms", "20")])
        stream(h, body, n)
    fake.chat = chat
    pieces, done = run(ServerModel(fake.url, "m", retries=2))
    assert pieces == ["fine"] and done.finish_reason == "stop"
    assert len(fake.chats()) == 2


def test_rate_limited_for_good(fake):
    slow_down = {"error": {"message": "slow down"}}
    fake.chat = lambda h, body, n: h.send_json(429, slow_down, [("retry-after-ms", "10")])
    with pytest.raises(ModelError) as err:
        run(ServerModel(fake.url, "m", retries=1))
    assert "429" in one_line(err.value) and fake.url in str(err.value) and len(fake.chats()) == 2


def test_timeout_before_the_first_byte(fake):
    def chat(h, body, n):
        h.server.stop.wait(2.0)  # slower than request_timeout
        answer(["late"])(h, body, n)
    fake.chat = chat
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as err:
        run(ServerModel(fake.url, "m", request_timeout=0.5, retries=1))
    elapsed = time.perf_counter() - t0
    msg = one_line(err.value)
    assert fake.url in msg and "RAGDESK_REQUEST_TIMEOUT" in msg and "0.5 s" in msg
    assert len(fake.chats()) == 2 and elapsed < 1.9  # two tries of 0.5 s and a back-off, not 2 s each


def test_timeout_in_the_middle_of_a_stream(fake):
    def chat(h, body, n):
        h.start_sse()
        h.event(chunk("Port"))
        h.server.stop.wait(2.0)
        h.event(chunk(" 8740"))
        h.end_sse()
    fake.chat = chat
    t0 = time.perf_counter()
    pieces, done = run(ServerModel(fake.url, "m", request_timeout=0.5))
    assert time.perf_counter() - t0 < 1.5 and len(fake.chats()) == 1  # no replay of a started answer
    assert pieces == ["Port"] and done.text == "Port" and done.finish_reason == "error"
    assert fake.url in done.error and "RAGDESK_REQUEST_TIMEOUT" in done.error


# ---- cancel -------------------------------------------------------------------------------------------------
def test_cancel_stops_within_one_chunk_and_closes_the_connection(fake):
    def chat(h, body, n):
        h.start_sse()
        for i in range(200):
            if not h.event(chunk(f" t{i}")):
                return
            time.sleep(0.01)
        h.event(chunk(finish="stop"))
        h.end_sse()
    fake.chat = chat
    cancel = threading.Event()
    seen_at_cancel = []

    def on_piece(p):
        if not cancel.is_set():
            cancel.set()
            seen_at_cancel.append(p)
    pieces, done = run(ServerModel(fake.url, "m"), cancel, on_piece)
    assert seen_at_cancel == [" t0"] and len(pieces) <= 2  # at most one piece after the cancel
    assert done.finish_reason == "cancelled" and done.text == "".join(pieces) and done.error == ""
    assert fake.disconnected.wait(3.0)  # the server saw the connection go: it stops generating


def test_cancel_while_the_server_sends_nothing(fake):
    """A server busy (a long prefill, a full batch) sends no chunk to notice the cancel at: ragdesk hangs up."""
    def chat(h, body, n):
        h.start_sse()
        h.event(chunk("Port"))
        h.server.stop.wait(5.0)
        h.event(chunk(" 8740"))
        h.end_sse()
    fake.chat = chat
    cancel = threading.Event()
    t0 = time.perf_counter()
    pieces, done = run(ServerModel(fake.url, "m"), cancel, lambda p: cancel.set())
    assert time.perf_counter() - t0 < 1.0  # not the 5 s the server stalls
    assert pieces == ["Port"] and done.finish_reason == "cancelled" and done.text == "Port" and done.error == ""


# ---- errors before the answer -------------------------------------------------------------------------------
def test_refused_connection(closed_port, monkeypatch):
    monkeypatch.setenv("RAGDESK_API_KEY", KEY)
    url = f"http://127.0.0.1:{closed_port}/v1"
    with pytest.raises(ModelError) as err:
        load_model(f"{url}#m", load_settings())
    msg = one_line(err.value)
    assert f"cannot connect to {url}" in msg and f"ragdesk models --url {url}" in msg


def test_wrong_api_key(fake):
    def refuse(h, body, n):
        h.send_json(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    fake.chat = refuse
    fake.models_status = 401
    with pytest.raises(ModelError) as err:
        ServerModel(fake.url, "m", api_key=KEY).connect()
    msg = one_line(err.value)
    assert fake.url in msg and "401" in msg and "RAGDESK_API_KEY" in msg
    with pytest.raises(ModelError) as err:
        run(ServerModel(fake.url, "m", api_key=KEY))
    assert "RAGDESK_API_KEY" in one_line(err.value)
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_server_error_echoing_the_key_is_scrubbed(fake):
    fake.chat = lambda h, body, n: h.send_json(400, {"error": {"message": f"bad header: Bearer {KEY}"}})
    with pytest.raises(ModelError) as err:
        run(ServerModel(fake.url, "m", api_key=KEY, retries=0))
    msg = one_line(err.value)  # the key is not in it
    assert "400" in msg and "bad header" in msg and "***" in msg


def test_unknown_model(fake):
    with pytest.raises(ModelError) as err:
        ServerModel(fake.url, "llama-9000").connect()
    msg = one_line(err.value)
    assert fake.url in msg and "'llama-9000'" in msg and "it serves: m" in msg
    # a server that does not list models answers 404 to the request itself
    missing = {"error": {"message": "The model `llama-9000` does not exist."}}
    fake.chat = lambda h, body, n: h.send_json(404, missing)
    with pytest.raises(ModelError) as err:
        run(ServerModel(fake.url, "llama-9000"))
    msg = one_line(err.value)
    assert "'llama-9000'" in msg and f"ragdesk models --url {fake.url}" in msg


def test_llamacpp_context_is_the_running_one_not_the_training_one(fake):
    fake.models = [{"id": "qwen.gguf", "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx_train": 32768}}]
    fake.props = {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 1}
    assert ServerModel(fake.url, "qwen.gguf").connect().context_length == 2048  # -c 2048, not 32768
    fake.props = None
    assert ServerModel(fake.url, "qwen.gguf").connect().context_length == 32768  # the best it says


def test_ollama_names_match_their_latest_tag(fake):
    fake.models = [{"id": "llama3.2:latest", "object": "model", "owned_by": "library"}]
    model = ServerModel(fake.url, "llama3.2").connect()
    assert model.name == "llama3.2" and model.context_length == 4096  # nothing said: the default budget


def test_url_without_v1_is_named(fake):
    root = fake.url.removesuffix("/v1")
    with pytest.raises(ModelError) as err:
        ServerModel(root, "m").connect()  # the fake, like vLLM, has no /models at its root
    msg = one_line(err.value)
    assert f"{root}/models is not there (404)" in msg and "http://HOST:PORT/v1" in msg


def test_connect_picks_the_only_model_and_asks_when_there_are_several(fake):
    assert ServerModel(fake.url, "").connect().name == "m"
    fake.models = fake.models + [{"id": "other", "object": "model", "owned_by": "test"}]
    with pytest.raises(ModelError) as err:
        ServerModel(fake.url, "").connect()
    assert "serves 2 models (m, other)" in one_line(err.value)


# ---- speculative figures ------------------------------------------------------------------------------------
def test_speculative_figures_from_vllm_metrics(fake):
    counters = {"draft": 100, "accepted": 60}

    def metrics():
        return ("# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.\n"
                "# TYPE vllm:spec_decode_num_draft_tokens_total counter\n"
                f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {counters["draft"]}.0\n'
                'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="other"} 999.0\n'
                f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {counters["accepted"]}.0\n'
                'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="other"} 555.0\n')
    stream = answer(["a", "b"])

    def chat(h, body, n):
        counters["draft"] += 30  # the server drafts and accepts while it answers this request
        counters["accepted"] += 21
        stream(h, body, n)
    fake.metrics, fake.chat = metrics, chat
    _, done = run(ServerModel(fake.url, "m").connect())
    s = done.speculative
    assert (s.method, s.draft_tokens, s.accepted_tokens) == ("server", 30, 21) and s.acceptance_rate == 0.7


def test_speculative_figures_from_llamacpp_timings(fake):
    fake.chat = answer(["a"], final_extra={"timings": {"draft_n": 10, "draft_n_accepted": 7, "predicted_n": 12}})
    _, done = run(ServerModel(fake.url, "m"))
    s = done.speculative
    assert (s.method, s.draft_tokens, s.accepted_tokens) == ("server", 10, 7)
    assert done.server_timings["predicted_n"] == 12


def test_no_speculative_figures_is_unknown(fake):
    _, done = run(ServerModel(fake.url, "m"))
    assert (done.speculative.method, done.speculative.draft_tokens) == ("unknown", 0)


# ---- end to end: engine and CLI -----------------------------------------------------------------------------
def test_ask_through_a_server(indexed, fake, monkeypatch):
    monkeypatch.setenv("RAGDESK_API_KEY", KEY)
    fake.chat = answer(["The server listens", " on port 8740 [1]."], usage=(321, 12),
                       final_extra={"timings": {"draft_n": 8, "draft_n_accepted": 6}})
    result = CliRunner().invoke(cli, ["ask", "Which port?", "--model", f"{fake.url}#m", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["answer"] == "The server listens on port 8740 [1]." and out["cited"] == [1]
    assert out["status"] == "complete" and out["model"] == "m" and out["device"] == fake.url
    assert out["usage"] == {"prompt_tokens": 321, "completion_tokens": 12} and out["usage_exact"] is True
    assert out["speculative"] == {"method": "server", "accepted_tokens": 6, "draft_tokens": 8}
    assert "8740" in json.dumps(fake.chats()[0]["body"]["messages"])  # the retrieved passage was in the prompt
    assert KEY not in result.output and KEY not in result.stderr
    assert fake.chats()[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_engine_keeps_the_partial_answer_of_a_cut_stream(indexed, fake):
    from assistant.engine import Engine

    def chat(h, body, n):
        h.start_sse()
        h.event(chunk("The server listens"))
        h.cut()
    fake.chat = chat
    engine = Engine(load_settings({"model": f"{fake.url}#m"})).load()
    answer = engine.ask("Which port?")
    assert answer.status == "failed" and answer.finish_reason == "error"
    assert answer.text == "The server listens" and fake.url in answer.error
    assert answer.usage_exact is False and answer.usage.completion_tokens > 0


def test_ask_with_a_refused_port_is_one_line(indexed, closed_port, capsys):
    url = f"http://127.0.0.1:{closed_port}/v1"
    with pytest.raises(SystemExit) as exit_:
        main(["ask", "Which port?", "--model", f"{url}#m", "--json"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"cannot connect to {url}" in lines[0] and "Traceback" not in err


def test_models_url_lists_what_the_server_serves(fake, monkeypatch):
    monkeypatch.setenv("RAGDESK_API_KEY", KEY)
    fake.models = fake.models + [{"id": "small", "object": "model", "owned_by": "test"}]
    result = CliRunner().invoke(cli, ["models", "--url", fake.url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [ln.split() for ln in result.stdout.splitlines() if ln.strip()]
    assert ["m", "2048"] in rows and ["small", "-"] in rows
    result = CliRunner().invoke(cli, ["models", "--url", fake.url, "--json"], catch_exceptions=False)
    assert json.loads(result.stdout) == [{"id": "m", "context_length": 2048},
                                         {"id": "small", "context_length": None}]
    assert fake.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"


def test_models_url_unreachable(closed_port, capsys):
    url = f"http://127.0.0.1:{closed_port}/v1"
    with pytest.raises(SystemExit) as exit_:
        main(["models", "--url", url])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and f"cannot connect to {url}" in err
