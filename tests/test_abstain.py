"""Abstention from retrieval evidence: the fit, the stored thresholds, the engine declining without calling
the model, the setting that turns it off, `ask --json` saying why, and calibrate's errors on bad input."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from assistant.answer import Answer, TokenArrived
from assistant.cli import cli, main
from assistant.engine import REFUSAL, Engine, is_refusal
from assistant.models import FakeModel
from assistant.settings import load_settings
from evals._calibrate import fit_thresholds
from retrieval import AbstainRule, Collection, get_embedder
from retrieval.errors import ConfigError

ON_TOPIC = [
    ("port", "Which port does the server listen on?", "Port 8740."),
    ("lockout", "How long is an account locked after failed sign-ins?", "15 minutes."),
    ("release", "Which version fixed the sync conflict bug TP-2002?", "Version 3.4.2."),
    ("storage", "Where do the blocks of Tidepool live?", "Under /var/lib/tidepool/blocks."),
    ("totp", "Does two-factor TOTP work in every edition?", "Yes."),
]
OFF_TOPIC = ["What is the airspeed of an unladen swallow?", "Who painted the Mona Lisa?",
             "How tall is Mount Everest?"]


def write_suite(path, on=ON_TOPIC, off=OFF_TOPIC):
    lines = [{"id": i, "question": q, "answer": a} for i, q, a in on]
    lines += [{"id": f"off{n}", "question": q, "unanswerable": True} for n, q in enumerate(off)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def suite(tmp_path):
    return write_suite(tmp_path / "suite.jsonl")


def calibrate(*args):
    return CliRunner().invoke(cli, ["eval", "calibrate", *args], catch_exceptions=False)


def test_fit_picks_thresholds_between_the_classes_and_keeps_the_budget():
    # answerable: strong on either side; unanswerable: weak on both, one of them close to an answerable one
    dense = [0.80, 0.75, 0.30, 0.70, 0.20, 0.25, 0.31]
    bm25 = [2.0, 9.0, 12.0, 8.0, 0.0, 1.0, 3.0]
    unans = [False, False, False, False, True, True, True]
    a, b = fit_thresholds(dense, bm25, unans, 0.0)
    # every unanswerable question is refused, no answerable one; thresholds sit halfway between neighbours
    assert [d < a and s < b for d, s in zip(dense, bm25)] == unans
    assert a == pytest.approx((0.31 + 0.70) / 2) and b == pytest.approx((3.0 + 8.0) / 2)
    # an unanswerable question stronger than every answerable one on both sides cannot be refused for free
    a, b = fit_thresholds([0.5, 0.9], [5.0, 20.0], [False, True], 0.0)
    assert (a, b) == (-math.inf, -math.inf)
    # with a budget of one false refusal in two answerable questions it can
    dense, bm25 = [0.5, 0.95, 0.9], [5.0, 4.0, 20.0]
    a, b = fit_thresholds(dense, bm25, [False, False, True], 0.5)
    assert [d < a and s < b for d, s in zip(dense, bm25)] == [True, False, True]
    assert fit_thresholds(dense, bm25, [False, False, True], 0.49) == (-math.inf, -math.inf)


def test_calibrate_fits_stores_and_the_thresholds_survive_reopening(indexed, suite):
    result = calibrate(str(suite), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["stored"] is True
    assert out["train"]["refused"] == 3 and out["train"]["false_refusals"] == 0
    assert out["train"]["refusal_rate"]["mean"] == 1.0 and out["train"]["false_refusal_rate"]["mean"] == 0.0
    assert out["cv"]["folds"] == 3 and out["cv"]["unanswerable"] == 3
    indexed.close()
    reopened = Collection(indexed.root, get_embedder("hashing"), create=False)
    rule = reopened.abstain_rule()
    assert rule.thresholds() == out["thresholds"] and rule.suite_digest == out["suite_digest"]
    assert rule.collection_identity == reopened.identity()
    # every off-topic question falls under the stored rule, no on-topic one
    assert [rule.abstains(reopened.evidence(q)) for q in OFF_TOPIC] == [True] * 3
    assert not any(rule.abstains(reopened.evidence(q)) for _, q, _ in ON_TOPIC)
    # the human table names the rule and both sets of figures; --clear removes it
    text = calibrate(str(suite), "--dry-run").output
    assert "rule: abstain when best dense similarity <" in text and "3-fold" in text and "(3/3)" in text
    assert "not stored" in text
    assert calibrate("--clear").exit_code == 0
    assert Collection(indexed.root, get_embedder("hashing"), create=False).abstain_rule() is None


def test_search_evidence_is_the_best_raw_scores(indexed):
    q = "Which port does the server listen on?"
    passages, ev = indexed.search_with_evidence(q, k=2)
    assert [p.chunk_id for p in passages] == [p.chunk_id for p in indexed.search(q, k=2)]
    assert ev.dense == pytest.approx(indexed.dense_ranking(q, 1)[0][1])
    assert ev.bm25 == pytest.approx(indexed.bm25_ranking(q, 1)[0][1]) and ev.bm25 > 0
    assert indexed.evidence(q) == ev
    # the side a mode does not search is measured anyway: the rule reads both
    assert indexed.search_with_evidence(q, k=2, mode="bm25")[1] == pytest.approx(ev)
    assert indexed.evidence("airspeed unladen swallow").bm25 == 0.0  # no word of it is in the documents


def fitted(indexed, suite):
    assert calibrate(str(suite)).exit_code == 0
    return indexed.abstain_rule()


def test_off_topic_question_abstains_without_calling_the_model(indexed, suite):
    rule = fitted(indexed, suite)
    model = FakeModel()
    engine = Engine(load_settings(), model=model, collection=indexed)
    events = list(engine.stream(OFF_TOPIC[0]))
    answer = events[-1]
    assert isinstance(answer, Answer) and model.prompts == []
    assert answer.text == REFUSAL + " The closest passages are [1], [2], [3] and [4]." and is_refusal(answer.text)
    assert [e.text for e in events if isinstance(e, TokenArrived)] == [answer.text]  # ask and chat show it
    assert len(answer.sources) == 4 and answer.status == "complete" and answer.finish_reason == "abstained"
    assert answer.usage.completion_tokens == 0 and answer.cited == []
    why = answer.to_json()["abstained"]
    assert why["evidence"]["dense"] < rule.dense and why["evidence"]["bm25"] < rule.bm25
    assert why["thresholds"] == rule.thresholds() and why["fitted_on"]["suite_digest"] == rule.suite_digest
    assert "below the collection's thresholds" in why["reason"]
    # an on-topic question is answered by the model, and its JSON has no abstention
    answer = engine.ask(ON_TOPIC[0][1])
    assert len(model.prompts) == 1 and "8740" in answer.text and "abstained" not in answer.to_json()


def test_no_thresholds_or_the_setting_off_means_the_model_answers(indexed, suite, monkeypatch):
    model = FakeModel()
    Engine(load_settings(), model=model, collection=indexed).ask(OFF_TOPIC[0])
    assert len(model.prompts) == 1  # nothing fitted yet: no abstention
    fitted(indexed, suite)
    monkeypatch.setenv("RAGDESK_ABSTAIN", "off")
    answer = Engine(load_settings(), model=model, collection=indexed).ask(OFF_TOPIC[0])
    assert len(model.prompts) == 2 and answer.abstained is None
    monkeypatch.setenv("RAGDESK_ABSTAIN", "sometimes")
    with pytest.raises(ConfigError, match="abstain='sometimes'"):
        Engine(load_settings(), model=model, collection=indexed).ask(OFF_TOPIC[0])


def test_ask_json_says_why(indexed, suite):
    fitted(indexed, suite)
    result = CliRunner().invoke(cli, ["ask", OFF_TOPIC[1], "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["answer"].startswith(REFUSAL) and out["finish_reason"] == "abstained"
    assert set(out["abstained"]) == {"reason", "evidence", "thresholds", "fitted_on"}
    assert len(out["sources"]) == 4
    # without --json it reads like any answer: the text, then the numbered sources
    text = CliRunner().invoke(cli, ["ask", OFF_TOPIC[1]], catch_exceptions=False).stdout
    assert text.startswith(REFUSAL + " The closest passages are [1]") and "\n [4] " in text


@pytest.mark.parametrize("make, args, message", [
    (lambda p: write_suite(p, off=[]), [], "has no unanswerable question"),
    (lambda p: write_suite(p, on=[]), [], "has only unanswerable questions"),
    (lambda p: p.write_text("not json\n"), [], "has no usable question"),
    (lambda p: write_suite(p), ["--max-false-refusal", "1.5"], "is not a share"),
    (lambda p: write_suite(p), ["--folds", "1"], "must be at least 2"),
    (lambda p: write_suite(p), ["--collection", "nosuch"], "collection 'nosuch' has no index yet"),
    (lambda p: None, [], "suite file not found"),
])
def test_calibrate_bad_input_is_one_line(indexed, tmp_path, capsys, make, args, message):
    path = tmp_path / "bad.jsonl"
    make(path)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "calibrate", str(path), *args])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert indexed.abstain_rule() is None  # nothing stored on a failed fit


def test_calibrate_without_a_suite_says_how(indexed, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "calibrate"])
    assert "calibrate needs a SUITE" in capsys.readouterr().err


def test_unreadable_stored_rule_is_a_config_error(indexed):
    from retrieval._store import set_meta

    set_meta(indexed.db, "abstain_rule", "{not json")
    with pytest.raises(ConfigError, match="refit them"):
        indexed.abstain_rule()
    rule = AbstainRule(0.5, math.inf)
    indexed.set_abstain_rule(rule)
    assert indexed.abstain_rule().bm25 == math.inf and indexed.abstain_rule().thresholds()["bm25"] == "inf"
