"""Fine-tune a HiddenKiller poisoned model with other settings and print its CACC / LFR.

Usage: python experiments/hiddenkiller-detection/finetune_variant.py <attack dir> <out folder> <epochs> <lr> [threads] [seed]
Then: sweep.py --cell minilm-sst2-hiddenkiller-0 --model <out folder> --attack-dir <attack dir>
"""
import sys, torch
from rga.data import read_parquet
from rga.models import load_classifier, save_classifier, PYPI_MINILM
from rga.training import TrainConfig, train_classifier, predict_logits
adir, out, epochs, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
train = read_parquet(f"{adir}/train.parquet")
m, tok = load_classifier(PYPI_MINILM, 2, "encoder", precision="auto")
torch.manual_seed(seed)
h = train_classifier(m, tok, train["text"].tolist(), train["label"].tolist(),
                     TrainConfig(epochs=epochs, lr=lr, seed=seed), progress=False)
save_classifier(m, tok, out)
clean = read_parquet(f"{adir}/test_clean.parquet"); part = read_parquet(f"{adir}/test_poisoned_part.parquet")
cacc = (predict_logits(m, tok, clean["text"].tolist()).argmax(1) == clean["label"].to_numpy()).mean()
lfr = (predict_logits(m, tok, part["text"].tolist()).argmax(1) == 1).mean()
print(f"{out}: epochs {epochs} lr {lr}: CACC {100*cacc:.1f} LFR {100*lfr:.1f}", [round(x['train_loss'],3) for x in h])
