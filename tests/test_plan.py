"""The memory planner (rga.plan): estimates against measured peak memory of tiny models, the
refusal message, the stage check and the CLI on the project's large-model registry entries."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rga.models import LoraSpec, model_spec
from rga.plan import (GiB, Devices, MemoryPlanError, Settings, check_stage, estimate, load_config, main, model_shape,
                      parse_bytes, report)

REPO = Path(__file__).resolve().parents[1]
BERT = {"model_type": "bert", "vocab_size": 2000, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 160}
LLAMA = {"model_type": "llama", "vocab_size": 2000, "hidden_size": 64, "intermediate_size": 172,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "pad_token_id": 0}


def probe(spec: dict) -> dict:
    """tests/memprobe.py in a fresh single-threaded process: the planner's estimate and the peak
    bytes of live tensors (torch.profiler's memory timeline; see that file for why not RSS)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "memprobe.py"), json.dumps(spec)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


BERT_NO_DROPOUT = {**BERT, "attention_probs_dropout_prob": 0.0}


# one case per branch of attention_bytes: float32 scores with and without dropout, the decoders'
# float32 softmax, BERT under amp (float32 scores: padded batches), BERT in pure bf16
@pytest.mark.parametrize("spec", [
    {"config": BERT, "precision": "fp32", "task": "unlearn"},
    {"config": LLAMA, "precision": "fp32", "task": "finetune"},
    {"config": LLAMA, "precision": "bf16", "task": "unlearn", "checkpointing": True},
    {"config": BERT, "precision": "amp_bf16", "task": "unlearn", "lora": {"r": 4}},
    {"config": BERT_NO_DROPOUT, "precision": "amp_bf16", "task": "finetune"},
    {"config": BERT, "precision": "bf16", "task": "unlearn"},
    {"config": BERT_NO_DROPOUT, "precision": "bf16", "task": "unlearn"},
], ids=["bert-fp32-unlearn", "llama-fp32-finetune", "llama-bf16-ckpt-unlearn", "bert-amp-lora-unlearn",
        "bert-nodropout-amp-finetune", "bert-bf16-unlearn", "bert-nodropout-bf16-unlearn"])
def test_estimate_within_30_percent_of_measured_peak(spec):
    # measured at batch 32 x 128 tokens (one padded position): ratios 0.79-1.14, the same across
    # oneDNN instruction sets
    res = probe({**spec, "batch": 32, "length": 128, "steps": 2})
    assert res["measured"] > 30 * 2 ** 20  # the step really allocated something to measure
    assert 0.7 <= res["measured"] / res["estimate"] <= 1.3, res
    assert all(np.isfinite(res["losses"]))


def test_model_shape_counts_like_the_real_model_and_draws_no_random_numbers():
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from peft import get_peft_model

    cfg = AutoConfig.for_model(**LLAMA)
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    shape = model_shape(cfg, 3, LoraSpec(r=4))
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()
    cfg.num_labels = 3
    real = AutoModelForSequenceClassification.from_config(cfg)
    assert shape.params == sum(p.numel() for p in real.parameters())
    assert shape.head == real.score.weight.numel()
    peft_model = get_peft_model(real, LoraSpec(r=4).peft_config())
    assert shape.lora == sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n) > 0
    assert (shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.gated_mlp) == (64, 172, 2, 4, True)


def test_bytes_per_parameter_by_precision():
    shape = model_shape(load_config("meta-llama/Llama-2-7b-hf"), 2)
    per = {}
    for prec in ("fp32", "amp_bf16", "bf16"):
        e = estimate(shape, Settings(prec, task="finetune"))
        per[prec] = (e.parts["weights"] + e.parts["gradients"] + e.parts["optimizer"]
                     + e.parts.get("autocast_cache", 0)) / shape.params
    assert per == {"fp32": 16, "amp_bf16": 18, "bf16": 8}
    assert 6.5e9 < shape.params < 6.8e9  # Llama-2-7B without its LM head
    lora = estimate(model_shape(load_config("meta-llama/Llama-2-7b-hf"), 2, LoraSpec(r=16)),
                    Settings("bf16", lora=LoraSpec(r=16), task="finetune"))
    assert lora.parts["optimizer"] < 0.01 * GiB * 10 and lora.parts["weights"] < 2.1 * shape.params


def test_refusal_names_estimate_free_memory_and_settings_that_fit():
    shape = model_shape(load_config("Qwen/Qwen3-8B"), 2)
    s = Settings("amp_bf16", task="unlearn", batch_size=32, max_length=128, eager_attention=False)
    ok, text = report("qwen3-8b", shape, s, Devices("cuda", (parse_bytes("141GB"),)))
    assert not ok
    total = estimate(shape, s).total
    assert f"estimate {total / GiB:.1f} GiB" in text and "131.3 GiB free" in text
    fit = text.split("Settings that fit:")[1]
    assert "lora: {r: 16}" in fit and "device_map: auto on" in fit
    # a smaller GPU set: no single change fits, combinations are named
    ok, text = report("qwen3-8b", shape, s, Devices("cuda", (parse_bytes("24GB"),) * 2))
    assert not ok and "+ gradient_checkpointing: true" in text
    # RAM on a CPU: a batch change can be enough
    small = model_shape(load_config("bert-base-uncased"), 2)
    t = Settings("fp32", task="unlearn", batch_size=64)
    ok, text = report("bert", small, t, Devices("cpu", (int(estimate(small, t).total * 0.8),)))
    assert not ok and "batch_size: 32" in text and "precision: bf16" in text and "gradient_checkpointing: true" in text


def test_check_stage_refuses_warns_or_skips(monkeypatch, caplog, tiny_model_dir):
    P = {"models": {"tiny": {"path": str(tiny_model_dir), "lr": 1e-3, "epochs": 1, "precision": "fp32"}},
         "finetune": {"batch_size": 32, "max_length": 128, "eval_batch_size": 64}, "unlearn": {"batch_size": 32}}
    spec = model_spec("tiny", P)
    tight = Devices("cpu", (60 * 2 ** 20,))  # the unlearning step needs about 99 MiB
    with pytest.raises(MemoryPlanError, match=r"(?s)tiny: unlearn.*does NOT fit.*Settings that fit: .*batch_size"):
        check_stage(spec, P, "unlearn", 2, "rga", devices=tight)
    assert "fits" in check_stage(spec, P, "detect", 2, devices=Devices("cpu", (8 * GiB,)))
    monkeypatch.setenv("RGA_PLAN", "warn")
    assert "does NOT fit" in check_stage(spec, P, "finetune", 2, devices=tight)
    assert "does NOT fit" in caplog.text
    monkeypatch.setenv("RGA_PLAN", "off")
    assert check_stage(spec, P, "finetune", 2, devices=tight) is None


def test_require_fit_ends_a_stage_with_the_report_and_no_traceback(monkeypatch, tiny_model_dir):
    import rga.plan as plan

    P = {"models": {"tiny": {"path": str(tiny_model_dir), "lr": 1e-3, "epochs": 1, "precision": "fp32"}},
         "finetune": {"batch_size": 32, "max_length": 128, "eval_batch_size": 64}, "unlearn": {"batch_size": 32}}
    spec = model_spec("tiny", P)
    monkeypatch.setattr(plan, "visible_devices", lambda: Devices("cpu", (60 * 2 ** 20,)))
    with pytest.raises(SystemExit) as exc:
        plan.require_fit("unlearn tiny-sst2-badnets-0 rga", spec, P, "unlearn", 2, "rga")
    assert str(exc.value.code).startswith("unlearn tiny-sst2-badnets-0 rga: tiny: unlearn")
    assert "does NOT fit" in str(exc.value.code) and exc.value.__suppress_context__  # no chained traceback
    monkeypatch.setattr(plan, "visible_devices", lambda: Devices("cpu", (8 * GiB,)))
    assert plan.require_fit("detect", spec, P, "detect", 2) is None


@pytest.mark.parametrize("model", ["llama2-7b", "qwen3-8b"])
@pytest.mark.parametrize("gpus", [["--gpus", "1", "--gpu-memory", "141GB"], ["--gpus", "4", "--gpu-memory", "48GB"]])
def test_registry_large_models_fit_one_h200_and_four_48gb_gpus(model, gpus, capsys):
    for task in ("finetune", "unlearn", "detect"):
        rc = main([model, "--task", task, "--params", str(REPO / "params.yaml"), *gpus])
        out = capsys.readouterr().out
        assert rc == 0 and out.rstrip().endswith("fits"), out
        assert "precision bf16" in out and "device_map auto" in out


def test_parse_bytes():
    assert parse_bytes("48GB") == 48 * 10 ** 9
    assert parse_bytes("1.5GiB") == int(1.5 * 2 ** 30)
    assert parse_bytes("512 MiB") == 512 * 2 ** 20
    with pytest.raises(ValueError, match="48 gigs.*48GB"):
        parse_bytes("48 gigs")
