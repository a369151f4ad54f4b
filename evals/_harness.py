"""Running a suite: every question through `Engine.stream` (the path `ask` uses), then every metric, then
one stored run.

ragas is imported (and its embeddings loaded) on a background thread while the model answers, so the
harness adds little beyond generation; the time spent inside `Engine.stream` and outside it are both recorded
in the run (`harness`). Not here: the command line (`cli.py`), the metric definitions (`_metrics.py`,
`_ragas.py`), the HTML report.
"""

from __future__ import annotations

import json
import platform
import re
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from retrieval.errors import RagdeskError

from ._metrics import METRICS, matches, refusal_scores, retrieval_scores
from ._runs import RunStore
from ._stats import bootstrap, percentile
from ._suite import SuiteItem, suite_digest

__all__ = ["aggregate", "gold_passages", "run_suite"]

Progress = Callable[[str, int, int], None]  # (stage, done, total)
LATENCY = ("ttft_ms", "total_ms", "retrieval_ms", "tokens_per_s")
COST = ("prompt_tokens", "completion_tokens", "cost_usd")
_PACKAGES = ("ragdesk", "torch", "transformers", "sentence-transformers", "faiss-cpu", "sqlite-utils", "numpy",
             "ragas", "instructor", "rouge_score", "rapidfuzz", "openai")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


_WORD = re.compile(r"\w+")


def gold_passages(collection, sources: list[str], reference: str, cache: dict | None = None) -> list[str]:
    """For each gold source, the chunk of a matching document that shares most words with the reference
    answer: the 'reference contexts' ragas' non-LLM context metrics compare retrieved passages against."""
    cache = {} if cache is None else cache
    ref_words = set(_WORD.findall(reference.lower()))
    out: list[str] = []
    for frag in sources:
        if frag not in cache:
            needle = frag.replace("\\", "/").removeprefix("./")
            rows = collection.db.execute(
                "SELECT d.path, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "WHERE instr(d.path, ?) > 0 ORDER BY d.path, c.ord", [needle]).fetchall()
            cache[frag] = [(text, set(_WORD.findall(text.lower()))) for path, text in rows if matches(path, frag)]
        best, best_score = None, -1.0
        for text, words in cache[frag]:
            score = len(ref_words & words) / (len(ref_words) or 1)
            if score > best_score:
                best, best_score = text, score
        if best is not None and best not in out:
            out.append(best)
    return out


class _RagasLoader(threading.Thread):
    """Imports ragas (seconds of langchain and friends) while the model answers. It only imports: loading
    weights on two threads at once races inside transformers (meta-device initialisation), so the
    embeddings are built on the main thread afterwards."""

    def __init__(self, settings):
        super().__init__(daemon=True, name="ragas-import")
        self.settings = settings
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from . import _ragas

            _ragas.keep_state_in(self.settings.home_path)
        except BaseException as exc:  # re-raised in the main thread
            self.error = exc

    def wait(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def run_suite(settings, items: list[SuiteItem], suite_path: Path | str, *, judge: Any = None, engine=None,
              progress: Progress | None = None, say: Callable[[str], None] | None = None, label: str = "",
              store: RunStore | None = None) -> tuple[int, dict, list[dict]]:
    """Answer, score and store; returns (run id, run record, samples)."""
    from assistant.engine import Engine, is_refusal
    from assistant.answer import Answer

    progress = progress or (lambda stage, done, total: None)
    say = say or (lambda msg: None)
    t_start = time.perf_counter()
    if engine is None:
        engine = Engine(settings)
    engine.load(progress=say)
    t_loaded = time.perf_counter()
    loader = _RagasLoader(settings)  # after loading: see _RagasLoader
    loader.start()

    concurrency = max(1, settings.concurrency)
    if concurrency > 1 and not engine.model.supports_concurrency:
        say(f"note: {engine.model_name} answers one question at a time; --concurrency pays off against a server")
    answers: list = [None] * len(items)
    stream_times = [0.0] * len(items)

    def answer_one(n: int) -> None:
        item = items[n]
        t0 = time.perf_counter()
        try:
            answers[n] = engine.ask(item.question)
        except RagdeskError as exc:  # e.g. a question too long for the context: this sample fails
            answers[n] = Answer(question=item.question, status="failed", error=str(exc), model=engine.model_name)
        stream_times[n] = time.perf_counter() - t0

    t_loop = time.perf_counter()
    if concurrency == 1:
        for n in range(len(items)):
            progress("answer", n, len(items))
            answer_one(n)
    else:  # N questions in flight: a server batches them (continuous batching); samples keep suite order
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
            futures = [pool.submit(answer_one, n) for n in range(len(items))]
            for done_n, fut in enumerate(as_completed(futures), 1):
                fut.result()
                progress("answer", done_n, len(items))
    loop_s = time.perf_counter() - t_loop
    # with concurrency, time inside Engine.stream overlaps: the wall time of the loop is what it cost
    stream_s = sum(stream_times) if concurrency == 1 else loop_s
    samples: list[dict] = [_sample_record(item, answer, is_refusal(answer.text), settings.top_k)
                           for item, answer in zip(items, answers)]
    out_tokens = sum(a.usage.completion_tokens for a in answers)
    throughput = {"concurrency": concurrency, "answers_per_s": len(items) / loop_s if loop_s else 0.0,
                  "tokens_per_s": out_tokens / loop_s if loop_s else 0.0, "wall_s": loop_s,
                  "completion_tokens": out_tokens}
    progress("answer", len(items), len(items))
    t_answered = time.perf_counter()

    loader.wait()
    t_ragas_ready = time.perf_counter()
    from . import _ragas

    embeddings = _ragas.make_embeddings(settings.embedder)

    counting = _ragas.make_judge(judge, settings, reuse=engine.model) if judge is not None else None
    metrics = _ragas.build_metrics(embeddings, counting)
    ref_cache: dict = {}
    ragas_samples = []
    for item, rec in zip(items, samples):
        rec["reference_contexts"] = (gold_passages(engine.collection, item.sources, item.reference, ref_cache)
                                     if not item.unanswerable else [])
        ragas_samples.append(_ragas.RagasSample(item.question, rec["answer"], item.reference,
                                                [c["text"] for c in rec["contexts"]], rec["reference_contexts"],
                                                item.expect, not item.unanswerable))
    total_scores = sum(1 for m in metrics for s in ragas_samples if m.applies(s))
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress("score", done[0], total_scores)

    scored = _ragas.score_samples(ragas_samples, metrics, tick)
    for rec, per in zip(samples, scored):
        for name, res in per.items():
            rec["scores"][name] = res["value"]
            rec["score_status"][name] = res["status"]
            if res["note"]:
                rec["score_notes"][name] = res["note"]
        rec.pop("reference_contexts", None)
    t_scored = time.perf_counter()

    summary = aggregate(samples)
    summary["judge_calls"] = counting.calls if counting else 0
    summary["judge_parse_failures"] = counting.parse_failures if counting else 0
    summary["throughput"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in throughput.items()}
    coll = engine.collection
    harness = {"load_s": t_loaded - t_start, "stream_s": stream_s, "answer_loop_s": t_answered - t_loaded,
               "ragas_wait_s": t_ragas_ready - t_answered, "scoring_s": t_scored - t_ragas_ready}  # incl. embeddings
    run = {"suite": str(suite_path), "suite_sha": suite_digest(suite_path), "n_samples": len(samples),
           "model": engine.model_name, "adapter": settings.adapter, "speculative": settings.speculative,
           "judge": getattr(counting, "label", "") if counting else "", "collection": settings.collection,
           "collection_identity": coll.identity(), "index_stats": coll.stats(), "config": settings.to_dict(),
           "versions": library_versions() | {"device": engine.device}, "summary": summary, "harness": harness,
           "label": label}
    store = store or RunStore(settings.evals_db)
    t_store = time.perf_counter()
    run_id = store.save(run, samples)
    t_end = time.perf_counter()
    harness.update(store_s=t_end - t_store, total_s=t_end - t_start)
    harness["overhead_s"] = harness["total_s"] - stream_s  # everything not inside Engine.stream
    harness["overhead_excl_load_s"] = harness["overhead_s"] - harness["load_s"]
    harness["overhead_pct"] = 100 * harness["overhead_s"] / harness["total_s"]
    harness["overhead_excl_load_pct"] = 100 * harness["overhead_excl_load_s"] / harness["total_s"]
    harness = {k: round(v, 4) for k, v in harness.items()}
    store.db["runs"].update(run_id, {"harness": json.dumps(harness)})
    run["harness"] = harness
    run["id"] = run_id
    return run_id, run, samples


def _sample_record(item: SuiteItem, answer, declined: bool, k: int) -> dict:
    paths = [p.path for p in answer.sources]
    scores: dict[str, float | None] = {}
    scores.update(retrieval_scores(paths, item.sources, k) if not item.unanswerable else
                  {"recall_at_k": None, "mrr": None, "ndcg": None})
    scores.update(refusal_scores(declined, item.unanswerable))
    t, u, c = answer.timings, answer.usage, answer.cost
    scores.update(ttft_ms=t.ttft_ms, total_ms=t.total_ms, retrieval_ms=t.retrieval_ms,
                  tokens_per_s=t.tokens_per_s if u.completion_tokens > 1 else None,
                  prompt_tokens=float(u.prompt_tokens), completion_tokens=float(u.completion_tokens),
                  cost_usd=c.tokens_usd + c.device_usd)
    return {
        "sample_id": item.id, "question": item.question, "reference": item.reference,
        "unanswerable": item.unanswerable, "gold_sources": item.sources, "expect": item.expect,
        "answer": answer.text, "contexts": [p.to_source(i + 1) for i, p in enumerate(answer.sources)],
        "status": answer.status, "error": answer.error, "declined": declined,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens},
        "timings": {"retrieval_ms": t.retrieval_ms, "ttft_ms": t.ttft_ms, "total_ms": t.total_ms,
                    "tokens_per_s": t.tokens_per_s, "generation_ms": t.generation_ms},
        "cost": {"input_usd": c.input_usd, "output_usd": c.output_usd, "device_usd": c.device_usd},
        "speculative": {"method": answer.speculative.method, "draft_tokens": answer.speculative.draft_tokens,
                        "accepted_tokens": answer.speculative.accepted_tokens},
        "scores": scores, "score_status": {}, "score_notes": {},
    }


def aggregate(samples: list[dict]) -> dict:
    """Per metric: mean with a bootstrap 95% interval, how many samples it covers, and the count of each
    non-ok status (parse failures of the judge above all); p50/p95 for latency and cost."""
    names = [m for m in METRICS if any(m in s["scores"] for s in samples)]
    metrics: dict[str, dict] = {}
    for name in names:
        values = [s["scores"].get(name) for s in samples]
        entry = bootstrap(values).to_dict()
        statuses = [s["score_status"].get(name) for s in samples if s["score_status"].get(name)]
        for status in ("parse_failure", "error", "undefined", "skipped"):
            entry[status] = statuses.count(status)
        if METRICS[name].group in ("latency", "cost"):
            entry["p50"] = percentile(values, 50)
            entry["p95"] = percentile(values, 95)
            entry["total"] = float(sum(v for v in values if v is not None))
        metrics[name] = entry
    return {"metrics": metrics, "n": len(samples),
            "failed_answers": sum(1 for s in samples if s["status"] == "failed"),
            "unanswerable": sum(1 for s in samples if s["unanswerable"])}
