"""Wall time of the default matrix: `rga-launch` with N local workers against a serial `dvc repro`,
measured in the same run (issue 9's benchmark; not a timed test).

Both arms start from a clean clone of the current commit (``git clone``, no DVC cache, so every
stage computes), on the same machine, one after the other:

* serial:   ``dvc repro`` (torch uses every core, as the README's command does);
* launcher: ``rga-launch --workers N --threads T`` (default 2 workers x 1 thread on this 2-core CPU),
            which ends with its own ``dvc repro`` restoring everything from the run-cache.

It prints both wall times and their ratio, compares the two arms' ``metrics/`` and ``report/``
files, checks that ``dvc status`` is clean in both, and keeps the serial arm's workspace
(``--keep``) so that its dvc.lock/metrics/plots/report can be committed. The files are
byte-identical only when both arms use the same torch threads per stage (``--serial-threads``
equal to ``--threads``; tests/test_launch.py checks that on the tiny profile): with 2 threads
against 1, torch's CPU kernels sum in another order and training amplifies the difference, so
the benchmark then reports the largest ΔPACC difference instead.

Usage: ``RGA_DATA_MIRROR=../shared/data python benchmarks/launch.py [--workers 2 --threads 1]``
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clone(dest: Path) -> None:
    """``git clone`` of this repository's current commit into ``dest`` (no DVC cache: all stages compute)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` with its output in ``log``; returns the wall time in seconds (exits on failure)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} (exit {rc}); see {log}")
    return seconds


def same_tree(a: Path, b: Path) -> list[str]:
    """Files under metrics/ and report/ that differ between the two workspaces."""
    diffs = []
    for sub in ("metrics", "report"):
        for f in sorted((a / sub).rglob("*")):
            if f.is_file():
                g = b / f.relative_to(a)
                if not g.is_file() or not filecmp.cmp(f, g, shallow=False):
                    diffs.append(str(f.relative_to(a)))
    return diffs


def main() -> None:
    """Both arms, one after the other; prints the two wall times, their ratio and the checks."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--serial-threads", type=int, default=0, help="torch threads of the serial arm (0 = all cores)")
    p.add_argument("--keep", default="", help="folder to keep the serial arm's workspace in")
    a = p.parse_args()
    if not os.environ.get("RGA_DATA_MIRROR"):
        sys.exit("set RGA_DATA_MIRROR to the data mirror (e.g. ../shared/data)")
    work = Path(a.keep or tempfile.mkdtemp(prefix="rga-launch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    serial, parallel = work / "serial", work / "launcher"
    for d in (serial, parallel):
        if d.exists():
            sys.exit(f"{d} exists; give an empty --keep folder")
        clone(d)
    base = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DVC_NO_ANALYTICS="1")
    base["PATH"] = str(Path(sys.executable).parent) + os.pathsep + base.get("PATH", "")
    base.pop("RGA_THREADS", None)
    base["RGA_DATA_MIRROR"] = str(Path(base["RGA_DATA_MIRROR"]).resolve())  # the clones live elsewhere
    env_s = dict(base, PYTHONPATH=str(serial / "src"))
    if a.serial_threads:
        env_s.update(RGA_THREADS=str(a.serial_threads), OMP_NUM_THREADS=str(a.serial_threads))
    env_p = dict(base, PYTHONPATH=str(parallel / "src"))
    t_serial = timed(["dvc", "repro"], serial, env_s, work / "serial.log")
    t_launch = timed([sys.executable, "-m", "rga.launch", "--workers", str(a.workers), "--threads", str(a.threads)],
                     parallel, env_p, work / "launcher.log")
    ran = [ln for ln in (work / "launcher.log").read_text().splitlines() if "DVC still ran" in ln]
    diffs = same_tree(serial, parallel)
    clean = all(subprocess.run(["dvc", "status", "-q"], cwd=d, env=base).returncode == 0 for d in (serial, parallel))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"default matrix, {cores} cores: serial dvc repro {t_serial:.0f} s; rga-launch {a.workers} workers x "
          f"{a.threads} thread(s) {t_launch:.0f} s (incl. its final dvc repro); ratio {t_launch / t_serial:.3f}x "
          f"(target <= 0.8x)")
    if not diffs:
        same = "metrics/ and report/ byte-identical"
    else:
        a_sum = json.loads((serial / "metrics" / "summary.json").read_text())
        b_sum = json.loads((parallel / "metrics" / "summary.json").read_text())
        gap = max(abs(a_sum[g][m]["delta_pacc"] - b_sum[g][m]["delta_pacc"])
                  for g in a_sum for m in a_sum[g] if isinstance(a_sum[g][m], dict))
        same = (f"{len(diffs)} metrics/report files differ (largest ΔPACC gap {gap:.2f} points)"
                + (": the arms ran with different torch threads per stage" if a.serial_threads != a.threads else ""))
    print(f"{same}; dvc status clean in both: {'yes' if clean else 'NO'}; the launcher's final dvc repro "
          f"recomputed: {ran[0] if ran else 'nothing'}")
    print(f"workspaces and logs: {work}")


if __name__ == "__main__":
    main()
