"""End to end: `dvc repro` of the whole DAG on a tiny matrix in a temporary git + DVC repository."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tinyrepo import DEGENERATE_CUBE, GIT_ID, make_tiny_repo, run, scratch_dir


@pytest.fixture(scope="module")
def tiny_repo(request, tmp_path_factory, mirror) -> Iterator[tuple[Path, dict]]:
    """A fresh git+dvc repo holding the project's pipeline with the tiny profile and a small matrix."""
    with scratch_dir(request, tmp_path_factory, "e2e") as base:
        root = base / "repo"
        env = make_tiny_repo(root, mirror)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["matrix"]["attacks"] = ["badnets", "hiddenkiller"]
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "add", "-A"], root, env)
        run(["git", *GIT_ID, "commit", "-qm", "tiny pipeline"], root, env)
        proc = run(["dvc", "repro"], root, env)
        yield root, {"env": env, "repro": proc, "params": params}


CELLS = ["minilm-sst2-badnets-0", "minilm-sst2-hiddenkiller-0"]


def test_repro_builds_every_cell(tiny_repo):
    root, ctx = tiny_repo
    methods = ctx["params"]["matrix"]["methods"]
    for cell in CELLS:
        d, a, s = cell.split("-")[1:]
        attack = root / "data" / "attacks" / f"{d}-{a}-{s}"
        for f in ("train.parquet", "test_clean.parquet", "test_poisoned_part.parquet", "test_poisoned_all.parquet"):
            assert (attack / f).is_file(), f
        stats = json.loads((attack / "stats.json").read_text())
        nontarget = stats["train"]["nontarget_rows"]
        assert stats["train"]["poisoned"] == round(0.1 * nontarget)
        assert (root / "models" / "poisoned" / cell / "model.safetensors").is_file()
        assert not list((root / "models" / "poisoned" / cell).glob("*.bin"))
        before = json.loads((root / "metrics" / "poisoned" / f"{cell}.json").read_text())
        for k in ("cacc", "lfr", "pacc"):
            assert 0.0 <= before[k] <= 100.0
        det = json.loads((root / "metrics" / "detect" / f"{cell}.json").read_text())
        assert det["detector"] == "oracle" and det["f1"] == 1.0
        for m in ["retrain", *methods]:
            res = json.loads((root / "metrics" / "unlearn" / f"{cell}-{m}.json").read_text())
            assert 0.0 <= res["pacc"] <= 100.0, (cell, m)
        for m in methods:
            hist = (root / "plots" / "unlearn" / f"{cell}-{m}" / "history.csv").read_text().splitlines()
            assert len(hist) == 1 + 1 + 2  # header, epoch 0, epochs 1-2 of the tiny profile
            assert (root / "plots" / "unlearn" / f"{cell}-{m}" / "plots" / "metrics" / "pacc.tsv").is_file()
            # epoch 0 is the poisoned model: its row equals the finetune stage's metrics (that they are
            # read rather than re-evaluated is tested in test_unlearn_epoch0_takes_the_finetune_metrics)
            first = dict(zip(hist[0].split(","), hist[1].split(",")))
            assert first["epoch"] == "0"
            assert float(first["pacc"]) == pytest.approx(before["pacc"]) and float(first["cacc"]) == pytest.approx(before["cacc"])
        # the cleaned model is a product for the methods with <method>.save_model: true (default: rga)
        saved = root / "models" / "unlearned" / f"{cell}-rga"
        assert (saved / "model.safetensors").is_file() and not list(saved.glob("*.bin"))
        card = json.loads((saved / "model_card.json").read_text())
        assert card["method"] == "rga" and card["params"]["alpha"] == 2.0
        res = json.loads((root / "metrics" / "unlearn" / f"{cell}-rga.json").read_text())
        assert card["metrics"]["pacc"] == res["pacc"]
        import hashlib
        want = hashlib.sha256((root / "models" / "poisoned" / cell / "model.safetensors").read_bytes()).hexdigest()
        assert card["input_checkpoint"]["sha256"] == {"model.safetensors": want}
        assert (root / "models" / "unlearned" / f"{cell}-ga" / "NOT_SAVED.txt").is_file()


def test_report_and_metrics(tiny_repo):
    import pandas as pd

    root, ctx = tiny_repo
    methods = ctx["params"]["matrix"]["methods"]
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert set(summary) == {c.rsplit("-", 1)[0] for c in CELLS}  # seeds pooled: model-dataset-attack
    for cell in CELLS:
        group = summary[cell.rsplit("-", 1)[0]]
        assert set(group) == {"detect_f1", *methods}
        # per-row predictions written by the unlearn / retrain_eval stages agree with their metrics files
        # and, recomputed here, with the report's ΔPACC
        pacc = {}
        for m in ["retrain", *methods]:
            rows = pd.read_csv(root / "data" / "preds" / f"{cell}-{m}.csv")
            res = json.loads((root / "metrics" / "unlearn" / f"{cell}-{m}.json").read_text())
            assert len(rows) == sum(map(sum, res["confusion_triggered"]))
            pacc[m] = 100 * (rows["pred"] == rows["label"]).mean()
            assert pacc[m] == pytest.approx(res["pacc"])
            # each triggered row sits next to its own clean row's prediction (the trigger shift's pairing)
            assert (rows["clean_label"] == rows["label"]).all()
            matched = pd.crosstab(rows["clean_label"], rows["clean_pred"]).reindex(
                index=[0, 1], columns=[0, 1], fill_value=0).to_numpy().tolist()
            assert matched == res["confusion_clean_matched"]
        for m in methods:
            got = group[m]
            assert got["delta_pacc"] == pytest.approx(abs(pacc["retrain"] - pacc[m]), abs=0.006)
            assert got["delta_pacc"] <= got["delta_pacc_hi"]  # (lo can exceed a point ΔPACC of 0: see bootstrap_intervals)
            if pacc[m] != pacc["retrain"]:
                assert got["delta_pacc_hi"] > got["delta_pacc_lo"]  # a real interval, not a point
        # gradient ascent raises the forget set's cross-entropy (Eq. 3): a behaviour of the method, read
        # from its own per-epoch history
        hist = pd.read_csv(root / "plots" / "unlearn" / f"{cell}-ga" / "history.csv")
        assert hist["poison_loss"].iloc[-1] > hist["poison_loss"].iloc[0]
    table = (root / "report" / "table.md").read_text()
    assert "| Model | Dataset | Attack | Seeds run | ReTrain CACC |" in table
    assert "| minilm | sst2 | badnets | 1 of 1 |" in table and "‡" not in table
    # where the numbers come from: every model stage records its compute, the report shows it once
    import platform

    import torch
    import transformers

    for path in [root / "metrics" / "poisoned" / f"{CELLS[0]}.json",
                 root / "metrics" / "unlearn" / f"{CELLS[0]}-ga.json",
                 root / "metrics" / "unlearn" / f"{CELLS[0]}-retrain.json"]:
        c = json.loads(path.read_text())["compute"]
        assert (c["device"], c["threads"], c["torch"], c["transformers"], c["python"]) == \
            ("cpu", 1, torch.__version__, transformers.__version__, platform.python_version())
        assert c["precision"] in ("fp32", "amp_bf16")  # precision auto: what this CPU supports
        assert c["onednn_isa"] and c["cpu"] and "host" not in json.dumps(c).lower()
    assert "\n## Compute\n" in table and "1 torch thread(s)" in table
    assert table.count("| minilm | sst2 |") >= 2
    assert "## Detection quality" in table and "| minilm | sst2 | badnets | oracle | 1.000 | 1.000 | 1.000 |" in table
    figs = {p.name for p in (root / "report" / "figures").glob("*.png")}
    for cell in CELLS:
        assert {f"{cell}-pacc.png", f"{cell}-poison_loss.png", f"{cell}-lambda.png", f"{cell}-confusion.png"} <= figs
    # only the headline file is a DVC metric: per-stage detail files are plain outputs
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root, ctx["env"]).stdout)
    files = {f for rev in shown.values() for f in (rev.get("data") or {})}
    assert files == {"metrics/summary.json"}, files


def test_repro_is_up_to_date_and_params_are_scoped(tiny_repo):
    root, ctx = tiny_repo
    env = ctx["env"]
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout, again.stdout
    # Changing rga.alpha must invalidate only the RGA unlearning cells (and the report).
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["rga"]["alpha"] = 3.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    finally:
        (root / "params.yaml").write_text(text)
    changed = set(status)
    assert changed == {f"unlearn@{c}-rga" for c in CELLS}, changed


TOY_PLUGIN = '''"""A user's method from outside the rga package (README: "Adding a method")."""
import torch.nn.functional as F

from rga.unlearning import Batch, register


@register("toy", display="Toy", checks={"scale": (lambda v: v > 0, "> 0")})
def toy_loss(b: Batch, scale: float = 0.5):
    """Half-strength gradient ascent: CE(retain) - scale * CE(forget)."""
    f = F.cross_entropy(b.forget_logits, b.forget_labels)
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    return r - scale * f, {"forget_ce": f.item(), "retain_ce": r.item()}
'''


def test_new_methods_rerun_only_their_own_cells_and_reach_the_report(tiny_repo):
    root, ctx = tiny_repo
    env = ctx["env"]
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    # a built-in method added as its own module: only its cells (and the report) become stale (status
    # only: the venv's editable install imports rga from the main checkout, not from this copy)
    (root / "src" / "rga" / "methods" / "toy2.py").write_text(TOY_PLUGIN.replace('"toy"', '"toy2"'))
    params["matrix"]["methods"] = params["matrix"]["methods"] + ["toy2"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    finally:
        (root / "src" / "rga" / "methods" / "toy2.py").unlink()
    assert set(status) == {f"unlearn@{c}-toy2" for c in CELLS} | {"report"}, set(status)
    # a plugin from plugins/toy.py, outside the package: runs through the stage and the report
    (root / "plugins").mkdir()
    (root / "plugins" / "toy.py").write_text(TOY_PLUGIN)
    params["matrix"]["methods"] = params["matrix"]["methods"][:-1]
    params["matrix"]["plugin_methods"] = ["toy"]
    params["toy"] = {"scale": 0.5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
        assert set(status) == {f"unlearn_plugin@{c}-toy" for c in CELLS} | {"report"}, set(status)
        proc = run(["dvc", "repro"], root, env)
        assert proc.stdout.count("Running stage 'unlearn_plugin@") == 2
        assert "Running stage 'unlearn@" not in proc.stdout
        summary = json.loads((root / "metrics" / "summary.json").read_text())
        for cell in CELLS:
            assert 0.0 <= summary[cell.rsplit("-", 1)[0]]["toy"]["pacc"] <= 100.0
        table = (root / "report" / "table.md").read_text()
        assert "Toy ΔPACC" in table and "Toy shift" in table
    finally:
        (root / "params.yaml").write_text(text)
        shutil.rmtree(root / "plugins")


def test_a_method_that_raises_still_fails_its_stage(tiny_repo):
    """Only degenerate detection is recorded as a result; a method with a bug fails loudly."""
    root, ctx = tiny_repo
    env = ctx["env"]
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    (root / "plugins").mkdir(exist_ok=True)
    (root / "plugins" / "boom.py").write_text(TOY_PLUGIN.replace('"toy", display="Toy"', '"boom", display="Boom"')
                                              .replace("    f = F.cross_entropy", "    raise RuntimeError('boom: a bug in the loss')\n    f = F.cross_entropy"))
    params["matrix"]["plugin_methods"] = ["boom"]
    params["boom"] = {"scale": 0.5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    target = f"unlearn_plugin@{CELLS[0]}-boom"
    try:
        proc = run(["dvc", "repro", "-s", target], root, env, check=False)
    finally:
        (root / "params.yaml").write_text(text)
        shutil.rmtree(root / "plugins")
    assert proc.returncode != 0
    assert "RuntimeError: boom: a bug in the loss" in proc.stdout + proc.stderr
    assert not (root / "metrics" / "unlearn" / f"{CELLS[0]}-boom.json").exists()


def test_missing_paraphrase_table_fails_clearly(tiny_repo):
    root, ctx = tiny_repo
    env = ctx["env"]
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["matrix"]["datasets"] = ["sst2", "hsol"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = run(["dvc", "repro", "attack@hsol-hiddenkiller-0"], root, env, check=False)
    finally:
        (root / "params.yaml").write_text(text)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "covers 0 of" in out and "needs 12" in out, out[-2000:]


def test_cube_detector_runs_end_to_end(tiny_repo):
    """The tiny profile unlearns on the oracle's forget set; here CUBE itself runs once through DVC on
    one cell (UMAP, HDBSCAN, the filter rule, the fit filter) and its outputs agree with each other."""
    import pandas as pd

    root, ctx = tiny_repo
    env = ctx["env"]
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["detect"].update(detector="cube", min_cluster_size=0.05, min_samples=0.03, n_neighbors=15)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cell = CELLS[0]
    try:
        run(["dvc", "repro", "-s", f"detect@{cell}"], root, env)
        det = json.loads((root / "metrics" / "detect" / f"{cell}.json").read_text())
        forget = pd.read_parquet(root / "data" / "detect" / cell / "forget.parquet")
        retain = pd.read_parquet(root / "data" / "detect" / cell / "retain.parquet")
        scatter = pd.read_csv(root / "plots" / "detect" / f"{cell}.csv")
    finally:
        (root / "params.yaml").write_text(text)
        run(["dvc", "repro", "-s", f"detect@{cell}"], root, env)  # back to the oracle (from the run-cache)
    assert det["detector"] == "cube"
    assert sum(det["cluster_sizes"].values()) == len(forget) + len(retain) == len(scatter) == 240
    assert det["flagged"] == len(forget) == int(scatter["flagged"].sum())
    assert det["true_positives"] == int(forget["is_poisoned"].sum())
    assert det["true_poisoned"] == int(forget["is_poisoned"].sum() + retain["is_poisoned"].sum())
    assert scatter[["umap_1", "umap_2"]].std().min() > 0  # a real 2-D embedding, not the oracle's zeros
    oracle = json.loads((root / "metrics" / "detect" / f"{cell}.json").read_text())
    assert oracle["detector"] == "oracle" and oracle["f1"] == 1.0


def test_degenerate_detection_is_a_result_and_the_dag_finishes(tiny_repo):
    import pandas as pd

    root, ctx = tiny_repo
    env = ctx["env"]
    text = (root / "params.yaml").read_text()
    normal_summary = json.loads((root / "metrics" / "summary.json").read_text())
    params = yaml.safe_load(text)
    params["detect"].update(DEGENERATE_CUBE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    methods = params["matrix"]["methods"] + list(params["matrix"].get("plugin_methods") or [])
    try:
        proc = run(["dvc", "repro"], root, env, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((root / "metrics" / "summary.json").read_text())
        table = (root / "report" / "table.md").read_text()
        results = {(cell, m): json.loads((root / "metrics" / "unlearn" / f"{cell}-{m}.json").read_text())
                   for cell in CELLS for m in ["retrain", *methods]}
        dets = {cell: json.loads((root / "metrics" / "detect" / f"{cell}.json").read_text()) for cell in CELLS}
        preds = pd.read_csv(root / "data" / "preds" / f"{CELLS[0]}-ga.csv")
        hist = pd.read_csv(root / "plots" / "unlearn" / f"{CELLS[0]}-ga" / "history.csv")
    finally:
        (root / "params.yaml").write_text(text)
        run(["dvc", "repro"], root, env)  # back to the oracle (from the run-cache)
    for cell in CELLS:
        assert dets[cell]["detector"] == "cube" and dets[cell]["flagged"] == 240  # real CUBE flagged every row
        for m in methods:
            r = results[(cell, m)]
            assert r["status"] == "skipped" and (r["forget_rows"], r["retain_rows"]) == (240, 0)
            assert r["reason"].startswith(f"cell {cell}: detection flagged every one of the 240 training rows")
            assert all(r[k] is None for k in ("cacc", "lfr", "pacc", "trigger_shift", "confusion_triggered"))
        # ReTrain (retrain.data: clean) does not need the retain set: it ran
        assert results[(cell, "retrain")]["status"] == "ran" and results[(cell, "retrain")]["pacc"] is not None
    assert len(preds) == 0 and len(hist) == 0  # nothing that could pass for a result
    # the same keys as a normal run, with nulls where nothing ran
    # (the normal summary on disk may hold an earlier test's plugin method too: compare per method)
    assert set(summary) == set(normal_summary)
    for g, entry in summary.items():
        assert set(entry) == {"detect_f1", *methods}
        assert all(set(entry[m]) == set(normal_summary[g]["ga"]) for m in methods)
    for group in summary.values():
        for m in methods:
            assert group[m]["delta_pacc"] is None and group[m]["seeds_run"] == 0 and group[m]["seeds"] == 1
    assert "| minilm | sst2 | badnets † ‡ | 0 of 1 |" in table  # † too: F1 of flagging every row
    assert "‡ minilm / sst2 / badnets: not run (status: skipped, left out of every mean, interval and verdict) " \
           "on seed 0 (GA, NPO" in table
    assert "**" not in table.split("## Trigger shift")[0]  # no verdict from cells that did not run


def test_plots_show_leads_with_method_overlays_on_a_utf8_page(tiny_repo, tmp_path):
    root, ctx = tiny_repo
    env = ctx["env"]
    run(["dvc", "repro"], root, env)  # the workspace as params.yaml says now (earlier tests ran a plugin method)
    data = json.loads(run(["dvc", "plots", "show", "--json"], root, env).stdout)["data"]
    overlays = ["PACC over unlearning epochs", "CACC over unlearning epochs", "Poison loss over unlearning epochs",
                "Adaptive weight lambda (RGA, DGA)"]
    assert list(data)[:4] == overlays
    matrix = yaml.safe_load((root / "params.yaml").read_text())["matrix"]  # earlier tests add plugin methods
    methods = set(matrix["methods"]) | set(matrix.get("plugin_methods") or [])
    pacc = data[overlays[0]][0]["content"]
    rows = pacc["data"]["values"]
    assert {r["method"] for r in rows} == methods | {"retrain"}
    assert {r["cell"] for r in rows} == set(CELLS)
    assert pacc["spec"]["encoding"]["y"]["field"] == "pacc" and pacc["spec"]["encoding"]["x"]["field"] == "epoch"
    assert all(0 <= float(r["pacc"]) <= 100 for r in rows)
    assert data[overlays[2]][0]["content"]["spec"]["encoding"]["y"]["scale"] == {"type": "symlog"}
    assert {r["method"] for r in data[overlays[3]][0]["content"]["data"]["values"]} <= {"rga", "dga"}
    # DVCLive's per-metric files are no longer separate plots; the CUBE scatter is coloured by truth
    assert not [k for k in data if "/plots/metrics/" in k and k.startswith("plots/unlearn/")]
    cube = data[f"plots/detect/{CELLS[0]}.csv"][0]["content"]
    assert cube["encoding"]["color"]["field"] == "group" and cube["encoding"]["shape"]["field"] == "flagged"
    assert {r["group"] for r in cube["data"]["values"]} == {"clean", "poisoned"}
    # the page: DVC's default declares no charset, so vega's minus signs broke when opened as a file
    run(["dvc", "plots", "show", "-o", str(tmp_path / "html")], root, env)
    page = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    head = page[:page.index("</head>")]
    assert '<meta charset="utf-8">' in head and "<title>rga plots</title>" in head
    assert page.count("vegaEmbed(") == sum(1 for k in data if not k.endswith(".png"))
    assert "{plot_divs}" not in page and "{scripts}" not in page
