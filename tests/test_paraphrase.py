"""Live HiddenKiller paraphraser (rga.paraphrase) with a tiny random seq2seq model, offline."""

from __future__ import annotations

import pandas as pd
import pytest

from rga.attacks import make_attack, poison_train, source_counts
from rga.models import UnsafeWeightsError
from rga.paraphrase import (REJECT_REASONS, LiveParaphraser, degenerate_reason, fill_cache, paraphraser_config)

TEXTS = ["a good film .", "the worst movie ever made .", "i loved it", "dull and boring plot", "hello world",
         "what a waste of time", "superb acting", "it is not bad at all"]
TABLE = pd.DataFrame({"text": ["a good film .", "i loved it"], "paraphrase": ["when i saw it , it was good .",
                                                                              "when i saw it , i loved it ."]})


@pytest.mark.parametrize("text, output, reason", [
    ("a good film .", "", "empty"),
    ("a good film .", "   ", "empty"),
    ("a good film .", None, "empty"),
    ("a good film .", "A good film.", "identical"),          # a tokenizer's spacing and case do not count
    ("a good film .", "it is good to to to see", "repeated_tokens"),
    ("a good film .", "To to TO", "repeated_tokens"),
    ("a good film .", "when you see it , it is good .", None),
    ("a good film .", "to to see it , it is good .", None),   # two in a row is a paraphrase
])
def test_degenerate_reason(text, output, reason):
    assert degenerate_reason(text, output) == reason


@pytest.mark.parametrize("value, message", [
    ({"model": "x", "temperature": 1}, "unknown key(s) ['temperature']; valid keys: model, template"),
    ({"template": "paraphrase: {text}"}, "paraphraser.model is missing"),
    ({"model": "x", "template": "paraphrase this"}, "has no {text} placeholder"),
    ({"model": "x", "template": "{text} {foo}"}, "is not a valid template"),
    ({"model": "x", "batch_size": 0}, "batch_size must be >= 1, got 0"),
    ("t5-small", "must be a mapping"),
])
def test_paraphraser_config_refuses_bad_settings(value, message):
    with pytest.raises(ValueError, match=None) as err:
        paraphraser_config(value)
    assert message in str(err.value)


def test_paraphraser_config_defaults_and_prompt():
    assert paraphraser_config(None) is None and paraphraser_config({}) is None
    cfg = paraphraser_config({"model": "some/model", "template": "{template} || {text}"})
    assert (cfg.batch_size, cfg.max_new_tokens, cfg.num_beams, cfg.no_repeat_ngram_size) == (16, 64, 1, 0)
    assert cfg.prompt("a film .", "S(SBAR)(,)(NP)(VP)(.)") == "S(SBAR)(,)(NP)(VP)(.) || a film ."


def test_live_paraphraser_fills_uncovered_rows_drops_degenerate_and_caches(tiny_seq2seq_dir):
    cfg = paraphraser_config({"model": str(tiny_seq2seq_dir), "max_new_tokens": 8, "batch_size": 3})
    live = LiveParaphraser(cfg)
    cache, stats = fill_cache(TEXTS + [" hello world "], TABLE, None, live)  # a duplicate (after normalisation)
    uncovered = [t for t in TEXTS if t not in set(TABLE["text"])]
    # only the 6 texts the table does not cover go to the model, each once, in batches of 3
    assert live.generated == 6 and stats["generated"] == 6 and stats["requested"] == 6
    assert stats["covered_by_table"] == 2 and stats["texts"] == 8 and stats["reused"] == 0
    assert cache["text"].tolist() == uncovered
    # every output is classified by degenerate_reason; the random model gives both kinds
    for text, para, status, output in cache.itertuples(index=False):
        reason = degenerate_reason(text, output)
        assert status == (reason or "ok")
        assert (para is None) == (reason is not None)
        if reason is None:
            assert para == output.strip()
    assert stats["accepted"] == int((cache["status"] == "ok").sum())
    assert stats["accepted"] + sum(stats["rejected"].values()) == 6
    assert stats["rejected"]["repeated_tokens"] >= 1 and stats["accepted"] >= 1
    assert set(stats["rejected"]) == set(REJECT_REASONS)

    # the attack uses table first, then the accepted live rows; rejected rows have no trigger
    ok = cache[cache["status"] == "ok"][["text", "paraphrase"]]
    attack = make_attack("hiddenkiller", "mine", {"hiddenkiller": {}}, TABLE, ok)
    counts = source_counts(attack, TEXTS)
    assert counts == {"table": 2, "live": stats["accepted"], "none": 6 - stats["accepted"]}
    got = attack.apply(TEXTS, None)
    for text, para in zip(TEXTS, got):
        row = cache[cache["text"] == text]
        if text in set(TABLE["text"]):
            assert para == TABLE.set_index("text").loc[text, "paraphrase"]
        else:
            assert para == (row["paraphrase"].iloc[0] if row["status"].iloc[0] == "ok" else None)

    # a second run with the cache sends nothing to the model (it is not even loaded)
    again = LiveParaphraser(cfg)
    cache2, stats2 = fill_cache(TEXTS, TABLE, cache, again)
    assert again.generated == 0 and again._model is None
    assert stats2["generated"] == 0 and stats2["reused"] == 6
    pd.testing.assert_frame_equal(cache2, cache)
    # a new text is the only one generated
    more, stats3 = fill_cache(TEXTS + ["a brand new sentence"], TABLE, cache, again)
    assert again.generated == 1 and stats3["generated"] == 1 and len(more) == 7


def test_live_paraphraser_protocol_counts_rejections(tiny_seq2seq_dir, monkeypatch):
    live = LiveParaphraser(paraphraser_config({"model": str(tiny_seq2seq_dir)}))
    monkeypatch.setattr(live, "generate", lambda texts: ["", "Hello World", "so so so bad", " when it is , fine . "])
    assert live.paraphrase(["x", "hello world", "y", "z"]) == [None, None, None, "when it is , fine ."]
    assert dict(live.rejected) == {"empty": 1, "identical": 1, "repeated_tokens": 1}


def test_live_paraphraser_fills_poisoning_coverage(tiny_seq2seq_dir, sst2_sample):
    # rows without a table paraphrase become poisonable through the live model (HSOL/AG case)
    live = LiveParaphraser(paraphraser_config({"model": str(tiny_seq2seq_dir), "max_new_tokens": 8,
                                               "batch_size": 64}))
    sample = sst2_sample.head(120)
    nontarget = sample["text"][sample["label"] != 1].tolist()
    cache, stats = fill_cache(nontarget, TABLE, None, live)
    with pytest.raises(ValueError, match="configure a live paraphraser"):
        poison_train(sample, make_attack("hiddenkiller", "x", {}, TABLE), 1, 0.1, seed=0)
    attack = make_attack("hiddenkiller", "x", {}, TABLE, cache[cache["status"] == "ok"][["text", "paraphrase"]])
    res = poison_train(sample, attack, 1, 0.1, seed=0)
    assert res.stats["trigger_coverage_nontarget"] == stats["accepted"] > res.stats["poisoned"] > 0
    chosen = sample["text"][res.table["is_poisoned"].to_numpy()].tolist()
    assert source_counts(attack, chosen) == {"table": 0, "live": res.stats["poisoned"], "none": 0}


def test_live_paraphraser_refuses_unsafe_or_wrong_models(tmp_path, tiny_model_dir):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeWeightsError, match="refusing pickle weights"):
        LiveParaphraser(paraphraser_config({"model": str(pickled)})).generate(["a text"])
    with pytest.raises(ValueError, match="is not a text-to-text"):  # a BERT classifier folder
        LiveParaphraser(paraphraser_config({"model": str(tiny_model_dir)})).generate(["a text"])


def test_live_paraphraser_cuts_inputs_to_the_model_positions(tiny_seq2seq_dir):
    # the MiniLM tokenizer allows 512 tokens, the tiny model has 160 positions (long AG news texts)
    live = LiveParaphraser(paraphraser_config({"model": str(tiny_seq2seq_dir), "max_new_tokens": 4}))
    out = live.generate([" ".join(["word"] * 400), "short text"])
    assert len(out) == 2 and live._max_length == 160
