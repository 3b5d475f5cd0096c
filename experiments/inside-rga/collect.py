"""Copy the `inside-<name>` DVC experiments' results into experiments/inside-rga/<name>/ and build
the ablation table and figures of README "Inside RGA" (table.md, table.csv, figures/).

Usage (repository root): python experiments/inside-rga/collect.py [name ...]
With no names it only rebuilds the table and figures from the folders already here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rga.io import save_figure, write_csv, write_text  # noqa: E402


def git(*args: str) -> str:
    """Stdout of ``git <args>`` in the repository root (raises CalledProcessError on failure)."""
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def exp_ref(name: str) -> str:
    """The commit of DVC experiment ``inside-<name>`` (the newest when several exist)."""
    refs = [line.split() for line in git("for-each-ref", "--sort=-creatordate", "--format=%(refname) %(objectname)",
                                         "refs/exps").splitlines()]
    hits = [sha for ref, sha in refs if ref.rsplit("/", 1)[-1] == f"inside-{name}"]
    if not hits:
        raise SystemExit(f"no DVC experiment named inside-{name}; run experiments/inside-rga/run.sh {name}")
    return hits[0]


def collect(name: str) -> None:
    """Copy experiment ``inside-<name>``'s report, summary, params and, for every cell and method
    of its matrix, the metrics and per-epoch curves into ``<name>/``, with ``experiment.json``
    (its commit and the params it changed)."""
    sha = exp_ref(name)
    params = yaml.safe_load(git("show", f"{sha}:params.yaml"))
    m = params["matrix"]
    out = HERE / name
    files = ["report/table.md", "metrics/summary.json", "params.yaml"]
    for model in m["models"]:
        for ds in m["datasets"]:
            for atk in m["attacks"]:
                for seed in m["seeds"]:
                    cell = f"{model}-{ds}-{atk}-{seed}"
                    files += [f"metrics/detect/{cell}.json", f"metrics/poisoned/{cell}.json",
                              f"metrics/unlearn/{cell}-retrain.json"]
                    for meth in m["methods"]:
                        files += [f"metrics/unlearn/{cell}-{meth}.json", f"plots/unlearn/{cell}-{meth}/history.csv"]
    for f in files:
        text = git("show", f"{sha}:{f}")
        dest = out / (f.replace("plots/unlearn/", "history/").replace("/history.csv", ".csv"))
        write_text(text, dest)
    diff = {k: v for k, v in flat(params).items() if flat(yaml.safe_load((ROOT / "params.yaml").read_text())).get(k) != v}
    write_text(json.dumps({"experiment": f"inside-{name}", "commit": sha, "params_changed": diff}, indent=1) + "\n",
               out / "experiment.json")
    print(f"{name}: {len(files)} files from {sha[:10]}")


def flat(d: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for a nested params dict."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


# (label, folder or None for the default run they branched from, in baseline/, method)
ROWS = [
    ("RGA (paper: β 0.05, plain norm to θ_base)", None, "rga"),
    ("RGA β 0.01", "beta-0.01", "rga"),
    ("DGA = RGA β 0", None, "dga"),
    ("RGA, optimizer reset each epoch", "reset", "rga"),
    ("RGA, weight decay 0.01", "wd", "rga"),
    ("RGA, authors' protocol (reset + wd 0.01)", "authors", "rga"),
    ("RGA, squared norm (`rga.norm: squared`)", "squared", "rga"),
    ("RGA, norm to the poisoned model (`rga.anchor: poisoned`)", "anchor", "rga"),
    ("Retain + norm (λ ≡ 0)", "controls", "retain_norm"),
    ("GA stopped at RGA's λ < 0.05 epoch", "controls", "ga_stop"),
    ("GA", None, "ga"),
    ("GA, optimizer reset each epoch", "reset", "ga"),
    ("GA, weight decay 0.01", "wd", "ga"),
    ("GA, authors' protocol", "authors", "ga"),
]
STOP = {"badnets": "controls", "addsent": "controls-addsent-stop3"}  # GA-stop at each cell's own crossing


# The default run these experiments branched from (commit 2fce6ea, made on a CPU with AVX-512-BF16
# under bf16 autocast, like every run here): its ReTrain, GA, NPO, RGA and DGA files of the two
# seed-0 cells, copied into baseline/ so that the table compares runs of one machine. The default
# run on main has since been re-made on another CPU (README "Reproducibility").
BASELINE = "baseline"


def attack_of(cell: str) -> str:
    """The attack of a cell name ``<model>-<dataset>-<attack>-<seed>`` (model names may hold hyphens)."""
    return cell.rsplit("-", 2)[1]


def load(folder: str | None, cell: str, method: str) -> tuple[dict, pd.DataFrame] | None:
    """A method's final metrics and per-epoch history on ``cell``, from experiment folder
    ``folder`` (None: the default run these experiments branched from, kept in ``baseline/``);
    None when that run does not exist."""
    folder = folder or BASELINE
    mj, hist = HERE / folder / "metrics" / "unlearn" / f"{cell}-{method}.json", HERE / folder / "history" / f"{cell}-{method}.csv"
    if not mj.is_file():
        return None
    return json.loads(mj.read_text()), pd.read_csv(hist)


def runs(cell: str, rows) -> tuple[dict, list]:
    """ReTrain's metrics of ``cell`` and ``(label, folder, method, metrics, history)`` for each of
    ``rows`` (label, folder, method) that exists; GA-stop is taken at the cell's own λ crossing
    (its folder in the result is that run's)."""
    rt = json.loads((HERE / BASELINE / "metrics" / "unlearn" / f"{cell}-retrain.json").read_text())
    out = []
    for label, folder, method in rows:
        folder = STOP[attack_of(cell)] if method == "ga_stop" else folder
        got = load(folder, cell, method)
        if got is not None:
            out.append((label, folder, method, *got))
    return rt, out


def first_below(hist: pd.DataFrame, eps: float = 0.05) -> int | None:
    """The first epoch whose mean λ is below ``eps`` (None: no λ logged, or never below)."""
    if "lambda" not in hist:
        return None
    h = hist[(hist.epoch > 0) & hist["lambda"].notna()]
    below = h[h["lambda"] < eps]
    return int(below.epoch.iloc[0]) if len(below) else None


def table(cells=("minilm-sst2-badnets-0", "minilm-sst2-addsent-0")) -> pd.DataFrame:
    """One row per cell and setting of :data:`ROWS` that exists: CACC at epochs 10/20/30,
    ReTrain's CACC, final PACC, ΔPACC, LFR, trigger shift, λ's crossing epoch, distance."""
    recs = []
    for cell in cells:
        rt, found = runs(cell, ROWS)
        for label, folder, method, mj, hist in found:
            at = mj["at_epoch"]
            last = hist.dropna(subset=["retain_loss"]).iloc[-1]
            recs.append({"cell": cell, "setting": label, "method": method, "source": folder or "default run",
                         "cacc_10": at["10"]["cacc"], "cacc_20": at["20"]["cacc"], "cacc_30": at["30"]["cacc"],
                         "retrain_cacc": rt["cacc"], "pacc_30": mj["pacc"], "delta_pacc": abs(rt["pacc"] - mj["pacc"]),
                         "lfr_30": mj["lfr"], "trigger_shift": mj["trigger_shift"],
                         "lambda_below_005_epoch": first_below(hist),
                         "param_distance_30": float(last["param_distance"]) if "param_distance" in hist else None})
    return pd.DataFrame(recs)


def markdown(df: pd.DataFrame) -> str:
    """The README table of :func:`table`, one block per cell."""
    lines = []
    for cell, g in df.groupby("cell", sort=False):
        rt = g.retrain_cacc.iloc[0]
        lines += [f"**{cell}** (ReTrain CACC {rt:.1f})", "",
                  "| Setting | CACC 10 / 20 / 30 | min CACC − ReTrain | PACC 30 | ΔPACC | LFR | Trigger shift | λ < 0.05 from epoch | Σ‖θ − θ_anchor‖ at 30 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in g.itertuples():
            low = min(r.cacc_10, r.cacc_20, r.cacc_30) - rt
            lam = "–" if pd.isna(r.lambda_below_005_epoch) else f"{int(r.lambda_below_005_epoch)}"
            dist = "–" if r.param_distance_30 is None or pd.isna(r.param_distance_30) else f"{r.param_distance_30:.1f}"
            lines.append(f"| {r.setting} | {r.cacc_10:.1f} / {r.cacc_20:.1f} / {r.cacc_30:.1f} | {low:+.1f} | "
                         f"{r.pacc_30:.1f} | {r.delta_pacc:.1f} | {r.lfr_30:.1f} | {r.trigger_shift:.1f} | {lam} | {dist} |")
        lines.append("")
    return "\n".join(lines)


def figures(cells=("minilm-sst2-badnets-0", "minilm-sst2-addsent-0")) -> None:
    """``figures/<cell>-controls.png``: CACC and PACC over epochs, RGA beside its controls and variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [("RGA", None, "rga"), ("DGA", None, "dga"), ("GA", None, "ga"), ("GA-stop", None, "ga_stop"),
            ("Retain+norm", "controls", "retain_norm"), ("RGA squared", "squared", "rga"),
            ("RGA anchor poisoned", "anchor", "rga"), ("RGA authors' protocol", "authors", "rga")]
    for cell in cells:
        rt, found = runs(cell, show)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, _, method, _, hist in found:
            for ax, col in zip(axes, ("cacc", "pacc")):
                h = hist[hist[col].notna()]
                ax.plot(h.epoch, h[col], marker="o", ms=3, label=label,
                        ls="-" if method in ("rga",) else "--")
        for ax, col, name in zip(axes, ("cacc", "pacc"), ("CACC", "PACC")):
            ax.axhline(rt[col], color="black", lw=1, ls=":", label="ReTrain")
            ax.set_xlabel("unlearning epoch")
            ax.set_ylabel(f"{name} (%)")
            ax.set_title(f"{name}, {cell}")
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        save_figure(fig, HERE / "figures" / f"{cell}-controls.png")
        plt.close(fig)


def detection_table() -> str:
    """RGA on AddSent seed 1 with CUBE's forget set (precision 0.50) against the true poison."""
    cell = "minilm-sst2-addsent-1"
    lines = [f"**{cell}**: RGA with CUBE's forget set and with the true poisoned rows (`detect.detector: oracle`)", "",
             "| Forget set | Rows (poisoned) | CACC 10 / 20 / 30 | ReTrain CACC | PACC 30 | ΔPACC | LFR | Trigger shift |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("addsent-1-cube", "CUBE"), ("addsent-1-oracle", "oracle")):
        d = HERE / name / "metrics"
        if not (d / "unlearn" / f"{cell}-rga.json").is_file():
            return ""
        mj = json.loads((d / "unlearn" / f"{cell}-rga.json").read_text())
        rt = json.loads((d / "unlearn" / f"{cell}-retrain.json").read_text())
        cacc = " / ".join(f"{mj['at_epoch'][e]['cacc']:.1f}" for e in ("10", "20", "30"))
        lines.append(f"| {label} | {mj['forget_rows']} ({mj['forget_true_poisoned']}) | {cacc} | {rt['cacc']:.1f} | "
                     f"{mj['pacc']:.1f} | {abs(rt['pacc'] - mj['pacc']):.1f} | {mj['lfr']:.1f} | {mj['trigger_shift']:.1f} |")
    return "\n".join(lines) + "\n"


def lfr_section() -> str:
    """The AG-News experiment's two-LFR table, as its report wrote it."""
    path = HERE / "ag" / "report" / "table.md"
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    return text[text.index("## LFR on multi-class data"):].replace("## ", "**", 1).replace("\n", "**\n", 1)


def document() -> str:
    """The whole ``table.md``: the ablation table, the AddSent seed-1 table and the AG LFR table."""
    return markdown(table()) + "\n" + detection_table() + "\n" + lfr_section()


def main() -> None:
    for name in sys.argv[1:]:
        collect(name)
    df = table()
    write_csv(df, HERE / "table.csv")
    write_text(document(), HERE / "table.md")
    figures()
    print(markdown(df))


if __name__ == "__main__":
    main()
