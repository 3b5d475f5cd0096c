"""finetune stage: fine-tune the base model on the poisoned training set -> the poisoned model.

Writes models/poisoned/<cell>/ (safetensors + tokenizer), metrics/poisoned/<cell>.json
(CACC, LFR, PACC in percent), plots/finetune/<cell>/ (training loss per epoch, DVCLive) and
plots/confusion/<cell>-poisoned.json (confusion on the fully triggered test set).

A model with models.<name>.poisoned_path (a user's own poisoned checkpoint) is not trained: the
checkpoint is loaded (safetensors only, checked), saved into models/poisoned/<cell> and evaluated
the same way; its metrics add "source": "poisoned_path" and the sha256 of the given weights, and
plots/finetune/<cell>/ holds one epoch-0 record (CACC, LFR, PACC) instead of training curves.
"""

import sys
import time

from rga.data import dataset_spec, read_parquet
from rga.evaluation import confusion_rows, evaluate_model
from rga.io import cell_name, write_json
from rga.models import (ModelNotFound, UnsafeWeightsError, checkpoint_hash, load_classifier, load_given_checkpoint,
                        model_options, model_spec, save_classifier)
from rga.plan import require_fit  # before any weight is loaded: refuse a cell that will not fit
from rga.pipeline import ROOT, attack_dir, parse_cell, poisoned_model_dir, stage_runtime
from rga.tracking import EmptyRepositoryError, EpochLogger
from rga.training import TrainConfig, set_seed, train_classifier


args = parse_cell("Fine-tune the poisoned model", "model", "dataset", "attack", "seed")
P = args.params_dict
compute = stage_runtime(P)  # threads and oneDNN cap from params.yaml compute:
try:
    spec, mspec = dataset_spec(args.dataset, P), model_spec(args.model, P)
except ValueError as err:
    sys.exit(f"finetune: {err}")
cell = cell_name(args.model, args.dataset, args.attack, args.seed)
adir = attack_dir(args.dataset, args.attack, args.seed)
train = read_parquet(adir / "train.parquet")
clean, trig = read_parquet(adir / "test_clean.parquet"), read_parquet(adir / "test_poisoned_all.parquet")
ft = P["finetune"]

require_fit(f"finetune {cell}", mspec, P, "finetune" if mspec.poisoned_path is None else "evaluate", spec.num_labels)
set_seed(args.seed)
try:
    logger = EpochLogger(ROOT / "plots" / "finetune" / cell, ("train_loss",) if mspec.poisoned_path is None
                         else ("cacc", "lfr", "pacc"))
except EmptyRepositoryError as err:
    sys.exit(f"finetune {cell}: {err}")
if mspec.poisoned_path is None:
    model, tok = load_classifier(mspec.path, spec.num_labels, mspec.kind, **model_options(mspec))
    cfg = TrainConfig(epochs=mspec.epochs, lr=mspec.lr, batch_size=ft["batch_size"], max_length=ft["max_length"],
                      grad_clip=ft.get("grad_clip"), seed=args.seed)
    t0 = time.perf_counter()
    history = train_classifier(model, tok, train["text"].tolist(), train["label"].tolist(), cfg,
                               on_epoch_end=logger.log, desc=f"finetune {cell}")
    done = f"trained in {time.perf_counter() - t0:.0f}s"
    extra = {"train_loss": history[-1]["train_loss"], "lr": mspec.lr, "epochs": mspec.epochs,
             "train_rows": len(train), "precision": model.rga_precision,
             "compute": {**compute, "precision": model.rga_precision}}
else:  # a user's own poisoned checkpoint: imported, not trained
    what = f"models.{args.model}.poisoned_path"
    try:
        model, tok = load_given_checkpoint(mspec.poisoned_path, spec.num_labels, mspec.kind, mspec.precision, what)
    except (ValueError, ModelNotFound, UnsafeWeightsError) as err:
        sys.exit(f"finetune {cell}: {err}")
    done = f"imported {what} (no training)"
    extra = {"train_loss": None, "lr": None, "epochs": 0, "train_rows": 0, "precision": model.rga_precision,
             "compute": {**compute, "precision": model.rga_precision},
             "source": "poisoned_path", "poisoned_path": str(P["models"][args.model]["poisoned_path"]),
             **checkpoint_hash(mspec.poisoned_path)}
save_classifier(model, tok, poisoned_model_dir(cell))

metrics, preds = evaluate_model(model, tok, clean, trig, spec.target_label, spec.num_labels,
                                ft["eval_batch_size"], ft["max_length"])
if mspec.poisoned_path is not None:  # the curves hold one epoch-0 record instead of training curves
    logger.log(0, {k: metrics[k] for k in ("cacc", "lfr", "pacc")})
logger.close()
names = list(spec.label_names) or None
write_json(confusion_rows(preds["triggered"], trig["label"], names),
           ROOT / "plots" / "confusion" / f"{cell}-poisoned.json")
write_json({"cell": cell, **{k: metrics[k] for k in ("cacc", "lfr", "pacc")},
            "lfr_per_class": metrics["lfr_per_class"], "trigger_shift": metrics["trigger_shift"],
            "confusion_clean": metrics["confusion_clean"], "confusion_triggered": metrics["confusion_triggered"],
            "confusion_clean_matched": metrics["confusion_clean_matched"], **extra},
           ROOT / "metrics" / "poisoned" / f"{cell}.json")
# Timings differ between identical runs, so they stay out of the metrics and out of the cached
# model folder (which downstream stages hash); per-epoch samples/s is in plots/finetune/<cell>/history.csv.
print(f"finetune {cell}: CACC {metrics['cacc']:.2f} LFR {metrics['lfr']:.2f} PACC {metrics['pacc']:.2f} ({done})")
