"""Metrics with answers worked out by hand: retrieval ranking metrics, refusals, bootstrap intervals, and
the ragas metrics (non-LLM ones, and LLM-judged ones with a fake judge, including parse failures)."""

from __future__ import annotations

import math

import pytest

from evals._metrics import matches, refusal_scores, retrieval_scores
from evals._stats import bootstrap, paired_bootstrap, percentile


def test_matches_by_suffix_or_fragment():
    assert matches("docs/guide/install.md", "guide/install.md")
    assert matches("docs/guide/install.md", "install")
    assert matches("./docs/guide/install.md", "docs/guide/install.md")
    assert matches("docs\\guide\\install.md", "guide/install.md")
    assert not matches("docs/guide/install.md", "accounts.md")
    assert not matches("docs/guide/install.md", "  ")


def test_retrieval_scores_by_hand():
    paths = ["a/x.md", "b/gold1.md", "c/y.md", "d/gold2.md"]
    s = retrieval_scores(paths, ["gold1.md", "gold2.md"], k=4)
    assert s["recall_at_k"] == 1.0
    assert s["mrr"] == 0.5
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert s["ndcg"] == pytest.approx(dcg / idcg)  # 0.6509
    assert s["ndcg"] == pytest.approx(0.65087, abs=1e-4)


def test_retrieval_credits_each_gold_source_once():
    s = retrieval_scores(["g/one.md", "g/one.md", "x.md"], ["one.md", "two.md"], k=3)
    assert s["recall_at_k"] == 0.5
    assert s["mrr"] == 1.0
    assert s["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_retrieval_cutoff_and_misses():
    paths = ["a/x.md", "b/gold1.md"]
    assert retrieval_scores(paths, ["gold1.md"], k=1) == {"recall_at_k": 0.0, "mrr": 0.0, "ndcg": 0.0}
    assert retrieval_scores(paths, [], k=2) == {"recall_at_k": None, "mrr": None, "ndcg": None}
    perfect = retrieval_scores(["gold1.md", "gold2.md"], ["gold1.md", "gold2.md"], k=2)
    assert perfect == {"recall_at_k": 1.0, "mrr": 1.0, "ndcg": pytest.approx(1.0)}


def test_refusal_scores():
    assert refusal_scores(True, unanswerable=True) == {"refusal_rate": 1.0, "false_refusal_rate": None}
    assert refusal_scores(False, unanswerable=True) == {"refusal_rate": 0.0, "false_refusal_rate": None}
    assert refusal_scores(True, unanswerable=False) == {"refusal_rate": None, "false_refusal_rate": 1.0}


def test_bootstrap_interval():
    iv = bootstrap([1.0, 1.0, 1.0])
    assert (iv.mean, iv.lo, iv.hi, iv.n) == (1.0, 1.0, 1.0, 3)
    iv = bootstrap([0.0, 1.0] * 20 + [None, float("nan")])
    assert iv.n == 40 and iv.mean == 0.5
    assert 0.3 < iv.lo < 0.5 < iv.hi < 0.7
    assert bootstrap([0.0, 1.0] * 20).to_dict() == bootstrap([0.0, 1.0] * 20).to_dict()  # deterministic
    assert bootstrap([]).mean is None and bootstrap([None]).n == 0


def test_paired_bootstrap_and_percentiles():
    d = paired_bootstrap([0.5, 0.5, None, 0.2], [0.7, 0.7, 0.9, 0.4])
    assert d.n == 3 and d.mean == pytest.approx(0.2) and d.lo == pytest.approx(0.2)
    assert percentile([1, 2, 3, 4, None], 50) == 2.5
    assert percentile([], 95) is None


# ---- ragas ----------------------------------------------------------------------------------------------------

@pytest.fixture
def ragas_mod():
    from evals import _ragas

    return _ragas


def _embeddings(ragas_mod):
    from retrieval import get_embedder

    return ragas_mod.RetrievalEmbeddings(get_embedder("hashing"))


def test_ragas_metrics_without_llm(ragas_mod):
    emb = _embeddings(ragas_mod)
    metrics = ragas_mod.build_metrics(emb)
    assert [m.name for m in metrics] == ["context_precision", "context_recall", "rouge_l", "string_presence",
                                         "semantic_similarity"]
    gold = "The server listens on port 8740 by default."
    same = ragas_mod.RagasSample("Which port?", gold, gold, [gold, "Blocks live under /var/lib."], [gold],
                                 expect=["PORT 8740"])
    off = ragas_mod.RagasSample("Which port?", "Bananas are yellow.", gold, ["Bananas are yellow fruit."],
                                [gold])
    unanswerable = ragas_mod.RagasSample("Airspeed of a swallow?", "I don't know.", "", [gold], [],
                                         answerable=False)
    r = ragas_mod.score_samples([same, off, unanswerable], metrics)
    assert r[0]["rouge_l"] == {"value": pytest.approx(1.0), "status": "ok", "note": ""}
    assert r[0]["semantic_similarity"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert r[0]["string_presence"]["value"] == 1.0  # case-insensitive
    assert r[0]["context_precision"]["value"] == pytest.approx(1.0)  # the gold passage ranked first
    assert r[0]["context_recall"]["value"] == 1.0
    assert r[1]["rouge_l"]["value"] == 0.0
    assert r[1]["string_presence"]["value"] == 0.0
    assert r[1]["context_recall"]["value"] == 0.0
    assert r[1]["semantic_similarity"]["value"] < 0.5
    assert all(v["status"] == "skipped" and v["value"] is None for v in r[2].values())


def test_context_precision_counts_rank(ragas_mod):
    gold = "An account is locked for 15 minutes after 8 failed sign-ins."
    s = ragas_mod.RagasSample("q", "a", "a", ["Totally unrelated words here.", gold], [gold])
    r = ragas_mod.score_samples([s], ragas_mod.build_metrics(_embeddings(ragas_mod)))
    assert r[0]["context_precision"]["value"] == pytest.approx(0.5)  # relevant passage at rank 2
    assert r[0]["context_recall"]["value"] == 1.0


class _FakeJudge:
    """Canned structured verdicts; `garbage` names response models it answers with unparseable text."""

    def __init__(self, ragas_mod, garbage=()):
        base = ragas_mod.InstructorBaseRagasLLM

        class Judge(base):
            calls = []

            def generate(self, prompt, response_model):
                Judge.calls.append(response_model.__name__)
                name = response_model.__name__
                if name in garbage:
                    raise ragas_mod.JudgeParseError("not JSON")
                data = {"StatementGeneratorOutput": {"statements": ["a", "b"]},
                        "NLIStatementOutput": {"statements": [
                            {"statement": "a", "reason": "r", "verdict": 1},
                            {"statement": "b", "reason": "r", "verdict": 0}]},
                        "AnswerRelevanceOutput": {"question": "Which port does the server use?", "noncommittal": 0},
                        "ContextPrecisionOutput": {"reason": "r", "verdict": 1}}[name]
                return response_model.model_validate(data)

            async def agenerate(self, prompt, response_model):
                return self.generate(prompt, response_model)

        self.judge = Judge()


def test_judged_metrics_with_fake_judge(ragas_mod):
    fake = _FakeJudge(ragas_mod).judge
    judge = ragas_mod.make_judge(fake, settings=None)
    metrics = ragas_mod.build_metrics(_embeddings(ragas_mod), judge)
    names = [m.name for m in metrics]
    assert names[-3:] == ["faithfulness", "answer_relevancy", "llm_context_precision"]
    assert len(set(names)) == len(names)
    s = ragas_mod.RagasSample("Which port does the server use?", "Port 8740 [1].", "Port 8740.",
                              ["The server listens on port 8740."], ["The server listens on port 8740."])
    r = ragas_mod.score_samples([s], metrics)[0]
    assert r["faithfulness"]["value"] == 0.5  # one of two statements supported
    assert r["answer_relevancy"]["value"] == pytest.approx(1.0, abs=1e-6)  # same question back, committal
    assert r["llm_context_precision"]["value"] == pytest.approx(1.0)
    assert judge.calls >= 5 and judge.parse_failures == 0


def test_judge_parse_failures_are_counted_not_scored(ragas_mod):
    from evals._harness import aggregate

    fake = _FakeJudge(ragas_mod, garbage={"NLIStatementOutput"}).judge
    judge = ragas_mod.make_judge(fake, settings=None)
    metrics = ragas_mod.build_metrics(_embeddings(ragas_mod), judge)
    samples = [ragas_mod.RagasSample(f"Question {i}?", "Port 8740.", "Port 8740.", ["port 8740"], ["port 8740"])
               for i in range(3)]
    scored = ragas_mod.score_samples(samples, metrics)
    assert [r["faithfulness"]["status"] for r in scored] == ["parse_failure"] * 3
    assert all(r["faithfulness"]["value"] is None for r in scored)
    assert all(r["llm_context_precision"]["status"] == "ok" for r in scored)
    assert judge.parse_failures == 3
    records = [{"scores": {k: v["value"] for k, v in r.items()}, "score_status": {k: v["status"] for k, v in r.items()},
                "status": "complete", "unanswerable": False} for r in scored]
    summary = aggregate(records)["metrics"]
    assert summary["faithfulness"]["mean"] is None and summary["faithfulness"]["n"] == 0
    assert summary["faithfulness"]["parse_failure"] == 3
    assert summary["llm_context_precision"]["parse_failure"] == 0


def test_parse_structured(ragas_mod):
    from ragas.metrics.collections.context_precision.util import ContextPrecisionOutput

    ok = ragas_mod.parse_structured('Sure!\n```json\n{"reason": "x", "verdict": 1}\n```', ContextPrecisionOutput)
    assert ok.verdict == 1
    assert ragas_mod.parse_structured('{"a": 1} then {"reason": "y", "verdict": 0}', ContextPrecisionOutput).verdict == 0
    with pytest.raises(ragas_mod.JudgeParseError):
        ragas_mod.parse_structured("The context was useful.", ContextPrecisionOutput)
    with pytest.raises(ragas_mod.JudgeParseError, match="does not fit"):
        ragas_mod.parse_structured('{"verdict": "maybe"}', ContextPrecisionOutput)


def test_local_judge_with_a_model_that_cannot_follow_the_schema(ragas_mod):
    from assistant.models import FakeModel

    judge = ragas_mod.make_judge(ragas_mod.LocalJudge(FakeModel(reply="I think it is fine.")), settings=None)
    metrics = [m for m in ragas_mod.build_metrics(_embeddings(ragas_mod), judge) if m.judged]
    s = ragas_mod.RagasSample("Which port?", "Port 8740.", "Port 8740.", ["port 8740"], ["port 8740"])
    r = ragas_mod.score_samples([s], metrics)[0]
    assert {v["status"] for v in r.values()} == {"parse_failure"}
    good = ragas_mod.LocalJudge(FakeModel(reply='{"reason": "fits", "verdict": 1}'))
    from ragas.metrics.collections.context_precision.util import ContextPrecisionOutput

    assert good.generate("prompt", ContextPrecisionOutput).verdict == 1
