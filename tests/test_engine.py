import threading

import pytest

from assistant.answer import Answer, Retrieved, TokenArrived, Turn
from assistant.engine import Engine, attribute_citations, build_messages, cited_numbers, is_refusal
from assistant.models import FakeModel
from assistant.settings import load_settings
from retrieval import Passage
from retrieval.errors import InputError


def passage(i, text):
    return Passage(i, f"docs/p{i}.md", f"P{i}", f"P{i} > Section", 1, 3, "line", text, 0.1)


def test_prompt_has_numbered_passages_question_and_history():
    msgs = build_messages("What port?", [passage(1, "Port 8740."), passage(2, "Quota.")],
                          [Turn("Hi?", "Hello [1].")])
    assert msgs[0]["role"] == "system" and "[1]" in msgs[0]["content"]
    assert msgs[1:3] == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello [1]."}]
    last = msgs[-1]["content"]
    assert "[1] docs/p1.md (P1 > Section)\nPort 8740." in last and "[2] docs/p2.md" in last
    assert last.endswith("Question: What port?")


def test_prompt_fitting_trims_passages_never_the_question():
    count = lambda s: len(s.split())  # noqa: E731
    long = [passage(i, " ".join(f"w{i}_{j}" for j in range(300))) for i in range(1, 5)]
    question = "how many " * 20 + "ports?"
    history = [Turn("old question " * 30, "old answer " * 30)]
    msgs = build_messages(question, long, history, count, budget=500)
    total = sum(count(m["content"]) + 4 for m in msgs)
    assert total <= 500
    assert msgs[-1]["content"].endswith("Question: " + question)
    assert len(msgs) == 2  # the old turn went first
    assert "w1_0" in msgs[-1]["content"]  # the best passage survives (trimmed from the end backwards)
    with pytest.raises(InputError, match="question is too long"):
        build_messages("q " * 600, long, (), count, budget=500)


def test_citation_parsing_and_attribution():
    assert cited_numbers("See [2] and [1, 3]; again [2]. Not [9].", 3) == [2, 1, 3]
    ps = [passage(1, "The server listens on port 8740 by default."), passage(2, "Trash is kept 14 days.")]
    assert attribute_citations("Trash is kept for 14 days.", ps) == [2]
    assert attribute_citations("The capital of Peru is Lima.", ps) == []
    assert is_refusal("I don't know: the documentation does not say.") and not is_refusal("Port 8740 [1].")


def engine_for(indexed, **model_kw):
    return Engine(load_settings(), model=FakeModel(**model_kw), collection=indexed)


def test_stream_events_and_json_contract(indexed):
    events = list(engine_for(indexed).stream("Which port does the server use?"))
    assert isinstance(events[0], Retrieved) and isinstance(events[-1], Answer)
    pieces = [e.text for e in events if isinstance(e, TokenArrived)]
    answer = events[-1]
    assert len(pieces) > 3 and "".join(pieces).strip() == answer.text
    data = answer.to_json()
    assert set(data) >= {"answer", "sources", "usage", "timings", "speculative", "model", "device"}
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert set(data["timings"]) == {"retrieval_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    assert set(data["speculative"]) == {"method", "accepted_tokens", "draft_tokens"}
    assert [s["n"] for s in data["sources"]] == list(range(1, len(answer.sources) + 1))
    assert set(data["sources"][0]) >= {"n", "path", "heading", "lines", "score", "text"}
    assert answer.cited == [1] and answer.citation_mode == "model" and "[1]" in answer.text
    assert data["usage"]["completion_tokens"] == len(answer.token_ids) > 0
    assert answer.cost.input_usd == pytest.approx(answer.usage.prompt_tokens / 1000 * 0.00015)


def test_cancel_keeps_the_partial_answer(indexed):
    cancel = threading.Event()
    engine = engine_for(indexed, reply="one two three four five six seven eight nine ten", delay_s=0.01)
    got = []
    answer = None
    for ev in engine.stream("port?", cancel=cancel):
        if isinstance(ev, TokenArrived):
            got.append(ev.text)
            if len(got) == 3:
                cancel.set()
        elif isinstance(ev, Answer):
            answer = ev
    assert answer.status == "cancelled" and answer.text == "one two three"


def test_generation_error_is_an_answer_not_a_crash(indexed):
    answer = engine_for(indexed, fail=True).ask("port?")
    assert answer.status == "failed" and "told to fail" in answer.error


def test_follow_up_uses_the_conversation(indexed):
    engine = engine_for(indexed)
    engine.ask("And the lockout?", history=[Turn("Which port?", "Port 8740 [1].")])
    assert "Which port?" in engine.model.last_prompt and "Port 8740 [1]." in engine.model.last_prompt


def test_empty_question(indexed):
    with pytest.raises(InputError, match="empty"):
        list(engine_for(indexed).stream("  "))


def test_real_pipeline_on_tiny_model_is_lossless(indexed, tiny_model, monkeypatch):
    """The whole pipeline with a real transformers model: prompt lookup and off give the same tokens."""
    out = {}
    for method in ("off", "prompt-lookup"):
        monkeypatch.setenv("RAGDESK_SPECULATIVE", method)
        monkeypatch.setenv("RAGDESK_MAX_NEW_TOKENS", "40")
        monkeypatch.setenv("RAGDESK_DTYPE", "float32")
        monkeypatch.setenv("RAGDESK_MODEL", str(tiny_model))
        engine = Engine(load_settings(), collection=indexed).load()
        out[method] = engine.ask("Which port does the server listen on?")
    assert out["off"].token_ids == out["prompt-lookup"].token_ids and len(out["off"].token_ids) > 0
    assert out["prompt-lookup"].speculative.draft_tokens > 0 and out["off"].speculative.method == "off"
