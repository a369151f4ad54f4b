"""Answer-quality metrics through ragas 0.4, offline: the metric objects, the embeddings, the judges.

Always scored (no language model): ragas' non-LLM context precision and recall (gold passages vs retrieved,
by string similarity), ROUGE-L, string presence and semantic similarity (the bundled MiniLM through
`ragas.embeddings.HuggingFaceEmbeddings`, or the collection's own embedder when that is not MiniLM). With a
judge: faithfulness, answer relevancy and LLM context precision. A judge is any ragdesk model, resolved as
`--model` is (`ModelJudge`: a preset or folder, or an OpenAI-compatible server `URL#MODEL`), or any
`InstructorBaseRagasLLM`. Every judge call goes through `CountingJudge`, which turns unparseable output into
`JudgeParseError` so the harness can count it per metric instead of dropping the sample or scoring it.

Importing this module imports ragas; keep it out of CLI start-up. Not here: retrieval metrics, storage.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# ragas sends usage analytics unless told not to; ragdesk makes no network call it was not asked for. This is
# the one place outside settings.py that touches os.environ (setdefault: a user's explicit choice stands).
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

try:
    import ragas._analytics as _ragas_analytics
    from ragas.dataset_schema import SingleTurnSample
    from ragas.embeddings.base import BaseRagasEmbedding
    from ragas.llms.base import InstructorBaseRagasLLM
    from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
    from ragas.metrics._context_recall import NonLLMContextRecall
    from ragas.metrics.collections import (AnswerRelevancy, ContextPrecisionWithReference, Faithfulness, RougeScore,
                                           SemanticSimilarity, StringPresence)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from retrieval.errors import RagdeskError

    raise RagdeskError(f"ragdesk eval needs ragas ({exc.name or exc} is missing)",
                       "pip install 'ragdesk[eval]'") from None

__all__ = ["CountingJudge", "JudgeParseError", "LocalJudge", "ModelJudge", "RagasSample", "RetrievalEmbeddings",
           "build_metrics", "make_embeddings", "make_judge", "score_samples"]


def keep_state_in(home: Path) -> None:
    """ragas writes an anonymous id file (uuid.json) into the user's data dir when it builds an analytics
    event, even with tracking off; point that at RAGDESK_HOME/ragas so nothing lands outside ragdesk's home."""
    target = str(Path(home) / "ragas")
    _ragas_analytics.user_data_dir = lambda *args, **kwargs: target


class JudgeParseError(Exception):
    """The judge answered, but not with output the metric's schema accepts."""


# ---- embeddings ----------------------------------------------------------------------------------------------

class RetrievalEmbeddings(BaseRagasEmbedding):
    """Any ragdesk `Embedder` as ragas' modern embeddings (used when the embedder is not MiniLM, e.g. the
    `hashing` embedder of fast tests)."""

    def __init__(self, embedder):
        super().__init__()
        self.embedder = embedder

    def embed_text(self, text: str, **kwargs: Any) -> list[float]:
        return [float(v) for v in self.embedder.embed([text])[0]]

    def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        return [[float(v) for v in row] for row in self.embedder.embed(list(texts))]

    async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
        return self.embed_text(text)

    async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        return self.embed_texts(texts)


def make_embeddings(embedder_name: str):
    """MiniLM (or a sentence-transformers folder) through ragas' HuggingFaceEmbeddings; anything else through
    ragdesk's own embedder registry."""
    from retrieval import get_embedder
    from retrieval._embedders import minilm_path

    if embedder_name == "minilm" or Path(embedder_name).expanduser().is_dir():
        from ragas.embeddings import HuggingFaceEmbeddings

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # same guard as retrieval's embedder: a folder needs no hub
        path = minilm_path() if embedder_name == "minilm" else str(Path(embedder_name).expanduser())
        return HuggingFaceEmbeddings(model=path, device="cpu")
    return RetrievalEmbeddings(get_embedder(embedder_name))


# ---- judges --------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_structured(text: str, response_model):
    """The first JSON object in `text` that validates as `response_model`, else JudgeParseError."""
    from pydantic import ValidationError

    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    problem = "no JSON object in the output"
    for chunk in candidates:
        for start in [m.start() for m in re.finditer(r"[{\[]", chunk)][:20]:
            try:
                obj, _ = decoder.raw_decode(chunk[start:])
            except json.JSONDecodeError:
                continue
            try:
                return response_model.model_validate(obj)
            except ValidationError as exc:
                problem = f"JSON does not fit {response_model.__name__}: {exc.errors()[0]['msg']}"
    raise JudgeParseError(f"{problem}; output began {text[:80]!r}")


class ModelJudge(InstructorBaseRagasLLM):
    """Any ragdesk `ChatModel` (local, or a server through the same resolver as `--model`) as a ragas judge:
    greedy decoding of the ragas prompt, JSON parsed and validated here. Small local models often break the
    schema; that shows up as parse failures."""

    def __init__(self, model, max_new_tokens: int = 256):
        self.model = model
        self.name = getattr(model, "name", "local")
        self.max_new_tokens = max_new_tokens
        # one local model generates one answer at a time; a server batches concurrent requests
        self.concurrency = 4 if getattr(model, "supports_concurrency", False) else 1

    def complete(self, prompt: str) -> str:
        from assistant.models import GenerationConfig

        done = self.model.complete([{"role": "user", "content": prompt}],
                                   GenerationConfig(self.max_new_tokens, 1.0))
        if done.finish_reason == "error":
            raise RuntimeError(done.error)
        return done.text

    def generate(self, prompt: str, response_model):
        return parse_structured(self.complete(prompt), response_model)

    async def agenerate(self, prompt: str, response_model):
        if self.concurrency > 1:
            return await asyncio.to_thread(self.generate, prompt, response_model)
        return self.generate(prompt, response_model)


LocalJudge = ModelJudge  # the name earlier runs and tests use


def _is_parse_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    parse_types: tuple[type, ...] = (JudgeParseError, ValidationError, json.JSONDecodeError)
    try:
        from instructor.core.exceptions import ResponseParsingError

        parse_types += (ResponseParsingError,)
    except ImportError:  # pragma: no cover
        pass
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, parse_types):
            return True
        if getattr(exc, "failed_attempts", None):  # instructor gave up after re-asking on parse errors
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class CountingJudge(InstructorBaseRagasLLM):
    """Wraps a judge: counts calls and turns every kind of unparseable output into JudgeParseError."""

    def __init__(self, inner: InstructorBaseRagasLLM, label: str = ""):
        self.inner = inner
        self.label = label or type(inner).__name__
        self.concurrency = getattr(inner, "concurrency", 4)
        self.calls = 0
        self.parse_failures = 0

    def _fail(self, exc: Exception):
        if _is_parse_error(exc):
            self.parse_failures += 1
            raise JudgeParseError(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__) from exc
        raise exc

    def generate(self, prompt: str, response_model):
        self.calls += 1
        try:
            return self.inner.generate(prompt, response_model)
        except Exception as exc:
            self._fail(exc)

    async def agenerate(self, prompt: str, response_model):
        self.calls += 1
        try:
            return await self.inner.agenerate(prompt, response_model)
        except Exception as exc:
            self._fail(exc)


def make_judge(spec: Any, settings, reuse=None) -> CountingJudge:
    """A counting judge from `--judge`: an `InstructorBaseRagasLLM`, or a model spec resolved exactly as
    `--model` is (preset, folder, `.gguf`, `URL#MODEL`), reusing `reuse` when it is that model. A server
    judge is not contacted until the first judgement, so an unreachable one marks scores as errors."""
    if isinstance(spec, CountingJudge):
        return spec
    if isinstance(spec, InstructorBaseRagasLLM):
        return CountingJudge(spec)
    spec = str(spec)
    from assistant.models import load_model, server_model

    served = server_model(spec, settings)
    if served is not None:
        return CountingJudge(ModelJudge(served), label=spec)
    if reuse is not None and getattr(reuse, "name", None) == spec:
        model = reuse
    else:
        model = load_model(spec, settings)
    return CountingJudge(ModelJudge(model), label=spec)


# ---- metrics -------------------------------------------------------------------------------------------------

@dataclass
class RagasSample:
    question: str
    answer: str
    reference: str
    contexts: list[str]
    reference_contexts: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)
    answerable: bool = True


@dataclass
class _Metric:
    name: str
    metric: Any
    applies: Callable[[RagasSample], bool]
    call: Callable[[Any, RagasSample], Any]  # coroutine returning a float
    judged: bool = False


async def _legacy(metric, s: RagasSample) -> float:
    sample = SingleTurnSample(retrieved_contexts=s.contexts, reference_contexts=s.reference_contexts)
    return float(await metric.single_turn_ascore(sample))


async def _presence(metric, s: RagasSample) -> float:
    # case-insensitive: "Port 8740" answers a question whose expected text is "port 8740"
    wanted = s.expect or [s.reference]
    hits = [(await metric.ascore(reference=w.lower(), response=s.answer.lower())).value for w in wanted]
    return float(sum(hits) / len(hits))


def build_metrics(embeddings, judge: CountingJudge | None = None, strictness: int | None = None) -> list[_Metric]:
    """The metric list; names are ragdesk's (METRICS) and unique, so no score overwrites another."""
    has_refs = lambda s: s.answerable and bool(s.contexts) and bool(s.reference_contexts)  # noqa: E731
    answerable = lambda s: s.answerable and bool(s.reference)  # noqa: E731
    judged_answer = lambda s: s.answerable and bool(s.answer.strip()) and bool(s.contexts)  # noqa: E731
    out = [
        _Metric("context_precision", NonLLMContextPrecisionWithReference(), has_refs, _legacy),
        _Metric("context_recall", NonLLMContextRecall(), has_refs, _legacy),
        _Metric("rouge_l", RougeScore(name="rouge_l", rouge_type="rougeL"), answerable,
                lambda m, s: _value(m.ascore(reference=s.reference, response=s.answer))),
        _Metric("string_presence", StringPresence(name="string_presence"), answerable, _presence),
        _Metric("semantic_similarity", SemanticSimilarity(embeddings=embeddings, name="semantic_similarity"),
                answerable, lambda m, s: _value(m.ascore(reference=s.reference, response=s.answer))),
    ]
    if judge is not None:
        k = strictness or (1 if (isinstance(judge.inner, ModelJudge) and judge.inner.concurrency == 1) else 3)
        out += [
            _Metric("faithfulness", Faithfulness(llm=judge, name="faithfulness"), judged_answer,
                    lambda m, s: _value(m.ascore(user_input=s.question, response=s.answer,
                                                 retrieved_contexts=s.contexts)), judged=True),
            _Metric("answer_relevancy", AnswerRelevancy(llm=judge, embeddings=embeddings, name="answer_relevancy",
                                                        strictness=k), judged_answer,
                    lambda m, s: _value(m.ascore(user_input=s.question, response=s.answer)), judged=True),
            _Metric("llm_context_precision", ContextPrecisionWithReference(llm=judge, name="llm_context_precision"),
                    lambda s: answerable(s) and bool(s.contexts),
                    lambda m, s: _value(m.ascore(user_input=s.question, reference=s.reference,
                                                 retrieved_contexts=s.contexts)), judged=True),
        ]
    names = [m.name for m in out]
    if len(set(names)) != len(names):  # ragas keys results by name: a duplicate would overwrite silently
        raise ValueError(f"duplicate metric names: {names}")
    return out


async def _value(coro) -> float:
    return float((await coro).value)


def score_samples(samples: list[RagasSample], metrics: list[_Metric],
                  progress: Callable[[int], None] | None = None) -> list[dict[str, dict]]:
    """Per sample: {metric: {"value": float|None, "status": ok|skipped|undefined|parse_failure|error,
    "note": str}}. A judge that cannot be parsed never becomes a score."""
    progress = progress or (lambda n: None)

    async def one(m: _Metric, s: RagasSample, gate: asyncio.Semaphore) -> dict:
        if not m.applies(s):
            return {"value": None, "status": "skipped", "note": ""}
        try:
            async with gate:
                value = await m.call(m.metric, s)
        except JudgeParseError as exc:
            return {"value": None, "status": "parse_failure", "note": str(exc)[:200]}
        except Exception as exc:  # a broken metric or judge marks this score, not the whole run
            return {"value": None, "status": "error", "note": f"{type(exc).__name__}: {exc}"[:200]}
        finally:
            progress(1)
        if value is None or math.isnan(value):
            return {"value": None, "status": "undefined", "note": "the metric returned NaN"}
        return {"value": value, "status": "ok", "note": ""}

    async def run_all() -> list[dict[str, dict]]:
        plain = asyncio.Semaphore(1)
        judged = [m for m in metrics if m.judged]
        jgate = asyncio.Semaphore(max(1, getattr(judged[0].metric.llm, "concurrency", 4))) if judged else plain
        results: list[dict[str, dict]] = [{} for _ in samples]
        for m in metrics:
            if m.judged:
                continue
            for i, s in enumerate(samples):
                results[i][m.name] = await one(m, s, plain)
        tasks = [(i, m, one(m, s, jgate)) for m in judged for i, s in enumerate(samples)]
        values = await asyncio.gather(*(t[2] for t in tasks))
        for (i, m, _), v in zip(tasks, values):
            results[i][m.name] = v
        return results

    return asyncio.run(run_all())
