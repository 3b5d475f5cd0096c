"""Wall time of the default matrix: `rga-launch` with N local workers against a serial `dvc repro`,
measured in the same run (issue 9's benchmark; not a timed test).

Both arms start from a clean clone of the current commit (``git clone``, no DVC cache, so every
stage computes), on the same machine, one after the other:

* serial:   ``dvc repro``;
* launcher: ``rga-launch --workers N``, which ends with its own ``dvc repro`` restoring
            everything from the run-cache.

Both arms run every model stage with the same torch threads: ``compute.threads``, a tracked param
(``--threads T`` sets it in both clones and commits it there; default: the commit's value). The
launcher runs at most ``cores // T`` jobs at once. It prints both wall times and their ratio,
compares the two arms' ``metrics/`` and ``report/`` files (byte-identical expected), checks that
``dvc status`` is clean in both, and keeps the serial arm's workspace (``--keep``).

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
    p.add_argument("--threads", type=int, default=0, help="compute.threads of both arms (0 = the commit's)")
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
        if a.threads:
            import yaml

            params = yaml.safe_load((d / "params.yaml").read_text())
            params["compute"]["threads"] = a.threads
            (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qam",
                            f"compute.threads {a.threads}"], cwd=d, check=True)
    base = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DVC_NO_ANALYTICS="1")
    base["PATH"] = str(Path(sys.executable).parent) + os.pathsep + base.get("PATH", "")
    base["RGA_DATA_MIRROR"] = str(Path(base["RGA_DATA_MIRROR"]).resolve())  # the clones live elsewhere
    env_s = dict(base, PYTHONPATH=str(serial / "src"))
    env_p = dict(base, PYTHONPATH=str(parallel / "src"))
    t_serial = timed(["dvc", "repro"], serial, env_s, work / "serial.log")
    t_launch = timed([sys.executable, "-m", "rga.launch", "--workers", str(a.workers)], parallel, env_p,
                     work / "launcher.log")
    import yaml

    threads = yaml.safe_load((serial / "params.yaml").read_text())["compute"]["threads"]
    ran = [ln for ln in (work / "launcher.log").read_text().splitlines() if "DVC still ran" in ln]
    diffs = same_tree(serial, parallel)
    clean = all(subprocess.run(["dvc", "status", "-q"], cwd=d, env=base).returncode == 0 for d in (serial, parallel))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"default matrix, {cores} cores: serial dvc repro {t_serial:.0f} s; rga-launch {a.workers} workers x "
          f"{threads} thread(s) {t_launch:.0f} s (incl. its final dvc repro); ratio {t_launch / t_serial:.3f}x "
          f"(target <= 0.8x)")
    if not diffs:
        same = "metrics/ and report/ byte-identical"
    else:
        a_sum = json.loads((serial / "metrics" / "summary.json").read_text())
        b_sum = json.loads((parallel / "metrics" / "summary.json").read_text())
        gap = max((abs(a_sum[g][m]["delta_pacc"] - b_sum[g][m]["delta_pacc"]) for g in a_sum for m in a_sum[g]
                   if isinstance(a_sum[g][m], dict) and None not in (a_sum[g][m]["delta_pacc"], b_sum[g][m]["delta_pacc"])),
                  default=0.0)  # skipped cells (null) have nothing to compare
        same = f"{len(diffs)} metrics/report files differ (largest ΔPACC gap {gap:.2f} points)"
    print(f"{same}; dvc status clean in both: {'yes' if clean else 'NO'}; the launcher's final dvc repro "
          f"recomputed: {ran[0] if ran else 'nothing'}")
    print(f"workspaces and logs: {work}")


if __name__ == "__main__":
    main()
