"""How many CPUs other programs leave free, measured over a stretch of our own work (Linux `/proc/stat`).

Decoding steps of a small model are hundreds of short torch calls whose threads wait for each other: when
another program keeps one of 2 CPUs busy, 2 threads decode at less than half the speed of 1 (`ragdesk bench`
beside a busy loop at the same priority: 2.9-3.0 tokens/s on 2 threads, 7.1 on 1). So the decoding loop
measures, over the prefill it runs anyway, how much CPU the rest of the machine used, and decodes on the CPUs
left. The prefill goes by the window before it (since the model was loaded or the last prefill ended; a
prefill of 642 tokens beside that busy loop: 1.37-1.39 s on 1 thread, 1.91-2.22 s on 2). A program at a low
priority (nice 19) barely runs while we do, so it does not count against us.

Not here: choosing the thread count at load time (models/_transformers.py), the decoding loop (_decoding.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["CpuSnapshot", "free_cpus", "mark", "recent_free", "snapshot", "threads_for"]

MIN_WINDOW_S = 0.15  # shorter windows hold too few clock ticks (10 ms each) to tell anything
MAX_AGE_S = 30.0  # a longer window says little about now

# the prefill starts before anything of this answer can be measured: it goes by the window since the last
# mark() (the model's load, the end of the previous prefill), or, when that is too short, the last estimate
_mark: CpuSnapshot | None = None
_last_free: float | None = None


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float  # time.monotonic()
    busy_s: float  # CPU seconds the whole machine spent busy since boot
    own_s: float  # CPU seconds this process has used
    cpus: int


def parse_proc_stat(text: str, ticks_per_s: float) -> tuple[float, int] | None:
    """(busy CPU seconds since boot, number of CPUs) from the text of /proc/stat, or None if unreadable."""
    total, cpus = None, 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            if len(fields) < 4:
                return None
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            total = (sum(fields[:8]) - idle) / ticks_per_s  # user nice system idle iowait irq softirq steal
        elif line.startswith("cpu") and line[3:4].isdigit():
            cpus += 1
    return (total, cpus) if total is not None and cpus else None


def snapshot() -> CpuSnapshot | None:
    """Now, or None where /proc/stat is not there (not Linux) or unreadable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            parsed = parse_proc_stat(f.read(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None
    if parsed is None:
        return None
    t = os.times()
    return CpuSnapshot(time.monotonic(), parsed[0], t.user + t.system, parsed[1])


def free_cpus(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """CPUs the rest of the machine left free between two snapshots (None if unknown or too short)."""
    if before is None or after is None:
        return None
    wall = after.wall - before.wall
    if wall < MIN_WINDOW_S:
        return None
    others = max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / wall
    return max(0.0, after.cpus - others)


def threads_for(wanted: int, free: float | None) -> int:
    """`wanted` threads, or as many as the free CPUs hold (at least 1): a CPU counts when at most a quarter of
    it is taken by other programs."""
    if free is None:
        return wanted
    return max(1, min(wanted, int(free + 0.25)))


def mark(free: float | None = None, now: CpuSnapshot | None = None) -> None:
    """Remember now (`now`, a snapshot just taken, or a new one) and, when given, the free CPUs just measured,
    for the next recent_free()."""
    global _mark, _last_free
    _mark = now if now is not None else snapshot()
    if free is not None:
        _last_free = free


def recent_free() -> float | None:
    """Free CPUs over the window since the last mark(): the last estimate when the window is too short to
    tell, None when there is no mark or it is older than MAX_AGE_S."""
    if _mark is None:
        return None
    now = snapshot()
    if now is None or now.wall - _mark.wall > MAX_AGE_S:
        return None
    free = free_cpus(_mark, now)
    return _last_free if free is None else free
