"""Dataset reading (rga.data): validation errors, the mirror, fake hub loaders, user folders."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rga.data import (MIRROR_ENV, DataError, DatasetSpec, build_ag_from_hub, build_hsol_from_hub,
                      build_sst2_from_hub, dataset_spec, fetch_dataset, read_csv_split,
                      stratified_subsample, validate_frame)
from rga.io import load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO / "params.yaml")


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


# --------------------------------------------------------------------------- validation errors

def test_read_csv_split_keeps_texts_but_strips_surrounding_whitespace(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"],
                     [["NA", 0], ["null", 1], ["a, quoted\nmulti-line text", 1], ["  spaced  out ", 0]])
    df = read_csv_split(path, 2)
    assert df["text"].tolist() == ["NA", "null", "a, quoted\nmulti-line text", "spaced  out"]
    assert df["label"].tolist() == [0, 1, 1, 0]
    assert df["label"].dtype == np.int64
    assert list(df.columns) == ["text", "label"]


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "train.csv"
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_column(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["sentence", "label"], [["good", 1], ["bad", 0]])
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    msg = str(err.value)
    assert str(path) in msg
    assert "'text'" in msg and "sentence" in msg


@pytest.mark.parametrize("bad, shown", [("x", "'x'"), ("1.5", "1.5")])
def test_non_integer_label(tmp_path, bad, shown):
    path = write_csv(tmp_path / "train.csv", ["text", "label"],
                     [["a fine film", 1], ["a poor film", 0], ["a third film", bad], ["fourth", 0]])
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    msg = str(err.value)
    assert str(path) in msg
    assert "row 3" in msg
    assert shown in msg
    assert "not an integer" in msg


def test_row_numbers_are_data_rows_not_lines(tmp_path):
    # an embedded newline in row 1 must not shift the reported row of the bad label
    path = write_csv(tmp_path / "test.csv", ["text", "label"],
                     [["line one\nline two\nline three", 0], ["second", "oops"]])
    with pytest.raises(DataError, match=r"row 2: label 'oops'"):
        read_csv_split(path, 2)


def test_out_of_range_label(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"],
                     [["a", 0], ["b", 1], ["c", 0], ["d", 2]])
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    msg = str(err.value)
    assert str(path) in msg and "row 4" in msg and "label 2" in msg and "0..1" in msg
    with pytest.raises(DataError, match=r"row 1: label -1 out of range"):
        validate_frame(pd.DataFrame({"text": ["a", "b"], "label": [-1, 0]}), 2, "frame.csv")


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_text(tmp_path, empty):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], [["fine", 0], [empty, 1], ["ok", 1]])
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "empty text" in msg and repr(empty) in msg


def test_class_with_no_rows(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], [["a", 0], ["b", 2], ["c", 0]])
    with pytest.raises(DataError) as err:
        read_csv_split(path, 3)
    msg = str(err.value)
    assert str(path) in msg and "[1]" in msg and "[2, 0, 1]" in msg


def test_validate_frame_direct():
    df = pd.DataFrame({"label": [1.0, 0.0], "text": ["x y", "z"], "extra": [1, 2]}, index=[10, 20])
    out = validate_frame(df, 2, "hub:x/train")
    assert list(out.columns) == ["text", "label"] and out.index.tolist() == [0, 1]
    assert out["label"].tolist() == [1, 0] and out["label"].dtype == np.int64
    with pytest.raises(DataError, match=r"hub:x/train: row 2: empty text (None|nan)"):
        validate_frame(pd.DataFrame({"text": ["ok", None], "label": [0, 1]}), 2, "hub:x/train")


# --------------------------------------------------------------------------- dataset_spec

def test_dataset_spec_builtin(params):
    assert dataset_spec("sst2", params) == DatasetSpec("sst2", 2, 1, None, ("negative", "positive"))
    assert dataset_spec("hsol", params).target_label == 0
    ag = dataset_spec("ag", params)
    assert (ag.num_labels, ag.target_label, ag.path) == (4, 0, None)
    assert ag.label_names == ("world", "sports", "business", "sci-tech")


def test_dataset_spec_errors(params):
    with pytest.raises(ValueError) as err:
        dataset_spec("imdb", params)
    assert "imdb" in str(err.value) and "sst2, hsol, ag" in str(err.value)
    bad = {"datasets": {"sst2": {"num_labels": 2, "target_label": 2}}}
    with pytest.raises(ValueError, match=r"target_label 2 .*0\.\.1"):
        dataset_spec("sst2", bad)
    with pytest.raises(ValueError, match="target_label -1"):
        dataset_spec("sst2", {"datasets": {"sst2": {"num_labels": 2, "target_label": -1}}})
    with pytest.raises(ValueError, match="path"):
        dataset_spec("mine", {"datasets": {"mine": {"num_labels": 2, "target_label": 0}}})


# --------------------------------------------------------------------------- mirror

def test_fetch_sst2_from_mirror(params, mirror):
    raw = fetch_dataset(dataset_spec("sst2", params), mirror=str(mirror))
    assert (len(raw.train), len(raw.test)) == (6911, 1821)
    assert raw.train["label"].value_counts().to_dict() == {1: 3606, 0: 3305}
    assert raw.test["label"].value_counts().to_dict() == {0: 912, 1: 909}
    assert sorted(raw.train["label"].unique()) == [0, 1]
    assert list(raw.paraphrases.columns) == ["text", "paraphrase"]
    assert len(raw.paraphrases) == 3629  # 3,630 rows, "no. ." twice: the first kept
    assert (raw.paraphrases["paraphrase"].str.strip() != "").all()
    assert raw.source == f"mirror:{mirror / 'sst2'}"


def test_fetch_hsol_from_mirror_via_env(params, mirror, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    raw = fetch_dataset(dataset_spec("hsol", params))
    assert (len(raw.train), len(raw.test)) == (5822, 2484)
    assert raw.train["label"].value_counts().to_dict() == {0: 2911, 1: 2911}
    assert len(raw.paraphrases) == 0
    assert list(raw.paraphrases.columns) == ["text", "paraphrase"]
    assert raw.source.startswith("mirror:")


def test_mirror_not_a_folder(params, tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        fetch_dataset(dataset_spec("sst2", params), mirror=str(tmp_path / "missing"))


# --------------------------------------------------------------------------- fake hub

class FakeSplit:
    """Shaped like a datasets.Dataset: column_names, features, to_pandas()."""

    def __init__(self, data: dict, label_names=None):
        self._df = pd.DataFrame(data)
        self.column_names = list(data)
        self.features = {"label": SimpleNamespace(names=list(label_names))} if label_names else {}

    def to_pandas(self) -> pd.DataFrame:
        return self._df.copy()


class FakeLoader:
    def __init__(self, dd: dict):
        self.dd = dd
        self.calls = []

    def __call__(self, repo, *args, **kwargs):
        self.calls.append(repo)
        return self.dd


SST2_TRAIN = {
    "sentence": ["a great film .", "a dull film .", "", "a great film .", "  a great film .  ",
                 "   ", "fine acting .", "a dull film ."],
    "label": [0, 1, 0, 0, 0, 1, 0, 0],
}


def test_build_sst2_remaps_positive_first_names():
    test = {"sentence": ["boring .", "lovely ."], "label": [1, 0]}
    names = ["positive", "negative"]
    fake = FakeLoader({"train": FakeSplit(SST2_TRAIN, names), "validation": FakeSplit(test, names),
                       "test": FakeSplit(test, names)})
    out = build_sst2_from_hub(fake)
    assert fake.calls == ["yerevann/sst2"]
    assert out["train"]["text"].tolist() == ["a great film .", "a dull film .", "fine acting .", "a dull film ."]
    # positive (hub 0) -> 1, negative (hub 1) -> 0; "a dull film ." occurs with both hub labels
    assert out["train"]["label"].tolist() == [1, 0, 1, 1]
    assert out["test"]["text"].tolist() == ["boring .", "lovely ."]
    assert out["test"]["label"].tolist() == [0, 1]


@pytest.mark.parametrize("names", [["Negative", "Positive"], None])
def test_build_sst2_keeps_labels_when_negative_first_or_unnamed(names):
    data = {"text": ["bad .", "good .", "good ."], "label": [0, 1, 1]}
    out = build_sst2_from_hub(FakeLoader({"train": FakeSplit(data, names), "test": FakeSplit(data, names)}))
    for split in ("train", "test"):
        assert out[split]["text"].tolist() == ["bad .", "good ."]
        assert out[split]["label"].tolist() == [0, 1]


def _hsol_source(counts: dict[int, int]) -> dict:
    """Davidson-shaped rows: class c tweets interleaved, text names the class and its index."""
    tweets, classes = [], []
    remaining = dict(counts)
    i = 0
    while any(remaining.values()):
        for c in (0, 1, 2):
            if remaining[c]:
                tweets.append(f"tweet {i} class {c}")
                classes.append(c)
                remaining[c] -= 1
                i += 1
    return {"count": [3] * len(tweets), "class": classes, "tweet": tweets}


def test_build_hsol_maps_classes_and_counts():
    src = _hsol_source({0: 3, 1: 6, 2: 8})  # binary: label 0 = 8 rows, label 1 = 9 rows
    fake = FakeLoader({"train": src})  # a plain dict: no to_pandas
    out = build_hsol_from_hub(fake, n_train=3, n_test=2, seed=0)
    assert fake.calls == ["tdavidson/hate_speech_offensive"]
    for split, n in (("train", 3), ("test", 2)):
        df = out[split]
        assert df["label"].value_counts().to_dict() == {0: n, 1: n}
        for text, lab in zip(df["text"], df["label"]):
            cls = int(text.rsplit(" ", 1)[1])
            assert lab == (0 if cls == 2 else 1)
        pos = [src["tweet"].index(t) for t in df["text"]]
        assert pos == sorted(pos)  # source order kept
    assert not set(out["train"]["text"]) & set(out["test"]["text"])

    # the documented draw: one Random(seed), label 0 then 1, shuffle the class rows, slice
    rng = random.Random(0)
    want_train, want_test = [], []
    for lab in (0, 1):
        rows = [i for i, c in enumerate(src["class"]) if (c != 2) == bool(lab)]
        rng.shuffle(rows)
        want_train += rows[:3]
        want_test += rows[3:5]
    assert out["train"]["text"].tolist() == [src["tweet"][i] for i in sorted(want_train)]
    assert out["test"]["text"].tolist() == [src["tweet"][i] for i in sorted(want_test)]

    again = build_hsol_from_hub(fake, n_train=3, n_test=2, seed=0)
    pd.testing.assert_frame_equal(again["train"], out["train"])
    others = [build_hsol_from_hub(fake, n_train=3, n_test=2, seed=s)["train"]["text"].tolist()
              for s in (1, 2, 3)]
    assert any(o != out["train"]["text"].tolist() for o in others)


def test_build_hsol_too_few_rows():
    src = _hsol_source({0: 5, 1: 5, 2: 4})
    with pytest.raises(DataError, match=r"label 0 has 4 rows, needs 5"):
        build_hsol_from_hub(FakeLoader({"train": src}), n_train=3, n_test=2)


def _ag_split(per_class: int, tag: str) -> dict:
    texts, labels = [], []
    for i in range(per_class):
        for lab in range(4):
            texts.append(f"{tag} story {i} of class {lab} .")
            labels.append(lab)
    return {"text": texts, "label": labels}


def test_build_ag_counts_order_and_seed():
    dd = {"train": FakeSplit(_ag_split(10, "train")), "test": FakeSplit(_ag_split(6, "test"))}
    fake = FakeLoader(dd)
    out = build_ag_from_hub(fake, per_class_train=3, per_class_test=2, seed=0)
    assert fake.calls == ["fancyzhx/ag_news"]
    for split, n in (("train", 3), ("test", 2)):
        df = out[split]
        assert df["label"].value_counts().sort_index().to_dict() == {0: n, 1: n, 2: n, 3: n}
        for text, lab in zip(df["text"], df["label"]):
            assert text.endswith(f"class {lab} .")
        src = dd[split].to_pandas()["text"].tolist()
        pos = [src.index(t) for t in df["text"]]
        assert pos == sorted(pos)
    again = build_ag_from_hub(fake, per_class_train=3, per_class_test=2, seed=0)
    pd.testing.assert_frame_equal(again["train"], out["train"])
    pd.testing.assert_frame_equal(again["test"], out["test"])
    others = [build_ag_from_hub(fake, per_class_train=3, per_class_test=2, seed=s)["train"]["text"].tolist()
              for s in (1, 2, 3)]
    assert any(o != out["train"]["text"].tolist() for o in others)
    with pytest.raises(DataError, match=r"test: label 0 has 6 rows, needs 7"):
        build_ag_from_hub(fake, per_class_train=3, per_class_test=7)


def test_build_ag_reproduces_mirror_test_from_pool(mirror):
    # The mirror's ag/test.csv is 250 per class drawn from pool_test.csv with Random(0)
    pool_test = pd.read_csv(mirror / "ag" / "pool_test.csv", keep_default_na=False)
    train = pd.read_csv(mirror / "ag" / "train.csv", keep_default_na=False)
    out = build_ag_from_hub(FakeLoader({"train": train, "test": pool_test}), seed=0)
    pd.testing.assert_frame_equal(out["test"], pd.read_csv(mirror / "ag" / "test.csv", keep_default_na=False))
    pd.testing.assert_frame_equal(out["train"], train)  # exactly 2,000 per class: all rows kept


def test_fetch_dataset_goes_through_hub_builder(params, monkeypatch):
    names = ["negative", "positive"]
    fake = FakeLoader({"train": FakeSplit(SST2_TRAIN, names),
                       "test": FakeSplit({"sentence": ["bad .", "good ."], "label": [0, 1]}, names)})
    # "a dull film ." has labels 1 and 0: refused by default (data.on_conflict: error)
    with pytest.raises(DataError) as err:
        fetch_dataset(dataset_spec("sst2", params), mirror="", load_dataset=fake)
    assert str(err.value).startswith(
        "hub:sst2/train: 1 text(s) appear with different labels (2 rows), e.g. 'a dull film .' "
        "(labels [0, 1], rows [2, 4]). Fix the labels, or set data.on_conflict to drop")
    assert fake.calls == ["yerevann/sst2"]
    raw = fetch_dataset(dataset_spec("sst2", params), mirror="", load_dataset=fake, on_conflict="keep_first")
    assert raw.source == "hub:sst2"
    assert raw.train["text"].tolist() == ["a great film .", "a dull film .", "fine acting ."]
    assert raw.train["label"].tolist() == [0, 1, 0]
    assert raw.train["label"].dtype == np.int64
    assert raw.checks["conflicts"]["train"] == {"conflicting_texts": 1, "rows_removed": 1}
    assert len(raw.test) == 2 and len(raw.paraphrases) == 0

    monkeypatch.delenv(MIRROR_ENV, raising=False)  # no mirror at all: hub too
    assert fetch_dataset(dataset_spec("sst2", params), load_dataset=fake, on_conflict="keep_first").source == "hub:sst2"
    # drop removes both "a dull film ." rows, the only label-1 row: the class check catches it
    with pytest.raises(DataError, match=r"^hub:sst2/train \(after data.on_conflict=drop\): class\(es\) \[1\] "
                                        r"have no rows \(label counts \[2, 0\]\)$"):
        fetch_dataset(dataset_spec("sst2", params), load_dataset=fake, on_conflict="drop")


def test_fetch_hsol_from_hub_default_sizes(params):
    fake = FakeLoader({"train": _hsol_source({0: 2000, 1: 2153, 2: 4153})})
    raw = fetch_dataset(dataset_spec("hsol", params), mirror="", load_dataset=fake)
    assert (len(raw.train), len(raw.test)) == (5822, 2484)
    assert raw.train["label"].value_counts().to_dict() == {0: 2911, 1: 2911}
    assert raw.test["label"].value_counts().to_dict() == {0: 1242, 1: 1242}


def test_fetch_dataset_hub_rows_validated(params):
    fake = FakeLoader({"train": FakeSplit({"sentence": ["a", "b"], "label": [0, 5]}),
                       "test": FakeSplit({"sentence": ["c", "d"], "label": [0, 1]})})
    with pytest.raises(DataError, match=r"hub:sst2/train: row 2: label 5 out of range"):
        fetch_dataset(dataset_spec("sst2", params), mirror="", load_dataset=fake)


# --------------------------------------------------------------------------- user folder

def test_user_folder_dataset(tmp_path, mirror):
    folder = tmp_path / "mydata"
    write_csv(folder / "train.csv", ["text", "label"],
              [["red apple", 0], ["green pear", 1], ["blue plum", 2], ["red cherry", 0]])
    write_csv(folder / "test.csv", ["text", "label"], [["green lime", 1], ["blue berry", 2], ["red fig", 0]])
    write_csv(folder / "paraphrases.csv", ["text", "paraphrase", "note"],
              [["green pear", "when it is green , it is a pear .", "a"],
               ["green pear", "a second paraphrase .", "b"],
               ["blue plum", "", "c"],
               ["blue plum", "if it is blue , it is a plum .", "d"]])
    params = {"datasets": {"mydata": {"path": str(folder), "num_labels": 3, "target_label": 0}}}
    spec = dataset_spec("mydata", params)
    assert spec == DatasetSpec("mydata", 3, 0, str(folder), ())
    raw = fetch_dataset(spec, mirror=str(mirror))  # the folder wins over the mirror
    assert raw.source == f"folder:{folder}"
    assert raw.train["text"].tolist() == ["red apple", "green pear", "blue plum", "red cherry"]
    assert raw.train["label"].tolist() == [0, 1, 2, 0]
    assert raw.test["label"].tolist() == [1, 2, 0]
    assert raw.paraphrases.to_dict("list") == {
        "text": ["green pear", "blue plum"],
        "paraphrase": ["when it is green , it is a pear .", "if it is blue , it is a plum ."]}

    (folder / "paraphrases.csv").unlink()
    assert len(fetch_dataset(spec).paraphrases) == 0

    write_csv(folder / "test.csv", ["text", "label"], [["green lime", 1], ["blue berry", 3]])
    with pytest.raises(DataError) as err:
        fetch_dataset(spec)
    assert str(folder / "test.csv") in str(err.value) and "row 2" in str(err.value)


# --------------------------------------------------------------------------- stratified_subsample

@pytest.fixture(scope="module")
def imbalanced() -> pd.DataFrame:
    labels = [0] * 70 + [1] * 20 + [2] * 10
    random.Random(5).shuffle(labels)
    return pd.DataFrame({"text": [f"row {i}" for i in range(100)], "label": labels})


@pytest.mark.parametrize("max_rows", [7, 15, 33, 99])
def test_stratified_subsample_size_and_shares(imbalanced, max_rows):
    sub = stratified_subsample(imbalanced, max_rows, seed=0)
    assert len(sub) == max_rows
    counts = sub["label"].value_counts().to_dict()
    for lab, share in ((0, 0.7), (1, 0.2), (2, 0.1)):
        assert abs(counts.get(lab, 0) - share * max_rows) < 1, (lab, counts)
    pos = [int(t.split()[1]) for t in sub["text"]]
    assert pos == sorted(pos) and len(set(pos)) == max_rows  # original order, no repeats
    lookup = dict(zip(imbalanced["text"], imbalanced["label"]))
    assert all(lookup[t] == lab for t, lab in zip(sub["text"], sub["label"]))
    assert sub.index.tolist() == list(range(max_rows))


def test_stratified_subsample_seeded(imbalanced):
    a = stratified_subsample(imbalanced, 20, seed=0)
    pd.testing.assert_frame_equal(a, stratified_subsample(imbalanced, 20, seed=0))
    assert a["text"].tolist() != stratified_subsample(imbalanced, 20, seed=1)["text"].tolist()


def test_stratified_subsample_all_rows(imbalanced):
    shifted = imbalanced.set_axis(range(100, 200))
    for max_rows in (None, 0, 100, 500):
        out = stratified_subsample(shifted, max_rows, seed=0)
        pd.testing.assert_frame_equal(out, imbalanced)


def test_stratified_subsample_refuses_to_lose_a_class(imbalanced):
    with pytest.raises(DataError) as err:
        stratified_subsample(imbalanced, 1, seed=0, what="data.max_train")
    assert str(err.value) == (
        "data.max_train 1 is too small for a stratified subsample: label 1 has 20 of 100 rows and would get "
        "none; raise data.max_train to 10 or more (every label then keeps at least one row), or set it to "
        "null for the full split")
    assert stratified_subsample(imbalanced, 10, seed=0)["label"].nunique() == 3
