import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from assistant._decoding import (DecodingConfig, DecodingStats, DraftModelCandidates, PromptLookupCandidates,
                                 SpeculativeConfig, greedy_decode)
from retrieval.errors import ConfigError
from tests.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, tok


def prompt_ids(tok, n=3):
    text = " ".join(["Tidepool listens on port 8740 by default. Version history is kept for 30 days."] * n)
    out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def run(model, ids, cfg, cand=None, cancel=None):
    stats = DecodingStats()
    toks = [t for step in greedy_decode(model, ids, cfg, cand, cancel, stats) for t in step]
    return toks, stats


@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("lookup", [1, 3, 10])
def test_prompt_lookup_is_lossless(tiny, penalty, lookup):
    model, tok = tiny
    ids = prompt_ids(tok)
    cfg = DecodingConfig(max_new_tokens=60, repetition_penalty=penalty)
    off, _ = run(model, ids, cfg)
    pl, stats = run(model, ids, cfg, PromptLookupCandidates(SpeculativeConfig(lookup_tokens=lookup)))
    assert pl == off and len(off) == 60
    assert stats.draft_tokens > 0 and stats.steps <= 60


def test_off_matches_transformers_generate(tiny):
    model, tok = tiny
    ids = prompt_ids(tok)
    off, _ = run(model, ids, DecodingConfig(max_new_tokens=40, repetition_penalty=1.0))
    ref = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[0, len(ids):].tolist()
    assert off == ref


def test_draft_model_is_lossless_and_accepts_its_own_tokens(tiny, tmp_path):
    model, tok = tiny
    ids = prompt_ids(tok, 1)
    cfg = DecodingConfig(max_new_tokens=30, repetition_penalty=1.0)
    off, _ = run(model, ids, cfg)
    # a different tiny model (other seed) as draft: lossless whatever it proposes
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "other", seed=7)).eval()
    drafted, stats = run(model, ids, cfg, DraftModelCandidates(other, SpeculativeConfig("draft", draft_tokens=4)))
    assert drafted == off and stats.draft_tokens > 0
    # the model as its own draft: every proposal accepted, far fewer main-model steps
    same, stats2 = run(model, ids, cfg, DraftModelCandidates(model, SpeculativeConfig("draft", draft_tokens=4)))
    assert same == off and stats2.accepted_tokens == stats2.draft_tokens and stats2.steps < len(off) / 3


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    cand = PromptLookupCandidates(SpeculativeConfig(lookup_tokens=3, max_ngram=2))
    assert cand.get_candidates([5, 6, 7, 8, 9, 1, 6, 7], 5) == [8, 9, 1]
    assert cand.get_candidates([1, 2, 3], 3) == []


def test_stop_tokens_and_length(tiny):
    model, tok = tiny
    ids = prompt_ids(tok)
    off, _ = run(model, ids, DecodingConfig(max_new_tokens=25, repetition_penalty=1.0))
    stop = off[10]
    first = off.index(stop)
    for cand in (None, PromptLookupCandidates(SpeculativeConfig())):
        toks, stats = run(model, ids, DecodingConfig(25, 1.0, (stop,)), cand)
        assert toks == off[:first] and stats.stopped == "eos"
        toks, stats = run(model, ids, DecodingConfig(7, 1.0), cand)
        assert toks == off[:7] and stats.stopped == "length"


def test_cancel_stops_within_one_step(tiny):
    model, tok = tiny
    cancel = threading.Event()
    stats = DecodingStats()
    got = []
    for step in greedy_decode(model, prompt_ids(tok), DecodingConfig(200, 1.0), None, cancel, stats):
        got.extend(step)
        if len(got) >= 5:
            cancel.set()
    assert len(got) == 5 and stats.stopped == "cancelled" and stats.steps == 5


def test_draft_with_a_different_tokenizer_is_lossless(tiny, tmp_path):
    from assistant._decoding import CrossTokenizerDraftCandidates

    model, tok = tiny
    other_dir = build_tiny_model(tmp_path / "othertok", seed=3, vocab_size=300)
    other_tok = AutoTokenizer.from_pretrained(other_dir)
    assert other_tok.get_vocab() != tok.get_vocab()
    other = AutoModelForCausalLM.from_pretrained(other_dir).eval()
    messages = [{"role": "user", "content": "Tidepool listens on port 8740 by default. Trash is kept 14 days."}]
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    draft_prompt = list(other_tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    cfg = DecodingConfig(max_new_tokens=30, repetition_penalty=1.0)
    off, _ = run(model, ids, cfg)
    cand = CrossTokenizerDraftCandidates(other, other_tok, tok, draft_prompt, SpeculativeConfig("draft", draft_tokens=4))
    got, stats = run(model, ids, cfg, cand)
    assert got == off and stats.steps <= len(off)


def reference_greedy(model, ids, n, penalty):
    """Greedy decoding the slow, obvious way: the whole sequence every step, no cache, the penalty over the
    answer so far applied to the last row only."""
    out = []
    with torch.inference_mode():
        for _ in range(n):
            row = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
            if out and penalty != 1.0:
                idx = torch.tensor(sorted(set(out)))
                vals = row[idx]
                row[idx] = torch.where(vals < 0, vals * penalty, vals / penalty)
            out.append(int(row.argmax()))
    return out


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_off_and_prompt_lookup_match_the_uncached_reference(tiny, penalty):
    model, tok = tiny
    ids = prompt_ids(tok, 2)
    ref = reference_greedy(model, ids, 40, penalty)
    cfg = DecodingConfig(max_new_tokens=40, repetition_penalty=penalty)
    assert run(model, ids, cfg)[0] == ref
    pl, stats = run(model, ids, cfg, PromptLookupCandidates(SpeculativeConfig(lookup_tokens=6)))
    assert pl == ref and stats.draft_tokens > 0


def test_pick_tokens_penalises_each_position_with_its_own_prefix():
    from assistant._decoding import _pick_tokens

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 0.3
    # the top raw logit of row 0 is a token of the answer so far, that of rows 1..3 the candidate fed at
    # row 0 (so seen from row 1 on); halved, each loses to the runner-up 30
    logits[0, 3] = 3.0
    logits[1:, 11] = 3.0
    logits[:, 30] = 2.9
    seen = torch.zeros(50, dtype=torch.bool)
    seen[[3, 7]] = True
    cand = torch.tensor([11, 11, 20])
    expected = []
    for i in range(4):  # one row at a time, as the penalty was applied before
        row = logits[i].clone()
        idx = torch.tensor(sorted({3, 7, *cand[:i].tolist()}))
        vals = row[idx]
        row[idx] = torch.where(vals < 0, vals * 2.0, vals / 2.0)
        expected.append(int(row.argmax()))
    assert expected == [30, 30, 30, 30]
    assert _pick_tokens(logits.clone(), seen, cand, 2.0).tolist() == expected
    assert _pick_tokens(logits.clone(), seen, cand, 1.0).tolist() == [3, 11, 11, 11]


def _policy_run(cand, ids, cost, accepted, steps):
    """Drive a PromptLookupCandidates by hand with a fake clock: each step costs cost(width) seconds and
    `accepted` of the proposed tokens are accepted; returns how many tokens each step proposed."""
    proposed = []
    for _ in range(steps):
        got = cand.get_candidates(ids, 0)
        cand.clock.now += cost(1 + len(got))
        cand.update_candidate_strategy(len(got), min(accepted, len(got)))
        proposed.append(len(got))
    return proposed


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_prompt_lookup_keeps_proposing_while_a_wide_pass_is_cheap():
    cand = PromptLookupCandidates(SpeculativeConfig(lookup_tokens=4, max_ngram=2), clock=FakeClock())
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    proposed = _policy_run(cand, ids, lambda w: 0.010 + 0.0005 * (w - 1), 1, 20)
    assert proposed[1] == 0  # the 1-token timing probe
    assert all(n > 0 for i, n in enumerate(proposed) if i != 1)
    assert 0.04 < cand.extra_cost() < 0.06 and cand.pays()


def test_prompt_lookup_stops_when_a_wide_pass_costs_more_than_it_gains_and_resumes_when_it_pays():
    cand = PromptLookupCandidates(SpeculativeConfig(lookup_tokens=4, max_ngram=2), clock=FakeClock())
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    # a loaded, compute-bound CPU: each extra position costs 80% of a 1-token step; 1 of 4 accepted
    proposed = _policy_run(cand, ids, lambda w: 0.010 * (1 + 0.8 * (w - 1)), 1, 20)
    assert proposed[0] == 4 and proposed[1] == 0 and sum(proposed[2:]) == 0
    assert cand.shadow == (len(ids), [3, 4]) and not cand.pays()  # the miss shortened proposals to 2
    # the model then produces exactly what the (unfed) proposals said: acceptance climbs, proposing resumes
    future = iter([3, 4, 5, 6, 7, 8, 1, 2] * 4)
    for _ in range(30):
        if cand.get_candidates(ids, 0):
            break
        ids.append(next(future))  # one token per 1-token step
        cand.clock.now += 0.010
        cand.update_candidate_strategy(0, 0)
    else:
        raise AssertionError("never resumed proposing")
    assert cand.acceptance > cand.extra_cost()


def test_decode_threads_apply_after_the_prefill_and_are_restored(tiny):
    """`decode_threads` (the chat app's engine decodes with one thread fewer than the CPUs): the prefill runs
    with the process's threads, every step after it with decode_threads, the tokens are the same, and the
    thread count is back when the answer ends, also when it is cancelled half-way."""
    model, tok = tiny
    ids = prompt_ids(tok)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        class Recording(PromptLookupCandidates):
            def get_candidates(self, ids_, prompt_len):
                seen.append(torch.get_num_threads())
                return super().get_candidates(ids_, prompt_len)

        plain, _ = run(model, ids, DecodingConfig(max_new_tokens=20))
        fewer, _ = run(model, ids, DecodingConfig(max_new_tokens=20, decode_threads=1), Recording(SpeculativeConfig()))
        assert fewer == plain
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        gen = greedy_decode(model, ids, DecodingConfig(max_new_tokens=20, decode_threads=1))
        next(gen)
        assert torch.get_num_threads() == 1
        gen.close()  # the consumer stops reading (a cancel, an error above)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(Exception, match="decode_threads"):
        DecodingConfig(decode_threads=-1)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_both_kv_caches_give_the_uncached_reference_under_prompt_lookup(tiny, penalty, kv_cache):
    # fp32: token for token. A rejected candidate's K/V stay in the static cache after the current position
    # (cropping only moves its length back); the next step must overwrite them, never attend to them
    model, tok = tiny
    ids = prompt_ids(tok, 2)
    ref = reference_greedy(model, ids, 40, penalty)
    cfg = DecodingConfig(max_new_tokens=40, repetition_penalty=penalty, kv_cache=kv_cache)
    assert run(model, ids, cfg)[0] == ref
    pl, stats = run(model, ids, cfg, PromptLookupCandidates(SpeculativeConfig(lookup_tokens=6), adaptive=False))
    assert pl == ref and stats.draft_tokens > stats.accepted_tokens > 0  # some candidates were rejected


def test_unknown_kv_cache_is_a_config_error():
    with pytest.raises(ConfigError, match="kv_cache='paged' is not one of static, dynamic"):
        DecodingConfig(kv_cache="paged")


def test_cpu_load_counts_other_programs_only_and_picks_the_threads_left():
    from assistant import _cpuload
    from assistant._cpuload import CpuSnapshot, free_cpus, parse_proc_stat, threads_for

    stat = ("cpu  100 20 30 800 50 0 5 10 0 0\ncpu0 50 10 15 400 25 0 2 5 0 0\ncpu1 50 10 15 400 25 0 3 5 0 0\n"
            "intr 1 2 3\n")
    busy, cpus = parse_proc_stat(stat, 100)
    assert cpus == 2 and busy == pytest.approx((100 + 20 + 30 + 5 + 10) / 100)  # idle and iowait are not busy
    assert parse_proc_stat("intr 1\n", 100) is None

    def snap(wall, busy_s, own_s):
        return CpuSnapshot(wall, busy_s, own_s, 2)

    t0 = snap(10.0, 500.0, 3.0)
    # over 1 s both CPUs were busy: 1.3 s ours, 0.7 s another program's -> 1.3 CPUs free -> 1 thread
    assert free_cpus(t0, snap(11.0, 502.0, 4.3)) == pytest.approx(1.3)
    assert threads_for(2, free_cpus(t0, snap(11.0, 502.0, 4.3))) == 1
    # all of it ours (idle machine), or a nice-19 program that barely ran: both threads
    assert threads_for(2, free_cpus(t0, snap(11.0, 502.0, 5.0))) == 2
    assert threads_for(2, free_cpus(t0, snap(11.0, 502.0, 4.9))) == 2
    assert threads_for(4, 0.2) == 1 and threads_for(1, 2.0) == 1
    # too short a window, or no /proc/stat: what was asked for
    assert free_cpus(t0, snap(10.05, 500.1, 3.05)) is None and free_cpus(None, t0) is None
    assert threads_for(2, None) == 2
    now = _cpuload.snapshot()
    assert now is None or (now.cpus >= 1 and now.busy_s > 0 and now.own_s > 0)


def test_decoding_uses_fewer_threads_while_another_program_holds_a_cpu(tiny, monkeypatch):
    """decode_threads=0: the steps after the prefill run on the CPUs other programs left free over the prefill,
    and the next prefill on those left free since; an explicit decode_threads is used as it is, unmeasured."""
    from assistant import _cpuload
    from assistant._cpuload import CpuSnapshot

    model, tok = tiny
    ids = prompt_ids(tok)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    readings = []

    def busy_machine():  # each call 1 s later; another program used 0.8 CPU-seconds of every second
        n = len(readings)
        readings.append(n)
        return CpuSnapshot(100.0 + n, 1000.0 + 2.0 * n, 5.0 + 1.2 * n, 2)

    monkeypatch.setattr(_cpuload, "snapshot", busy_machine)
    monkeypatch.setattr(_cpuload, "_mark", None)
    monkeypatch.setattr(_cpuload, "_last_free", None)
    passes = []  # (tokens fed, threads) of every forward pass
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: passes.append((kwargs["input_ids"].shape[1], torch.get_num_threads())),
        with_kwargs=True)
    try:
        toks, stats = run(model, ids, DecodingConfig(max_new_tokens=12))
        prefill, *steps = passes
        assert prefill == (len(ids) - 1, 2)  # nothing measured yet: every thread
        assert steps and {t for _, t in steps} == {1} and stats.decode_threads == 1
        assert torch.get_num_threads() == 2  # back after the answer
        passes.clear()
        toks2, stats2 = run(model, ids, DecodingConfig(max_new_tokens=12, decode_threads=2))
        assert {t for _, t in passes} == {2} and stats2.decode_threads == 2 and toks2 == toks
        n_readings = len(readings)
        passes.clear()
        toks3, _ = run(model, ids, DecodingConfig(max_new_tokens=12))
        assert passes[0] == (len(ids) - 1, 1)  # the window since the last answer's prefill showed the load
        assert {t for _, t in passes[1:]} == {1} and toks3 == toks and len(readings) > n_readings
    finally:
        hook.remove()
        torch.set_num_threads(before)
