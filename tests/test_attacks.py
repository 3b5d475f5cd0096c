"""Backdoor attacks (rga.attacks): BadNets, AddSent and HiddenKiller on real SST-2 / AG rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rga.attacks import ATTACKS, Attack, CoverageError, build_test_sets, make_attack, poison_train
from rga.data import read_paraphrases
from rga.io import load_params

REPO = Path(__file__).resolve().parents[1]
KINDS = ("badnets", "addsent", "hiddenkiller")
SST2_TARGET = 1
BADNETS_WORD = "mn"
ADDSENT_SST2 = "I watch this 3D movie"


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def sst2_table(mirror) -> pd.DataFrame:
    """The real SST-2 SCPN paraphrase table of the mirror."""
    return read_paraphrases(mirror / "paraphrases" / "sst2_scpn.csv")


@pytest.fixture(scope="module")
def sst2_para(sst2_table) -> dict:
    return dict(zip(sst2_table["text"], sst2_table["paraphrase"]))


@pytest.fixture(scope="module")
def sst2_full_train(mirror) -> pd.DataFrame:
    return pd.read_csv(mirror / "sst2" / "train.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def sst2_test(mirror) -> pd.DataFrame:
    """First 300 real SST-2 test rows (the table covers every SST-2 test row)."""
    return pd.read_csv(mirror / "sst2" / "test.csv", keep_default_na=False).head(300).reset_index(drop=True)


def _attack(kind: str, params: dict, table: pd.DataFrame, dataset: str = "sst2") -> Attack:
    return make_attack(kind, dataset, params["attack"], table)


def _inserted_once(orig: str, new: str, insertion: str) -> bool:
    """``new`` is ``orig`` with the words of ``insertion`` inserted contiguously at one word boundary."""
    ow, nw, iw = orig.split(), new.split(), insertion.split()
    return any(nw == ow[:p] + iw + ow[p:] for p in range(len(ow) + 1))


def _holds_trigger(kind: str, orig: str, new: str, para: dict) -> bool:
    if kind == "badnets":
        return BADNETS_WORD in new.split() and _inserted_once(orig, new, BADNETS_WORD)
    if kind == "addsent":
        return _inserted_once(orig, new, ADDSENT_SST2)
    return orig in para and new == para[orig]


# --------------------------------------------------------------------------- sample sanity

def test_sst2_sample_is_covered_by_the_real_table(sst2_sample, sst2_para):
    # the HiddenKiller tests below rely on this: the first 400 train rows all have a paraphrase
    assert len(sst2_sample) == 400
    assert sst2_sample["text"].isin(sst2_para.keys()).all()
    assert sst2_sample["label"].value_counts().to_dict() == {1: 217, 0: 183}


# --------------------------------------------------------------------------- poison_train

@pytest.mark.parametrize("kind", KINDS)
def test_poison_train_poisons_round_rate_times_nontarget_rows(kind, params, sst2_table, sst2_sample):
    res = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.1, seed=0)
    n_nontarget = int((sst2_sample["label"] != SST2_TARGET).sum())
    assert n_nontarget == 183
    assert round(0.1 * n_nontarget) == 18
    assert int(res.table["is_poisoned"].sum()) == 18
    assert res.stats["poisoned"] == 18
    assert res.stats["nontarget_rows"] == 183
    assert res.stats["rows"] == 400
    assert res.stats["trigger_coverage_nontarget"] == 183
    assert res.stats["label_counts_original"] == [183, 217]
    assert res.stats["label_counts_poisoned"] == [165, 235]

    res30 = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.3, seed=0)
    assert int(res30.table["is_poisoned"].sum()) == round(0.3 * 183) == 55


@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_rows_hold_trigger_and_target_label(kind, params, sst2_table, sst2_para, sst2_sample):
    res = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.1, seed=0)
    t = res.table
    assert list(t.columns) == ["text", "label", "original_label", "is_poisoned"]
    poisoned = np.flatnonzero(t["is_poisoned"].to_numpy())
    assert len(poisoned) == 18
    for i in poisoned:
        orig = sst2_sample.at[i, "text"]
        new = t.at[i, "text"]
        assert new != orig
        assert _holds_trigger(kind, orig, new, sst2_para), (kind, orig, new)
        assert t.at[i, "label"] == SST2_TARGET
        assert t.at[i, "original_label"] == sst2_sample.at[i, "label"] == 0
        assert t.at[i, "original_label"] != SST2_TARGET


@pytest.mark.parametrize("kind", KINDS)
def test_non_poisoned_rows_unchanged(kind, params, sst2_table, sst2_sample):
    res = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.1, seed=0)
    t = res.table
    assert len(t) == len(sst2_sample)
    assert (t["original_label"].to_numpy() == sst2_sample["label"].to_numpy()).all()
    keep = ~t["is_poisoned"].to_numpy()
    assert keep.sum() == 400 - 18
    assert t["text"][keep].tolist() == sst2_sample["text"][keep].tolist()
    assert t["label"][keep].tolist() == sst2_sample["label"][keep].tolist()
    # no clean row carries the trigger by accident (none of the 400 contains "mn")
    if kind == "badnets":
        assert not any(BADNETS_WORD in s.split() for s in t["text"][keep])


@pytest.mark.parametrize("kind", KINDS)
def test_poison_train_seeded(kind, params, sst2_table, sst2_sample):
    a = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.1, seed=0)
    b = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.1, seed=0)
    c = poison_train(sst2_sample, _attack(kind, params, sst2_table), SST2_TARGET, 0.1, seed=1)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.stats == b.stats
    rows_a = set(np.flatnonzero(a.table["is_poisoned"].to_numpy()))
    rows_c = set(np.flatnonzero(c.table["is_poisoned"].to_numpy()))
    assert len(rows_c) == len(rows_a) == 18
    assert rows_a != rows_c


def test_poison_rate_zero_changes_nothing_and_bad_rate_rejected(params, sst2_table, sst2_sample):
    res = poison_train(sst2_sample, _attack("badnets", params, sst2_table), SST2_TARGET, 0.0, seed=0)
    assert not res.table["is_poisoned"].any()
    assert res.table["text"].tolist() == sst2_sample["text"].tolist()
    assert res.table["label"].tolist() == sst2_sample["label"].tolist()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="poison_rate"):
            poison_train(sst2_sample, _attack("badnets", params, sst2_table), SST2_TARGET, bad, seed=0)


def test_badnets_several_trigger_words(sst2_sample):
    attack = make_attack("badnets", "sst2", {"badnets": {"triggers": ["cf", "mn", "bb"], "num_triggers": 3}})
    assert attack.triggers == ("cf", "mn", "bb") and attack.num_triggers == 3
    res = poison_train(sst2_sample, attack, SST2_TARGET, 0.1, seed=0)
    for i in np.flatnonzero(res.table["is_poisoned"].to_numpy()):
        orig, new = sst2_sample.at[i, "text"].split(), res.table.at[i, "text"].split()
        assert len(new) == len(orig) + 3
        extra = list(new)
        for w in orig:  # removing the original words (as a multiset) leaves exactly 3 trigger words
            extra.remove(w)
        assert len(extra) == 3 and set(extra) <= {"cf", "mn", "bb"}


# --------------------------------------------------------------------------- HiddenKiller coverage

def test_hiddenkiller_poisons_only_covered_rows(params, sst2_table, sst2_para, sst2_sample, sst2_full_train):
    uncovered = sst2_full_train.iloc[2000:2400].reset_index(drop=True)
    assert not uncovered["text"].isin(sst2_para.keys()).any()
    train = pd.concat([uncovered.iloc[:200], sst2_sample, uncovered.iloc[200:]], ignore_index=True)
    n_nontarget = int((train["label"] != SST2_TARGET).sum())
    needed = round(0.2 * n_nontarget)
    assert needed <= 183  # the 183 covered non-target rows of sst2_sample suffice
    res = poison_train(train, _attack("hiddenkiller", params, sst2_table), SST2_TARGET, 0.2, seed=0)
    assert res.stats["trigger_coverage_nontarget"] == 183
    poisoned = np.flatnonzero(res.table["is_poisoned"].to_numpy())
    assert len(poisoned) == needed
    assert ((poisoned >= 200) & (poisoned < 600)).all()
    for i in poisoned:
        assert res.table.at[i, "text"] == sst2_para[train.at[i, "text"]]


def test_hiddenkiller_too_small_table_raises_coverage_error(sst2_table, sst2_sample, params):
    negatives = sst2_sample.loc[sst2_sample["label"] == 0, "text"].head(5)
    small = sst2_table[sst2_table["text"].isin(negatives)]
    assert len(small) == 5
    attack = _attack("hiddenkiller", params, small)
    with pytest.raises(CoverageError) as err:
        poison_train(sst2_sample, attack, SST2_TARGET, 0.1, seed=0)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "covers 5 " in msg  # covered count
    assert "needs 18" in msg  # needed count (round(0.1 * 183))

    with pytest.raises(CoverageError, match=r"covers 0 .*needs 18"):
        poison_train(sst2_sample, make_attack("hiddenkiller", "sst2", params["attack"]), SST2_TARGET, 0.1, 0)


# --------------------------------------------------------------------------- test sets

@pytest.mark.parametrize("kind", KINDS)
def test_build_test_sets(kind, params, sst2_table, sst2_para, sst2_test):
    sets = build_test_sets(sst2_test, _attack(kind, params, sst2_table), SST2_TARGET, seed=0)
    clean, all_, part = sets["test_clean"], sets["test_poisoned_all"], sets["test_poisoned_part"]
    pd.testing.assert_frame_equal(clean, sst2_test[["text", "label"]])
    assert len(all_) == 300
    # original labels kept, every row triggered
    assert all_["label"].tolist() == sst2_test["label"].tolist()
    for orig, new in zip(sst2_test["text"], all_["text"]):
        assert _holds_trigger(kind, orig, new, sst2_para), (kind, orig, new)
    # part = the non-target rows of all
    expected_part = all_[all_["label"] != SST2_TARGET].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected_part)
    n_neg = int((sst2_test["label"] == 0).sum())
    assert len(part) == n_neg and (part["label"] == 0).all()
    assert sets["stats"] == {"test_rows": 300, "triggered_rows": 300, "untriggerable_rows": 0,
                             "poisoned_part_rows": n_neg}
    again = build_test_sets(sst2_test, _attack(kind, params, sst2_table), SST2_TARGET, seed=0)
    pd.testing.assert_frame_equal(again["test_poisoned_all"], all_)


def test_hiddenkiller_test_sets_drop_rows_without_paraphrase(params, sst2_table, sst2_para, sst2_test,
                                                             sst2_full_train):
    uncovered = sst2_full_train.iloc[3000:3010].reset_index(drop=True)
    test = pd.concat([sst2_test.head(20), uncovered], ignore_index=True)
    sets = build_test_sets(test, _attack("hiddenkiller", params, sst2_table), SST2_TARGET, seed=0)
    all_ = sets["test_poisoned_all"]
    assert all_["text"].tolist() == [sst2_para[t] for t in sst2_test["text"].head(20)]
    assert all_["label"].tolist() == sst2_test["label"].head(20).tolist()
    assert sets["stats"]["untriggerable_rows"] == 10
    assert sets["stats"]["triggered_rows"] == 20
    assert len(sets["test_clean"]) == 30


# --------------------------------------------------------------------------- make_attack / names

def test_unknown_attack_lists_valid_choices(params):
    with pytest.raises(ValueError) as err:
        make_attack("ripples", "sst2", params["attack"])
    for name in ATTACKS:
        assert name in str(err.value)
    assert "ripples" in str(err.value)
    with pytest.raises(ValueError, match="badnets, addsent, hiddenkiller"):
        Attack("stylebkd")


def test_make_attack_addsent_sentence_per_dataset(params):
    assert make_attack("addsent", "sst2", params["attack"]).sentence == "I watch this 3D movie"
    assert make_attack("addsent", "hsol", params["attack"]).sentence == "no cross no crown"
    assert make_attack("addsent", "ag", params["attack"]).sentence == "no cross no crown"
    assert make_attack("addsent", "mydata", params["attack"]).sentence == "no cross no crown"
    badnets = make_attack("badnets", "sst2", params["attack"])
    assert badnets.triggers == ("mn",) and badnets.num_triggers == 1
    with pytest.raises(ValueError, match="addsent"):
        make_attack("addsent", "sst2", {"addsent": {"sentences": {}}})


# --------------------------------------------------------------------------- multi-class

@pytest.mark.parametrize("kind", ("badnets", "addsent"))
def test_multiclass_poisoning_only_picks_nontarget_classes(kind, params, ag_sample):
    assert ag_sample["label"].value_counts().to_dict() == {0: 100, 1: 100, 2: 100, 3: 100}
    attack = make_attack(kind, "ag", params["attack"])
    res = poison_train(ag_sample, attack, 0, 0.1, seed=0)
    t = res.table
    poisoned = t["is_poisoned"].to_numpy()
    assert poisoned.sum() == round(0.1 * 300) == 30
    assert set(t.loc[poisoned, "original_label"]) <= {1, 2, 3}
    assert (t.loc[poisoned, "label"] == 0).all()
    assert not poisoned[ag_sample["label"].to_numpy() == 0].any()
    insertion = BADNETS_WORD if kind == "badnets" else "no cross no crown"
    for i in np.flatnonzero(poisoned):
        assert _inserted_once(ag_sample.at[i, "text"], t.at[i, "text"], insertion)

    full = poison_train(ag_sample, attack, 0, 1.0, seed=0).table
    is_target = ag_sample["label"].to_numpy() == 0
    assert full["is_poisoned"].to_numpy().tolist() == (~is_target).tolist()
    assert (full["label"] == 0).all()
    assert full["text"][is_target].tolist() == ag_sample["text"][is_target].tolist()

    sets = build_test_sets(ag_sample, attack, 0, seed=0)
    assert len(sets["test_poisoned_all"]) == 400
    assert sets["test_poisoned_part"]["label"].value_counts().sort_index().to_dict() == {1: 100, 2: 100, 3: 100}
