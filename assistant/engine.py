"""The RAG answer pipeline: retrieve, build a grounded prompt that fits the context window, decode
(speculatively), stream, and account for tokens, time and cost.

`Engine.stream` is the one path every caller uses (`ask`, `chat`, `eval`, `bench`), so what is measured is what
users get. The engine sees the model only through `ChatModel` (messages in, text pieces and a `Completion`
out), so a local transformers model and a served one take the same path. Several threads may call `stream` at
once (eval and batch concurrency): retrieval is serialized (it is milliseconds), generation is serialized only
for models that cannot run concurrently. When the collection has fitted abstention thresholds and retrieval
evidence falls below them, the engine answers the refusal and the closest passages without calling the model.
Not here: storage of conversations (history.py), presentation (cli.py, tui/), fitting the thresholds
(evals/_calibrate.py).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Callable, Iterator, Sequence

from retrieval import AbstainRule, Collection, Evidence, Passage, SearchConfig, get_embedder
from retrieval._chunking import ChunkingConfig
from retrieval.errors import ConfigError, InputError, ModelError, RagdeskError

from .answer import Answer, AnswerEvent, Cost, Retrieved, Timings, TokenArrived, Turn
from .models import PRESETS, ChatModel, Completion, generation_config, load_model
from .settings import Settings

__all__ = ["Engine", "REFUSAL", "attribute_citations", "build_messages", "cited_numbers", "is_refusal"]

SYSTEM_PROMPT = (
    "You are a help-desk assistant. Answer the question using only the numbered passages below. "
    "Cite the passages you use with their numbers in square brackets, like [1]. "
    "If the passages do not contain the answer, say: \"" + "I don't know: the documentation does not say." + "\" "
    "Do not invent facts.")
REFUSAL = "I don't know: the documentation does not say."
_REFUSAL_PATTERNS = re.compile(
    r"\b(i don't know|i do not know|does not say|doesn't say|not (?:mentioned|covered|stated|specified)|"
    r"no information|cannot find|can't find|not in the (?:passages|documentation)|unable to answer)\b", re.I)


def is_refusal(text: str) -> bool:
    """Whether an answer declines to answer (used for unanswerable questions)."""
    return bool(_REFUSAL_PATTERNS.search(text))


def cited_numbers(text: str, n_sources: int) -> list[int]:
    """The passage numbers cited as [n] (also [1, 2] and [1][2]) that exist, in order of first use."""
    seen: list[int] = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text):
        for num in group.split(","):
            n = int(num)
            if 1 <= n <= n_sources and n not in seen:
                seen.append(n)
    return seen


_WORD = re.compile(r"[a-z0-9][a-z0-9_.:/-]*")
_COMMON = frozenset("""the a an and or of to in on for is are be by with this that it as at from you your can
does do not no yes if then than when which what how will was were has have had its into also only use using""".split())


def attribute_citations(text: str, passages: Sequence[Passage], min_support: float = 0.6) -> list[int]:
    """Passages that support an answer which cites none: for each sentence, the passage holding most of its
    content words, if it holds at least `min_support` of them. Small models often answer correctly from a
    passage without writing [n]; this recovers the link and is reported as such ("attributed"), never
    presented as the model's own citation."""
    vocab = [set(_WORD.findall(p.text.lower())) for p in passages]
    found: list[int] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        words = [w.strip(".:") for w in _WORD.findall(sentence.lower())]
        words = [w for w in words if w and w not in _COMMON]
        if len(words) < 2:
            continue
        best, best_n = 0.0, 0
        for n, v in enumerate(vocab, 1):
            share = sum(w in v for w in words) / len(words)
            if share > best:
                best, best_n = share, n
        if best >= min_support and best_n not in found:
            found.append(best_n)
    return found


def _format_passage(n: int, p: Passage, text: str) -> str:
    return f"[{n}] {p.path} ({p.heading})\n{text}"


def build_messages(question: str, passages: Sequence[Passage], history: Sequence[Turn] = (),
                   count: Callable[[str], int] | None = None, budget: int | None = None) -> list[dict[str, str]]:
    """Chat messages for one grounded answer. When `count`/`budget` are given, passages are trimmed (from
    the last one backwards, then cut to fit) and old turns dropped so the whole prompt fits in `budget`
    tokens; the question is never trimmed."""
    count = count or (lambda s: len(s.split()))
    texts = [p.text for p in passages]
    turns = list(history)

    def render() -> list[dict[str, str]]:
        context = "\n\n".join(_format_passage(i + 1, p, t) for i, (p, t) in enumerate(zip(passages, texts)) if t)
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in turns:
            msgs.append({"role": "user", "content": turn.question})
            msgs.append({"role": "assistant", "content": turn.answer})
        msgs.append({"role": "user", "content": f"Passages:\n\n{context}\n\nQuestion: {question}"})
        return msgs

    if budget is None:
        return render()
    fixed = count(SYSTEM_PROMPT) + count(question) + 32
    if fixed > budget:
        raise InputError(f"the question is too long for the model's context ({count(question)} tokens, "
                         f"{budget} available)", "shorten the question or raise --context-window")
    total = lambda msgs: sum(count(m["content"]) + 4 for m in msgs)  # noqa: E731 - 4 ~ template tokens/turn
    while total(render()) > budget and turns:
        turns.pop(0)  # oldest turn first
    i = len(texts) - 1
    while total(render()) > budget and i >= 0:
        over = total(render()) - budget
        tokens = count(texts[i])
        if tokens <= over + 16:
            texts[i] = ""
            i -= 1
        else:  # cut this passage to fit, at a word boundary
            words = texts[i].split(" ")
            keep = max(1, int(len(words) * (tokens - over - 8) / max(tokens, 1)))
            texts[i] = " ".join(words[:keep]) + " ..."
    return render()


class Engine:
    """Loads the embedder, the collection and the model once, then answers questions."""

    def __init__(self, settings: Settings, model: ChatModel | None = None,
                 collection: Collection | None = None):
        self.settings = settings
        self.model = model
        self.collection = collection
        self.draft: ChatModel | None = None
        self._gen_lock = threading.Lock()
        self._search_lock = threading.Lock()

    # ---- loading ----------------------------------------------------------------------------------------
    def load(self, progress: Callable[[str], None] | None = None) -> "Engine":
        progress = progress or (lambda msg: None)
        s = self.settings
        if self.collection is None:
            progress(f"opening collection {s.collection}")
            embedder = get_embedder(s.embedder)
            self.collection = Collection(s.collection_path(), embedder,
                                         ChunkingConfig(s.chunk_tokens, s.chunk_overlap), SearchConfig(),
                                         create=False)
            if self.collection.stats()["chunks"] == 0:
                raise InputError(f"collection {s.collection!r} is empty",
                                 f"run: ragdesk index PATH --collection {s.collection}")
            self.collection.vector_index()
        if self.model is None:
            self.model = load_model(s.model, s, progress, adapter=s.adapter)
        if s.speculative == "draft" and self.draft is None and self.model.supports_speculative:
            name = s.draft_model or (PRESETS[s.model].draft if s.model in PRESETS else "")
            if not name:
                raise ModelError("--speculative draft needs a draft model", "pass --draft-model NAME or PATH")
            self.draft = load_model(name, s, progress)
            self.model.attach_draft(self.draft)
        return self

    @property
    def model_name(self) -> str:
        return self.model.name if self.model else self.settings.model

    @property
    def device(self) -> str:
        return self.model.device if self.model else "-"

    def context_budget(self) -> int:
        window = self.settings.context_window or min(self.model.context_length, 4096)
        return window - self.settings.max_new_tokens

    # ---- answering --------------------------------------------------------------------------------------
    def retrieve(self, question: str) -> list[Passage]:
        return self.retrieve_with_evidence(question)[0]

    def retrieve_with_evidence(self, question: str) -> tuple[list[Passage], Evidence]:
        with self._search_lock:
            return self.collection.search_with_evidence(question, k=self.settings.top_k,
                                                        mode=self.settings.search_mode)

    def abstain_rule(self) -> AbstainRule | None:
        """The collection's fitted thresholds when the `abstain` setting allows them (read per question, so a
        refit by `ragdesk eval calibrate` applies to an open chat's next question)."""
        mode = self.settings.abstain
        if mode not in ("auto", "off"):
            raise ConfigError(f"abstain={mode!r} is not valid", "use auto or off")
        if mode == "off":
            return None
        with self._search_lock:
            return self.collection.abstain_rule()

    def _abstained(self, question: str, passages: list[Passage], evidence: Evidence, rule: AbstainRule,
                   t0: float, t_retrieved: float) -> Iterator[AnswerEvent]:
        """The refusal and the closest passages, without calling the model: retrieval found nothing close
        enough to answer from, and a small model asked anyway invents an answer."""
        refs = [f"[{n}]" for n in range(1, len(passages) + 1)]
        closest = (", ".join(refs[:-1]) + " and " + refs[-1]) if len(refs) > 1 else "".join(refs)
        text = REFUSAL + (f" The closest passages are {closest}." if refs else "")
        yield TokenArrived(text)
        reason = (f"retrieval evidence below the collection's thresholds: best dense similarity "
                  f"{evidence.dense:.3f} < {rule.dense:.3f} and best BM25 score {evidence.bm25:.3f} < "
                  f"{rule.bm25:.3f}")
        t_end = time.perf_counter()
        answer = Answer(question=question, text=text, sources=passages, model=self.model_name,
                        device=self.device, status="complete", finish_reason="abstained")
        answer.abstained = {"reason": reason, "evidence": evidence.to_dict(), "thresholds": rule.thresholds(),
                            "fitted_on": {"suite": rule.suite, "suite_digest": rule.suite_digest,
                                          "fitted_at": rule.fitted_at}}
        answer.timings = Timings(retrieval_ms=(t_retrieved - t0) * 1000, ttft_ms=(t_end - t0) * 1000,
                                 total_ms=(t_end - t0) * 1000, generation_ms=0.0, tokens_per_s=0.0)
        answer.cost = Cost(0.0, 0.0, (t_end - t0) / 3600 * self.settings.device_cost_per_hour)
        yield answer

    def _method(self) -> str:
        s = self.settings
        if not self.model.supports_speculative:
            return "off"
        return s.speculative

    def stream(self, question: str, history: Sequence[Turn] = (),
               cancel: threading.Event | None = None) -> Iterator[AnswerEvent]:
        """Yield Retrieved, then TokenArrived pieces, then the finished Answer (also when cancelled or
        failed: the partial text is kept)."""
        question = question.strip()
        if not question:
            raise InputError("the question is empty", "type a question")
        if self.model is None or self.collection is None:
            self.load()
        s = self.settings
        t0 = time.perf_counter()
        passages, evidence = self.retrieve_with_evidence(question)
        t_retrieved = time.perf_counter()
        yield Retrieved(passages)
        rule = self.abstain_rule()
        if rule is not None and rule.abstains(evidence):
            yield from self._abstained(question, passages, evidence, rule, t0, t_retrieved)
            return
        model = self.model
        messages = build_messages(question, passages, history, model.count_tokens, self.context_budget())
        config = generation_config(s, self._method())
        answer = Answer(question=question, sources=passages, model=self.model_name, device=self.device)
        text, done, t_first = "", None, None
        lock = contextlib.nullcontext() if model.supports_concurrency else self._gen_lock
        try:
            with lock:  # a local model answers one question at a time
                for piece in model.stream(messages, config, cancel):
                    if isinstance(piece, Completion):
                        done = piece
                        continue
                    if t_first is None:
                        t_first = time.perf_counter()
                    text += piece
                    yield TokenArrived(piece)
        except RagdeskError as exc:  # e.g. the server refused the request: one line, kept with the answer
            answer.status, answer.error = "failed", str(exc)
        except Exception as exc:  # a generation error ends this answer, not the program
            answer.status, answer.error = "failed", f"{type(exc).__name__}: {exc}"
        t_end = time.perf_counter()
        if done is not None:
            text = done.text or text
            answer.status = {"cancelled": "cancelled", "error": "failed"}.get(done.finish_reason, "complete")
            answer.error = done.error
            answer.usage, answer.speculative, answer.token_ids = done.usage, done.speculative, done.token_ids
            answer.finish_reason, answer.usage_exact = done.finish_reason, done.usage_exact
        elif answer.status == "complete":
            answer.status = "cancelled" if cancel is not None and cancel.is_set() else "failed"
        answer.text = text.strip()
        answer.cited = cited_numbers(answer.text, len(passages))
        answer.citation_mode = "model" if answer.cited else "none"
        if not answer.cited and answer.text and not is_refusal(answer.text):
            answer.cited = attribute_citations(answer.text, passages)
            answer.citation_mode = "attributed" if answer.cited else "none"
        n_out = answer.usage.completion_tokens
        decode_s = (t_end - t_first) if t_first else 0.0
        answer.timings = Timings(
            retrieval_ms=(t_retrieved - t0) * 1000, ttft_ms=((t_first or t_end) - t0) * 1000,
            total_ms=(t_end - t0) * 1000, generation_ms=(t_end - t_retrieved) * 1000,
            tokens_per_s=(n_out - 1) / decode_s if decode_s > 0 and n_out > 1 else 0.0)
        n_in = answer.usage.prompt_tokens
        answer.cost = Cost(n_in / 1000 * s.price_input_per_1k, n_out / 1000 * s.price_output_per_1k,
                           (t_end - t0) / 3600 * s.device_cost_per_hour)
        yield answer

    def ask(self, question: str, history: Sequence[Turn] = (), cancel: threading.Event | None = None,
            on_event: Callable[[AnswerEvent], None] | None = None) -> Answer:
        answer = None
        for event in self.stream(question, history, cancel):
            if on_event:
                on_event(event)
            if isinstance(event, Answer):
                answer = event
        return answer
