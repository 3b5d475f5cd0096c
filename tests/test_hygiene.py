"""Input hygiene (issue 15): the six kinds of user input that used to pass silently or fail
obscurely, checked in the library and through the stage scripts (fetch_data, attack, detect)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rga.attacks import PoisonCountError, TableParaphraser, make_attack, poison_train
from rga.data import (DataError, DatasetSpec, build_hsol_from_hub, build_sst2_from_hub, fetch_dataset,
                      normalise_text, read_csv_split, read_paraphrases, resolve_conflicts, split_overlap)
from rga.detection import CubeSizeError, check_cube_sizes, cube_detect

REPO = Path(__file__).resolve().parents[1]
PARA_TEXTS = ["it 's a charming film .", "a dull , lifeless plot .", "the acting is wooden ."]
PARAPHRASES = ["when it is charming , it 's a film .", "if the plot is dull , it is lifeless .",
               "as the acting goes , it is wooden ."]


def write(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


# --------------------------------------------------------------------------- 1. one normalisation

@pytest.mark.parametrize("value, want", [
    ("it 's a charming film . ", "it 's a charming film ."),
    ("\ufeffgood film", "good film"),
    ("good film\r", "good film"),
    ("line one\r\nline two", "line one\nline two"),
    ("  keep  inner   spaces\t", "keep  inner   spaces"),
    (None, None), (float("nan"), None), (pd.NA, None), (5, "5"),
])
def test_normalise_text(value, want):
    assert normalise_text(value) == want


def test_paraphrase_table_with_trailing_spaces_matches_all_rows(tmp_path, caplog):
    rows = "".join(f'"{t} ","{p} "\n' for t, p in zip(PARA_TEXTS, PARAPHRASES))
    table = read_paraphrases(write(tmp_path / "paraphrases.csv", "text,paraphrase\n" + rows))
    assert table["text"].tolist() == PARA_TEXTS and table["paraphrase"].tolist() == PARAPHRASES
    train = pd.DataFrame({"text": PARA_TEXTS + ["a lovely film ."], "label": [0, 0, 0, 1]})
    attack = make_attack("hiddenkiller", "mine", {}, table)
    with caplog.at_level(logging.INFO, logger="rga.attacks"):
        out = poison_train(train, attack, target_label=1, poison_rate=1.0, seed=0)
    assert out.stats["trigger_coverage_nontarget"] == 3 and out.stats["trigger_coverage_percent"] == 100.0
    assert out.table["text"].tolist()[:3] == PARAPHRASES
    assert ("hiddenkiller: the paraphrase table covered 3 of 3 non-target rows (100.0%); "
            "poison_rate 1.0 needs 3") in caplog.messages
    # a table passed directly, not through the reader, is normalised the same way
    raw = pd.DataFrame({"text": [t + " " for t in PARA_TEXTS], "paraphrase": PARAPHRASES})
    assert TableParaphraser(raw).paraphrase([" " + t for t in PARA_TEXTS]) == PARAPHRASES


def test_bom_and_crlf_files_keep_working(tmp_path):
    path = write(tmp_path / "train.csv", "\ufefftext,label\ngood film ,1\n\"two\nlines\",0\n", newline="\r\n")
    assert path.read_bytes().startswith(b"\xef\xbb\xbftext,label\r\n")
    df = read_csv_split(path, 2)
    assert df["text"].tolist() == ["good film", "two\nlines"] and df["label"].tolist() == [1, 0]


# --------------------------------------------------------------------------- 2. conflicts and overlap

CONFLICT_CSV = "text,label\ngreat movie .,1\nfine story .,1\ngreat movie .,0\ndull plot .,0\ndull plot .,0\n"


def test_conflicting_labels_refused_by_default(tmp_path):
    path = write(tmp_path / "train.csv", CONFLICT_CSV)
    df = read_csv_split(path, 2)
    with pytest.raises(DataError) as err:
        resolve_conflicts(df, "error", str(path))
    assert str(err.value) == (
        f"{path}: 1 text(s) appear with different labels (2 rows), e.g. 'great movie .' (labels [0, 1], "
        "rows [1, 3]). Fix the labels, or set data.on_conflict to drop (remove every row of such a text) or "
        "keep_first (keep its first row)")


def test_conflicting_labels_drop_and_keep_first(tmp_path, caplog):
    df = read_csv_split(write(tmp_path / "train.csv", CONFLICT_CSV), 2)
    with caplog.at_level(logging.WARNING, logger="rga.data"):
        dropped, info = resolve_conflicts(df, "drop", "train.csv")
    # one row per conflicting text is gone; the exact duplicate "dull plot ." is not a conflict
    assert dropped.to_dict("list") == {"text": ["fine story .", "dull plot .", "dull plot ."], "label": [1, 0, 0]}
    assert info == {"conflicting_texts": 1, "rows_removed": 2}
    assert "train.csv: 1 text(s) appear with different labels; data.on_conflict=drop removed 2 row(s)" in caplog.messages
    first, info = resolve_conflicts(df, "keep_first", "train.csv")
    assert first["text"].tolist() == ["great movie .", "fine story .", "dull plot .", "dull plot ."]
    assert first["label"].tolist() == [1, 1, 0, 0] and info["rows_removed"] == 1
    with pytest.raises(ValueError, match="unknown data.on_conflict 'ignore'; valid choices: error, drop, keep_first"):
        resolve_conflicts(df, "ignore", "train.csv")


def test_conflict_message_lists_at_most_five_examples():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(7)] * 2, "label": [0] * 7 + [1] * 7})
    with pytest.raises(DataError) as err:
        resolve_conflicts(df, "error", "x.csv")
    msg = str(err.value)
    assert msg.startswith("x.csv: 7 text(s) appear with different labels (14 rows), e.g. 't0' (labels [0, 1], rows [1, 8]);")
    assert "'t4'" in msg and "'t5'" not in msg


def test_overlap_counted_and_warned_above_threshold(caplog):
    train = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    test = pd.DataFrame({"text": ["a"] + [f"x{i}" for i in range(99)], "label": [0] * 100})
    with caplog.at_level(logging.WARNING, logger="rga.data"):
        assert split_overlap(train, test, "mine") == {"test_rows_in_train": 1, "percent_of_test": 1.0,
                                                      "warn_above_percent": 1.0}
    assert not caplog.messages  # exactly 1% is not above the threshold
    test2 = test.head(50)
    with caplog.at_level(logging.WARNING, logger="rga.data"):
        assert split_overlap(train, test2, "mine")["percent_of_test"] == 2.0
    assert caplog.messages == ["mine: 1 of 50 test rows (2.00%) also appear in train, above the 1.0% threshold; "
                               "this overlap inflates CACC, remove them from the test split (e.g. 'a')"]


def test_sst2_mirror_has_no_conflicts_and_two_shared_texts(mirror):
    raw = fetch_dataset(DatasetSpec("sst2", 2, 1, None, ("negative", "positive")), mirror=str(mirror))
    assert raw.checks["conflicts"] == {"train": {"conflicting_texts": 0, "rows_removed": 0},
                                       "test": {"conflicting_texts": 0, "rows_removed": 0}}
    assert raw.checks["overlap"] == {"test_rows_in_train": 2, "percent_of_test": 0.11, "warn_above_percent": 1.0}
    assert raw.checks["paraphrases"] == {"rows": 3629, "matching_train_or_test": 3202}


# --------------------------------------------------------------------------- 3. decoding

def test_cp1252_file_gives_data_error_with_offset_and_iconv(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\ncafé costs £5,1\ncheap tea,0\n", encoding="cp1252")
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    fixed = tmp_path / "train.utf8.csv"
    assert str(err.value) == (
        f"{path}: not valid UTF-8 at byte offset 14 (line 2, byte 0xe9); the file looks like cp1252. "
        f"Convert it to UTF-8 and use the converted file: iconv -f cp1252 -t utf-8 {path} > {fixed} "
        f"(check the encoding with: file -i {path})")


def test_utf16_and_non_utf8_paraphrase_tables(tmp_path):
    path = write(tmp_path / "test.csv", "text,label\ngood,1\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"byte offset 0 \(line 1, byte 0xff\); the file looks like utf-16"):
        read_csv_split(path, 2)
    para = write(tmp_path / "paraphrases.csv", "text,paraphrase\nnaïve film,when naïve , a film\n", encoding="cp1252")
    with pytest.raises(DataError, match=r"paraphrases.csv: not valid UTF-8 at byte offset 18 .*iconv -f cp1252"):
        read_paraphrases(para)


# --------------------------------------------------------------------------- 4. label names

def test_named_labels_map_to_indices_when_declared(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\ngood film,positive\nbad film,negative\nok film,Positive \nmeh,0\n")
    df = read_csv_split(path, 2, ("negative", "positive"))
    assert df["label"].tolist() == [1, 0, 1, 0] and df["label"].dtype == np.int64


def test_named_labels_errors(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\ngood film,positive\nbad film,neutral\n")
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2)
    assert str(err.value) == (f"{path}: row 1: label 'positive' is not an integer; use 0..1, or declare the "
                              "dataset's label_names in params.yaml to use names")
    with pytest.raises(DataError) as err:
        read_csv_split(path, 2, ("negative", "positive"))
    assert str(err.value) == (f"{path}: row 2: label 'neutral' is neither an integer nor one of the declared "
                              "label_names ['negative', 'positive'] (case-insensitive)")


# --------------------------------------------------------------------------- 5. minimum sizes

def test_cube_on_five_rows_falls_back_to_random_init_with_warnings(caplog):
    rng = np.random.default_rng(0)
    reps = rng.normal(size=(5, 16)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="rga.detection"):
        res = cube_detect(reps, np.array([0, 0, 0, 1, 1]), 2, n_components=4, n_neighbors=100,
                          min_cluster_size=0.05, min_samples=0.04)
    notes = ["detect.n_neighbors 100 is more than the 4 other training rows; UMAP uses 4 (lower "
             "detect.n_neighbors or use more rows)",
             "5 training rows are too few for UMAP's spectral initialisation with detect.n_components 4 "
             "(needs 6); using random initialisation"]
    assert res.warnings[:2] == notes
    assert caplog.messages == [f"CUBE: {n}" for n in notes]
    assert res.embedding.shape == (5, 4) and np.isfinite(res.embedding).all()
    assert res.flagged.shape == (5,) and res.clusters.shape == (5,)


def test_cube_size_errors():
    with pytest.raises(CubeSizeError) as err:
        check_cube_sizes(2, 4, 100, 0.05, 0.04)
    assert str(err.value) == ("CUBE needs at least 3 training rows, got 2; use more training rows "
                              "(data.max_train) or detect.detector: oracle")
    with pytest.raises(CubeSizeError, match=r"detect.n_components 4 must be between 1 and the number of "
                                            r"training rows minus one \(3\)"):
        check_cube_sizes(4, 4, 100, 0.05, 0.04)
    with pytest.raises(CubeSizeError) as err:
        check_cube_sizes(100, 4, 50, 150, 120)
    assert str(err.value) == ("detect.min_cluster_size 150 resolves to 150 rows but there are only 100 training "
                              "rows, so HDBSCAN can find no cluster; lower detect.min_cluster_size (a value "
                              "below 1 is a fraction of the rows, e.g. 0.05)")
    with pytest.raises(CubeSizeError, match=r"detect.min_samples 120 resolves to 120 rows"):
        check_cube_sizes(100, 4, 50, 10, 120)
    sizes = check_cube_sizes(2000, 4, 100, 0.05, 0.04)  # the default run: no fallback
    assert (sizes.n_neighbors, sizes.init, sizes.min_cluster_size, sizes.min_samples, sizes.notes) == \
        (100, "spectral", 100, 80, [])


def test_poison_count_rounding_to_zero_is_an_error():
    train = pd.DataFrame({"text": ["a b", "c d", "e f", "g h", "i j"], "label": [0, 0, 0, 1, 1]})
    attack = make_attack("badnets", "mine", {"badnets": {"triggers": ["mn"]}})
    with pytest.raises(PoisonCountError) as err:
        poison_train(train, attack, 1, 0.1, seed=0)
    assert str(err.value) == ("poison_rate 0.1 of 3 non-target training rows rounds to 0 poisoned rows; raise "
                              "attack.poison_rate to at least 0.333 (one row) or use more training rows "
                              "(data.max_train, or a larger train.csv)")
    assert poison_train(train, attack, 1, 0.34, seed=0).stats["poisoned"] == 1
    assert poison_train(train, attack, 1, 0.0, seed=0).stats["poisoned"] == 0  # no poisoning asked: fine
    with pytest.raises(PoisonCountError, match="no non-target row to poison"):
        poison_train(train.assign(label=1), attack, 1, 0.1, seed=0)


# --------------------------------------------------------------------------- 6. missing hub texts

class _Split:
    def __init__(self, data: dict):
        self._df = pd.DataFrame(data)
        self.column_names = list(data)
        self.features = {}

    def to_pandas(self) -> pd.DataFrame:
        return self._df.copy()


def test_hub_missing_texts_are_dropped_not_turned_into_text(caplog):
    train = {"sentence": ["a fine film .", None, "a dull film .", float("nan"), " good acting . "],
             "label": [1, 1, 0, 0, 1]}
    dd = {"train": _Split(train), "test": _Split({"sentence": ["bad .", "good ."], "label": [0, 1]})}
    with caplog.at_level(logging.WARNING, logger="rga.data"):
        out = build_sst2_from_hub(lambda repo: dd)
    assert out["train"].to_dict("list") == {"text": ["a fine film .", "a dull film .", "good acting ."],
                                            "label": [1, 0, 1]}
    assert "hub:yerevann/sst2/train: dropped 2 row(s) with a missing or empty text or label" in caplog.messages
    tweets = {"count": [3] * 6, "class": [2, 0, 2, 1, 2, 0], "tweet": ["t0", None, "t2", "t3", "t4", "t5"]}
    out = build_hsol_from_hub(lambda repo: {"train": tweets}, n_train=1, n_test=1)
    texts = out["train"]["text"].tolist() + out["test"]["text"].tolist()
    assert len(texts) == 4 and {"t3", "t5"} <= set(texts) <= {"t0", "t2", "t3", "t4", "t5"}  # never "None"


# --------------------------------------------------------------------------- through the stages

def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **extra)
    return env


def stage(root: Path, script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``stages/<script>.py`` with RGA_ROOT=root and root/params.yaml."""
    cmd = [sys.executable, str(REPO / "stages" / f"{script}.py"), *args, "--params", str(root / "params.yaml")]
    return subprocess.run(cmd, cwd=root, env=env or _env(RGA_ROOT=str(root)), capture_output=True, text=True,
                          timeout=600)


def user_root(tmp_path: Path, files: dict[str, tuple], **data) -> Path:
    """A temporary project root whose params.yaml declares the user dataset ``mine`` (2 labels,
    target 1, label names negative/positive) in ``root/mine`` with ``files`` = name -> (text, encoding)."""
    root = tmp_path / "root"
    for name, (text, encoding) in files.items():
        write(root / "mine" / name, text, encoding)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["mine"] = {"path": str(root / "mine"), "num_labels": 2, "target_label": 1,
                                  "label_names": ["negative", "positive"]}
    params["data"].update({"max_train": None, "max_test": None, **data})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_stages_fetch_and_attack_on_a_messy_user_folder(tmp_path):
    train = ("\ufefftext,label\n" + "".join(f'"{t}",negative\n' for t in PARA_TEXTS)
             + "a lovely film .,positive\ngreat movie .,positive\ngreat movie .,negative\n")
    para = "text,paraphrase\n" + "".join(f'"{t} ","{p}"\n' for t, p in zip(PARA_TEXTS, PARAPHRASES))
    root = user_root(tmp_path, {"train.csv": (train.replace("\n", "\r\n"), "utf-8"),
                                "test.csv": ("text,label\na lovely film .,1\nthe acting is wooden .,0\n", "utf-8"),
                                "paraphrases.csv": (para, "utf-8")})
    proc = stage(root, "fetch_data", "--dataset", "mine")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"fetch_data mine: {root / 'mine' / 'train.csv'}: 1 text(s) appear with different labels (2 rows), "
        "e.g. 'great movie .' (labels [0, 1], rows [5, 6])")

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["on_conflict"] = "drop"
    params["attack"]["poison_rate"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = stage(root, "fetch_data", "--dataset", "mine")
    assert proc.returncode == 0, proc.stderr
    raw = root / "data" / "raw" / "mine"
    train_df = pd.read_parquet(raw / "train.parquet")
    assert train_df.to_dict("list") == {"text": PARA_TEXTS + ["a lovely film ."], "label": [0, 0, 0, 1]}
    assert train_df["text"].value_counts().max() == 1  # one row per text
    checks = json.loads((raw / "source.json").read_text())["checks"]
    assert checks["conflicts"]["train"] == {"conflicting_texts": 1, "rows_removed": 2}
    assert checks["overlap"] == {"test_rows_in_train": 2, "percent_of_test": 100.0, "warn_above_percent": 1.0}
    assert checks["paraphrases"] == {"rows": 3, "matching_train_or_test": 3}
    assert "data.on_conflict=drop removed 2 row(s)" in proc.stderr
    assert "2 of 2 test rows (100.00%) also appear in train, above the 1.0% threshold" in proc.stderr

    proc = stage(root, "attack", "--dataset", "mine", "--attack", "hiddenkiller", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert ("hiddenkiller: the paraphrase table covered 3 of 3 non-target rows (100.0%); poison_rate 1.0 needs 3"
            in proc.stderr)
    stats = json.loads((root / "metrics" / "attack" / "mine-hiddenkiller-0.json").read_text())
    assert stats["train"]["trigger_coverage_nontarget"] == 3 and stats["train"]["trigger_coverage_percent"] == 100.0
    assert stats["train"]["poisoned"] == 3


def test_stage_fetch_refuses_cp1252_and_undeclared_label_names(tmp_path):
    root = user_root(tmp_path, {"train.csv": ("text,label\ncafé costs £5,1\ncheap tea,0\n", "cp1252"),
                                "test.csv": ("text,label\nnice,1\nbad,0\n", "utf-8")})
    proc = stage(root, "fetch_data", "--dataset", "mine")
    path = root / "mine" / "train.csv"
    assert proc.returncode != 0
    assert (f"fetch_data mine: {path}: not valid UTF-8 at byte offset 14 (line 2, byte 0xe9); the file looks "
            f"like cp1252. Convert it to UTF-8 and use the converted file: iconv -f cp1252 -t utf-8 {path} > "
            f"{root / 'mine' / 'train.utf8.csv'}") in proc.stderr

    write(path, "text,label\ngood film,positive\nbad film,negative\n")
    proc = stage(root, "fetch_data", "--dataset", "mine")
    assert proc.returncode == 0, proc.stderr
    assert pd.read_parquet(root / "data" / "raw" / "mine" / "train.parquet")["label"].tolist() == [1, 0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    del params["datasets"]["mine"]["label_names"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = stage(root, "fetch_data", "--dataset", "mine")
    assert proc.returncode != 0
    assert (f"fetch_data mine: {path}: row 1: label 'positive' is not an integer; use 0..1, or declare the "
            "dataset's label_names in params.yaml to use names") in proc.stderr


def test_stage_fetch_from_a_hub_with_missing_texts(tmp_path):
    fake = tmp_path / "fakehub" / "datasets"
    write(fake / "__init__.py", '''"""A fake `datasets` package: SST-2 shaped splits with missing texts."""
import pandas as pd


class Split:
    def __init__(self, data):
        self._df = pd.DataFrame(data)
        self.column_names = list(data)
        self.features = {}

    def to_pandas(self):
        return self._df.copy()


def load_dataset(repo, *args, **kwargs):
    train = {"sentence": ["a fine film .", None, "a dull film .", float("nan"), "good acting ."],
             "label": [1, 1, 0, 0, 1]}
    return {"train": Split(train), "test": Split({"sentence": ["bad .", None, "good ."], "label": [0, 0, 1]})}
''')
    root = tmp_path / "root"
    root.mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = stage(root, "fetch_data", "--dataset", "sst2",
                 env=_env(RGA_ROOT=str(root), RGA_DATA_MIRROR="", PYTHONPATH=str(fake.parent)))
    assert proc.returncode == 0, proc.stderr
    train = pd.read_parquet(root / "data" / "raw" / "sst2" / "train.parquet")
    test = pd.read_parquet(root / "data" / "raw" / "sst2" / "test.parquet")
    assert train["text"].tolist() == ["a fine film .", "a dull film .", "good acting ."]
    assert test["text"].tolist() == ["bad .", "good ."]
    assert "hub:yerevann/sst2/train: dropped 2 row(s) with a missing or empty text or label" in proc.stderr
    assert json.loads((root / "data" / "raw" / "sst2" / "source.json").read_text())["source"] == "hub"


def test_stages_attack_and_detect_on_five_rows(tmp_path, tiny_bert_factory, tokenizer):
    train = "text,label\nred apple,negative\ngreen pear,negative\nblue plum,negative\nsweet fig,positive\nripe kiwi,positive\n"
    root = user_root(tmp_path, {"train.csv": (train, "utf-8"),
                                "test.csv": ("text,label\nsour lime,0\nfresh melon,1\n", "utf-8")})
    assert stage(root, "fetch_data", "--dataset", "mine").returncode == 0
    proc = stage(root, "attack", "--dataset", "mine", "--attack", "badnets", "--seed", "0")
    assert proc.returncode != 0
    assert ("attack mine-badnets-0: poison_rate 0.1 of 3 non-target training rows rounds to 0 poisoned rows; "
            "raise attack.poison_rate to at least 0.333 (one row)") in proc.stderr

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["attack"]["poison_rate"] = 0.34
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = stage(root, "attack", "--dataset", "mine", "--attack", "badnets", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    model_dir = root / "models" / "poisoned" / "minilm-mine-badnets-0"
    tiny_bert_factory().save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    proc = stage(root, "detect", "--model", "minilm", "--dataset", "mine", "--attack", "badnets", "--seed", "0",
                 env=_env(RGA_ROOT=str(root)))
    assert proc.returncode == 0, proc.stderr
    info = json.loads((root / "metrics" / "detect" / "minilm-mine-badnets-0.json").read_text())
    assert info["warning"].startswith(
        "detect.n_neighbors 100 is more than the 4 other training rows; UMAP uses 4 (lower detect.n_neighbors or "
        "use more rows); 5 training rows are too few for UMAP's spectral initialisation with "
        "detect.n_components 4 (needs 6); using random initialisation")
    assert "[rga.detection] CUBE: 5 training rows are too few for UMAP's spectral initialisation" in proc.stderr
    assert info["true_poisoned"] == 1
