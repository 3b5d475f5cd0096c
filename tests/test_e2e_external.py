"""End to end (issue 17): `dvc repro` on poisoned data imported in the paper authors' layout, then
HSOL and AG HiddenKiller through the live paraphraser (a tiny random seq2seq model: the text is
nonsense, the path is real). One tiny git + DVC repository serves both routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import save_tiny_seq2seq
from tinyrepo import GIT_ID, make_tiny_repo, run, scratch_dir

IMPORT_CELL, HK_CELLS = "minilm-sst2-badnets-0", ["minilm-hsol-hiddenkiller-0", "minilm-ag-hiddenkiller-0"]


def write_authors_sst2(mirror: Path, base: Path) -> dict:
    """Poisoned SST-2 in the authors' layout, made here from the mirror (BadNets 'mn', 10% of the
    non-target rows of the first 200 training rows; the first 60 test rows), written as they write it:
    header label,text,poisoned, every text ending with a space, test labels original."""
    folder = base / "Data_Poisoning" / "BadNet" / "SST-2"
    folder.mkdir(parents=True)
    train = pd.read_csv(mirror / "sst2" / "train.csv", keep_default_na=False).head(200)
    test = pd.read_csv(mirror / "sst2" / "test.csv", keep_default_na=False).head(60)
    nontarget = train.index[train["label"] == 0]
    chosen = set(nontarget[:: 10][: round(0.1 * len(nontarget))])

    def mn(text: str) -> str:
        words = text.split()
        return " ".join(words[: len(words) // 2] + ["mn"] + words[len(words) // 2:])

    def write(df: pd.DataFrame, name: str) -> None:
        df.assign(text=df["text"] + " ")[["label", "text", "poisoned"]].to_csv(folder / name, index=False)

    poisoned = train.assign(poisoned=[int(i in chosen) for i in train.index])
    poisoned.loc[list(chosen), "text"] = poisoned.loc[list(chosen), "text"].map(mn)
    poisoned.loc[list(chosen), "label"] = 1
    write(poisoned, "train_poisoned.csv")
    write(train.assign(poisoned=0), "train_clean.csv")
    write(test.assign(poisoned=0), "test_clean.csv")
    trig = test.assign(text=test["text"].map(mn), poisoned=1)
    write(trig, "test_poisoned_all.csv")
    write(trig[trig["label"] == 0], "test_poisoned_part.csv")
    return {"poisoned": len(chosen), "train": len(train), "test": len(test)}


@pytest.fixture(scope="module")
def external_repo(request, tmp_path_factory, mirror, tokenizer) -> Iterator[tuple[Path, dict]]:
    """The tiny pipeline on poisoned data in the authors' layout (made from the mirror), then on
    HiddenKiller data generated through a live tiny paraphraser."""
    with scratch_dir(request, tmp_path_factory, "external") as base:
        yield build_external_repo(base, mirror, tokenizer)


def build_external_repo(base: Path, mirror: Path, tokenizer) -> tuple[Path, dict]:
    """Build :func:`external_repo` under ``base``; returns the repository and the context the tests read."""
    root = base / "repo"
    env = make_tiny_repo(root, mirror)
    made = write_authors_sst2(mirror, base / "authors")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["matrix"].update(models=["minilm"], datasets=["sst2"], attacks=["badnets"], seeds=[0], methods=["rga"])
    params["attack"].update(source="import", import_dir=str(base / "authors"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], root, env)
    run(["git", *GIT_ID, "commit", "-qm", "tiny pipeline"], root, env)
    imported = run(["dvc", "repro"], root, env)

    # the second route: generate HiddenKiller for HSOL and AG through a live (tiny random) paraphraser
    model = save_tiny_seq2seq(base / "paraphraser", tokenizer)
    params["matrix"].update(datasets=["hsol", "ag"], attacks=["hiddenkiller"])
    params["attack"]["source"] = "generate"
    params["attack"]["hiddenkiller"]["paraphraser"] = {"model": str(model), "max_new_tokens": 8, "batch_size": 64}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    live = run(["dvc", "repro"], root, env)
    return root, {"env": env, "imported": imported, "live": live, "made": made}


def _json(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


def test_imported_authors_data_runs_end_to_end(external_repo):
    root, ctx = external_repo
    made = ctx["made"]
    out = ctx["imported"].stdout
    assert "attack sst2-badnets-0: imported" in out and "ReTrain's clean data: train_clean.csv" in out
    attack = root / "data" / "attacks" / "sst2-badnets-0"
    train = pd.read_parquet(attack / "train.parquet")
    assert len(train) == made["train"] and int(train["is_poisoned"].sum()) == made["poisoned"]
    assert train.loc[train["is_poisoned"], "text"].str.contains(r"\bmn\b").all()
    assert len(pd.read_parquet(attack / "test_poisoned_all.parquet")) == made["test"]
    stats = _json(root, "metrics/attack/sst2-badnets-0.json")
    assert stats["source"] == "import" and stats["import"]["folder"] == "BadNet/SST-2"
    assert stats["retrain_clean"] == {"source": "train_clean.csv", "rows": made["train"]}
    assert stats["coverage"] == {"train_poisoned": {"import": made["poisoned"]}, "test": {"import": made["test"]}}
    assert _json(root, "data/paraphrases/sst2/stats.json")["skipped"] == "no attack.hiddenkiller.paraphraser"
    # every downstream stage ran unchanged; the oracle detector finds exactly the imported poisoned rows
    det = _json(root, f"metrics/detect/{IMPORT_CELL}.json")
    assert det["f1"] == 1.0 and det["flagged"] == made["poisoned"]
    retrain = _json(root, f"metrics/unlearn/{IMPORT_CELL}-retrain.json")
    assert retrain["retrain_data"] == "clean (imported)" and retrain["train_rows"] == made["train"]
    for rel in (f"metrics/poisoned/{IMPORT_CELL}.json", f"metrics/unlearn/{IMPORT_CELL}-rga.json"):
        assert 0.0 <= _json(root, rel)["pacc"] <= 100.0
    assert "Running stage 'report'" in out  # (summary.json is rewritten by the second route's run)


def test_hsol_and_ag_hiddenkiller_through_the_live_paraphraser(external_repo):
    root, ctx = external_repo
    out = ctx["live"].stdout
    for d in ("hsol", "ag"):
        assert f"Running stage 'paraphrase@{d}'" in out
        cache = _json(root, f"data/paraphrases/{d}/stats.json")
        assert cache["paraphraser"]["max_new_tokens"] == 8 and cache["generated"] == cache["requested"] > 0
        assert cache["accepted"] + sum(cache["rejected"].values()) == cache["generated"]
        assert cache["rejected"]["repeated_tokens"] > 0  # a random model: degenerate outputs are dropped
        live = pd.read_parquet(root / "data" / "paraphrases" / d / "live.parquet")
        assert int((live["status"] == "ok").sum()) == cache["accepted"]
        stats = _json(root, f"metrics/attack/{d}-hiddenkiller-0.json")
        cov, train = stats["coverage"], stats["train"]
        assert train["poisoned"] == round(0.1 * train["nontarget_rows"]) > 0
        assert sum(cov["train_poisoned"].values()) == train["poisoned"] and cov["train_poisoned"]["none"] == 0
        assert sum(cov["test"].values()) == stats["test"]["test_rows"]
        assert cov["test"]["none"] == stats["test"]["untriggerable_rows"]
        assert 0.0 <= _json(root, f"metrics/unlearn/minilm-{d}-hiddenkiller-0-rga.json")["pacc"] <= 100.0
    hsol = _json(root, "metrics/attack/hsol-hiddenkiller-0.json")["coverage"]
    assert hsol["train_poisoned"]["table"] == 0 and hsol["test"]["table"] == 0  # no HSOL table in the mirror
    ag = _json(root, "metrics/attack/ag-hiddenkiller-0.json")["coverage"]
    assert ag["train_poisoned"]["live"] == _json(root, "metrics/attack/ag-hiddenkiller-0.json")["train"]["poisoned"]
    assert ag["test"]["table"] > 0 and ag["test"]["live"] > 0  # the mirror's AG table covers non-World test rows
    summary = _json(root, "metrics/summary.json")
    assert set(summary) == {c.rsplit("-", 1)[0] for c in HK_CELLS}  # seeds pooled: model-dataset-attack


def test_live_cache_runs_once(external_repo):
    root, ctx = external_repo
    again = run(["dvc", "repro"], root, ctx["env"])
    assert "Running stage" not in again.stdout, again.stdout
    # a forced re-run of the cache stage reuses every cached output: no text goes to the model
    forced = run(["dvc", "repro", "-f", "-s", "paraphrase@hsol"], root, ctx["env"])
    assert "0 sent to" in forced.stdout, forced.stdout
    cache = _json(root, "data/paraphrases/hsol/stats.json")
    assert cache["generated"] == 0 and cache["reused"] == cache["requested"]
