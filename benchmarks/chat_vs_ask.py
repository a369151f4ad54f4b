"""Chat app vs `ragdesk ask` (issue 10): decoding speed, time to first token and key-press latency of the real
app, with the real default model, against the `ask` path on the same questions in the same run, idle and with
one competing CPU-bound program at nice 19 (a busy loop this script starts and stops itself).

- ask: `Engine(settings)` loaded once in this process, `Engine.stream` per question, as `ragdesk ask` does.
- app: `RagdeskApp(settings).run_test()` with the real engine path (the engine in its child process). Its
  figures are taken where the user sees them: time to first token = Enter -> first tokens handled by the app;
  tokens/s = (completion tokens - 1) / (first -> last tokens handled by the app).
- app-thread (with --thread): the old path, the Engine in a worker thread of the app (engine_factory), to show
  what the child process fixes.
While each app answer streams, a key is typed into the prompt every 100 ms and the time until the Input shows
it is recorded (p50/p90 over all answers of that run).

Every mode answers one warm-up question first (not counted); the app answers it again (not counted) after
each `ask`, so that its engine's prefill does not count the `ask` just run as another program's load.
`--ask-decode-threads 1` also times `ask` decoding on one thread, as the app's engine does on 2 CPUs. Figures
are medians over the questions; the ratios compare modes measured back to back in this run (the machine is
shared: read the ratios and the load average printed with them). Needs an index of the corpus in RAGDESK_HOME, e.g.

    export RAGDESK_HOME=$(mktemp -d) RAGDESK_EMBEDDER=minilm RAGDESK_MODELS_DIR=~/.cache/ragdesk-test-models
    ragdesk index corpus/docs
    python benchmarks/chat_vs_ask.py --max-new-tokens 48 --thread

Not here: generation speed across models and decoding methods (ragdesk bench), retrieval (retrieval_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = ["Which port does the Tidepool server listen on by default?",
             "How long does Tidepool keep old file versions?",
             "How much does the Team edition cost per user?",
             "How do I change where Tidepool stores its blocks?"]
WARMUP = "What is Tidepool?"
KEY_EVERY_S = 0.1


@contextlib.contextmanager
def competing_load(on: bool):
    """One CPU-bound program at nice 19 while the block runs (none when `on` is False)."""
    if not on:
        yield
        return
    proc = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))  # a timeout still stops the busy loop
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def measure_ask(engine, questions: list[str], decode_threads: int = 0) -> list[dict]:
    """Per question: ttft_ms and tokens/s as `ragdesk ask` reports them (Engine timings); `decode_threads`
    (when given) as `RAGDESK_DECODE_THREADS` would set it for that `ask`."""
    from assistant import _cpuload

    out = []
    model = engine.model
    for q in questions:
        # as a `ragdesk ask` of its own: the app's engine, which has just answered in another process, would
        # otherwise count as another program's load in the window the next prefill fits its threads to
        _cpuload.mark()
        if not decode_threads:
            a = engine.ask(q)
        else:  # a local model only (a served one has no threads of ours)
            saved, model.decode_threads = model.decode_threads, decode_threads
            try:
                a = engine.ask(q)
            finally:
                model.decode_threads = saved
        out.append({"ttft_ms": a.timings.ttft_ms, "retrieval_ms": a.timings.retrieval_ms,
                    "tokens_per_s": a.timings.tokens_per_s, "prompt_tokens": a.usage.prompt_tokens,
                    "tokens": a.usage.completion_tokens, "status": a.status})
    return out


async def measure_app(settings, questions: list[str], in_thread: bool = False, ask_engine=None,
                      ready_timeout: float = 600,
                      key_every: float = KEY_EVERY_S,
                      asked_threads: dict[int, list[dict]] | None = None
                      ) -> tuple[list[dict], list[dict], list[float]]:
    """Per question: what the app's user sees (see the module docstring), and, when `ask_engine` is given,
    the same question through `ask` just before it (interleaved, so both see the same machine: on a shared
    machine the load moves within seconds), and through `ask` with each number of decode threads that
    `asked_threads` has a list for; and every key-press latency (ms). While `ask` runs the app's
    event loop is blocked, but it is idle then (its engine, in the child, waits for a question)."""
    from textual import events

    from assistant.tui._widgets import ChatView
    from assistant.tui.app import RagdeskApp

    seen: list[float] = []  # perf_counter of each TokensArrived the app handled, for the current answer
    seen_cpu: list[float] = []  # the app process's CPU time when it handled the first of them

    submitted: list[float] = []  # when the app had done its work on Enter and handed the question on

    class TimedApp(RagdeskApp):
        async def on_input_submitted(self, event) -> None:
            await super().on_input_submitted(event)
            submitted.append(time.perf_counter())

        def on_chat_view_tokens_arrived(self, event: ChatView.TokensArrived) -> None:
            if not seen:
                seen_cpu.append(time.process_time())
            seen.append(time.perf_counter())
            super().on_chat_view_tokens_arrived(event)

    factory = None
    if in_thread:
        from assistant.engine import Engine

        factory = lambda s: Engine(s)  # noqa: E731 - the old in-thread path
    app = TimedApp(settings, engine_factory=factory)
    results, asked, keys = [], [], []

    def send_key(key: str, char: str) -> None:
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)

    async with app.run_test(size=(150, 44)) as pilot:
        end = time.monotonic() + ready_timeout
        while app.engine is None:
            if app.engine_error or time.monotonic() > end:
                raise SystemExit(f"the app's engine did not load: {app.engine_error or 'timeout'}")
            await pilot.pause(0.05)
        prompt = app.query_one("#prompt")
        steps = [("app", WARMUP, False)]
        for q in questions:
            if ask_engine is not None:
                # the app's engine fits its prefill's threads to the load since its last prefill, and there the
                # `ask` just run is another program's (2 CPUs for a second or more); an app used alone has no
                # such neighbour, so an uncounted answer ends that window first (as measure_ask starts ask's
                # window afresh)
                steps += [("ask", q, True), ("app", WARMUP, False)]
            steps.append(("app", q, True))
        for kind, q, counted in steps:
            if kind == "ask":
                asked += measure_ask(ask_engine, [q])
                for n, rows in (asked_threads or {}).items():
                    rows += measure_ask(ask_engine, [q], n)
                continue
            # each question in a new conversation, as `ask` answers it: a follow-up would carry the earlier
            # turns in its prompt and take longer to prefill, and the comparison would not be like for like
            await app.action_new_chat()
            await pilot.pause()
            seen.clear()
            seen_cpu.clear()
            submitted.clear()
            prompt.value = q
            t0, cpu0 = time.perf_counter(), time.process_time()
            send_key("enter", "\r")
            while app.generating is None:
                await asyncio.sleep(0.002)
            msg_id, next_key = app.generating, time.perf_counter() + key_every
            while app.generating is not None:
                if seen and time.perf_counter() >= next_key:  # while it streams: type, wait until shown
                    before = len(prompt.value)
                    tk = time.perf_counter()
                    send_key("x", "x")
                    while len(prompt.value) == before and time.perf_counter() - tk < 5:
                        await asyncio.sleep(0.001)
                    if counted:
                        keys.append((time.perf_counter() - tk) * 1000)
                    next_key = time.perf_counter() + key_every
                await asyncio.sleep(0.02)  # a slow poll: this loop shares the app's process
            app_cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)  # cores the app's process used
            prompt.value = ""
            m = app.history.message(msg_id)
            n = m.usage.get("completion_tokens", 0)
            if not counted:
                continue
            decode = seen[-1] - seen[0] if len(seen) > 1 else 0.0
            # cores the app's process used before the first token: what the engine's prefill competed with
            app_cpu_ttft = (seen_cpu[0] - cpu0) / (seen[0] - t0) if seen and seen_cpu else 0.0
            results.append({"ttft_ms": (seen[0] - t0) * 1000 if seen else 0.0,
                            "tokens_per_s": (n - 1) / decode if decode > 0 and n > 1 else 0.0,
                            "engine_tokens_per_s": m.timings.get("tokens_per_s", 0.0), "app_cpu": app_cpu,
                            "app_cpu_ttft": app_cpu_ttft,
                            "engine_ttft_ms": m.timings.get("ttft_ms", 0.0),
                            "engine_retrieval_ms": m.timings.get("retrieval_ms", 0.0),
                            "submit_ms": (submitted[0] - t0) * 1000 if submitted else 0.0,
                            "prompt_tokens": m.usage.get("prompt_tokens", 0),
                            "tokens": n, "status": m.status})
    return results, asked, keys


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(settings, questions: list[str], loads: list[str], thread: bool, app_settings=None,
        key_every: float = KEY_EVERY_S, ask_threads: tuple[int, ...] = ()) -> dict:
    """For each load: the app (child process) interleaved with ask, then (`thread`) the in-thread app
    interleaved with ask again; each app mode's ratio is against the ask answers interleaved with it."""
    from assistant.engine import Engine

    engine = Engine(settings).load()
    engine.ask(WARMUP)
    report = {}
    for load in loads:
        with competing_load(load == "nice19"):
            la_start = os.getloadavg()[0]
            by_threads: dict[int, list[dict]] = {n: [] for n in ask_threads}
            app, ask, keys = asyncio.run(measure_app(app_settings or settings, questions, ask_engine=engine,
                                                     key_every=key_every, asked_threads=by_threads))
            row = {"ask": ask, "app": app, "keys_ms": keys,
                   "ask_decode_threads": {str(n): rows for n, rows in by_threads.items()}}
            if thread:
                row["app_thread"], row["ask_thread"], row["keys_thread_ms"] = asyncio.run(
                    measure_app(settings, questions, True, ask_engine=engine, key_every=key_every))
            row["loadavg"] = [la_start, os.getloadavg()[0]]
        report[load] = row
        print("\n".join(summary({load: row})), flush=True)  # as it comes: a full run takes minutes
    return report


def summary(report: dict) -> list[str]:
    lines = []
    for load, row in report.items():
        lines.append(f"[{load}] load average {row['loadavg'][0]:.1f} -> {row['loadavg'][1]:.1f}")
        for name, keys, asked in (("app", "keys_ms", "ask"), ("app_thread", "keys_thread_ms", "ask_thread")):
            if name not in row:
                continue
            ask_tps, ask_ttft = _median(row[asked], "tokens_per_s"), _median(row[asked], "ttft_ms")
            lines.append(f"  ask        {ask_tps:6.2f} tok/s  TTFT {ask_ttft:7.0f} ms   (interleaved with {name}; "
                         f"retrieval {_median(row[asked], 'retrieval_ms'):.0f} ms; prompt "
                         f"{_median(row[asked], 'prompt_tokens'):.0f} tokens)")
            tps, ttft = _median(row[name], "tokens_per_s"), _median(row[name], "ttft_ms")
            lines.append(f"  {name:<10} {tps:6.2f} tok/s  TTFT {ttft:7.0f} ms   = {tps / ask_tps if ask_tps else 0:.2f}x"
                         f" ask's tok/s, {ttft / ask_ttft if ask_ttft else 0:.2f}x its TTFT;  key press p50 "
                         f"{_pct(row[keys], 0.5):.0f} ms p90 {_pct(row[keys], 0.9):.0f} ms "
                         f"({len(row[keys])} presses); engine-side {_median(row[name], 'engine_tokens_per_s'):.2f}"
                         f" tok/s, TTFT {_median(row[name], 'engine_ttft_ms'):.0f} ms, retrieval "
                         f"{_median(row[name], 'engine_retrieval_ms'):.0f} ms, prompt "
                         f"{_median(row[name], 'prompt_tokens'):.0f} tokens; Enter handled in "
                         f"{_median(row[name], 'submit_ms'):.0f} ms; app process "
                         f"{_median(row[name], 'app_cpu'):.2f} cores "
                         f"({_median(row[name], 'app_cpu_ttft'):.2f} before the first token)")
            if name == "app":
                for n, rows in row.get("ask_decode_threads", {}).items():
                    n_tps = _median(rows, "tokens_per_s")
                    share = tps / n_tps if n_tps else 0
                    lines.append(f"  ask, {n} decode thread(s) {n_tps:6.2f} tok/s  TTFT "
                                 f"{_median(rows, 'ttft_ms'):7.0f} ms   (the app = {share:.2f}x of it)")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=3, help="how many of the questions (after a warm-up)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--loads", default="idle,nice19", help="idle, nice19 or both (comma-separated)")
    p.add_argument("--thread", action="store_true", help="also measure the old in-thread engine path")
    p.add_argument("--app-threads", type=int, default=0,
                   help="torch threads of the app's engine process (default: the settings', as ask)")
    p.add_argument("--key-every", type=float, default=KEY_EVERY_S,
                   help="seconds between key presses while an answer streams (default %(default)s)")
    p.add_argument("--ask-decode-threads", default="",
                   help="also run each question through ask decoding on these numbers of threads (comma-separated; "
                        "e.g. 1: the app's engine decodes on one fewer than the CPUs)")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    ask_threads = tuple(int(n) for n in args.ask_decode_threads.split(",") if n)
    if any(n < 1 for n in ask_threads):
        p.error(f"--ask-decode-threads {args.ask_decode_threads}: each number must be at least 1")
    from assistant.settings import load_settings

    settings = load_settings({"max_new_tokens": args.max_new_tokens})
    app_settings = (load_settings({"max_new_tokens": args.max_new_tokens, "threads": args.app_threads})
                    if args.app_threads else None)
    report = run(settings, QUESTIONS[: args.questions], args.loads.split(","), args.thread, app_settings,
                 args.key_every, ask_threads)
    if args.json_out:
        args.json_out.write_text(json.dumps({"settings": {"model": settings.model, "max_new_tokens":
                                             settings.max_new_tokens, "speculative": settings.speculative},
                                             "cpus": os.cpu_count(), "report": report}, indent=1))


if __name__ == "__main__":
    main()
