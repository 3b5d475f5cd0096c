"""How far the default run's headline figures move between machines, next to how far they move
between seeds on one machine (README "Reproducibility").

    python benchmarks/machine_spread.py --rev 2fce6ea [--label-a ...] [--label-b ...]

Reads the report rows (``report/summary_rows.csv``) of the default run at git revision ``--rev``
(run A, made on another machine) and in the workspace (run B, this machine), and the seed spread
(sample std over seeds 0-2) from ``experiments/three-seeds/summary_rows.csv``. Prints, per cell and
method, CACC, PACC, ΔPACC and trigger shift of both runs, their difference, and the seed std;
a difference larger than two seed stds is marked ``!``.
"""

from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("cacc", "pacc", "delta_pacc", "trigger_shift")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", required=True, help="git revision of run A (its report/summary_rows.csv)")
    p.add_argument("--label-a", default="A")
    p.add_argument("--label-b", default="B (workspace)")
    a = p.parse_args()
    old = pd.read_csv(io.StringIO(subprocess.run(["git", "show", f"{a.rev}:report/summary_rows.csv"], cwd=ROOT,
                                                 capture_output=True, text=True, check=True).stdout))
    new = pd.read_csv(ROOT / "report" / "summary_rows.csv")
    seeds = pd.read_csv(ROOT / "experiments" / "three-seeds" / "summary_rows.csv")
    spread = seeds.groupby(["attack", "method"])[list(KEYS)].std(ddof=1)
    print(f"A = {a.label_a}; B = {a.label_b}; seed std = sample std over seeds 0-2 of experiments/three-seeds "
          "(run on A's machine); ! = |B - A| > 2 seed std\n")
    print("| attack | method | " + " | ".join(f"{k} A / B (Δ; seed std)" for k in KEYS) + " |")
    print("|---|---|" + "---:|" * len(KEYS))
    moved = total = 0
    for _, r in new.iterrows():
        o = old[(old.attack == r.attack) & (old.method == r.method) & (old.seed == r.seed)]
        if o.empty:
            continue
        o = o.iloc[0]
        cells = []
        for k in KEYS:
            if pd.isna(r[k]) or pd.isna(o[k]):
                cells.append("–")
                continue
            sd = spread.loc[(r.attack, r.method), k] if (r.attack, r.method) in spread.index else float("nan")
            d = r[k] - o[k]
            mark = " !" if sd == sd and abs(d) > 2 * sd else ""
            moved += bool(mark)
            total += 1
            cells.append(f"{o[k]:.1f} / {r[k]:.1f} ({d:+.1f}; {sd:.1f}){mark}")
        print(f"| {r.attack} | {r.method} | " + " | ".join(cells) + " |")
    print(f"\n{moved} of {total} figures moved by more than two seed stds")


if __name__ == "__main__":
    main()
