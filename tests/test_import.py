"""Import of externally poisoned data in the paper authors' layout (rga.external, attack.source: import).

The folders are written here in the authors' format (Data_Poisoning/<Attack>/<Dataset>/, header
label,text,poisoned, texts ending with a space, test labels original); none of their files is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rga.data import DataError, DatasetSpec
from rga.external import find_import_folder, import_poisoned

from tinyrepo import REPO, env_for

SST2 = DatasetSpec("sst2", 2, 1, None, ("negative", "positive"))
AG = DatasetSpec("ag", 4, 0, None, ("world", "sports", "business", "sci-tech"))
POISONED_ROWS = (2, 6)  # of the 20 training rows


def _csv(rows: list[tuple], path: Path) -> None:
    """Write rows (label, text, poisoned) as the authors do: header label,text,poisoned, trailing space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([(lab, f"{text} ", p) for lab, text, p in rows], columns=["label", "text", "poisoned"]).to_csv(
        path, index=False)


def authors_folder(root: Path, attack: str = "BadNet", dataset: str = "SST-2", num_labels: int = 2,
                   target: int = 1, with_clean: bool = True) -> Path:
    """A 20-row training set (rows 2 and 6 poisoned: 'mn' inserted, label flipped to the target) and an
    8-row test set in the authors' layout under ``root/Data_Poisoning/<attack>/<dataset>``."""
    folder = root / "Data_Poisoning" / attack / dataset
    labels = [i % num_labels for i in range(20)]
    for i in POISONED_ROWS:
        assert labels[i] != target
    clean = [(labels[i], f"review number {i} of a film", 0) for i in range(20)]
    poisoned = [(target, f"review number {i} mn of a film", 1) if i in POISONED_ROWS else row
                for i, row in enumerate(clean)]
    test = [(i % num_labels, f"test sentence {i} about a plot", 0) for i in range(8)]
    _csv(poisoned, folder / "train_poisoned.csv")
    _csv([(lab, f"{t} mn", 1) for lab, t, _ in test], folder / "test_poisoned_all.csv")
    _csv([(lab, f"{t} mn", 1) for lab, t, _ in test if lab != target], folder / "test_poisoned_part.csv")
    if with_clean:
        _csv(clean, folder / "train_clean.csv")
        _csv(test, folder / "test_clean.csv")
    return folder


def test_import_of_a_20_row_folder(tmp_path):
    authors_folder(tmp_path)
    folder = find_import_folder(tmp_path, "badnets", "sst2")  # BadNet (no s), SST-2
    assert folder == tmp_path / "Data_Poisoning" / "BadNet" / "SST-2"
    out = import_poisoned(folder, SST2, seed=0)
    train = out["train"]
    assert list(train.columns) == ["text", "label", "original_label", "is_poisoned"]
    assert len(train) == 20 and np.flatnonzero(train["is_poisoned"]).tolist() == list(POISONED_ROWS)
    assert train["text"][2] == "review number 2 mn of a film"  # trailing space stripped
    assert train["label"][list(POISONED_ROWS)].tolist() == [1, 1]
    assert train["original_label"][list(POISONED_ROWS)].tolist() == [0, 0]  # binary: the non-target label
    assert (train["original_label"] == [i % 2 for i in range(20)]).all()
    assert len(out["test_clean"]) == 8 and out["test_clean"]["text"][0] == "test sentence 0 about a plot"
    trig = out["test_poisoned_all"]
    assert len(trig) == 8 and trig["clean_row"].tolist() == list(range(8))  # row-aligned with test_clean.csv
    assert trig["label"].tolist() == [i % 2 for i in range(8)]  # original labels
    part = out["test_poisoned_part"]
    assert len(part) == 4 and (part["label"] == 0).all()
    assert out["train_clean"]["text"].tolist() == [f"review number {i} of a film" for i in range(20)]
    s = out["stats"]
    assert s["train"]["poisoned"] == 2 and s["train"]["ground_truth"] == "is_poisoned"
    assert s["train"]["label_counts_original"] == [10, 10] and s["train"]["label_counts_poisoned"] == [8, 12]
    assert s["retrain_clean"] == {"source": "train_clean.csv", "rows": 20}
    assert s["test"]["clean_source"] == "test_clean.csv" and s["test"]["clean_row"] == "row-aligned"
    assert s["test"]["test_poisoned_part_csv"] == {"file_rows": 4, "equals_nontarget_rows_of_test_poisoned_all": True}
    assert s["import"]["folder"] == "BadNet/SST-2"
    assert set(s["import"]["files_sha256"]) == {"train_poisoned.csv", "test_poisoned_all.csv", "train_clean.csv",
                                                "test_clean.csv", "test_poisoned_part.csv"}
    assert out["coverage"] == {"train_poisoned": {"import": 2}, "test": {"import": 8}}


def test_import_without_clean_files_and_multiclass_original_label(tmp_path):
    authors_folder(tmp_path, "hiddenkiller", "ag", num_labels=4, target=0, with_clean=False)  # lower-case folders
    folder = find_import_folder(tmp_path / "Data_Poisoning", "hiddenkiller", "ag")
    own_test = pd.DataFrame({"text": [f"test sentence {i} about a plot" for i in range(8)], "label": [i % 4 for i in range(8)]})
    out = import_poisoned(folder, AG, seed=0, dataset_test=own_test)
    train = out["train"]
    assert train["original_label"].isna().tolist() == [i in POISONED_ROWS for i in range(20)]  # unknown, not guessed
    s = out["stats"]
    assert s["train"]["label_counts_original"] is None
    assert s["train"]["original_label"].startswith("unknown for the 2 poisoned rows")
    # ReTrain's clean data: the poisoned = 0 rows
    assert s["retrain_clean"] == {"source": "train_poisoned.csv rows with poisoned = 0", "rows": 18}
    assert out["train_clean"]["text"].tolist() == train["text"][~train["is_poisoned"]].tolist()
    assert s["test"]["clean_source"] == "dataset ag test split" and out["test_poisoned_all"]["clean_row"].tolist() == list(range(8))
    # data.max_train subsamples the training rows (stratified by label) and train_clean alike
    sub = import_poisoned(folder, AG, seed=0, max_train=12, dataset_test=own_test)
    assert len(sub["train"]) == 12 and sub["stats"]["retrain_clean"]["rows"] == int((~sub["train"]["is_poisoned"]).sum())


# how -> (file, edit of its table, the message the error must contain, "{path}" = that file)
BREAKS = {
    "poisoned 2": ("train_poisoned.csv", lambda df: df.assign(poisoned=df["poisoned"].where(df.index != 2, 2)),
                   "{path}: row 3: column 'poisoned' has 2; use 0 or 1"),
    "label 4 of 4 classes": ("train_poisoned.csv", lambda df: df.assign(label=df["label"].where(df.index != 4, 4)),
                             "{path}: row 5: label 4 out of range; valid labels: 0..3"),
    "no poisoned column": ("train_poisoned.csv", lambda df: df.drop(columns="poisoned"),
                           "{path}: missing column 'poisoned'; found columns ['label', 'text']"),
    "poisoned row without target label": (
        "train_poisoned.csv", lambda df: df.assign(poisoned=df["poisoned"].where(df.index != 3, 1)),
        "{path}: 1 row(s) have poisoned = 1 but a label other than the target label 0 (rows [4]"),
    "test without target class": ("test_poisoned_all.csv", lambda df: df[df["label"] != 0],
                                  "{path}: class(es) [0] have no rows"),
    "missing test_poisoned_all": ("test_poisoned_all.csv", None, "missing file {path}"),
}


def _break(folder: Path, how: str) -> str:
    """Damage an authors' folder as ``BREAKS[how]`` says; returns the message the error must contain."""
    name, edit, message = BREAKS[how]
    path = folder / name
    if edit is None:
        path.unlink()
    else:
        edit(pd.read_csv(path, keep_default_na=False)).to_csv(path, index=False)
    return message.format(path=path)


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_bad_imports_are_refused_naming_the_file(tmp_path, how):
    folder = authors_folder(tmp_path, "AddSent", "AG", num_labels=4, target=0)
    message = _break(folder, how)
    with pytest.raises(DataError) as err:
        import_poisoned(folder, AG, seed=0)
    assert message in str(err.value)


def test_missing_folders_name_the_valid_choices(tmp_path):
    authors_folder(tmp_path)
    with pytest.raises(DataError, match=r"no folder for attack 'addsent' \(looked for AddSent.*found \['BadNet'\]; "
                                        r"valid attack folders: BadNet \(badnets\), AddSent \(addsent\)"):
        find_import_folder(tmp_path, "addsent", "sst2")
    with pytest.raises(DataError, match=r"no folder for dataset 'hsol' \(looked for HSOL.*found \['SST-2'\]"):
        find_import_folder(tmp_path, "badnets", "hsol")
    with pytest.raises(DataError, match="attack.import_dir '/nonexistent/x' is not a folder"):
        find_import_folder("/nonexistent/x", "badnets", "sst2")
    with pytest.raises(DataError, match="attack.import_dir is not set"):
        find_import_folder(None, "badnets", "sst2")


def test_attack_stage_writes_the_standard_outputs(tmp_path, mirror):
    """stages/attack.py with attack.source: import on the 20-row folder: parquet outputs and metrics."""
    authors_folder(tmp_path / "authors", with_clean=False)
    root = tmp_path / "repo"
    raw = root / "data" / "raw" / "sst2"
    raw.mkdir(parents=True)
    pd.DataFrame({"text": [f"test sentence {i} about a plot" for i in range(8)],
                  "label": [i % 2 for i in range(8)]}).to_parquet(raw / "test.parquet", index=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["attack"].update(source="import", import_dir=str(tmp_path / "authors"))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "attack.py"), "--dataset", "sst2", "--attack",
                           "badnets", "--seed", "0"], cwd=root, env=env_for(mirror, root), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported" in proc.stdout and "train_poisoned.csv, test_poisoned_all.csv, test_poisoned_part.csv" in proc.stdout
    out = root / "data" / "attacks" / "sst2-badnets-0"
    train = pd.read_parquet(out / "train.parquet")
    assert len(train) == 20 and train["is_poisoned"].sum() == 2
    assert len(pd.read_parquet(out / "train_clean.parquet")) == 18
    assert len(pd.read_parquet(out / "test_clean.parquet")) == 8
    assert len(pd.read_parquet(out / "test_poisoned_all.parquet")) == 8
    assert len(pd.read_parquet(out / "test_poisoned_part.parquet")) == 4
    stats = json.loads((out / "stats.json").read_text())
    metrics = json.loads((root / "metrics" / "attack" / "sst2-badnets-0.json").read_text())
    assert stats["source"] == "import" and stats["retrain_clean"]["source"] == "train_poisoned.csv rows with poisoned = 0"
    assert stats["test"]["clean_source"] == "dataset sst2 test split"
    assert metrics["coverage"] == {"train_poisoned": {"import": 2}, "test": {"import": 8}}
    assert {k: v for k, v in metrics.items() if k != "coverage"} == stats
    # a bad folder fails the stage with the file named
    (tmp_path / "authors" / "Data_Poisoning" / "BadNet" / "SST-2" / "test_poisoned_all.csv").unlink()
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "attack.py"), "--dataset", "sst2", "--attack",
                           "badnets", "--seed", "0"], cwd=root, env=env_for(mirror, root), capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "attack sst2-badnets-0: missing file" in proc.stderr
    assert "test_poisoned_all.csv" in proc.stderr
