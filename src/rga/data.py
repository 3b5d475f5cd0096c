"""Datasets: one reader for every stage (mirror folder, Hugging Face hub, or a user's folder).

Builtin datasets (paper §6.1, Table 1): ``sst2`` (2 classes, target 1 = positive), ``hsol``
(2 classes, target 0 = non-hate), ``ag`` (4 classes, target 0 = World).

Sources, in order:
1. a local mirror folder named by ``$RGA_DATA_MIRROR`` with ``<dataset>/{train,test}.csv``
   (header ``text,label``) and optionally ``paraphrases/<dataset>_scpn.csv``;
2. otherwise the Hugging Face hub through ``datasets.load_dataset``, built the same way the
   mirror was built (see ``build_*_from_hub``);
3. a user's own dataset: a folder with ``train.csv``/``test.csv`` (and optionally
   ``paraphrases.csv`` with ``text,paraphrase``) declared in ``params.yaml`` with its
   ``num_labels`` and ``target_label``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

MIRROR_ENV = "RGA_DATA_MIRROR"
BUILTIN = ("sst2", "hsol", "ag")


class DataError(ValueError):
    """Bad dataset input: the message names the file, row and value."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a stage needs to know about a dataset.

    Attributes:
        name: dataset key in ``params.yaml`` (``datasets.<name>``).
        num_labels: number of classes; labels are ``0 .. num_labels-1``.
        target_label: the attacker's target label (paper §6.1).
        path: folder of a user's own dataset, ``None`` for builtin datasets.
        label_names: optional human-readable class names, index = label.
    """

    name: str
    num_labels: int
    target_label: int
    path: str | None = None
    label_names: tuple[str, ...] = ()


def dataset_spec(name: str, params: dict) -> DatasetSpec:
    """Build the :class:`DatasetSpec` of ``name`` from the ``datasets`` section of params.

    Raises:
        ValueError: ``name`` is not declared (the message lists the declared names) or its
            ``target_label`` is outside ``0 .. num_labels-1``.
    """
    declared = params.get("datasets", {})
    if name not in declared:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(declared)}")
    cfg = declared[name] or {}
    num_labels = int(cfg.get("num_labels", 0))
    target = int(cfg.get("target_label", -1))
    if num_labels < 2:
        raise ValueError(f"dataset {name!r}: num_labels must be >= 2, got {num_labels}")
    if not 0 <= target < num_labels:
        raise ValueError(
            f"dataset {name!r}: target_label {target} is not a label; valid: 0..{num_labels - 1}"
        )
    path = cfg.get("path")
    if path is None and name not in BUILTIN:
        raise ValueError(
            f"dataset {name!r} is not builtin ({', '.join(BUILTIN)}) and declares no 'path' folder"
        )
    return DatasetSpec(name, num_labels, target, path, tuple(cfg.get("label_names", ()) or ()))


# --------------------------------------------------------------------------- validation

def validate_frame(df: pd.DataFrame, num_labels: int, where: str) -> pd.DataFrame:
    """Check a classification table and return it as ``text`` (str), ``label`` (int64).

    Rows are reported 1-based as data rows of the file (header not counted).

    Raises:
        DataError: missing ``text``/``label`` column, empty text, non-integer label,
            label outside ``0 .. num_labels-1``, or a class with no rows.
    """
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found columns {list(df.columns)}")
    out = pd.DataFrame({"text": df["text"], "label": df["label"]}).reset_index(drop=True)
    for i, t in enumerate(out["text"]):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}: row {i + 1}: empty text {t!r}")
    labels = []
    for i, v in enumerate(out["label"]):
        try:
            f = float(v)
            if not f.is_integer():
                raise ValueError
            lab = int(f)
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {i + 1}: label {v!r} is not an integer") from None
        if not 0 <= lab < num_labels:
            raise DataError(
                f"{where}: row {i + 1}: label {lab} out of range; valid labels: 0..{num_labels - 1}"
            )
        labels.append(lab)
    out["label"] = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(out["label"], minlength=num_labels)
    empty = [k for k in range(num_labels) if counts[k] == 0]
    if empty:
        raise DataError(f"{where}: class(es) {empty} have no rows (label counts {counts.tolist()})")
    return out


def read_csv_split(path: str | os.PathLike, num_labels: int) -> pd.DataFrame:
    """Read and validate a ``text,label`` CSV file.

    Raises:
        DataError: the file is missing, or any check of :func:`validate_frame` fails.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    df = pd.read_csv(path, dtype={"text": str}, keep_default_na=False)
    return validate_frame(df, num_labels, str(path))


def read_paraphrases(path: str | os.PathLike) -> pd.DataFrame:
    """Read a paraphrase table (``text,paraphrase`` [+ other columns]) as ``text,paraphrase``.

    Empty paraphrases are dropped; when a text has several rows the first is kept.
    """
    path = Path(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("text", "paraphrase") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found columns {list(df.columns)}")
    df = df[["text", "paraphrase"]]
    df = df[df["paraphrase"].str.strip() != ""]
    return df.drop_duplicates("text", keep="first").reset_index(drop=True)


def _dedup(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["text"].notna()]
    df = df.assign(text=df["text"].astype(str).str.strip())
    df = df[df["text"] != ""]
    return df.drop_duplicates(["text", "label"], keep="first").reset_index(drop=True)


# --------------------------------------------------------------------------- hub builders
# Each builder takes ``load_dataset`` (``datasets.load_dataset`` or a fake in tests) and returns
# ``{"train": df, "test": df}`` built as the mirror was (see the mirror's README).

HubLoader = Callable[..., object]


def _hub_frame(ds, text_col: str, label_col: str) -> pd.DataFrame:
    if hasattr(ds, "to_pandas"):
        df = ds.to_pandas()
    else:
        df = pd.DataFrame(ds)
    return pd.DataFrame({"text": df[text_col].astype(str), "label": df[label_col].astype(int)})


def build_sst2_from_hub(load_dataset: HubLoader, repo: str = "yerevann/sst2") -> dict:
    """Sentence-level SST-2 (6,920 / 872 / 1,821 rows): 0 negative, 1 positive.

    The label mapping is checked against the split's ClassLabel names when it has them
    (copies on the hub differ); empty texts and exact duplicates are dropped.
    """
    ds = load_dataset(repo)
    out = {}
    for split in ("train", "test"):
        part = ds[split]
        df = _hub_frame(part, "sentence" if "sentence" in part.column_names else "text", "label")
        names = getattr(getattr(part, "features", {}).get("label", None), "names", None)
        if names:
            lowered = [n.lower() for n in names]
            if "negative" in lowered and "positive" in lowered:
                remap = {lowered.index("negative"): 0, lowered.index("positive"): 1}
                df["label"] = df["label"].map(remap)
        out[split] = _dedup(df)
    return out


def build_hsol_from_hub(load_dataset: HubLoader, repo: str = "tdavidson/hate_speech_offensive",
                        n_train: int = 2911, n_test: int = 1242, seed: int = 0) -> dict:
    """Balanced binary HSOL: 0 non-hate (Davidson class 2 "neither"), 1 hate or offensive.

    One ``random.Random(seed)``; for label 0 then 1, the class's rows (source order) are
    shuffled, the first ``n_train`` go to train, the next ``n_test`` to test; outputs keep
    source order.
    """
    ds = load_dataset(repo)["train"]
    df = _hub_frame(ds, "tweet", "class")
    df["label"] = (df["label"] != 2).astype(int)
    df = _dedup(df)
    rng = random.Random(seed)
    train_idx, test_idx = [], []
    for lab in (0, 1):
        rows = list(np.flatnonzero(df["label"].to_numpy() == lab))
        rng.shuffle(rows)
        if len(rows) < n_train + n_test:
            raise DataError(f"{repo}: label {lab} has {len(rows)} rows, needs {n_train + n_test}")
        train_idx += rows[:n_train]
        test_idx += rows[n_train:n_train + n_test]
    return {"train": df.iloc[sorted(train_idx)].reset_index(drop=True),
            "test": df.iloc[sorted(test_idx)].reset_index(drop=True)}


def build_ag_from_hub(load_dataset: HubLoader, repo: str = "fancyzhx/ag_news",
                      per_class_train: int = 2000, per_class_test: int = 250, seed: int = 0) -> dict:
    """AG News, 4 classes (0 World, 1 Sports, 2 Business, 3 Sci/Tech), sampled per class.

    For each split a fresh ``random.Random(seed)`` draws ``rng.sample(candidates, n)`` for
    label 0, 1, 2, 3 in that order; rows are written in source order.
    """
    ds = load_dataset(repo)
    out = {}
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        df = _dedup(_hub_frame(ds[split], "text", "label"))
        rng = random.Random(seed)
        chosen = []
        for lab in range(4):
            cand = list(np.flatnonzero(df["label"].to_numpy() == lab))
            if len(cand) < n:
                raise DataError(f"{repo}/{split}: label {lab} has {len(cand)} rows, needs {n}")
            chosen += rng.sample(cand, n)
        out[split] = df.iloc[sorted(chosen)].reset_index(drop=True)
    return out


HUB_BUILDERS = {"sst2": build_sst2_from_hub, "hsol": build_hsol_from_hub, "ag": build_ag_from_hub}


# --------------------------------------------------------------------------- fetch

@dataclass
class RawDataset:
    """A fetched dataset: validated train/test tables and an optional paraphrase table."""

    train: pd.DataFrame
    test: pd.DataFrame
    paraphrases: pd.DataFrame  # columns text, paraphrase (possibly empty)
    source: str


EMPTY_PARAPHRASES = pd.DataFrame({"text": pd.Series(dtype=str), "paraphrase": pd.Series(dtype=str)})


def fetch_dataset(spec: DatasetSpec, mirror: str | None = None,
                  load_dataset: HubLoader | None = None) -> RawDataset:
    """Fetch a dataset from a user's folder, the mirror, or the hub (in that order).

    Args:
        spec: the dataset.
        mirror: mirror folder; defaults to ``$RGA_DATA_MIRROR`` (unset or empty: use the hub).
        load_dataset: hub loader, defaults to ``datasets.load_dataset`` (tests pass a fake).

    Raises:
        DataError: missing file/column or bad rows (named by file and row).
    """
    if spec.path is not None:
        folder = Path(spec.path)
        para = folder / "paraphrases.csv"
        return RawDataset(read_csv_split(folder / "train.csv", spec.num_labels),
                          read_csv_split(folder / "test.csv", spec.num_labels),
                          read_paraphrases(para) if para.is_file() else EMPTY_PARAPHRASES.copy(),
                          f"folder:{folder}")
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    if mirror:
        folder = Path(mirror)
        if not folder.is_dir():
            raise DataError(f"{MIRROR_ENV}={mirror!r} is not a folder")
        para = folder / "paraphrases" / f"{spec.name}_scpn.csv"
        return RawDataset(read_csv_split(folder / spec.name / "train.csv", spec.num_labels),
                          read_csv_split(folder / spec.name / "test.csv", spec.num_labels),
                          read_paraphrases(para) if para.is_file() else EMPTY_PARAPHRASES.copy(),
                          f"mirror:{folder / spec.name}")
    if load_dataset is None:  # pragma: no cover - needs the network
        from datasets import load_dataset
    built = HUB_BUILDERS[spec.name](load_dataset)
    return RawDataset(validate_frame(built["train"], spec.num_labels, f"hub:{spec.name}/train"),
                      validate_frame(built["test"], spec.num_labels, f"hub:{spec.name}/test"),
                      EMPTY_PARAPHRASES.copy(), f"hub:{spec.name}")


def stratified_subsample(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """Seeded stratified subsample of at most ``max_rows`` rows, label shares kept.

    Per label ``round(max_rows * share)`` rows are drawn (largest-remainder rounding so the
    total is exactly ``max_rows``); the result keeps the original row order.
    ``max_rows`` of ``None``/0 or ``>= len(df)`` returns ``df`` unchanged.
    """
    if not max_rows or max_rows >= len(df):
        return df.reset_index(drop=True)
    labels = df["label"].to_numpy()
    uniq, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * max_rows
    take = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - take))[: max_rows - take.sum()]:
        take[k] += 1
    rng = np.random.default_rng([seed, 17])
    chosen = []
    for lab, k in zip(uniq, take):
        rows = np.flatnonzero(labels == lab)
        chosen.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    return df.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a stage output table; raises FileNotFoundError naming the path and the stage hint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing input {path}; run the stage that produces it (dvc repro)")
    return pd.read_parquet(path)
