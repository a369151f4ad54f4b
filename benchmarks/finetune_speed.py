"""LoRA fine-tuning speed and memory (issue 11, item 5): configurations of `ragdesk finetune` side by side in
one run, each in its own process (so each peak RSS is its own), on the same tickets and the same steps.

For every configuration it prints training tokens/s (tokens of the rendered tickets, padding not counted, over
the training time; runs use --val-fraction 0 so no validation pass is timed), wall time, the peak RSS of the
whole process and the loss on the held-out "test" tickets after training.

    python benchmarks/finetune_speed.py [--steps 40] [--configs new,fp32-full,...] [--before SRC]

`--before SRC` also runs the command from another checkout (e.g. `git worktree add /tmp/before bdf4b7d`), the
"today" of the issue, with its own defaults. Configurations (flags added to `ragdesk finetune`):
  new         the defaults (bf16 where the CPU has it, the micro-batch of 4 in one pass, grouped by length,
              every layer checkpointed, reply logits in chunks, no LoRA dropout)
  dropout05   the defaults with LoRA dropout 0.05 (the default before)
  fast        one ticket per forward/backward pass, no checkpointing (faster, more memory)
  whole-ckpt  the defaults spelled out
  whole-ckpt2 the same, every 2nd layer checkpointed
  whole       the whole micro-batch in one pass, grouped by length, no checkpointing
  whole-2x2   micro-batches of 2 in one pass, 2 per optimizer step, grouped, no checkpointing
  fast-ckpt   one ticket per pass, every layer checkpointed
  fast-mmap   fast with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_), so freed
              activation buffers go back to the system instead of fragmenting the heap
  fp32        float32 base, defaults otherwise
  fp32-full   float32, whole micro-batches, no checkpointing, logits all at once (what the code did before)
It measures and asserts nothing: read the ratios on a quiet machine. Needs the default model in the models
folder (RAGDESK_MODELS_DIR) and runs on the bundled tickets unless --tickets says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "new": [],
    "dropout05": ["--dropout", "0.05"],
    "fast": ["--rows-per-pass", "1", "--checkpoint-every", "0"],
    "whole-ckpt": ["--rows-per-pass", "0", "--checkpoint-every", "1", "--group-by-length"],
    "whole-ckpt2": ["--rows-per-pass", "0", "--checkpoint-every", "2", "--group-by-length"],
    "whole": ["--rows-per-pass", "0", "--checkpoint-every", "0", "--group-by-length"],
    "whole-2x2": ["--rows-per-pass", "0", "--checkpoint-every", "0", "--batch-size", "2", "--grad-accum", "2",
                  "--group-by-length"],
    "fast-ckpt": ["--rows-per-pass", "1", "--checkpoint-every", "1"],
    "fast-mmap": ["--rows-per-pass", "1", "--checkpoint-every", "0", "MALLOC_MMAP_THRESHOLD_=131072"],
    "fp32": ["--dtype", "float32"],
    "fp32-full": ["--dtype", "float32", "--rows-per-pass", "0", "--logits-chunk", "0"],
}

RUNNER = r"""
import json, resource, sys, time
from click.testing import CliRunner
from assistant.cli import cli
t0 = time.perf_counter()
res = CliRunner().invoke(cli, sys.argv[1:], catch_exceptions=False)
wall = time.perf_counter() - t0
if res.exit_code:
    print(res.output, file=sys.stderr); sys.exit(res.exit_code)
out = json.loads(res.stdout)
out["wall_s"] = wall
out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(out))
"""


def run_one(src: Path, flags: list[str], args, home: str) -> dict:
    out = tempfile.mkdtemp(prefix="ft-", dir=home)
    env_set = dict(f.split("=", 1) for f in flags if "=" in f and not f.startswith("-"))  # NAME=VALUE: environment
    flags = [f for f in flags if f.split("=", 1)[0] not in env_set]
    cmd = [sys.executable, "-c", RUNNER, "finetune", str(args.tickets), "--max-steps", str(args.steps),
           "--out", out, "--overwrite", "--val-fraction", "0", "--json", *flags]
    env = dict(os.environ, PYTHONPATH=str(src), RAGDESK_HOME=home, **env_set)
    if src != REPO:  # another checkout may convert model folders differently: it gets its own models folder
        env["RAGDESK_MODELS_DIR"] = os.path.join(home, "models-before")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=src)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    history = json.loads((Path(out) / "metrics.json").read_text()).get("history", [])
    steps = [h for h in history if "train_loss" in h]
    return {"tokens": res.get("tokens"), "train_seconds": res.get("train_seconds"), "wall_s": res["wall_s"],
            "tokens_per_s_reported": res.get("tokens_per_s"), "peak_rss_bytes": res["peak_rss_bytes"],
            "test_loss": res.get("test_loss"),
            "final_train_loss": steps[-1]["train_loss"] if steps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--tickets", type=Path, default=REPO / "corpus" / "tickets.jsonl")
    ap.add_argument("--configs", default="new,fp32-full")
    ap.add_argument("--before", type=Path, default=None, help="another checkout to run as 'before'")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    args.tickets = args.tickets.resolve()

    home = tempfile.mkdtemp(prefix="ragdesk-ftspeed-")
    rows = []
    plan = [(name, REPO, CONFIGS[name]) for name in args.configs.split(",") if name]
    if args.before:
        plan.insert(0, ("before", args.before.resolve(), []))
    for name, src, flags in plan:
        print(f"-- {name}: ragdesk finetune --max-steps {args.steps} {' '.join(flags)}", file=sys.stderr, flush=True)
        rows.append({"config": name, **run_one(src, flags, args, home)})
    print(f"{args.steps} steps on {args.tickets.name}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'config':<12}{'tokens':>9}{'train s':>9}{'tok/s':>8}{'wall s':>8}{'peak RSS':>11}{'test loss':>10}")
    base = next((r for r in rows if "error" not in r), None)
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<12}  failed: {r['error']}")
            continue
        print(f"{r['config']:<12}{r['tokens']:>9,}{r['train_seconds']:>9.1f}{r['tokens_per_s_reported']:>8.0f}"
              f"{r['wall_s']:>8.1f}{r['peak_rss_bytes'] / 2**30:>9.2f} G{r['test_loss'] or float('nan'):>10.4f}"
              f"   x{r['tokens_per_s_reported'] / base['tokens_per_s_reported']:.2f} of {base['config']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
