"""The served backend: any OpenAI-compatible server (vLLM, llama.cpp's server, TGI, Ollama) as the model,
through the `openai` client's streamed chat completions.

What ragdesk adds around the client: one-line errors that name the URL and the fix (refused connection, 401,
unknown model, timeout); retries only before the first token (the client's own, which end once a stream has
started); cancel hangs up at once (also while the server is silent) and keeps the partial text; an error in
the middle of a stream (a cut connection, an error event, a stalled server, a body that stops without a
finish_reason) ends the answer as failed with its text kept. Token counts use the server's own tokenizer where
it has one (`/tokenize` on vLLM and llama.cpp's server), else a labelled over-estimate; the context length
comes from the server where it says (vLLM's `max_model_len`, llama.cpp's `/props`). Speculative decoding is
the server's: its acceptance figures are read from what it reports (vLLM's `/metrics` counters around each
request, llama.cpp's `timings`) and never made up. The API key is sent as a header and never printed or stored
(nor repeated when a server echoes it in an error).
Not here: the prompt (engine.py), retries after the first token (a half-streamed answer is not replayed).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from retrieval.errors import ModelError

from ..answer import SpeculativeStats, TokenUsage
from ._base import ChatModel, Completion, GenerationConfig, Messages

__all__ = ["ServerModel", "parse_server_spec"]

_URL = re.compile(r"^https?://[^/\s#]+(/[^\s#]*)?$")
SIDE_TIMEOUT_S = 5.0
ESTIMATE_CHARS_PER_TOKEN = 3.0  # English text runs ~4 chars a token; 3 over-counts on purpose (a margin)
_COUNTERS = {"draft": "vllm:spec_decode_num_draft_tokens_total",
             "accepted": "vllm:spec_decode_num_accepted_tokens_total"}


def parse_server_spec(spec: str, base_url: str = "") -> tuple[str, str] | None:
    """(base URL, model name) for `http(s)://HOST:PORT/v1#NAME`, or for a bare NAME when `base_url` is set;
    None when `spec` is not a server model."""
    if spec.startswith(("http://", "https://")):
        url, _, name = spec.partition("#")
        if not _URL.match(url):
            raise ModelError(f"not a server URL: {spec!r}", "write it as http://HOST:PORT/v1#MODEL")
        return url.rstrip("/"), name
    if base_url:
        if not _URL.match(base_url):
            raise ModelError(f"base_url {base_url!r} is not an http(s) URL", "write it as http://HOST:PORT/v1")
        return base_url.rstrip("/"), spec
    return None


def _root(url: str) -> str:
    """The server's root (where vLLM and llama.cpp serve /tokenize and /metrics): the URL without /v1."""
    return re.sub(r"/v1$", "", url)


def _detail(exc: Exception) -> str:
    """The server's own message out of an API error (its JSON body's `message`), else the client's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(getattr(exc, "message", "") or exc)


def _estimate(text: str) -> int:
    return int(len(text) / ESTIMATE_CHARS_PER_TOKEN) + 1


def _metric_sum(text: str, name: str, model: str) -> float | None:
    """Sum of a Prometheus counter over its series (only the series of `model` when they are labelled)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if "model_name=" in head and f'model_name="{model}"' not in head:
            continue
        try:
            total += float(value)
            seen = True
        except ValueError:
            continue
    return total if seen else None


def _hang_up_on_cancel(stream, cancel: threading.Event, ended: threading.Event, poll_s: float = 0.05) -> None:
    """Shut the stream's socket once `cancel` is set: a blocked read returns at once (closing the response
    from another thread would not wake it), and the server sees the client go and stops generating."""
    import socket

    while not ended.wait(poll_s):
        if cancel.is_set():
            try:
                net = stream.response.extensions.get("network_stream")
                net.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            except Exception:  # best effort: the loop still stops at the next chunk
                pass
            return


class ServerModel(ChatModel):
    supports_concurrency = True
    remote = True

    def __init__(self, base_url: str, name: str = "", api_key: str = "", request_timeout: float = 120.0,
                 connect_timeout: float = 10.0, retries: int = 2, context_window: int = 0):
        import httpx2
        import openai

        self.url = base_url.rstrip("/")
        self.name = name
        self.device = self.url
        self.dtype = "server"
        self.context_length = context_window or 4096
        self.token_counts_exact = False
        self._timeout = openai.Timeout(request_timeout, connect=connect_timeout)
        self._request_timeout = request_timeout
        self._tries = retries + 1
        self._secret = api_key  # kept only to scrub it from whatever a server echoes back in an error
        self._client = openai.OpenAI(base_url=self.url, api_key=api_key or "none", max_retries=retries,
                                     timeout=self._timeout)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # /tokenize, /props and /metrics are side requests, best effort: a hung server must not hold an answer
        # up for a whole request_timeout before its own request is even sent
        side = min(request_timeout, SIDE_TIMEOUT_S)
        self._http = httpx2.Client(timeout=httpx2.Timeout(side, connect=min(connect_timeout, side)), headers=headers)
        self._tokenize_url = ""
        self._has_metrics = True
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self._count = lru_cache(maxsize=4096)(self._count_uncached)

    # ---- errors -----------------------------------------------------------------------------------------
    def _error(self, exc: Exception) -> ModelError:
        """One line naming the URL and the fix; never the API key, even where the server echoes it."""
        err = self._classify(exc)
        return ModelError(self._scrub(err.message), self._scrub(err.hint) if err.hint else None)

    def _scrub(self, text: str) -> str:
        text = " ".join(str(text).split())  # one line, whatever the server put in its message
        return text.replace(self._secret, "***") if self._secret else text

    def _classify(self, exc: Exception) -> ModelError:
        import httpx2
        import openai

        url = self.url
        if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
            # the first byte (or, mid-stream, the next chunk) took longer than the read timeout
            retried = self._tries > 1 and isinstance(exc, openai.APITimeoutError)  # the client's retries
            tries = f" ({self._tries} tries)" if retried else ""
            return ModelError(f"{url} did not answer within {self._request_timeout:g} s{tries}",
                              "check the server, or raise RAGDESK_REQUEST_TIMEOUT")
        if isinstance(exc, openai.APIConnectionError):
            return ModelError(f"cannot connect to {url}", "is the server running and the URL right? "
                              f"ragdesk models --url {url} lists what it serves")
        if isinstance(exc, httpx2.TransportError):  # the connection broke after the answer began
            return ModelError(f"the connection to {url} broke mid-answer: {type(exc).__name__}: {exc}",
                              "check the server's log")
        if isinstance(exc, openai.AuthenticationError):
            return ModelError(f"{url} refused the API key ({exc.status_code})",
                              "set RAGDESK_API_KEY to a key this server accepts")
        if isinstance(exc, openai.PermissionDeniedError):
            return ModelError(f"{url} denied access ({exc.status_code})", "check RAGDESK_API_KEY and its rights")
        if isinstance(exc, openai.NotFoundError):
            return ModelError(f"{url} does not serve a model named {self.name!r} ({exc.status_code})",
                              f"use one it serves: ragdesk models --url {url}")
        if isinstance(exc, openai.RateLimitError):
            return ModelError(f"{url} is rate-limiting requests (429) and kept doing so after retries",
                              "lower --concurrency or try again later")
        if isinstance(exc, openai.APIStatusError):
            return ModelError(f"{url} rejected the request ({exc.status_code}): {_detail(exc)[:200]}")
        if isinstance(exc, openai.APIError):  # an error event in the stream: the server gave up mid-answer
            return ModelError(f"{url} failed mid-answer: {_detail(exc)[:200]}", "check the server's log")
        return ModelError(f"{url}: {type(exc).__name__}: {exc}")

    # ---- what the server serves -------------------------------------------------------------------------
    def served_models(self) -> list[dict[str, Any]]:
        """The models the server lists at /v1/models: id, owner and context length where it says (vLLM's
        `max_model_len`; llama.cpp's training context `n_ctx_train`), else None."""
        import openai

        try:
            page = self._client.models.list()
        except openai.NotFoundError:  # every OpenAI-compatible server lists models: the path is wrong
            raise ModelError(f"{self.url}/models is not there (404)",
                             "is the URL right? OpenAI-compatible servers answer at http://HOST:PORT/v1") from None
        except Exception as exc:
            raise self._error(exc) from None
        out = []
        for m in page.data:
            extra = dict(m.model_extra or {})
            ctx = extra.get("max_model_len") or (extra.get("meta") or {}).get("n_ctx_train")
            out.append({"id": m.id, "owned_by": getattr(m, "owned_by", ""), "context_length": ctx,
                        "exact_context": bool(extra.get("max_model_len"))})
        return out

    def connect(self) -> "ServerModel":
        """Check the server answers and serves this model; learn its context length and tokenizer."""
        served = self.served_models()
        ids = [m["id"] for m in served]
        if not self.name:
            if len(ids) != 1:
                raise ModelError(f"{self.url} serves {len(ids)} models ({', '.join(ids) or 'none'}); which one?",
                                 f"name it: --model {self.url}#MODEL")
            self.name = ids[0]
        elif ids and self.name not in ids and self.name + ":latest" not in ids:  # Ollama lists NAME:latest
            raise ModelError(f"{self.url} does not serve a model named {self.name!r}",
                             f"it serves: {', '.join(ids)}")
        info = next((m for m in served if m["id"] in (self.name, self.name + ":latest")), {})
        # llama.cpp lists the training context; the context it runs with (-c) is in /props and may be smaller
        ctx = info.get("context_length")
        if not info.get("exact_context"):
            ctx = self._props_context() or ctx
        if ctx:
            self.context_length = int(ctx)
        self._probe_tokenizer()
        return self

    def _props_context(self) -> int:
        try:
            r = self._http.get(_root(self.url) + "/props")
            settings = r.json().get("default_generation_settings", {}) if r.status_code == 200 else {}
            return int(settings.get("n_ctx") or 0)
        except Exception:
            return 0

    def _probe_tokenizer(self) -> None:
        url = _root(self.url) + "/tokenize"
        try:
            r = self._http.post(url, json={"model": self.name, "prompt": "hello world", "content": "hello world",
                                           "add_special_tokens": False})
            data = r.json() if r.status_code == 200 else {}
        except Exception:
            data = {}
        if isinstance(data, dict) and isinstance(data.get("tokens"), list) and data["tokens"]:
            self._tokenize_url = url
            self.token_counts_exact = True

    # ---- tokens -----------------------------------------------------------------------------------------
    def _count_uncached(self, text: str) -> int:
        if self._tokenize_url:
            try:
                r = self._http.post(self._tokenize_url, json={"model": self.name, "prompt": text, "content": text,
                                                              "add_special_tokens": False})
                if r.status_code == 200:
                    data = r.json()
                    return int(data.get("count") or len(data.get("tokens", [])))
            except Exception:
                pass
        return _estimate(text)

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def count_messages(self, messages: Messages) -> int:
        if self._tokenize_url:  # vLLM renders the chat template itself
            try:
                r = self._http.post(self._tokenize_url, json={"model": self.name, "messages": messages,
                                                              "add_generation_prompt": True})
                n = int(r.json().get("count") or len(r.json().get("tokens", []))) if r.status_code == 200 else 0
                if n > 0:  # llama.cpp's /tokenize takes no messages: it answers [] and the per-text sum is used
                    return n
            except Exception:
                pass
        return self._estimate_messages(messages, self.count_tokens)

    @staticmethod
    def _estimate_messages(messages: Messages, count=None) -> int:
        count = count or _estimate
        return sum(count(m["content"]) + 8 for m in messages) + 8  # the chat template, generously

    # ---- speculative figures ----------------------------------------------------------------------------
    def _spec_counters(self) -> tuple[float, float] | None:
        if not self._has_metrics:
            return None
        try:
            r = self._http.get(_root(self.url) + "/metrics")
            if r.status_code != 200:
                self._has_metrics = False
                return None
            draft = _metric_sum(r.text, _COUNTERS["draft"], self.name)
            accepted = _metric_sum(r.text, _COUNTERS["accepted"], self.name)
        except Exception:
            return None
        if draft is None or accepted is None:
            if _COUNTERS["draft"] not in r.text:  # not even a HELP line: vLLM registers the counters only
                self._has_metrics = False  # when it decodes speculatively, so stop asking
            return None
        return draft, accepted

    # ---- generation -------------------------------------------------------------------------------------
    def stream(self, messages, config: GenerationConfig, cancel=None):
        with self._flight_lock:
            self._in_flight += 1
            overlapped = self._in_flight > 1
        before = self._spec_counters()
        try:
            yield from self._stream(messages, config, cancel, before, overlapped)
        finally:
            with self._flight_lock:
                self._in_flight -= 1

    def _stream(self, messages, config, cancel, before, overlapped):
        import httpx2
        import openai

        # no repetition penalty: ragdesk's own penalises only the answer so far, while vLLM's and llama.cpp's
        # count the prompt too, which punishes quoting the passages (measured: 2 of 6 answers cited against
        # 5 of 6 locally with the same weights); greedy decoding with the server's defaults otherwise
        try:
            stream = self._client.chat.completions.create(
                model=self.name, messages=messages, max_tokens=config.max_new_tokens, temperature=0.0,
                stream=True, stream_options={"include_usage": True})
        except Exception as exc:  # nothing was streamed yet: a one-line error for the user
            raise self._error(exc) from None
        text, finish, error = "", "", ""
        usage, timings = None, {}
        ended = threading.Event()
        if cancel is not None:  # a server busy on a long prompt sends nothing to check the cancel between
            threading.Thread(target=_hang_up_on_cancel, args=(stream, cancel, ended), daemon=True).start()
        try:
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                extra_fields = chunk.model_extra or {}
                if chunk.choices is None and getattr(chunk, "object", "") == "error":
                    # older vLLM streams its error flat, without the {"error": ...} the client recognises
                    finish = "error"
                    error = self._scrub(f"{self.url} failed mid-answer: {extra_fields.get('message', '')}"[:300])
                    break
                if chunk.usage is not None:
                    usage = chunk.usage
                if isinstance(extra_fields.get("timings"), dict):  # llama.cpp's server
                    timings = extra_fields["timings"]
                for choice in chunk.choices or ():
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        text += piece
                        yield piece
                    if choice.finish_reason:
                        finish = "length" if choice.finish_reason == "length" else "stop"
                        # the usage and [DONE] chunks still follow: keep reading, for usage and timings
        except (openai.OpenAIError, httpx2.HTTPError, OSError) as exc:  # cut, timed out or failed mid-stream:
            if cancel is not None and cancel.is_set():  # we hung up ourselves
                finish = "cancelled"
            else:
                finish, error = "error", str(self._error(exc))  # the partial answer is kept, as failed
        except Exception as exc:  # e.g. a garbled chunk the client cannot parse
            finish, error = "error", self._scrub(f"{self.url}: the stream broke: {type(exc).__name__}: {exc}")
        finally:
            ended.set()
            stream.close()
        if not finish and cancel is not None and cancel.is_set():  # (an answer that had finished stays finished)
            finish = "cancelled"
        if not finish:  # every server ends an answer with a finish_reason: without one the body was cut short
            finish, error = "error", f"{self.url}: the stream ended before the server finished the answer"
        exact = usage is not None and finish != "cancelled"
        if usage is not None:
            tokens = TokenUsage(int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))
        elif finish == "error":  # the server is in trouble: estimate here rather than wait on its /tokenize
            tokens = TokenUsage(self._estimate_messages(messages), _estimate(text) if text else 0)
        else:
            tokens = TokenUsage(self.count_messages(messages), self.count_tokens(text) if text else 0)
        yield Completion(text=text, finish_reason=finish, error=error, usage=tokens, usage_exact=exact,
                         speculative=self._speculative(before, timings, overlapped), server_timings=timings)

    def _speculative(self, before, timings: dict, overlapped: bool) -> SpeculativeStats:
        if "draft_n" in timings:  # llama.cpp reports per request
            return SpeculativeStats("server", int(timings.get("draft_n") or 0),
                                    int(timings.get("draft_n_accepted") or 0), 0)
        after = self._spec_counters() if before is not None else None
        if before is None or after is None:
            return SpeculativeStats("unknown", 0, 0, 0)
        with self._flight_lock:
            overlapped = overlapped or self._in_flight > 1
        # counters are server-wide: with other requests in flight they cover those too, and say so
        return SpeculativeStats("server-overlapped" if overlapped else "server", int(after[0] - before[0]),
                                int(after[1] - before[1]), 0)

    def close(self) -> None:
        self._client.close()
        self._http.close()
