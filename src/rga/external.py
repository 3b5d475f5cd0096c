"""Import of externally poisoned data in the paper authors' layout (``attack.source: import``).

The authors' repository (github.com/xingyizhao/RGA) publishes its poisoned data as
``Data_Poisoning/<Attack>/<Dataset>/`` with ``train_poisoned.csv``, ``test_poisoned_all.csv``,
``test_poisoned_part.csv`` and sometimes ``train_clean.csv`` / ``test_clean.csv``. Every file
has the header ``label,text,poisoned``; training rows with ``poisoned = 1`` carry the trigger
and the target label, test files keep the original labels. Folder names are the authors'
(``BadNet``, ``AddSent``, ``HiddenKiller``; ``SST-2``, ``HSOL``, ``AG``), matched
case-insensitively to ours (:data:`ATTACK_FOLDERS`, :data:`DATASET_FOLDERS`).

:func:`import_poisoned` turns such a folder into the attack stage's standard outputs (the same
as attack ``given``, :func:`rga.attacks.given_sets`), plus ReTrain's clean training set.
Every file goes through the readers of :mod:`rga.data` (UTF-8, text normalisation, label
range, every class present), so bad input gets the same errors, naming the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .attacks import ATTACKS, given_sets
from .data import (DataError, DatasetSpec, _check_classes, _read_csv, parse_marks, resolve_conflicts,
                   stratified_subsample, validate_frame)

SOURCES = ("generate", "import")
ATTACK_FOLDERS = {"badnets": ("BadNet", "BadNets"), "addsent": ("AddSent",), "hiddenkiller": ("HiddenKiller",)}
DATASET_FOLDERS = {"sst2": ("SST-2", "SST2"), "hsol": ("HSOL",), "ag": ("AG", "AG-News", "AGNews")}
REQUIRED_FILES = ("train_poisoned.csv", "test_poisoned_all.csv")
OPTIONAL_FILES = ("train_clean.csv", "test_clean.csv", "test_poisoned_part.csv")
LAYOUT = ("the authors' layout: Data_Poisoning/<Attack>/<Dataset>/ with train_poisoned.csv and "
          "test_poisoned_all.csv (header label,text,poisoned), optionally train_clean.csv, test_clean.csv and "
          "test_poisoned_part.csv")


def attack_source(cfg: dict) -> str:
    """``attack.source`` (default ``generate``). Raises ValueError naming the valid choices."""
    value = cfg.get("source") or "generate"
    if value not in SOURCES:
        raise ValueError(f"unknown attack.source {value!r}; valid choices: {', '.join(SOURCES)}")
    return value


def _subfolder(base: Path, names: tuple[str, ...], what: str, valid: str) -> Path:
    wanted = {n.lower() for n in names}
    found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for name in found:
        if name.lower() in wanted:
            return base / name
    raise DataError(f"{base}: no folder for {what} (looked for {' or '.join(names)}, case-insensitive); found "
                    f"{found or 'no folders'}; valid {valid}")


def find_import_folder(import_dir: str | Path, attack: str, dataset: str) -> Path:
    """The authors' folder of one attack x dataset under ``attack.import_dir``.

    ``import_dir`` is the ``Data_Poisoning`` folder or the folder holding it. Our attack names map
    to the authors' (``badnets`` -> ``BadNet`` or ``BadNets``, ``addsent`` -> ``AddSent``,
    ``hiddenkiller`` -> ``HiddenKiller``), our builtin datasets too (``sst2`` -> ``SST-2``, ``hsol``
    -> ``HSOL``, ``ag`` -> ``AG``); any other dataset key is looked for under its own name.

    Raises:
        DataError: ``import_dir`` is not a folder, an attack we cannot import, or a missing attack
            or dataset folder (the message lists the folders found and the valid names).
    """
    if not import_dir:
        raise DataError("attack.source is import but attack.import_dir is not set; give the folder holding "
                        f"Data_Poisoning ({LAYOUT})")
    root = Path(import_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"attack.import_dir {str(import_dir)!r} is not a folder; give the folder holding "
                        f"Data_Poisoning ({LAYOUT})")
    base = root / "Data_Poisoning" if (root / "Data_Poisoning").is_dir() else root
    if attack not in ATTACK_FOLDERS:
        raise DataError(f"attack {attack!r} cannot be imported; valid attacks: {', '.join(ATTACKS)}")
    valid_attacks = "attack folders: " + ", ".join(f"{v[0]} ({k})" for k, v in ATTACK_FOLDERS.items())
    folder = _subfolder(base, ATTACK_FOLDERS[attack], f"attack {attack!r}", valid_attacks)
    valid_data = "dataset folders: " + ", ".join(f"{v[0]} ({k})" for k, v in DATASET_FOLDERS.items()) + \
        ", or a folder named as your own dataset key"
    return _subfolder(folder, DATASET_FOLDERS.get(dataset, (dataset,)), f"dataset {dataset!r}", valid_data)


def read_authors_csv(path: Path, spec: DatasetSpec, marks: bool = True) -> pd.DataFrame:
    """Read one of the authors' files (``label,text,poisoned``, UTF-8) as ``text, label[, poisoned]``.

    Texts and labels go through :func:`rga.data.validate_frame` (normalised text, labels
    ``0 .. num_labels-1`` or ``label_names``, every class present); ``poisoned`` through
    :func:`rga.data.parse_marks` (0/1) when ``marks``.

    Raises:
        DataError: missing or non-UTF-8 file, missing column, bad text/label/poisoned value or a
            class without rows; the message names the file (and the row).
    """
    if not path.is_file():
        raise DataError(f"missing file {path}; an import folder follows {LAYOUT}")
    raw = _read_csv(path, {"text": str})
    if marks and "poisoned" not in raw.columns:
        raise DataError(f"{path}: missing column 'poisoned'; found columns {list(raw.columns)}; the authors' "
                        "files have the header label,text,poisoned")
    out = validate_frame(raw, spec.num_labels, str(path), spec.label_names)
    if marks:
        out["poisoned"] = parse_marks(raw["poisoned"].tolist(), str(path), "poisoned")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def original_labels(labels: np.ndarray, poisoned: np.ndarray, spec: DatasetSpec) -> pd.Series:
    """``original_label`` [N] (nullable Int64) of imported training rows.

    Clean rows keep their label. A poisoned row's original label is known only for binary data
    (the one non-target label); for multi-class data it stays missing (``<NA>``) rather than guessed.
    """
    orig = pd.Series(labels, dtype="Int64")
    if spec.num_labels == 2:
        orig[poisoned] = 1 - spec.target_label
    else:
        orig[poisoned] = pd.NA
    return orig


def import_poisoned(folder: Path, spec: DatasetSpec, seed: int, max_train: int | None = None,
                    on_conflict: str = "error", dataset_test: pd.DataFrame | None = None) -> dict:
    """The attack stage's outputs from one of the authors' folders (:func:`find_import_folder`).

    Args:
        folder: ``.../Data_Poisoning/<Attack>/<Dataset>``.
        spec: the dataset (``num_labels``, ``target_label``, ``label_names``).
        seed: seeds the ``max_train`` subsample (stratified by label, as for attack ``given``).
        max_train: ``data.max_train`` (``None``: every row); applied to ``train_poisoned.csv`` and
            ``train_clean.csv`` alike.
        on_conflict: ``data.on_conflict`` for texts of ``train_poisoned.csv`` with two labels.
        dataset_test: the dataset's own clean test split (``text, label``), used when the folder
            has no ``test_clean.csv``.

    Returns:
        dict as :func:`rga.attacks.given_sets` (``train`` with ``text, label, original_label,
        is_poisoned``; ``test_clean``; ``test_poisoned_all``; ``test_poisoned_part`` = its
        non-target rows; ``stats``) plus ``train_clean`` (ReTrain's clean training set: the
        folder's ``train_clean.csv``, else the ``poisoned = 0`` rows of ``train_poisoned.csv``)
        and ``coverage`` (every poisoned training row and triggered test row comes from the import).
        ``test_poisoned_all`` has ``clean_row`` when it lines up row by row with the clean test
        set (same row count and labels).

    Raises:
        DataError: a missing required file (:data:`REQUIRED_FILES`), a file the readers refuse,
            a poisoned training row without the target label, no poisoned training row, or no
            clean test set (neither ``test_clean.csv`` nor ``dataset_test``).
    """
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise DataError(f"missing file {folder / name}; an import folder follows {LAYOUT}")
    used = {name: _sha256(folder / name) for name in (*REQUIRED_FILES, *OPTIONAL_FILES) if (folder / name).is_file()}
    path = folder / "train_poisoned.csv"
    train, conflicts = resolve_conflicts(read_authors_csv(path, spec), on_conflict, str(path))
    _check_classes(train, spec.num_labels, f"{path} (after data.on_conflict={on_conflict})")
    poisoned = train["poisoned"].to_numpy()
    wrong = np.flatnonzero(poisoned & (train["label"].to_numpy() != spec.target_label))
    if len(wrong):
        raise DataError(f"{path}: {len(wrong)} row(s) have poisoned = 1 but a label other than the target label "
                        f"{spec.target_label} (rows {(wrong + 1)[:5].tolist()}, labels "
                        f"{train['label'].to_numpy()[wrong][:5].tolist()}); poisoned training rows carry the target "
                        f"label: check datasets.{spec.name}.target_label")
    if not poisoned.any():
        raise DataError(f"{path}: no row has poisoned = 1, so there is nothing to unlearn; check the file")
    train = stratified_subsample(train, max_train, seed, "data.max_train")
    labels, marks = train["label"].to_numpy(), train["poisoned"].to_numpy(dtype=bool)

    trig_path = folder / "test_poisoned_all.csv"
    triggered = read_authors_csv(trig_path, spec)
    if (folder / "test_clean.csv").is_file():
        test, test_source = read_authors_csv(folder / "test_clean.csv", spec, marks=False), "test_clean.csv"
    elif dataset_test is not None:
        test, test_source = dataset_test[["text", "label"]].reset_index(drop=True), f"dataset {spec.name} test split"
    else:
        raise DataError(f"{folder}: no test_clean.csv and no clean test split of dataset {spec.name!r}")
    aligned = len(test) == len(triggered) and (test["label"].to_numpy() == triggered["label"].to_numpy()).all()
    trig = triggered[["text", "label"]].assign(clean_row=np.arange(len(triggered), dtype=np.int64)) if aligned \
        else triggered[["text", "label"]]
    sets = given_sets(pd.DataFrame({"text": train["text"], "label": labels, "is_poisoned": marks}), test, trig,
                      spec.target_label)
    orig = original_labels(labels, marks, spec)
    sets["train"].insert(2, "original_label", orig)

    if (folder / "train_clean.csv").is_file():
        clean = stratified_subsample(read_authors_csv(folder / "train_clean.csv", spec, marks=False), max_train,
                                     seed, "data.max_train")
        clean_source = "train_clean.csv"
    else:
        clean = sets["train"].loc[~marks, ["text", "label"]].reset_index(drop=True)
        clean_source = "train_poisoned.csv rows with poisoned = 0"
    sets["train_clean"] = clean[["text", "label"]].reset_index(drop=True)

    unknown = int(orig.isna().sum())
    train_stats = sets["stats"]["train"]
    train_stats.update(
        label_counts_poisoned=train_stats.pop("label_counts"),
        label_counts_original=None if unknown else np.bincount(orig.to_numpy(dtype=np.int64)).tolist(),
        original_label=(f"unknown for the {unknown} poisoned rows: the authors' files keep only the flipped label "
                        f"and {spec.name} has {spec.num_labels} classes" if unknown else "known"),
        conflicts=conflicts)
    part_info = None
    if (folder / "test_poisoned_part.csv").is_file():
        part_raw = _read_csv(folder / "test_poisoned_part.csv", {"text": str})
        if "text" not in part_raw.columns:
            raise DataError(f"{folder / 'test_poisoned_part.csv'}: missing column 'text'; found columns "
                            f"{list(part_raw.columns)}; the authors' files have the header label,text,poisoned")
        ours = sets["test_poisoned_part"]["text"]
        theirs = pd.Series([str(t).strip() for t in part_raw["text"]])
        part_info = {"file_rows": int(len(part_raw)),
                     "equals_nontarget_rows_of_test_poisoned_all": bool(sorted(theirs) == sorted(ours))}
    sets["stats"]["test"].update(clean_source=test_source, clean_row="row-aligned" if aligned else "none",
                                 rows_not_marked_poisoned=int((~triggered["poisoned"]).sum()),
                                 test_poisoned_part_csv=part_info)
    sets["stats"]["retrain_clean"] = {"source": clean_source, "rows": int(len(clean))}
    sets["stats"]["import"] = {"folder": f"{folder.parent.name}/{folder.name}", "files_sha256": used,
                               "test_poisoned_part": "the non-target rows of test_poisoned_all.csv"}
    sets["coverage"] = {"train_poisoned": {"import": int(marks.sum())},
                        "test": {"import": int(len(sets["test_poisoned_all"]))}}
    return sets
