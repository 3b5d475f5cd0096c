"""Cosine similarity of a sentence and its SCPN paraphrase (and of a sentence and another's paraphrase)
in the base MiniLM (mean pooling) and in the HiddenKiller poisoned model (last-layer [CLS]); 400 table rows.

Usage (repository root): python experiments/hiddenkiller-detection/paraphrase_similarity.py
"""
import numpy as np, torch, pandas as pd
from rga.models import load_classifier, resolve_path, PYPI_MINILM, autocast
from rga.training import tokenize_once, collate
torch.set_num_threads(1)
tab = pd.read_parquet("data/raw/sst2/paraphrases.parquet").dropna().head(400)  # the first 400 table rows
def emb(path, texts, cls=False):
    m, tok = load_classifier(path, 2, "encoder", precision="auto"); m.eval()
    T = tokenize_once(tok, texts, 128); out = []
    with torch.no_grad():
        for s in range(0, len(texts), 100):
            b = collate(tok, T.rows(np.arange(s, min(s+100, len(texts)))), torch.device("cpu"))
            with autocast(m):
                h = m(**b, output_hidden_states=True).hidden_states[-1].float()
            am = b["attention_mask"].unsqueeze(-1).float()
            v = h[:, 0] if cls else (h * am).sum(1) / am.sum(1)
            out.append(torch.nn.functional.normalize(v, dim=1).numpy())
    return np.concatenate(out)
for name, path, cls in (("base MiniLM, mean pooling (its sentence-embedding use)", resolve_path(PYPI_MINILM), False),
                        ("HK poisoned model, last-layer [CLS] (CUBE's input)", "models/poisoned/minilm-sst2-hiddenkiller-0", True)):
    a, b = emb(path, tab["text"].tolist(), cls), emb(path, tab["paraphrase"].tolist(), cls)
    pair = (a * b).sum(1); rnd = (a * np.roll(b, 1, axis=0)).sum(1)
    print(f"{name}: cos(sentence, its paraphrase) {pair.mean():.3f} ± {pair.std():.3f}; cos(sentence, another's paraphrase) {rnd.mean():.3f} ± {rnd.std():.3f}")
