"""`ragdesk bench`'s arithmetic: the end-to-end rate counts the prefill, the decoding rate only the tokens after
the first over the time after the first; the speed-ups and identity counts compare each method with off."""

from __future__ import annotations

from types import SimpleNamespace

from assistant.answer import Answer, SpeculativeStats, Timings, TokenUsage
from assistant.bench import run_bench

# per method: (completion tokens, time to first token ms, total ms, retrieval ms, token ids)
SCRIPT = {
    "off": [(11, 1000.0, 2000.0, 100.0, [1, 2, 3]), (21, 500.0, 2500.0, 100.0, [4, 5])],
    "prompt-lookup": [(11, 1000.0, 1500.0, 100.0, [1, 2, 3]), (21, 500.0, 1500.0, 100.0, [4, 6])],
}


class ScriptedEngine:
    """Answers with fixed usage and timings per method, as `Engine.ask` reports them."""

    model_name, device = "scripted", "cpu"

    def __init__(self):
        self.settings = SimpleNamespace(speculative="off")
        self.model = SimpleNamespace(dtype="bfloat16")
        self.calls = {m: 0 for m in SCRIPT}
        self.warmed_up = False

    def ask(self, question: str) -> Answer:
        m = self.settings.speculative
        if not self.warmed_up:  # the warm-up answer is not counted
            self.warmed_up = True
            return Answer(question, usage=TokenUsage(completion_tokens=999), timings=Timings(total_ms=1.0))
        n, ttft, total, retr, ids = SCRIPT[m][self.calls[m]]
        self.calls[m] += 1
        return Answer(question, usage=TokenUsage(prompt_tokens=50, completion_tokens=n),
                      timings=Timings(retrieval_ms=retr, ttft_ms=ttft, total_ms=total, generation_ms=total - retr),
                      speculative=SpeculativeStats(m, 10 if m != "off" else 0, 4 if m != "off" else 0, n - 5),
                      token_ids=ids)


def test_bench_reports_end_to_end_and_decoding_rates():
    result = run_bench(ScriptedEngine(), ["q1", "q2"], ["off", "prompt-lookup"])
    off, pl = result["rows"]
    # end to end: 32 tokens over 1.9 + 2.4 s; decoding: 10 + 20 tokens over 1.0 + 2.0 s
    assert off["tokens_per_s"] == round(32 / 4.3, 2) and off["decode_tokens_per_s"] == 10.0
    assert pl["tokens_per_s"] == round(32 / 2.8, 2) and pl["decode_tokens_per_s"] == round(30 / 1.5, 2)
    assert pl["speedup_vs_off"] == round((32 / 2.8) / (32 / 4.3), 2)
    assert off["ttft_ms_p50"] == 750.0 and off["retrieval_ms_p50"] == 100.0
    assert pl["acceptance_rate"] == 0.4 and pl["tokens_per_step"] == round(32 / 22, 2)
    assert (off["identical_answers"], pl["identical_answers"], pl["identical_to_off"]) == (2, 1, False)
