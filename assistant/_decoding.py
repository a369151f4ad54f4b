"""Greedy decoding with lossless speculative decoding, streaming and per-step cancellation.

One loop serves every method. Each step feeds the model the last accepted token plus the candidate tokens a
`CandidateGenerator` proposes (none for `off`), takes the greedy choice at every position, keeps the longest
prefix of candidates that matches it plus the model's own next token, and crops the KV cache back to what was
accepted. So each step costs one forward pass and yields between 1 and len(candidates)+1 tokens, and the output
is by construction the greedy output of the model (tested token for token against `off` and against
transformers' own `generate`). Logit processing (repetition penalty over the answer so far) is applied to
the whole (positions, vocab) block at once, each position with exactly the prefix greedy decoding would have
seen, and the greedy choice is one argmax over the block (`benchmarks/profile_decode.py` splits a step).

Not here: sampling (speculative sampling needs rejection sampling; ragdesk answers greedily), batching.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator

from retrieval.errors import ConfigError

from . import _cpuload

__all__ = ["CandidateGenerator", "CrossTokenizerDraftCandidates", "DecodingConfig", "DecodingStats",
           "DraftModelCandidates",
           "PromptLookupCandidates", "SpeculativeConfig", "greedy_decode"]


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "prompt-lookup"  # off, prompt-lookup, draft
    lookup_tokens: int = 4  # measured best of 4, 6, 10, 20 with `ragdesk bench` (SmolLM2-135M, bf16)
    max_ngram: int = 3
    min_ngram: int = 1
    draft_tokens: int = 5

    def __post_init__(self) -> None:
        if self.method not in ("off", "prompt-lookup", "draft"):
            raise ConfigError(f"speculative method {self.method!r} is not valid", "use off, prompt-lookup or draft")
        if self.lookup_tokens < 1 or self.draft_tokens < 1:
            raise ConfigError("lookup_tokens and draft_tokens must be at least 1")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(f"need 1 <= min_ngram ({self.min_ngram}) <= max_ngram ({self.max_ngram})")


KV_CACHES = ("static", "dynamic")


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    stop_ids: tuple[int, ...] = ()
    # torch threads after the prefill, restored when decoding ends; 0 = as many as the prefill used, fewer on a
    # CPU where other programs keep CPUs busy (measured over the prefill, _cpuload)
    decode_threads: int = 0
    kv_cache: str = "static"  # "static" (preallocated for this answer) or "dynamic" (grows by concatenation)

    def __post_init__(self) -> None:
        if self.decode_threads < 0:
            raise ConfigError(f"decode_threads={self.decode_threads} must not be negative")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty={self.repetition_penalty} must be positive")
        if self.kv_cache not in KV_CACHES:
            raise ConfigError(f"kv_cache={self.kv_cache!r} is not one of {', '.join(KV_CACHES)}")


@dataclass
class DecodingStats:
    draft_tokens: int = 0
    accepted_tokens: int = 0
    steps: int = 0
    stopped: str = ""  # "eos", "length", "cancelled"
    tokens: list[int] = field(default_factory=list)
    decode_threads: int = 0  # torch threads of the decoding steps (CPU; 0 = not measured)


class CandidateGenerator(ABC):
    """Proposes tokens that probably come next; the main model verifies them."""

    @abstractmethod
    def get_candidates(self, ids: list[int], prompt_len: int) -> list[int]:
        """Up to a few token ids guessed to follow `ids` (prompt + answer so far)."""

    def update_candidate_strategy(self, proposed: int, accepted: int) -> None:
        """Told after each step how many proposals were accepted (to adapt, if it wants)."""


class PromptLookupCandidates(CandidateGenerator):
    """Match the last n tokens (n = max_ngram..min_ngram) earlier in the sequence and propose what followed
    there. RAG answers quote their passages, so the prompt is a good draft for free.

    Adaptive (the default), it proposes only while that pays. A verification pass over P positions costs
    more than a 1-token step once the CPU is compute-bound (a loaded machine, or wide passes): the step time
    is measured per width, giving the extra cost of one more position relative to a 1-token step, and
    proposing pays while the share of proposed tokens accepted exceeds it. When it does not, proposals are
    still looked up but not fed ("shadow" proposals, scored against the tokens that follow), so acceptance
    keeps being measured at no cost, and a 1-token step is timed now and then to follow a changing load."""

    PROBE_EVERY = 24  # steps between 1-token timing probes
    SMOOTHING = 0.25  # weight of the newest sample in the running averages

    def __init__(self, config: SpeculativeConfig, adaptive: bool = True, clock=None, cost_aware: bool = True):
        import time

        self.config = config
        self.adaptive = adaptive
        self.cost_aware = cost_aware  # False: propose whenever a match is found (the policy before issue 11)
        # how many tokens to propose next: grows while proposals are accepted whole, shrinks when they miss,
        # so a model that is not quoting pays for short verification passes only
        self.length = config.lookup_tokens
        self.clock = clock or time.perf_counter
        self.step_cost: dict[int, float] = {}  # width fed (1 + proposed) -> running mean seconds per step
        self.acceptance: float | None = None  # running mean of accepted / proposed (fed or shadow)
        self.shadow: tuple[int, list[int]] | None = None  # (position, proposal) looked up but not fed
        self._started: float | None = None
        self._steps = 0

    def _mean(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.SMOOTHING * (new - old)

    def extra_cost(self) -> float:
        """Measured extra time of one more fed position, as a share of a 1-token step (0 until measured)."""
        one = self.step_cost.get(1)
        wide = [(w, c) for w, c in self.step_cost.items() if w > 1]
        if not one or not wide:
            return 0.0
        return max(0.0, sum((c / one - 1) / (w - 1) for w, c in wide) / len(wide))

    def pays(self) -> bool:
        if not self.adaptive or self.acceptance is None:
            return True
        return self.acceptance > self.extra_cost()

    def update_candidate_strategy(self, proposed: int, accepted: int) -> None:
        if self._started is not None:
            width = 1 + proposed
            self.step_cost[width] = self._mean(self.step_cost.get(width), self.clock() - self._started)
            self._started = None
        if not self.adaptive or not proposed:
            return
        self.acceptance = self._mean(self.acceptance, accepted / proposed)
        if accepted == proposed:
            self.length = min(self.config.lookup_tokens, self.length + 2)
        else:
            self.length = max(1, accepted + 1, self.length - 2)

    def _score_shadow(self, ids: list[int]) -> None:
        pos, proposal = self.shadow
        came = ids[pos:pos + len(proposal)]
        matched = 0
        while matched < len(came) and came[matched] == proposal[matched]:
            matched += 1
        if matched < len(came) or len(came) == len(proposal):  # a miss, or all of it seen
            self.acceptance = self._mean(self.acceptance, matched / len(proposal))
            self.shadow = None

    def lookup(self, ids: list[int]) -> list[int]:
        n_ids = len(ids)
        for n in range(min(self.config.max_ngram, n_ids - 1), self.config.min_ngram - 1, -1):
            tail = ids[n_ids - n:]
            # latest match first: recent context predicts best
            for start in range(n_ids - n - 1, -1, -1):
                if ids[start:start + n] == tail:
                    follow = ids[start + n:start + n + self.length]
                    if follow:
                        return list(follow)
        return []

    def get_candidates(self, ids: list[int], prompt_len: int) -> list[int]:
        proposal = self.lookup(ids)
        if self.adaptive and self.cost_aware:
            self._steps += 1
            if self.shadow is not None:
                self._score_shadow(ids)
            probe = self._steps % self.PROBE_EVERY == 2  # time a 1-token step early on, then now and then
            if proposal and (probe or not self.pays()):
                if self.shadow is None:
                    self.shadow = (len(ids), proposal)
                proposal = []
        self._started = self.clock()
        return proposal


class DraftModelCandidates(CandidateGenerator):
    """A smaller model with the same tokenizer drafts `draft_tokens` greedily, keeping its own KV cache."""

    def __init__(self, draft_model, config: SpeculativeConfig):
        self.model = draft_model
        self.config = config
        self.cache = None
        self.seen: list[int] = []  # tokens whose keys/values are in self.cache

    def get_candidates(self, ids: list[int], prompt_len: int) -> list[int]:
        import torch

        common = 0
        for a, b in zip(self.seen, ids[:-1]):
            if a != b:
                break
            common += 1
        if self.cache is not None and common < len(self.seen):
            _crop_to(self.cache, common)
            self.seen = self.seen[:common]
        if self.cache is None:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=self.model.config)
        feed = ids[len(self.seen):]
        out: list[int] = []
        device = self.model.device
        kw = _cache_kw(self.model)
        with torch.inference_mode():
            for _ in range(self.config.draft_tokens):
                res = self.model(input_ids=torch.tensor([feed], device=device), use_cache=True, **{kw: self.cache})
                self.seen.extend(feed)
                tok = int(res.logits[0, -1].argmax())
                out.append(tok)
                feed = [tok]
        return out


class CrossTokenizerDraftCandidates(CandidateGenerator):
    """A draft model with a different tokenizer (universal assisted generation): the answer so far is
    decoded to text, re-encoded for the draft, the draft continues it greedily, and its continuation text is
    re-encoded with the main tokenizer. Proposals that do not line up are simply rejected by verification,
    so the output stays the main model's greedy output."""

    def __init__(self, draft_model, draft_tokenizer, main_tokenizer, draft_prompt_ids: list[int],
                 config: SpeculativeConfig):
        self.inner = DraftModelCandidates(draft_model, config)
        self.draft_tok = draft_tokenizer
        self.main_tok = main_tokenizer
        self.draft_prompt = list(draft_prompt_ids)
        self.config = config

    def get_candidates(self, ids: list[int], prompt_len: int) -> list[int]:
        answer = ids[prompt_len:]
        text = self.main_tok.decode(answer)
        draft_ids = self.draft_prompt + self.draft_tok.encode(text, add_special_tokens=False)
        proposed = self.inner.get_candidates(draft_ids, len(self.draft_prompt))
        continuation = self.draft_tok.decode(proposed, skip_special_tokens=True)
        if not continuation:
            return []
        full = self.main_tok.encode(text + continuation, add_special_tokens=False)
        if full[:len(answer)] != answer:  # the text re-tokenises differently: propose nothing this step
            return []
        return full[len(answer):][: self.config.draft_tokens]


@functools.lru_cache(maxsize=None)
def _cache_kw_for(forward) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _cache_kw(model) -> str:
    """transformers 5.24 renamed the forward argument `past_key_values` to `cache`; accept both (looked up
    once per forward function: inspect.signature costs more than the rest of a step's bookkeeping)."""
    return _cache_kw_for(getattr(model.forward, "__func__", model.forward))


def _crop_to(cache, length: int) -> None:
    """Keep the first `length` positions of a KV cache (transformers 5 crops by a negative count). A static
    cache reports its length as a tensor: taken as an int, so the crop is plain arithmetic in every layer."""
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)


def _pick_tokens(logits, seen, cand_t, penalty: float):
    """The greedy token at every fed position, in one pass over the (positions, vocab) block.

    logits: (P, vocab) float32, modified in place. seen: (vocab,) bool, the tokens of the answer so far.
    cand_t: (P-1,) the candidates fed after the last token. Position i sees the answer so far plus cand[:i]
    (what greedy decoding would have generated if the candidates before it are accepted; if one is not, the
    positions after it are discarded anyway), so the repetition penalty (as in CTRL / transformers, over the
    answer only: the prompt is not penalised, so quoting a passage stays cheap) applies to `seen` at every
    row and to cand[k] from row k+1 on. Same float operations as penalising one row at a time, so the
    result is bit-identical to it. Returns the (P,) token tensor."""
    import torch

    if penalty != 1.0:
        n = logits.shape[0]
        mask = seen.expand(n, -1)  # (P, vocab)
        if n > 1:
            rows, cols = torch.tril_indices(n, n, -1, device=logits.device)  # pairs (i, k) with k < i
            mask = mask.clone()
            mask[rows, cand_t[cols]] = True
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(mask, penalised, logits)
    return logits.argmax(-1)


@contextlib.contextmanager
def _restore_threads(n: int):
    import torch

    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def greedy_decode(model, prompt_ids: list[int], config: DecodingConfig,
                  candidates: CandidateGenerator | None = None, cancel: threading.Event | None = None,
                  stats: DecodingStats | None = None) -> Iterator[list[int]]:
    """Yield the tokens accepted at each step until a stop token, `max_new_tokens` or `cancel`.

    `model` is a transformers causal LM; `stats` (optional) is filled in as decoding goes."""
    import torch
    from transformers import DynamicCache, StaticCache

    stats = stats if stats is not None else DecodingStats()
    device = model.device
    ids = list(prompt_ids)
    prompt_len = len(ids)
    # a static cache holds exactly this answer: the prompt, the answer, and the widest verification pass
    # (candidates never reach past max_new_tokens); cropping it only moves its length back, so what a rejected
    # candidate wrote is overwritten by the next step
    cache = (StaticCache(config=model.config, max_cache_len=prompt_len + config.max_new_tokens + 1)
             if config.kv_cache == "static" else DynamicCache(config=model.config))
    stop = set(config.stop_ids)
    kw = _cache_kw(model)
    penalty = config.repetition_penalty
    threads_before = torch.get_num_threads()
    with torch.inference_mode(), _restore_threads(threads_before):
        on_cpu = device.type == "cpu"
        fit = on_cpu and not config.decode_threads  # fit the threads to the CPUs other programs leave free
        if fit and (n := _cpuload.threads_for(threads_before, _cpuload.recent_free())) != threads_before:
            torch.set_num_threads(n)
        load_before = _cpuload.snapshot() if fit else None
        # prefill everything but the last prompt token; the loop always feeds "last token + candidates"
        if prompt_len > 1:
            model(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=True, logits_to_keep=1, **{kw: cache})
        if on_cpu:
            # the prefill is compute-bound; decode steps are small, and stall on a CPU another program holds
            wanted = config.decode_threads or threads_before
            if fit:
                after = _cpuload.snapshot()
                free = _cpuload.free_cpus(load_before, after)
                _cpuload.mark(free, after)
                wanted = _cpuload.threads_for(wanted, free)
            if wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)
            stats.decode_threads = wanted
        seen = None  # (vocab,) bool: tokens of the answer so far, for the repetition penalty
        while True:
            if cancel is not None and cancel.is_set():
                stats.stopped = "cancelled"
                return
            room = config.max_new_tokens - (len(ids) - prompt_len)
            cand = candidates.get_candidates(ids, prompt_len)[: max(0, room - 1)] if candidates else []
            feed = torch.tensor([[ids[-1], *cand]], device=device)  # (1, P)
            out = model(input_ids=feed, use_cache=True, **{kw: cache})
            logits = out.logits[0].float()  # (P, vocab)
            if seen is None:
                seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            chosen_t = _pick_tokens(logits, seen, feed[0, 1:], penalty)  # (P,)
            chosen = chosen_t.tolist()
            stats.steps += 1
            # keep the candidates the model agrees with, then its own next token (stop at a stop token)
            n_matched = 0
            while n_matched < len(cand) and chosen[n_matched] == cand[n_matched] and chosen[n_matched] not in stop:
                n_matched += 1
            accepted = chosen[:n_matched + 1]
            stats.draft_tokens += len(cand)
            stats.accepted_tokens += n_matched
            if candidates is not None:
                candidates.update_candidate_strategy(len(cand), n_matched)
            if penalty != 1.0:
                seen[chosen_t[:n_matched + 1]] = True
            # the cache now holds ids + feed; keep ids + accepted[:-1] (the last accepted is fed next step)
            ids.extend(accepted)
            if cand:
                _crop_to(cache, len(ids) - 1)
            hit_stop = next((j for j, t in enumerate(accepted) if t in stop), None)
            if hit_stop is not None:
                emit = accepted[:hit_stop]
                stats.tokens.extend(emit)
                if emit:
                    yield emit
                stats.stopped = "eos"
                return
            if len(ids) - prompt_len >= config.max_new_tokens:
                emit = accepted[: len(accepted) - (len(ids) - prompt_len - config.max_new_tokens)]
                stats.tokens.extend(emit)
                if emit:
                    yield emit
                stats.stopped = "length"
                return
            stats.tokens.extend(accepted)
            yield accepted
