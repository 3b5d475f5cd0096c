"""retrain_eval stage: ReTrain's CACC/LFR/PACC on one attack's test sets.

retrain.data = clean: evaluate the shared clean ReTrain model. retrain.data = retain: fine-tune
the base model on this cell's detected retain set (what a user without ground truth can do)
and evaluate that.

An imported cell (attack.source: import) brings its own clean training set, train_clean.parquet
in its attack folder (the authors' train_clean.csv, else their poisoned = 0 rows): with
retrain.data = clean, ReTrain fine-tunes the base model on it instead of evaluating the shared
model (which was trained on the dataset's own split)."""

import sys
import time

from rga.data import dataset_spec, read_parquet
from rga.evaluation import evaluate_model
from rga.io import cell_name, choice
from rga.models import load_classifier, model_options, model_spec
from rga.plan import require_fit  # before any weight is loaded: refuse a cell that will not fit
from rga.pipeline import attack_dir, detect_dir, parse_cell, retrain_model_dir, stage_runtime
from rga.detection import degenerate_reason
from rga.stagekit import write_method_result, write_skipped_result
from rga.training import TrainConfig, set_seed, train_classifier

args = parse_cell("Evaluate ReTrain on an attack's test sets", "model", "dataset", "attack", "seed")
P = args.params_dict
compute = stage_runtime(P)  # threads and oneDNN cap from params.yaml compute:
spec, mspec = dataset_spec(args.dataset, P), model_spec(args.model, P)
cell = cell_name(args.model, args.dataset, args.attack, args.seed)
data = choice(P["retrain"].get("data", "clean"), ("clean", "retain"), "retrain.data")
adir = attack_dir(args.dataset, args.attack, args.seed)
clean, trig = read_parquet(adir / "test_clean.parquet"), read_parquet(adir / "test_poisoned_all.parquet")
ft = P["finetune"]
extra = {"retrain_data": data}
imported_clean = adir / "train_clean.parquet"
if data == "clean" and imported_clean.is_file():
    data = "clean (imported)"
    train_set = read_parquet(imported_clean)
    extra.update(retrain_data=data, train_rows=len(train_set))
require_fit(f"retrain_eval {cell}", mspec, P, "evaluate" if data == "clean" else "finetune", spec.num_labels)
if data == "clean":
    model, tok = load_classifier(str(retrain_model_dir(args.model, args.dataset, args.seed)), spec.num_labels,
                                 mspec.kind, **model_options(mspec))
else:
    if data == "retain":
        train_set = read_parquet(detect_dir(cell) / "retain.parquet")
        extra.update(train_rows=len(train_set), poisoned_rows_in_retain=int(train_set["is_poisoned"].sum()))
        if len(train_set) == 0:  # detection flagged every row: nothing to retrain on, recorded as a result
            n_forget = len(read_parquet(detect_dir(cell) / "forget.parquet"))
            reason = degenerate_reason(n_forget, 0, cell)
            write_skipped_result(cell, "retrain", reason, n_forget, 0, {**extra, "compute": compute})
            print(f"retrain {cell}: SKIPPED (recorded as a result, status: skipped): {reason}")
            sys.exit(0)
    set_seed(args.seed)
    model, tok = load_classifier(mspec.path, spec.num_labels, mspec.kind, **model_options(mspec))
    cfg = TrainConfig(epochs=mspec.epochs, lr=mspec.lr, batch_size=ft["batch_size"], max_length=ft["max_length"],
                      grad_clip=ft.get("grad_clip"), seed=args.seed)
    t0 = time.perf_counter()
    train_classifier(model, tok, train_set["text"].tolist(), train_set["label"].tolist(), cfg, desc=f"retrain {cell}")
    print(f"retrain {cell}: fine-tuned on the {'retain' if data == 'retain' else 'imported clean'} set "
          f"({len(train_set)} rows) in {time.perf_counter() - t0:.0f}s")
extra["compute"] = {**compute, "precision": model.rga_precision}
metrics, preds = evaluate_model(model, tok, clean, trig, spec.target_label, spec.num_labels,
                                ft["eval_batch_size"], ft["max_length"])
write_method_result(cell, "retrain", metrics, preds, clean, trig, list(spec.label_names) or None, extra)
print(f"retrain {cell} ({data}): CACC {metrics['cacc']:.2f} LFR {metrics['lfr']:.2f} PACC {metrics['pacc']:.2f}")
