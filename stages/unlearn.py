"""unlearn stage: one unlearning method (GA, NPO, RGA, DGA) on one poisoned model.

Starts from models/poisoned/<cell> and the detected forget/retain sets; evaluates CACC, LFR,
PACC over epochs (DVCLive -> plots/unlearn/<cell>-<method>/) and writes the final metrics,
including the values at epochs 10/20/30, to metrics/unlearn/<cell>-<method>.json.
"""

import sys
import time

from rga.data import dataset_spec, read_parquet
from rga.detection import EmptyForgetSetError, require_forget_set, require_retain_set
from rga.evaluation import evaluate_model
from rga.io import cell_name, choice, write_text
from rga.models import load_classifier, model_spec, save_classifier
from rga.pipeline import ROOT, attack_dir, detect_dir, parse_cell, poisoned_model_dir, stage_threads
from rga.stagekit import write_method_result
from rga.tracking import EpochLogger
from rga.training import NonFiniteLossError, predict_logits, set_seed
from rga.unlearning import METHODS, UnlearnConfig, unlearn, validate_method_params

args = parse_cell("Unlearn the backdoor with one method", "model", "dataset", "attack", "seed", "method")
stage_threads()
P = args.params_dict
method = choice(args.method, METHODS, "unlearning method")
try:
    validate_method_params(method, P.get(method))
except ValueError as err:
    sys.exit(f"unlearn: bad params: {err}")
spec, mspec = dataset_spec(args.dataset, P), model_spec(args.model, P)
cell = cell_name(args.model, args.dataset, args.attack, args.seed)
where = f"{cell}-{method}"
U, ft = P["unlearn"], P["finetune"]
adir, ddir = attack_dir(args.dataset, args.attack, args.seed), detect_dir(cell)
forget, retain = read_parquet(ddir / "forget.parquet"), read_parquet(ddir / "retain.parquet")
try:
    require_forget_set(len(forget), cell)
    require_retain_set(len(retain), cell)
except EmptyForgetSetError as err:
    sys.exit(f"unlearn {where}: {err}")
clean, trig = read_parquet(adir / "test_clean.parquet"), read_parquet(adir / "test_poisoned_all.parquet")

set_seed(args.seed)
model, tok = load_classifier(str(poisoned_model_dir(cell)), spec.num_labels, mspec.kind)
ref = predict_logits(model, tok, forget["text"].tolist(), ft["eval_batch_size"], ft["max_length"])
base_state = None
if method == "rga":
    base, _, missing = load_classifier(mspec.path, spec.num_labels, mspec.kind, with_loading_info=True)
    base_state = {n: p.detach().clone() for n, p in base.named_parameters() if n not in missing}
    del base

last = {}


def evaluate():
    m, preds = evaluate_model(model, tok, clean, trig, spec.target_label, spec.num_labels,
                              ft["eval_batch_size"], ft["max_length"])
    last.update(metrics=m, preds=preds)
    return {k: m[k] for k in ("cacc", "lfr", "pacc", "trigger_shift")}


cfg = UnlearnConfig(epochs=U["epochs"], lr=mspec.lr, batch_size=U["batch_size"], max_length=ft["max_length"],
                    grad_clip=U["grad_clip"], eval_every=U["eval_every"],
                    record_epochs=tuple(U.get("record_epochs", (10, 20, 30))), seed=args.seed)
logger = EpochLogger(ROOT / "plots" / "unlearn" / where,
                     ("pacc", "cacc", "lfr", "trigger_shift", "poison_loss", "retain_loss", "lambda"))
t0 = time.perf_counter()
try:
    history = unlearn(model, tok, forget["text"].tolist(), forget["label"].tolist(), retain["text"].tolist(),
                      retain["label"].tolist(), method, cfg, P.get(method) or {}, ref, base_state,
                      evaluate=evaluate, on_epoch_end=logger.log, where=where)
except NonFiniteLossError as err:
    logger.close()
    sys.exit(f"unlearn {where}: {err} (curves so far: {logger.folder / 'history.csv'})")
logger.close()
seconds = time.perf_counter() - t0

at = {str(h["epoch"]): {k: h[k] for k in ("cacc", "lfr", "pacc", "trigger_shift") if k in h}
      for h in history if h["epoch"] in cfg.record_epochs and "pacc" in h}
train_epochs = [h for h in history if h["epoch"] > 0]
extra = {"epochs": cfg.epochs, "lr": cfg.lr, "at_epoch": at, "forget_rows": len(forget),
         "forget_true_poisoned": int(forget["is_poisoned"].sum()), "retain_rows": len(retain),
         "final_poison_loss": history[-1].get("poison_loss"), "final_lambda": history[-1].get("lambda"),
         "params": P.get(method) or {}}
write_method_result(cell, method, last["metrics"], last["preds"], trig, list(spec.label_names) or None, extra)
out = ROOT / "models" / "unlearned" / where
if U.get("save_model"):
    save_classifier(model, tok, out)
else:
    write_text("weights not saved (unlearn.save_model: false)\n", out / "NOT_SAVED.txt")
m = last["metrics"]
per_epoch = sum(h["seconds"] for h in train_epochs) / max(len(train_epochs), 1)
print(f"unlearn {where}: {per_epoch:.1f}s per epoch; CACC {m['cacc']:.2f} LFR {m['lfr']:.2f} PACC {m['pacc']:.2f} "
      f"trigger shift {m['trigger_shift']:.2f} ({seconds:.0f}s)")
