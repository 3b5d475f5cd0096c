"""Batching, encoding, the training loop and batched inference (rga.training) with tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rga.training import collate, tokenize_once
from rga.training import (NonFiniteLossError, TrainConfig, encode_batch, length_grouped_batches,
                          predict_logits, token_lengths, train_classifier)

TEXTS = [
    "a",
    "the movie was surprisingly good",
    "bad",
    "an absolutely wonderful , moving and beautifully acted film that i would watch again",
    "not great , not terrible",
    "it is what it is",
    "the plot makes no sense whatsoever and the dialogue is painfully wooden",
    "fine",
    "charming",
    "a dull , lifeless and overlong exercise in style over substance",
]


def _mean_ce(model, tokenizer, texts, labels, max_length=64):
    logits = torch.from_numpy(predict_logits(model, tokenizer, texts, batch_size=32, max_length=max_length))
    return F.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long)).item()


# --------------------------------------------------------------------------- length_grouped_batches

@pytest.fixture(scope="module")
def sst2_lengths(tokenizer, sst2_sample):
    return token_lengths(tokenizer, sst2_sample["text"].tolist(), 128)


def test_token_lengths_counts_special_tokens_and_truncates(tokenizer):
    lens = token_lengths(tokenizer, ["a", "good film", "word " * 200], 16)
    # [CLS] a [SEP] -> 3 ; [CLS] good film [SEP] -> 4 ; long text truncated to max_length 16
    np.testing.assert_array_equal(lens, [3, 4, 16])
    assert lens.dtype == np.int64


@pytest.mark.parametrize("batch_size,group_factor", [(32, 50), (16, 50), (7, 3), (32, 1)])
def test_length_grouped_batches_cover_every_index_once(sst2_lengths, batch_size, group_factor):
    n = len(sst2_lengths)
    batches = length_grouped_batches(sst2_lengths, batch_size, np.random.default_rng(0), group_factor)
    flat = np.concatenate(batches)
    assert len(flat) == n
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # only the last batch of each mega-batch may be short
    mega = batch_size * group_factor
    assert sum(len(b) < batch_size for b in batches) <= math.ceil(n / mega)
    assert len(batches) == sum(math.ceil(min(mega, n - s) / batch_size) for s in range(0, n, mega))


def test_length_grouped_batches_group_similar_lengths(sst2_lengths):
    lengths = sst2_lengths
    overall = lengths.max() - lengths.min()
    assert overall > 20  # the sample really has diverse lengths
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1), group_factor=50)
    ranges = np.array([lengths[b].max() - lengths[b].min() for b in batches])
    # one mega-batch (800 >= 400 rows): the batches are disjoint runs of the sorted lengths,
    # so their ranges add up to at most the overall range
    assert ranges.sum() <= overall
    assert ranges.max() < overall / 2
    # random batches of the same size are far less homogeneous
    perm = np.random.default_rng(1).permutation(len(lengths))
    random_ranges = [np.ptp(lengths[perm[i:i + 16]]) for i in range(0, len(lengths), 16)]
    assert ranges.mean() < np.mean(random_ranges) / 4


def test_length_grouped_batches_sorted_within_megabatches(sst2_lengths):
    # with several mega-batches, every batch is still homogeneous within its mega-batch
    batches = length_grouped_batches(sst2_lengths, 8, np.random.default_rng(2), group_factor=5)
    ranges = np.array([np.ptp(sst2_lengths[b]) for b in batches])
    n_mega = math.ceil(len(sst2_lengths) / 40)
    # per mega-batch the ranges sum to at most the overall range
    assert ranges.sum() <= n_mega * np.ptp(sst2_lengths)
    for b in batches:  # rows inside a batch are sorted longest first
        assert np.all(np.diff(sst2_lengths[b]) <= 0)


def test_length_grouped_batches_deterministic_per_seed(sst2_lengths):
    a = length_grouped_batches(sst2_lengths, 16, np.random.default_rng(123))
    b = length_grouped_batches(sst2_lengths, 16, np.random.default_rng(123))
    c = length_grouped_batches(sst2_lengths, 16, np.random.default_rng(124))
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c))


def test_length_grouped_batches_empty():
    assert length_grouped_batches(np.array([], dtype=np.int64), 4, np.random.default_rng(0)) == []


# --------------------------------------------------------------------------- encode_batch

def test_encode_batch_pads_to_longest_in_batch(tokenizer):
    texts = TEXTS[:3]
    lens = token_lengths(tokenizer, texts, 128)
    enc = encode_batch(tokenizer, texts, 128, torch.device("cpu"))
    assert enc["input_ids"].shape == (3, lens.max())
    assert lens.max() < 128
    np.testing.assert_array_equal(enc["attention_mask"].sum(1).numpy(), lens)
    # right padding with the tokenizer's pad id
    pad = tokenizer.pad_token_id
    shortest = int(np.argmin(lens))
    assert torch.all(enc["input_ids"][shortest, lens[shortest]:] == pad)
    assert enc["input_ids"].device.type == "cpu"


def test_encode_batch_truncates_at_max_length(tokenizer):
    texts = ["short", "word " * 100]
    enc = encode_batch(tokenizer, texts, 12, torch.device("cpu"))
    assert enc["input_ids"].shape == (2, 12)
    assert enc["attention_mask"][1].sum().item() == 12
    assert enc["input_ids"][1, -1].item() == tokenizer.sep_token_id


def test_tokenize_once_gives_exactly_the_per_batch_encodings(tokenizer, sst2_sample):
    # the batches cut from one tokenisation per stage equal tokenising each batch on its own
    texts = sst2_sample["text"].tolist()[:64] + ["word " * 200, "a"]
    tokens = tokenize_once(tokenizer, texts, 40)
    np.testing.assert_array_equal(tokens.lengths, token_lengths(tokenizer, texts, 40))
    for idx in length_grouped_batches(tokens.lengths, 7, np.random.default_rng(3), group_factor=2):
        want = encode_batch(tokenizer, [texts[i] for i in idx], 40, torch.device("cpu"))
        got = collate(tokenizer, tokens.rows(idx), torch.device("cpu"))
        assert set(got) == set(want) == {"input_ids", "token_type_ids", "attention_mask"}
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_tokenize_once_respects_left_padding(tokenizer):
    # decoder tokenizers often pad on the left; collate uses the tokenizer's own padding side
    tokenizer.padding_side = "left"
    try:
        texts = ["a b c d e", "a", "a b"]
        got = collate(tokenizer, tokenize_once(tokenizer, texts, 16).rows([0, 1, 2]), "cpu")
        want = encode_batch(tokenizer, texts, 16, "cpu")
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert got["attention_mask"][1, 0].item() == 0 and got["attention_mask"][1, -1].item() == 1
    finally:
        tokenizer.padding_side = "right"


def test_tokenize_once_empty(tokenizer):
    tokens = tokenize_once(tokenizer, [], 16)
    assert tokens.lengths.shape == (0,) and tokens.rows([]) == []


# --------------------------------------------------------------------------- predict_logits

def test_predict_logits_preserves_input_order(tiny_bert_factory, tokenizer):
    model = tiny_bert_factory(num_labels=3, seed=1)
    with torch.no_grad():  # a random tiny BERT gives near-identical rows; spread them out
        model.classifier.weight.mul_(1000.0)
    batched = predict_logits(model, tokenizer, TEXTS, batch_size=3, max_length=64)
    assert batched.shape == (len(TEXTS), 3) and batched.dtype == np.float32
    single = np.concatenate([predict_logits(model, tokenizer, [t], batch_size=1, max_length=64) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)
    # rows really differ by far more than the tolerance (otherwise an order bug could not show)
    dist = np.abs(single[:, None] - single[None]).max(-1)
    assert dist[np.triu_indices(len(TEXTS), 1)].min() > 1e-3


def test_predict_logits_empty(tiny_bert_factory, tokenizer):
    model = tiny_bert_factory(num_labels=2)
    out = predict_logits(model, tokenizer, [])
    assert isinstance(out, np.ndarray) and out.shape == (0, 2) and out.dtype == np.float32


def test_predict_logits_empty_with_hidden_has_hidden_width(tiny_bert_factory, tokenizer):
    # documented shape is [N, H]; for N = 0 it should still be [0, H] so it concatenates with others
    model = tiny_bert_factory(num_labels=2)
    logits, hidden = predict_logits(model, tokenizer, [], return_hidden_kind="encoder")
    assert logits.shape == (0, 2)
    assert hidden.shape == (0, model.config.hidden_size)


def test_predict_logits_returns_pooled_hidden(tiny_bert_factory, tokenizer):
    model = tiny_bert_factory(num_labels=2, seed=2)
    logits, hidden = predict_logits(model, tokenizer, TEXTS, batch_size=4, max_length=64,
                                    return_hidden_kind="encoder")
    assert logits.shape == (len(TEXTS), 2)
    assert hidden.shape == (len(TEXTS), 32) and hidden.dtype == np.float32
    np.testing.assert_allclose(logits, predict_logits(model, tokenizer, TEXTS, 4, 64), atol=1e-6, rtol=0)
    with torch.inference_mode():
        for i, t in enumerate(TEXTS):
            enc = tokenizer([t], return_tensors="pt")
            cls = model(**enc, output_hidden_states=True).hidden_states[-1][0, 0].numpy()
            np.testing.assert_allclose(hidden[i], cls, atol=1e-5, rtol=0)


def test_predict_logits_restores_train_mode(tiny_bert_factory, tokenizer):
    model = tiny_bert_factory().train()
    a = predict_logits(model, tokenizer, TEXTS[:4])
    b = predict_logits(model, tokenizer, TEXTS[:4])
    np.testing.assert_array_equal(a, b)  # dropout off during prediction
    assert model.training


# --------------------------------------------------------------------------- train_classifier

def test_train_classifier_lowers_loss(tiny_bert_factory, tokenizer, sst2_sample):
    rows = sst2_sample.iloc[:64]
    texts, labels = rows["text"].tolist(), rows["label"].tolist()
    assert 10 < sum(labels) < 54  # both classes present
    model = tiny_bert_factory(num_labels=2, seed=0)
    before = _mean_ce(model, tokenizer, texts, labels)
    seen = []
    cfg = TrainConfig(epochs=8, lr=3e-3, batch_size=16, max_length=64, seed=0)
    history = train_classifier(model, tokenizer, texts, labels, cfg,
                               on_epoch_end=lambda e, rec: seen.append((e, rec["train_loss"])), progress=False)
    after = _mean_ce(model, tokenizer, texts, labels)
    assert before == pytest.approx(math.log(2), abs=0.05)  # untrained: about chance
    assert after < 0.6 * before, (before, after)
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert seen == [(h["epoch"], h["train_loss"]) for h in history]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["samples_per_s"] > 0 for h in history)
    assert not model.training  # left in eval mode


def test_train_classifier_raises_on_nan_loss(tiny_bert_factory, tokenizer):
    model = tiny_bert_factory(num_labels=2)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=4, max_length=32)
    with pytest.raises(NonFiniteLossError, match="epoch 1 step 0"):
        train_classifier(model, tokenizer, TEXTS[:8], [0, 1] * 4, cfg, desc="nan-check", progress=False)


def _train_copy(factory, tokenizer, texts, labels, seed):
    model = factory(num_labels=2, seed=0)
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, max_length=48, seed=seed)
    hist = train_classifier(model, tokenizer, texts, labels, cfg, progress=False)
    return model, hist


def test_train_classifier_deterministic_on_cpu(tiny_bert_factory, tokenizer, sst2_sample):
    rows = sst2_sample.iloc[100:132]
    texts, labels = rows["text"].tolist(), rows["label"].tolist()
    m1, h1 = _train_copy(tiny_bert_factory, tokenizer, texts, labels, seed=7)
    m2, h2 = _train_copy(tiny_bert_factory, tokenizer, texts, labels, seed=7)
    m3, _ = _train_copy(tiny_bert_factory, tokenizer, texts, labels, seed=8)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [h["train_loss"] for h in h1] == [h["train_loss"] for h in h2]
    np.testing.assert_array_equal(predict_logits(m1, tokenizer, texts), predict_logits(m2, tokenizer, texts))
    # the seed matters: another seed trains to different weights
    assert not torch.equal(s1["classifier.weight"], s3["classifier.weight"])


def test_progress_is_plain_log_lines_when_stderr_is_not_a_terminal(tiny_bert_factory, tokenizer, sst2_sample,
                                                                     capsys, caplog):
    # `dvc repro > run.log 2>&1`: no carriage-return progress bars pile up in the log, one line per epoch instead
    import logging

    rows = sst2_sample.iloc[:32]
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, max_length=32, seed=0)
    with caplog.at_level(logging.INFO, logger="rga"):
        train_classifier(tiny_bert_factory(seed=1), tokenizer, rows["text"].tolist(), rows["label"].tolist(), cfg,
                         desc="finetune cellX", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err
    lines = [r.getMessage() for r in caplog.records if r.name == "rga"]
    assert [m.split(":")[0] for m in lines] == ["finetune cellX epoch 1", "finetune cellX epoch 2"]
    assert all("train_loss" in m and "samples_per_s" in m for m in lines)


def test_logging_in_a_repository_without_a_commit_says_to_commit_first(tmp_path, monkeypatch):
    """DVCLive fails in a `git init` folder with no commit (scmrepo's raw 'Empty git repo');
    the stages' logger stops with a message that says what to do instead."""
    import subprocess
    import sys

    from rga.tracking import EmptyRepositoryError, EpochLogger

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EmptyRepositoryError, match=r"this git repository has no commit yet .*Commit the pipeline "
                                                   r"first: git add -A && git commit"):
        EpochLogger(tmp_path / "plots" / "x", ("train_loss",))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp_path, check=True)
    log = EpochLogger(tmp_path / "plots" / "x", ("train_loss",))  # with a commit it logs
    log.log(1, {"train_loss": 0.5})
    log.close()
    assert (tmp_path / "plots" / "x" / "history.csv").read_text().splitlines() == ["epoch,train_loss", "1,0.5"]
