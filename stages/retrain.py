"""retrain stage: the ReTrain gold standard, the base model fine-tuned on the unpoisoned
training set (same subsample as the attack stage) -> models/retrain/<model>-<dataset>-<seed>/.
It does not depend on the attack, so it runs once per model x dataset x seed.

A user dataset that is already poisoned (attack `given`) has no clean copy of its poisoned rows:
ReTrain then uses the rows its train.csv does not mark (is_poisoned = 0, or suspect = 0), and
refuses a dataset with test_poisoned.csv but no marks (use retrain.data: retain there)."""

import sys
import time

from rga.data import dataset_spec, read_parquet, stratified_subsample
from rga.io import cell_name, write_json
from rga.models import load_classifier, model_options, model_spec, save_classifier
from rga.plan import require_fit  # before any weight is loaded: refuse a cell that will not fit
from rga.pipeline import parse_cell, raw_dir, retrain_model_dir, stage_runtime
from rga.training import TrainConfig, set_seed, train_classifier

args = parse_cell("ReTrain on clean data", "model", "dataset", "seed")
P = args.params_dict
compute = stage_runtime(P)  # threads and oneDNN cap from params.yaml compute:
spec, mspec = dataset_spec(args.dataset, P), model_spec(args.model, P)
train = stratified_subsample(read_parquet(raw_dir(args.dataset) / "train.parquet"), P["data"].get("max_train"),
                             args.seed, "data.max_train")
marks = next((c for c in ("is_poisoned", "suspect") if c in train), None)
if marks is not None:
    print(f"retrain: dataset {args.dataset!r} is already poisoned; training on the {int((~train[marks]).sum())} rows "
          f"its train.csv does not mark ({marks} = 0)")
    train = train[~train[marks].to_numpy(dtype=bool)].reset_index(drop=True)
elif (raw_dir(args.dataset) / "test_poisoned.parquet").is_file():
    sys.exit(f"retrain: dataset {args.dataset!r} has test_poisoned.csv (an already poisoned dataset) but its train.csv "
             "marks no row (no is_poisoned or suspect column), so there is no clean training set for ReTrain; "
             "add the column, or set retrain.data: retain (ReTrain on the detected retain set)")
require_fit("retrain", mspec, P, "finetune", spec.num_labels)
set_seed(args.seed)
model, tok = load_classifier(mspec.path, spec.num_labels, mspec.kind, **model_options(mspec))
ft = P["finetune"]
cfg = TrainConfig(epochs=mspec.epochs, lr=mspec.lr, batch_size=ft["batch_size"], max_length=ft["max_length"],
                  grad_clip=ft.get("grad_clip"), seed=args.seed)
t0 = time.perf_counter()
hist = train_classifier(model, tok, train["text"].tolist(), train["label"].tolist(), cfg,
                        desc=f"retrain {cell_name(args.model, args.dataset, args.seed)}")
out = retrain_model_dir(args.model, args.dataset, args.seed)
save_classifier(model, tok, out)
write_json({"train_rows": len(train), "train_loss": hist[-1]["train_loss"],
            "compute": {**compute, "precision": model.rga_precision}}, out / "train_info.json")
print(f"retrain: {len(train)} clean rows, final loss {hist[-1]['train_loss']:.4f} ({time.perf_counter() - t0:.0f}s)")
