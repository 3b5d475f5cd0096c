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
   ``num_labels`` and ``target_label``. For a dataset that is already poisoned (attack
   ``given``, "bring your own poisoned model"), ``train.csv`` may carry a 0/1 ``is_poisoned``
   (ground truth) or ``suspect`` (marks of unknown reliability) column, and the folder holds
   ``test_poisoned.csv`` (:data:`TRIGGERED_FILE`): the fully triggered test set.

Input hygiene (every source goes through the same steps):
* files are read as UTF-8 (a UTF-8 BOM and CRLF line endings are fine); any other encoding is a
  :class:`DataError` naming the file, the byte offset, the likely encoding and the ``iconv``
  command that converts it;
* every text (train, test, paraphrase table; CSV or hub) goes through :func:`normalise_text`:
  surrounding whitespace, a BOM and stray ``\\r`` are removed, missing values stay missing
  (never the text "None"/"nan");
* labels are integers ``0 .. num_labels-1`` or, when the dataset declares ``label_names``,
  those names (case-insensitive);
* the same text with different labels within a split is refused, dropped or reduced to its
  first row (``data.on_conflict``); texts shared by train and test are counted and a warning
  is logged above :data:`OVERLAP_WARN_PERCENT` percent of the test rows.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

MIRROR_ENV = "RGA_DATA_MIRROR"
BUILTIN = ("sst2", "hsol", "ag")
ON_CONFLICT = ("error", "drop", "keep_first")
OVERLAP_WARN_PERCENT = 1.0  # warn when more than this share (%) of the test rows also appear in train
CONFLICT_EXAMPLES = 5
TRIGGERED_FILE = "test_poisoned.csv"  # a user folder's fully triggered test set (attack ``given``)
MARK_COLUMNS = ("is_poisoned", "suspect")  # optional 0/1 column of a user's train.csv (ground truth, suspicion)

log = logging.getLogger(__name__)


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
    label_names = tuple(str(n) for n in (cfg.get("label_names", ()) or ()))
    if label_names and len(label_names) != num_labels:
        raise ValueError(f"dataset {name!r}: label_names {list(label_names)} has {len(label_names)} "
                         f"names but num_labels is {num_labels}; give one name per label 0..{num_labels - 1}")
    return DatasetSpec(name, num_labels, target, path, label_names)


# --------------------------------------------------------------------------- text and files

def normalise_text(value) -> str | None:
    """The one text normalisation of every reader (train, test and paraphrase texts, any source).

    Removes surrounding whitespace (spaces, tabs, ``\\r``, ``\\n``) and a leading byte-order mark
    (U+FEFF); ``\\r\\n`` and a lone ``\\r`` inside the text become ``\\n``. Everything else (case,
    internal spaces, punctuation) is kept, so already clean texts come back unchanged.

    Returns:
        the normalised text (possibly ``""``), or ``None`` for a missing value (``None``, NaN,
        ``pd.NA``): a missing value never becomes the text "None" or "nan". Other non-string
        scalars (numbers) are converted with ``str``.
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = value if isinstance(value, str) else str(value)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip().lstrip("\ufeff").strip()


def normalise_texts(values) -> pd.Series:
    """:func:`normalise_text` over a column; returns an object Series (``None`` where missing)."""
    index = values.index if isinstance(values, pd.Series) else None
    return pd.Series([normalise_text(v) for v in values], index=index, dtype=object)


def guess_encoding(data: bytes) -> str:
    """Likely encoding (an ``iconv`` name) of bytes that are not UTF-8.

    A UTF-16/UTF-32 byte-order mark names its encoding; bytes that decode as Windows-1252 give
    ``cp1252`` (the usual encoding of CSVs saved by Excel on Windows); otherwise ``iso-8859-1``.
    """
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                      (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return name
    try:
        data.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "iso-8859-1"


def read_text_file(path: str | os.PathLike) -> str:
    """The content of a UTF-8 text file (a UTF-8 BOM is dropped; line endings are kept).

    Raises:
        DataError: missing file, or bytes that are not UTF-8. The message names the file, the
            byte offset (0-based) and line of the first bad byte, the likely encoding and the
            ``iconv`` command that writes a UTF-8 copy.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        enc = guess_encoding(data)
        line = data.count(b"\n", 0, err.start) + 1
        fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {err.start} (line {line}, byte 0x{data[err.start]:02x}); "
            f"the file looks like {enc}. Convert it to UTF-8 and use the converted file: "
            f"iconv -f {enc} -t utf-8 {shlex.quote(str(path))} > {shlex.quote(str(fixed))} "
            f"(check the encoding with: file -i {shlex.quote(str(path))})") from None


def _read_csv(path: Path, dtype) -> pd.DataFrame:
    """A CSV file as a frame of strings/numbers; empty fields stay ``""`` (never NaN)."""
    text = read_text_file(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=dtype, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; the first line must be the header") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a valid CSV file ({err}); quote fields that hold commas") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


# --------------------------------------------------------------------------- validation

def _parse_label(value, names: dict[str, int]) -> int | None:
    """An integer label from an int/float/numeric string, or a declared name; None otherwise."""
    try:
        f = float(value)
        if f.is_integer():
            return int(f)
    except (TypeError, ValueError):
        pass
    if isinstance(value, str):
        return names.get(value.strip().lower())
    return None


def validate_frame(df: pd.DataFrame, num_labels: int, where: str,
                   label_names: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Check a classification table and return it as ``text`` (str), ``label`` (int64).

    Texts go through :func:`normalise_text`. Labels are integers (``1``, ``"1"``, ``1.0``) or,
    when ``label_names`` is given (index = label), one of those names, case-insensitive.
    Rows are reported 1-based as data rows of the file (header not counted).

    Raises:
        DataError: missing ``text``/``label`` column, empty or missing text, a label that is
            neither an integer nor a declared name (the message lists the names), label
            outside ``0 .. num_labels-1``, or a class with no rows.
    """
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        hint = ("; the first line must be the header text,label" if "text" not in df.columns else "")
        raise DataError(f"{where}: missing column(s) {missing}; found columns {list(df.columns)}{hint}")
    raw_text = df["text"].reset_index(drop=True)
    out = pd.DataFrame({"text": normalise_texts(raw_text), "label": df["label"].to_numpy()})
    for i, (t, orig) in enumerate(zip(out["text"], raw_text)):
        if not t:
            raise DataError(f"{where}: row {i + 1}: empty text {orig!r}")
    names = {str(n).strip().lower(): k for k, n in enumerate(label_names)}
    labels = []
    for i, v in enumerate(out["label"]):
        lab = _parse_label(v, names)
        if lab is None:
            if names:
                raise DataError(f"{where}: row {i + 1}: label {v!r} is neither an integer nor one of the "
                                f"declared label_names {list(label_names)} (case-insensitive)")
            raise DataError(f"{where}: row {i + 1}: label {v!r} is not an integer; use 0..{num_labels - 1}, "
                            "or declare the dataset's label_names in params.yaml to use names")
        if not 0 <= lab < num_labels:
            raise DataError(
                f"{where}: row {i + 1}: label {lab} out of range; valid labels: 0..{num_labels - 1}"
            )
        labels.append(lab)
    out["text"] = out["text"].astype(str)  # pandas' string dtype, as read_csv gives
    out["label"] = np.asarray(labels, dtype=np.int64)
    _check_classes(out, num_labels, where)
    return out


def _check_classes(df: pd.DataFrame, num_labels: int, where: str) -> None:
    counts = np.bincount(df["label"], minlength=num_labels)
    empty = [k for k in range(num_labels) if counts[k] == 0]
    if empty:
        raise DataError(f"{where}: class(es) {empty} have no rows (label counts {counts.tolist()})")


def read_csv_split(path: str | os.PathLike, num_labels: int,
                   label_names: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Read and validate a ``text,label`` CSV file (UTF-8, BOM and CRLF allowed).

    Raises:
        DataError: the file is missing or not UTF-8 (see :func:`read_text_file`), or any check
            of :func:`validate_frame` fails.
    """
    path = Path(path)
    return validate_frame(_read_csv(path, {"text": str}), num_labels, str(path), label_names)


def read_paraphrases(path: str | os.PathLike) -> pd.DataFrame:
    """Read a paraphrase table (``text,paraphrase`` [+ other columns]) as ``text,paraphrase``.

    Both columns go through :func:`normalise_text`, so a text matches its training row
    whatever whitespace either file has. Rows with an empty text or paraphrase are dropped;
    when a text has several rows the first is kept.

    Raises:
        DataError: missing or non-UTF-8 file, or a missing column.
    """
    path = Path(path)
    df = _read_csv(path, str)
    missing = [c for c in ("text", "paraphrase") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found columns {list(df.columns)}")
    out = pd.DataFrame({"text": normalise_texts(df["text"]), "paraphrase": normalise_texts(df["paraphrase"])})
    out = out[(out["text"].fillna("") != "") & (out["paraphrase"].fillna("") != "")].astype(str)
    return out.drop_duplicates("text", keep="first").reset_index(drop=True)


def parse_marks(values, where: str, column: str) -> np.ndarray:
    """A 0/1 column of a user's file (``is_poisoned`` or ``suspect``) as a boolean array.

    Accepted per row: ``0``/``1`` (int, float or string), ``true``/``false``, ``yes``/``no``
    (case-insensitive).

    Returns:
        bool array [N].

    Raises:
        DataError: any other value (empty included); the message names the file, the column,
            the 1-based data row and the value.
    """
    words = {"0": False, "1": True, "false": False, "true": True, "no": False, "yes": True}
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        key = str(v).strip().lower()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and float(v) in (0.0, 1.0):
            key = str(int(v))
        if key.endswith(".0") and key[:-2] in ("0", "1"):
            key = key[:-2]
        if key not in words:
            raise DataError(f"{where}: row {i + 1}: column {column!r} has {v!r}; use 0 or 1 "
                            "(1 = the row is poisoned / suspect)")
        out[i] = words[key]
    return out


def read_train_split(path: str | os.PathLike, num_labels: int,
                     label_names: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Read a user's ``train.csv``: :func:`read_csv_split` plus its optional 0/1 mark column.

    Returns:
        ``text``, ``label`` and, when the file has one of :data:`MARK_COLUMNS`, that column as
        bool (``is_poisoned`` wins when both are present).

    Raises:
        DataError: as :func:`read_csv_split`, or a mark that is not 0/1 (:func:`parse_marks`).
    """
    path = Path(path)
    raw = _read_csv(path, {"text": str})
    out = validate_frame(raw, num_labels, str(path), label_names)
    for column in MARK_COLUMNS:
        if column in raw.columns:
            out[column] = parse_marks(raw[column].tolist(), str(path), column)
            break
    return out


def read_triggered_split(path: str | os.PathLike, num_labels: int, n_clean: int,
                         label_names: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Read a user's fully triggered test set (:data:`TRIGGERED_FILE`).

    Every row carries the trigger and its ORIGINAL label (the one the clean text has), as
    ``test_poisoned_all`` of the builtin attacks. An optional ``clean_row`` column gives each
    row's 0-based data row in ``test.csv``; the trigger shift then compares the same rows.

    Args:
        path: the CSV (``text,label[,clean_row]``, UTF-8).
        num_labels, label_names: as :func:`validate_frame`.
        n_clean: rows of ``test.csv`` (as read, before ``data.on_conflict``), the bound of ``clean_row``.

    Returns:
        ``text`` (str), ``label`` (int64) and, when present, ``clean_row`` (int64).

    Raises:
        DataError: as :func:`read_csv_split`, or a ``clean_row`` that is not an integer in
            ``0 .. n_clean-1`` (the message names the file and row).
    """
    path = Path(path)
    raw = _read_csv(path, {"text": str})
    out = validate_frame(raw, num_labels, str(path), label_names)
    if "clean_row" in raw.columns:
        rows = []
        for i, v in enumerate(raw["clean_row"].tolist()):
            r = _parse_label(v, {})
            if r is None or not 0 <= r < n_clean:
                raise DataError(f"{path}: row {i + 1}: clean_row {v!r} is not a row of test.csv; use the 0-based "
                                f"data row 0..{n_clean - 1} (header not counted) of the row's clean text, "
                                "or drop the clean_row column")
            rows.append(r)
        out["clean_row"] = np.asarray(rows, dtype=np.int64)
    return out


# --------------------------------------------------------------------------- duplicates and overlap

def resolve_conflicts(df: pd.DataFrame, on_conflict: str, where: str) -> tuple[pd.DataFrame, dict]:
    """Handle texts that appear with different labels within one split.

    Exact ``(text, label)`` duplicates are not conflicts and are kept.

    Args:
        df: validated ``text, label`` table.
        on_conflict: ``error`` (refuse), ``drop`` (remove every row of a conflicting text) or
            ``keep_first`` (keep the first row of a conflicting text, remove its other rows).
        where: file or source name for messages.

    Returns:
        ``(table, info)``; ``info`` = ``{"conflicting_texts": int, "rows_removed": int}``.
        A warning is logged when rows are removed.

    Raises:
        ValueError: unknown ``on_conflict`` (lists the choices).
        DataError: conflicts under ``error``; the message gives their count and up to
            :data:`CONFLICT_EXAMPLES` examples with their labels and 1-based rows.
    """
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"unknown data.on_conflict {on_conflict!r}; valid choices: {', '.join(ON_CONFLICT)}")
    n_labels = df.groupby("text", sort=False)["label"].nunique()
    conflicted = n_labels.index[n_labels > 1]
    if len(conflicted) == 0:
        return df, {"conflicting_texts": 0, "rows_removed": 0}
    in_conflict = df["text"].isin(set(conflicted))
    if on_conflict == "error":
        examples = []
        for text in conflicted[:CONFLICT_EXAMPLES]:
            rows = np.flatnonzero((df["text"] == text).to_numpy())
            labs = sorted(int(v) for v in df["label"].iloc[rows].unique())
            examples.append(f"{text!r} (labels {labs}, rows {(rows + 1).tolist()})")
        raise DataError(
            f"{where}: {len(conflicted)} text(s) appear with different labels ({int(in_conflict.sum())} rows), "
            f"e.g. {'; '.join(examples)}. Fix the labels, or set data.on_conflict to drop (remove every "
            "row of such a text) or keep_first (keep its first row)")
    keep = ~in_conflict
    if on_conflict == "keep_first":
        keep |= ~df["text"].duplicated(keep="first")
    removed = int((~keep).sum())
    log.warning("%s: %d text(s) appear with different labels; data.on_conflict=%s removed %d row(s)",
                where, len(conflicted), on_conflict, removed)
    return (df[keep].reset_index(drop=True),
            {"conflicting_texts": int(len(conflicted)), "rows_removed": removed})


def split_overlap(train: pd.DataFrame, test: pd.DataFrame, where: str,
                  warn_percent: float = OVERLAP_WARN_PERCENT) -> dict:
    """Count test rows whose text also appears in train (it inflates CACC).

    Returns:
        ``{"test_rows_in_train": int, "percent_of_test": float (0-100, 2 decimals),
        "warn_above_percent": float}``; a warning naming up to 3 texts is logged when the
        percentage is above ``warn_percent``.
    """
    shared = test["text"].isin(set(train["text"]))
    n = int(shared.sum())
    pct = round(100.0 * n / len(test), 2) if len(test) else 0.0
    if pct > warn_percent:
        examples = ", ".join(repr(t) for t in test["text"][shared].head(3))
        log.warning("%s: %d of %d test rows (%.2f%%) also appear in train, above the %.1f%% threshold; "
                    "this overlap inflates CACC, remove them from the test split (e.g. %s)",
                    where, n, len(test), pct, warn_percent, examples)
    return {"test_rows_in_train": n, "percent_of_test": pct, "warn_above_percent": warn_percent}


def _dedup(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop_duplicates(["text", "label"], keep="first").reset_index(drop=True)


# --------------------------------------------------------------------------- hub builders
# Each builder takes ``load_dataset`` (``datasets.load_dataset`` or a fake in tests) and returns
# ``{"train": df, "test": df}`` built as the mirror was (see the mirror's README).

HubLoader = Callable[..., object]


def _hub_frame(ds, text_col: str, label_col: str, where: str) -> pd.DataFrame:
    """``text, label`` of a hub split; rows with a missing/empty text or label are dropped (logged)."""
    if hasattr(ds, "to_pandas"):
        df = ds.to_pandas()
    else:
        df = pd.DataFrame(ds)
    text = normalise_texts(df[text_col]).reset_index(drop=True)
    label = df[label_col].reset_index(drop=True)
    keep = (text.fillna("") != "") & label.notna()
    if not keep.all():
        log.warning("%s: dropped %d row(s) with a missing or empty text or label", where, int((~keep).sum()))
    return pd.DataFrame({"text": text[keep].astype(str), "label": label[keep].astype(int)}).reset_index(drop=True)


def build_sst2_from_hub(load_dataset: HubLoader, repo: str = "yerevann/sst2") -> dict:
    """Sentence-level SST-2 (6,920 / 872 / 1,821 rows): 0 negative, 1 positive.

    The label mapping is checked against the split's ClassLabel names when it has them
    (copies on the hub differ); empty texts and exact duplicates are dropped.
    """
    ds = load_dataset(repo)
    out = {}
    for split in ("train", "test"):
        part = ds[split]
        df = _hub_frame(part, "sentence" if "sentence" in part.column_names else "text", "label",
                        f"hub:{repo}/{split}")
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
    df = _hub_frame(ds, "tweet", "class", f"hub:{repo}/train")
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
        df = _dedup(_hub_frame(ds[split], "text", "label", f"hub:{repo}/{split}"))
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
    checks: dict = field(default_factory=dict)  # conflicts, train/test overlap, paraphrase matches
    triggered: pd.DataFrame | None = None  # a user folder's test_poisoned.csv (text, label[, clean_row])


EMPTY_PARAPHRASES = pd.DataFrame({"text": pd.Series(dtype=str), "paraphrase": pd.Series(dtype=str)})


def fetch_dataset(spec: DatasetSpec, mirror: str | None = None,
                  load_dataset: HubLoader | None = None, on_conflict: str = "error") -> RawDataset:
    """Fetch a dataset from a user's folder, the mirror, or the hub (in that order).

    Every source goes through the same checks (module docstring): text normalisation, labels
    (names allowed when ``spec.label_names`` is set), conflicting labels per split
    (:func:`resolve_conflicts`), train/test overlap (:func:`split_overlap`) and how many
    paraphrase-table texts match a train or test text (a warning when none does).

    Args:
        spec: the dataset.
        mirror: mirror folder; defaults to ``$RGA_DATA_MIRROR`` (unset or empty: use the hub).
        load_dataset: hub loader, defaults to ``datasets.load_dataset`` (tests pass a fake).
        on_conflict: ``data.on_conflict``: ``error`` | ``drop`` | ``keep_first``.

    A user folder may also hold :data:`TRIGGERED_FILE` (read with :func:`read_triggered_split`;
    its ``clean_row`` values follow ``test.csv``'s rows through ``data.on_conflict``, rows whose
    clean row was removed are dropped) and a 0/1 ``is_poisoned``/``suspect`` column in
    ``train.csv`` (:func:`read_train_split`); builtin datasets never have either.

    Returns:
        :class:`RawDataset` whose ``checks`` holds ``conflicts`` (per split), ``overlap`` and
        ``paraphrases`` (``{"rows": int, "matching_train_or_test": int}``), plus
        ``test_poisoned`` (``{"rows", "rows_removed", "clean_row"}``) when the folder has one.

    Raises:
        DataError: missing or non-UTF-8 file, missing column, bad rows (named by file and row),
            or conflicting labels under ``on_conflict: error``.
        ValueError: unknown ``on_conflict``.
    """
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"unknown data.on_conflict {on_conflict!r}; valid choices: {', '.join(ON_CONFLICT)}")
    para_path = None
    if spec.path is not None:
        folder = Path(spec.path)
        files, source = (folder / "train.csv", folder / "test.csv"), f"folder:{folder}"
        para_path = folder / "paraphrases.csv"
    else:
        mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
        if mirror:
            folder = Path(mirror)
            if not folder.is_dir():
                raise DataError(f"{MIRROR_ENV}={mirror!r} is not a folder")
            files = (folder / spec.name / "train.csv", folder / spec.name / "test.csv")
            source = f"mirror:{folder / spec.name}"
            para_path = folder / "paraphrases" / f"{spec.name}_scpn.csv"
        else:
            files, source = None, f"hub:{spec.name}"
    if files is not None:
        readers = (read_train_split if spec.path is not None else read_csv_split, read_csv_split)
        splits = {split: (reader(path, spec.num_labels, spec.label_names), str(path))
                  for split, reader, path in zip(("train", "test"), readers, files)}
    else:
        if load_dataset is None:  # pragma: no cover - needs the network
            from datasets import load_dataset
        built = HUB_BUILDERS[spec.name](load_dataset)
        splits = {}
        for split in ("train", "test"):
            where = f"hub:{spec.name}/{split}"
            splits[split] = (validate_frame(built[split], spec.num_labels, where, spec.label_names), where)
    para = read_paraphrases(para_path) if para_path is not None and para_path.is_file() else EMPTY_PARAPHRASES.copy()
    triggered = None
    trig_path = Path(spec.path) / TRIGGERED_FILE if spec.path is not None else None
    if trig_path is not None and trig_path.is_file():
        test, where = splits["test"]
        triggered = read_triggered_split(trig_path, spec.num_labels, len(test), spec.label_names)
        if "clean_row" in triggered:  # follow test.csv's rows through data.on_conflict
            splits["test"] = (test.assign(_row=np.arange(len(test), dtype=np.int64)), where)

    checks = {"conflicts": {}}
    frames = {}
    for split, (df, where) in splits.items():
        frames[split], checks["conflicts"][split] = resolve_conflicts(df, on_conflict, where)
        _check_classes(frames[split], spec.num_labels, f"{where} (after data.on_conflict={on_conflict})")
    if triggered is not None:
        dropped = 0
        if "_row" in frames["test"]:
            new_row = {int(old): new for new, old in enumerate(frames["test"].pop("_row"))}
            keep = triggered["clean_row"].map(new_row).notna().to_numpy()
            dropped = int((~keep).sum())
            triggered = triggered[keep].reset_index(drop=True)
            triggered["clean_row"] = triggered["clean_row"].map(new_row).astype(np.int64)
            if dropped:
                log.warning("%s: dropped %d triggered row(s) whose clean_row was removed from test.csv by "
                            "data.on_conflict=%s", trig_path, dropped, on_conflict)
        _check_classes(triggered, spec.num_labels, f"{trig_path} (after data.on_conflict={on_conflict})")
        checks["test_poisoned"] = {"rows": int(len(triggered)), "rows_removed": dropped,
                                   "clean_row": "clean_row" in triggered}
    checks["overlap"] = split_overlap(frames["train"], frames["test"], source)
    known = set(frames["train"]["text"]) | set(frames["test"]["text"])
    matching = int(para["text"].isin(known).sum())
    checks["paraphrases"] = {"rows": int(len(para)), "matching_train_or_test": matching}
    if len(para) and matching == 0:
        log.warning("%s: none of the %d paraphrase-table texts matches a train or test text (texts must be "
                    "equal after whitespace stripping); HiddenKiller will find no paraphrase", para_path, len(para))
    return RawDataset(frames["train"], frames["test"], para, source, checks, triggered)


def stratified_subsample(df: pd.DataFrame, max_rows: int | None, seed: int,
                         what: str = "max_rows") -> pd.DataFrame:
    """Seeded stratified subsample of at most ``max_rows`` rows, label shares kept.

    Per label ``round(max_rows * share)`` rows are drawn (largest-remainder rounding so the
    total is exactly ``max_rows``); the result keeps the original row order.
    ``max_rows`` of ``None``/0 or ``>= len(df)`` returns ``df`` unchanged.

    Args:
        what: the setting ``max_rows`` comes from (e.g. ``data.max_train``), for messages.

    Raises:
        DataError: ``max_rows`` so small that a label would get no row; the message names the
            label and the smallest safe value.
    """
    if not max_rows or max_rows >= len(df):
        return df.reset_index(drop=True)
    labels = df["label"].to_numpy()
    uniq, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * max_rows
    take = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - take))[: max_rows - take.sum()]:
        take[k] += 1
    if (take == 0).any():
        k = int(np.flatnonzero(take == 0)[0])
        enough = int(np.ceil(len(df) / counts.min()))
        raise DataError(
            f"{what} {max_rows} is too small for a stratified subsample: label {uniq[k]} has {counts[k]} of "
            f"{len(df)} rows and would get none; raise {what} to {enough} or more (every label then "
            "keeps at least one row), or set it to null for the full split")
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
