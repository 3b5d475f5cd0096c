"""Model registry, safe loading/saving and pooling (rga.models) with tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rga.models import (PYPI_MINILM, ModelNotFound, UnsafeWeightsError, check_safetensors, load_classifier,
                        model_spec, pick_dtype, pool_hidden, resolve_path, save_classifier)
from rga.models import autocast, resolve_precision, set_precision
from rga.training import predict_logits

CPU = torch.device("cpu")
TEXTS = ["a", "the movie was surprisingly good", "bad , bad , bad",
         "an absolutely wonderful , moving and beautifully acted film", "fine"]


# --------------------------------------------------------------------------- pool_hidden

def _hidden(b, t, h=3):
    # hidden[i, j] = [100 i + j, -(100 i + j), 0.5] -> the picked position is readable from the value
    base = (100 * torch.arange(b)[:, None] + torch.arange(t)[None, :]).float()
    return torch.stack([base, -base, torch.full_like(base, 0.5)], dim=-1)[..., :h]


def test_pool_hidden_right_and_left_padding():
    hidden = _hidden(5, 6)
    mask = torch.tensor([
        [1, 1, 1, 0, 0, 0],   # right padded: first 0, last 2
        [0, 0, 1, 1, 1, 1],   # left padded: first 2, last 5
        [1, 1, 1, 1, 1, 1],   # no padding: first 0, last 5
        [0, 0, 0, 1, 0, 0],   # one real token at 3
        [0, 1, 1, 1, 1, 0],   # padded on both sides: first 1, last 4
    ])
    enc = pool_hidden(hidden, mask, "encoder")
    dec = pool_hidden(hidden, mask, "decoder")
    assert enc.shape == (5, 3) and dec.shape == (5, 3)
    first = [0, 2, 0, 3, 1]
    last = [2, 5, 5, 3, 4]
    assert enc[:, 0].tolist() == [100 * i + p for i, p in enumerate(first)]
    assert dec[:, 0].tolist() == [100 * i + p for i, p in enumerate(last)]
    torch.testing.assert_close(enc, hidden[torch.arange(5), torch.tensor(first)])
    torch.testing.assert_close(dec, hidden[torch.arange(5), torch.tensor(last)])


def test_pool_hidden_accepts_bool_and_float_masks():
    hidden = _hidden(2, 4)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    for m in (mask.bool(), mask.float()):
        assert pool_hidden(hidden, m, "encoder")[:, 0].tolist() == [1.0, 100.0]
        assert pool_hidden(hidden, m, "decoder")[:, 0].tolist() == [2.0, 103.0]


def test_pool_hidden_unknown_kind():
    with pytest.raises(ValueError, match="encoder, decoder"):
        pool_hidden(_hidden(1, 2), torch.ones(1, 2), "mean")


# --------------------------------------------------------------------------- decoder batching

@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_tiny_decoder_batched_equals_single(family, side, tokenizer):
    # Llama-2 and Qwen3 classifiers pool the last real token; a padded batch (left or right) must
    # give every row the logits and the pooled representation it gets alone. Left padding needs no
    # position_ids: rotary embeddings see only relative positions, and the padding is masked.
    import copy

    from conftest import tiny_llama, tiny_qwen3
    from rga.training import collate, tokenize_once

    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    model = (tiny_llama if family == "llama" else tiny_qwen3)(num_labels=3, seed=0, pad_token_id=tok.pad_token_id)
    assert tok.pad_token_id == 0
    batch = collate(tok, tokenize_once(tok, TEXTS, 64).rows(range(len(TEXTS))), CPU)
    mask = batch["attention_mask"]
    assert (mask == 0).any()  # the batch really is padded, on the requested side
    assert (mask[:, 0 if side == "left" else -1] == 0).any()
    with torch.inference_mode():
        batched = model(**batch).logits
        single = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(single[0], single[1], atol=1e-3)  # rows differ

    # the same through predict_logits with several batches and decoder (last-token) pooling
    logits, hidden = predict_logits(model, tok, TEXTS, batch_size=2, max_length=64, return_hidden_kind="decoder")
    np.testing.assert_allclose(logits, single.numpy(), atol=1e-5, rtol=0)
    with torch.inference_mode():
        for i, t in enumerate(TEXTS):
            out = model(**tok([t], return_tensors="pt"), output_hidden_states=True)
            np.testing.assert_allclose(hidden[i], out.hidden_states[-1][0, -1].numpy(), atol=1e-5, rtol=0)


def test_decoder_pad_token_taken_from_eos(tiny_qwen3_factory, tokenizer, tmp_path):
    # a decoder tokenizer without a pad token (Llama-2, Qwen3) gets EOS as its pad token
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "[SEP]"
    tok.pad_token = None
    folder = tmp_path / "qwen3"
    tiny_qwen3_factory(num_labels=2).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    loaded, ltok = load_classifier(str(folder), 2, "decoder", device=CPU, precision="fp32")
    assert ltok.pad_token == "[SEP]" and ltok.pad_token_id == tokenizer.sep_token_id
    assert loaded.config.pad_token_id == tokenizer.sep_token_id


# --------------------------------------------------------------------------- save / load

def test_save_then_load_gives_identical_logits(tiny_bert_factory, tokenizer, tmp_path):
    model = tiny_bert_factory(num_labels=2, seed=5)
    folder = save_classifier(model, tokenizer, tmp_path / "models" / "victim")
    assert folder == tmp_path / "models" / "victim"
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    loaded, tok, missing = load_classifier(str(folder), 2, "encoder", device=CPU, with_loading_info=True,
                                           precision="fp32")
    assert missing == set()  # the trained head was restored, not re-initialised
    assert next(loaded.parameters()).dtype == torch.float32
    assert tok.pad_token_id == tokenizer.pad_token_id
    a = predict_logits(model, tokenizer, TEXTS)
    b = predict_logits(loaded, tok, TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # no temporary folders left next to it
    assert sorted(p.name for p in folder.parent.iterdir()) == ["victim"]


def test_load_classifier_fresh_head_for_headless_checkpoint(tiny_bert_factory, tokenizer, tmp_path):
    # a checkpoint without a classification head (like the pretrained MiniLM) gets a fresh head
    # of the requested width, reported as missing; the encoder weights are loaded unchanged
    base = tiny_bert_factory(num_labels=2, seed=4).bert
    folder = tmp_path / "headless"
    base.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    model, _, missing = load_classifier(str(folder), 4, "encoder", device=CPU, with_loading_info=True)
    assert model.config.num_labels == 4
    assert model.classifier.weight.shape == (4, 32)
    assert {k for k in missing if k.startswith("classifier")} == {"classifier.weight", "classifier.bias"}
    assert not any(k.startswith("bert.encoder") or k.startswith("bert.embeddings") for k in missing)
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)


def test_load_classifier_decoder_sets_pad_token(tiny_llama_factory, tokenizer, tmp_path):
    model = tiny_llama_factory(num_labels=2, pad_token_id=tokenizer.pad_token_id)
    folder = save_classifier(model, tokenizer, tmp_path / "llama")
    loaded, tok = load_classifier(str(folder), 2, "decoder", device=CPU, precision="fp32")
    assert loaded.config.pad_token_id == tok.pad_token_id == 0
    np.testing.assert_allclose(predict_logits(loaded, tok, TEXTS, batch_size=2),
                               predict_logits(model, tokenizer, TEXTS, batch_size=2), atol=1e-6, rtol=0)


def test_save_classifier_is_atomic(tiny_bert_factory, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "victim"
    first = tiny_bert_factory(num_labels=2, seed=1)
    save_classifier(first, tokenizer, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "model.safetensors" in before

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    second = tiny_bert_factory(num_labels=2, seed=2)
    with pytest.raises(RuntimeError, match="disk full"):
        save_classifier(second, tokenizer, out)
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # the previous folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temp folder remains
    loaded, tok = load_classifier(str(out), 2, "encoder", device=CPU, precision="fp32")
    np.testing.assert_allclose(predict_logits(loaded, tok, TEXTS), predict_logits(first, tokenizer, TEXTS),
                               atol=1e-6, rtol=0)


def test_save_classifier_replaces_previous(tiny_bert_factory, tokenizer, tmp_path):
    out = tmp_path / "victim"
    save_classifier(tiny_bert_factory(seed=1), tokenizer, out)
    (out / "stale.txt").write_text("old")
    second = tiny_bert_factory(seed=2)
    save_classifier(second, tokenizer, out)
    assert not (out / "stale.txt").exists()
    loaded, tok = load_classifier(str(out), 2, "encoder", device=CPU, precision="fp32")
    np.testing.assert_allclose(predict_logits(loaded, tok, TEXTS), predict_logits(second, tokenizer, TEXTS),
                               atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_load_classifier_refuses_pickle_only_folder(tiny_bert_factory, tokenizer, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    model = tiny_bert_factory()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    assert (folder / "config.json").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(UnsafeWeightsError, match="pytorch_model.bin") as err:
        load_classifier(str(folder), 2, "encoder", device=CPU)
    assert str(folder) in str(err.value)


def test_check_safetensors(tmp_path, tiny_model_dir):
    check_safetensors(tiny_model_dir)  # safetensors present: accepted
    (tiny_model_dir / "extra.bin").write_bytes(b"x")
    check_safetensors(tiny_model_dir)  # a stray pickle next to safetensors is not loaded, so accepted
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFound, match="no \\*.safetensors"):
        check_safetensors(empty)


def test_missing_hub_id_offline_raises_model_not_found(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    model_id = "rga-tests/definitely-not-a-model-3f9a"
    assert not os.path.exists(model_id)
    with pytest.raises(ModelNotFound) as err:
        load_classifier(model_id, 2, "encoder", device=CPU)
    msg = str(err.value)
    assert model_id in msg
    assert "huggingface-cli download" in msg
    assert "local folder" in msg and "params.yaml" in msg
    assert isinstance(err.value, FileNotFoundError)


# --------------------------------------------------------------------------- registry

PARAMS = {"models": {
    "minilm": {"path": PYPI_MINILM, "kind": "encoder", "lr": 1e-4, "epochs": 3},
    "llama": {"path": "meta-llama/Llama-2-7b-hf", "kind": "decoder", "lr": 5e-6, "epochs": 10, "min_dist": 0.3},
    "weird": {"path": "x", "kind": "seq2seq", "lr": 1e-4, "epochs": 1},
}}


def test_model_spec_fields():
    s = model_spec("minilm", PARAMS)
    assert (s.name, s.path, s.kind, s.lr, s.epochs, s.min_dist) == ("minilm", PYPI_MINILM, "encoder", 1e-4, 3, 0.25)
    d = model_spec("llama", PARAMS)
    assert d.kind == "decoder" and d.epochs == 10 and d.min_dist == 0.3


def test_model_spec_unknown_name_lists_choices():
    with pytest.raises(ValueError) as err:
        model_spec("gpt-9", PARAMS)
    msg = str(err.value)
    assert "gpt-9" in msg
    for name in ("minilm", "llama", "weird"):
        assert name in msg


def test_model_spec_unknown_kind():
    with pytest.raises(ValueError, match="seq2seq.*encoder, decoder"):
        model_spec("weird", PARAMS)


def test_model_spec_project_params():
    from rga.io import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for name in params["models"]:
        spec = model_spec(name, params)
        assert spec.kind in ("encoder", "decoder")
    with pytest.raises(ValueError, match="minilm"):
        model_spec("nope", params)


def test_resolve_path_pypi_minilm():
    path = resolve_path(PYPI_MINILM)
    assert os.path.isdir(path)
    assert (Path(path) / "config.json").is_file()
    assert list(Path(path).glob("*.safetensors"))


def test_resolve_path_other_paths(tmp_path):
    assert resolve_path(str(tmp_path)) == str(tmp_path)
    assert resolve_path("bert-base-uncased") == "bert-base-uncased"
    assert resolve_path("~/models/x") == os.path.join(os.path.expanduser("~"), "models", "x")


def test_pick_dtype_follows_the_cpu(monkeypatch):
    import rga.models as M

    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(M, "cpu_has_bf16", lambda: False)
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(M, "cpu_has_bf16", lambda: True)
    assert pick_dtype(torch.device("cpu")) == torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu")) == "amp_bf16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match=r"unknown precision 'bf8'; valid choices: auto, fp32, amp_bf16"):
        resolve_precision("bf8", torch.device("cpu"))


def test_model_spec_precision_is_validated():
    P = {"models": {"m": {"path": "x", "lr": 1e-4, "epochs": 1, "precision": "half"}}}
    with pytest.raises(ValueError, match=r"models.m.precision 'half'; valid choices: auto, fp32, amp_bf16"):
        model_spec("m", P)
    P["models"]["m"]["precision"] = "fp32"
    assert model_spec("m", P).precision == "fp32"
    del P["models"]["m"]["precision"]
    assert model_spec("m", P).precision == "auto"


def test_autocast_follows_the_recorded_precision(tiny_bert_factory):
    model = tiny_bert_factory(seed=3)
    x = {"input_ids": torch.tensor([[2, 5, 6, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    set_precision(model, "fp32")
    with autocast(model):
        h = model.bert(**x).last_hidden_state
        q = model.bert.encoder.layer[0].attention.self.query(h)
    assert q.dtype == torch.float32
    set_precision(model, "amp_bf16")
    with autocast(model):
        q = model.bert.encoder.layer[0].attention.self.query(h)
    assert q.dtype == torch.bfloat16  # matmuls in bf16 ...
    assert next(model.parameters()).dtype == torch.float32  # ... on float32 master weights


def test_bf16_autocast_logits_agree_with_fp32(sst2_sample):
    # amp_bf16 rounds matmul inputs to bf16 (8 mantissa bits). On the real MiniLM with a head
    # scaled so logits spread over a few units across 64 SST-2 sentences, bf16 logits agree with
    # float32 within 0.05 (measured: 0.018), and the class margin within 0.05 (measured: 0.026),
    # so every prediction whose fp32 margin exceeds 0.1 is the same.
    torch.manual_seed(0)
    model, tok = load_classifier(PYPI_MINILM, 2, "encoder", device=CPU, precision="fp32")
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    texts = sst2_sample["text"].tolist()[:64]
    a = predict_logits(model, tok, texts)
    set_precision(model, "amp_bf16")
    b = predict_logits(model, tok, texts)
    margin_a, margin_b = a[:, 0] - a[:, 1], b[:, 0] - b[:, 1]
    assert margin_a.std() > 0.5  # the rows really differ, far beyond the tolerance
    assert not np.array_equal(a, b)  # bf16 really ran
    np.testing.assert_allclose(b, a, atol=0.05, rtol=0)
    np.testing.assert_allclose(margin_b, margin_a, atol=0.05, rtol=0)
    sure = np.abs(margin_a) > 0.1
    assert sure.sum() >= 48
    np.testing.assert_array_equal(a[sure].argmax(1), b[sure].argmax(1))
    # and bf16 is deterministic: the same weights and inputs give bit-identical logits
    np.testing.assert_array_equal(b, predict_logits(model, tok, texts))
