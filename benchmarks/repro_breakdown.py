"""Run `dvc repro` serially and print where its time goes: seconds per stage and per stage kind.

Usage (from the repository root, inside the venv):
    python benchmarks/repro_breakdown.py [--out benchmarks/results/repro_breakdown.md] [-- DVC_ARGS...]

It starts `dvc repro` (plus any DVC_ARGS), time-stamps each "Running stage '<name>'" line DVC
prints, and charges the time until the next stage starts (DVC's own hashing and caching
included) to that stage. Time before the first stage (DVC's status check) is "dvc overhead".
The whole output of `dvc repro` is passed through, so this is the same run as the README's
command 1, only timed. Exits with `dvc repro`'s exit code.

Not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

STAGE = re.compile(r"Running stage '([^']+)'")


def breakdown(events: list[tuple[str, float]], end: float, start: float) -> tuple[dict, dict]:
    """Per-stage and per-kind seconds from ``(stage, start_time)`` events.

    Args:
        events: stages in the order DVC started them, with their start times (seconds).
        end: when `dvc repro` exited; start: when it was launched.

    Returns:
        ``(per_stage, per_kind)``: dicts of seconds; ``per_kind`` sums the stages of each kind
        (the name before ``@``) and has a ``dvc overhead`` entry for the time before the first stage.
    """
    per_stage: dict[str, float] = {}
    for (name, t), nxt in zip(events, [t for _, t in events[1:]] + [end]):
        per_stage[name] = nxt - t
    per_kind: dict[str, float] = defaultdict(float)
    per_kind["dvc overhead"] = (events[0][1] if events else end) - start
    for name, s in per_stage.items():
        per_kind[name.split("@")[0]] += s
    return per_stage, dict(per_kind)


def render(per_stage: dict, per_kind: dict, total: float, rc: int) -> str:
    """Markdown tables of the breakdown (kinds sorted by time, then every stage)."""
    lines = [f"`dvc repro`: {total:,.0f} s ({total / 60:.1f} min), exit code {rc}, "
             f"{len(per_stage)} stages run, {os.cpu_count()} CPU cores", "",
             "| stage kind | stages | seconds | share |", "|---|---:|---:|---:|"]
    counts = defaultdict(int)
    for name in per_stage:
        counts[name.split("@")[0]] += 1
    for kind, s in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {counts.get(kind, '')} | {s:,.0f} | {100 * s / max(total, 1e-9):.1f}% |")
    lines += ["", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {s:,.1f} |" for name, s in per_stage.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/repro_breakdown.md")
    p.add_argument("dvc_args", nargs="*")
    a = p.parse_args()
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro", *a.dvc_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    events: list[tuple[str, float]] = []
    for line in proc.stdout:
        m = STAGE.search(line)
        if m:
            events.append((m.group(1), time.perf_counter()))
        sys.stdout.write(line)
        sys.stdout.flush()
    rc = proc.wait()
    end = time.perf_counter()
    per_stage, per_kind = breakdown(events, end, start)
    text = render(per_stage, per_kind, end - start, rc)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print("\n" + text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
