"""Large-model options on tiny random models (CPU): precision modes, device_map placement,
LoRA (fine-tune, save/load, RGA's norm term) and gradient checkpointing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rga.methods.rga import param_distance
from rga.models import LoraSpec, load_classifier, model_spec, save_classifier
from rga.training import TrainConfig, make_optimizer, predict_logits, train_classifier
from rga.unlearning import UnlearnConfig, backbone_pairs, unlearn

CPU = torch.device("cpu")
POS = ["a wonderful film", "great acting and a moving story", "i loved it", "beautiful and funny", "superb"]
NEG = ["a dull film", "terrible acting , boring story", "i hated it", "ugly and tedious", "awful"]
TEXTS = (POS + NEG) * 4
LABELS = ([1] * 5 + [0] * 5) * 4


def _save(model, tokenizer, folder):
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def tiny_dirs(tmp_path, tokenizer, tiny_bert_factory, tiny_llama_factory):
    return {"encoder": _save(tiny_bert_factory(seed=1), tokenizer, tmp_path / "bert"),
            "decoder": _save(tiny_llama_factory(seed=1, pad_token_id=tokenizer.pad_token_id), tokenizer,
                             tmp_path / "llama")}


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
def test_each_precision_trains_and_the_loss_falls(kind, precision, tiny_dirs):
    model, tok = load_classifier(tiny_dirs[kind], 2, kind, device=CPU, precision=precision)
    assert model.rga_precision == precision
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {p.dtype for p in model.parameters()} == {want}
    hist = train_classifier(model, tok, TEXTS, LABELS, TrainConfig(epochs=6, lr=3e-3, batch_size=8, seed=0),
                            progress=False)
    losses = [h["train_loss"] for h in hist]
    assert losses[-1] < 0.8 * losses[0], losses
    # bf16 keeps weights, gradients and AdamW moments in bf16 (8 bytes per parameter)
    opt = make_optimizer(model, 1e-3)
    p = next(model.parameters())
    p.grad = torch.zeros_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == want


def test_bf16_adamw_loses_small_updates():
    # the numerical risk of precision bf16 (README "Precision modes"): a step of about lr on
    # weights of size 0.02 is below half a bf16 ulp for most of them and rounds away
    torch.manual_seed(0)
    w32 = torch.randn(4096) * 0.02
    moved = {}
    for dtype in (torch.float32, torch.bfloat16):
        p = torch.nn.Parameter(w32.to(dtype).clone())
        start = p.detach().clone()
        opt = torch.optim.AdamW([p], lr=5e-6, weight_decay=0.0)
        p.grad = torch.randn(4096).to(dtype)
        opt.step()
        moved[dtype] = (p.detach() != start).float().mean().item()
    assert moved[torch.float32] == 1.0
    assert moved[torch.bfloat16] < 0.2  # measured 0.10: 90% of the updates are lost


def test_device_map_auto_on_cpu_loads_and_runs(tiny_dirs):
    ref, tok = load_classifier(tiny_dirs["decoder"], 2, "decoder", device=CPU, precision="fp32")
    model, _ = load_classifier(tiny_dirs["decoder"], 2, "decoder", precision="fp32", device_map="auto")
    # accelerate planned the placement; with no GPU every layer lands on the CPU (one device, so
    # transformers adds no dispatch hooks and no hf_device_map)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert set(getattr(model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"}
    np.testing.assert_allclose(predict_logits(model, tok, POS + NEG), predict_logits(ref, tok, POS + NEG),
                               atol=1e-6, rtol=0)
    hist = train_classifier(model, tok, TEXTS, LABELS, TrainConfig(epochs=2, lr=3e-3, batch_size=8), progress=False)
    assert np.isfinite(hist[-1]["train_loss"])
    with pytest.raises(ValueError, match="device_map 'balanced'; valid choices: none, auto"):
        load_classifier(tiny_dirs["decoder"], 2, "decoder", device_map="balanced")


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lora_finetune_then_rga_changes_only_adapters_and_head(precision, tiny_dirs, tmp_path):
    lora = LoraSpec(r=4, alpha=8.0)
    model, tok = load_classifier(tiny_dirs["decoder"], 2, "decoder", device=CPU, precision=precision, lora=lora)
    init = model.rga_adapter_init
    assert init and all(".lora_A." in n or ".lora_B." in n for n in init)
    assert len(init) == 2 * 2 * 2  # q_proj and v_proj (peft's Llama default) x 2 layers x (A, B)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(init) | {n for n in trainable if ".score.modules_to_save." in n}
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # adapters stay float32
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    before = _state(model)
    train_classifier(model, tok, TEXTS, LABELS, TrainConfig(epochs=2, lr=3e-3, batch_size=8), progress=False)
    poisoned = _state(model)
    changed = {n for n in before if not torch.equal(before[n], poisoned[n])}
    assert changed and changed <= trainable
    assert any(".lora_B." in n for n in changed) and any(".score." in n for n in changed)

    # saved as adapters + head + their starting values, safetensors only; loads back identically
    folder = save_classifier(model, tok, tmp_path / "poisoned")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "adapter_init.safetensors"} <= names
    assert "model.safetensors" not in names and not any(n.endswith(".bin") for n in names)
    loaded, ltok = load_classifier(str(folder), 2, "decoder", device=CPU, precision=precision,
                                   base_path=tiny_dirs["decoder"])
    np.testing.assert_allclose(predict_logits(loaded, ltok, POS + NEG), predict_logits(model, tok, POS + NEG),
                               atol=1e-5, rtol=0)
    assert set(loaded.rga_adapter_init) == set(init)
    for n in init:
        torch.testing.assert_close(loaded.rga_adapter_init[n], init[n], rtol=0, atol=0)

    # RGA's norm term runs over the adapter tensors against their starting values (head excluded)
    params, base = backbone_pairs(loaded, loaded.rga_adapter_init)
    named = dict(loaded.named_parameters())
    assert len(params) == len(init) and all(any(p is named[n] for n in init) for p in params)
    want = sum(float(torch.linalg.vector_norm(named[n].detach().float() - init[n])) for n in init)
    assert want > 0
    assert float(param_distance(params, base).detach()) == pytest.approx(want, rel=1e-5)

    start = _state(loaded)
    ref = predict_logits(loaded, ltok, POS[:3])
    hist = unlearn(loaded, ltok, POS[:3], [1, 1, 1], NEG + POS[3:], [0] * 5 + [1, 1], "rga",
                   UnlearnConfig(epochs=2, lr=3e-3, batch_size=4, eval_every=100, record_epochs=()),
                   {"alpha": 2.0, "beta": 0.05}, ref, loaded.rga_adapter_init, progress=False)
    assert hist[1]["param_distance"] > 0
    after = _state(loaded)
    moved = {n for n in start if not torch.equal(start[n], after[n])}
    assert moved and moved <= {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert any(".lora_" in n for n in moved) and any(".score." in n for n in moved)


def test_lora_settings_are_validated():
    P = {"models": {"m": {"path": "x", "lr": 1e-4, "epochs": 1}}}
    m = P["models"]["m"]
    assert model_spec("m", P).lora is None and not model_spec("m", P).gradient_checkpointing
    m["lora"] = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert model_spec("m", P).lora == LoraSpec(16, 32.0, 0.05, ("q_proj", "v_proj"))
    m["lora"] = {"r": 8, "target_modules": 7}
    with pytest.raises(ValueError, match=r"models.m.lora.target_modules 7 \(int\) is not valid; valid choices: a list"):
        model_spec("m", P)
    m["lora"] = {"rank": 8}
    with pytest.raises(ValueError, match=r"models.m.lora.rank; valid keys: r, alpha, dropout, target_modules"):
        model_spec("m", P)
    m["lora"] = {"r": 0}
    with pytest.raises(ValueError, match=r"models.m.lora.r must be a positive integer"):
        model_spec("m", P)
    m["lora"] = None
    m["device_map"] = "balanced"
    with pytest.raises(ValueError, match=r"models.m.device_map 'balanced'; valid choices: none, auto"):
        model_spec("m", P)
    m["device_map"] = "auto"
    m["gradient_checkpointing"] = "yes"
    with pytest.raises(ValueError, match=r"models.m.gradient_checkpointing must be true or false"):
        model_spec("m", P)


def test_lora_without_targets_for_an_unknown_architecture_names_the_key(tmp_path, tokenizer):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    folder = _save(DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=30522, dim=32, hidden_dim=64, n_layers=1, n_heads=2)), tokenizer, tmp_path / "distil")
    with pytest.raises(ValueError, match=r"lora.target_modules None: .*valid choices: .*q_lin.*'all-linear'"):
        load_classifier(folder, 2, "encoder", device=CPU, lora=LoraSpec(r=2))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, tiny_dirs, tokenizer):
    from rga.training import collate, tokenize_once

    grads = []
    for ckpt in (False, True):
        model, tok = load_classifier(tiny_dirs[kind], 2, kind, device=CPU, precision="fp32",
                                     gradient_checkpointing=ckpt)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == ckpt
        model.train()
        torch.manual_seed(0)
        batch = collate(tok, tokenize_once(tok, POS + NEG, 32).rows(range(10)), CPU)
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor([1] * 5 + [0] * 5))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-4)
