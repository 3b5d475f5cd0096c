"""unlearn stage: one registered unlearning method (GA, NPO, RGA, DGA, SimNPO, FT or a plugin)
on one poisoned model.

Starts from models/poisoned/<cell> and the detected forget/retain sets; evaluates CACC, LFR,
PACC over epochs (DVCLive -> plots/unlearn/<cell>-<method>/) and writes the final metrics,
including the values at epochs 10/20/30, to metrics/unlearn/<cell>-<method>.json. For the
methods whose params section says ``save_model: true`` the cleaned model is saved to models/unlearned/<cell>-<method>/
(safetensors, tokenizer and model_card.json).
"""

import json
import sys
import time

import torch

from rga.data import dataset_spec, read_parquet
from rga.detection import degenerate_reason
from rga.evaluation import evaluate_model, evaluate_triggered
from rga.io import cell_name, write_csv, write_json, write_text
from rga.models import checkpoint_hash, load_classifier, model_options, model_spec, save_classifier
from rga.plan import require_fit  # before any weight is loaded: refuse a cell that will not fit
from rga.pipeline import ROOT, attack_dir, detect_dir, parse_cell, poisoned_model_dir, stage_runtime
from rga.stagekit import write_method_result, write_skipped_result
from rga.tracking import EmptyRepositoryError, EpochLogger
from rga.training import NonFiniteLossError, predict_logits, set_seed
from rga.unlearning import (UnlearnConfig, get_method, load_plugins, split_method_section, unlearn,
                            validate_method_params)

args = parse_cell("Unlearn the backdoor with one method", "model", "dataset", "attack", "seed", "method")
P = args.params_dict
compute = stage_runtime(P)  # threads and oneDNN cap from params.yaml compute:
U, ft = P["unlearn"], P["finetune"]
method = args.method
sys.path.insert(0, str(ROOT.resolve()))  # plugins/<name>.py and unlearn.plugins modules in the repository
try:
    load_plugins(list(U.get("plugins") or []) +
                 ([f"plugins.{method}"] if (ROOT / "plugins" / f"{method}.py").is_file() else []))
    method_spec = get_method(method)
    section, save_model = split_method_section(method, P.get(method))
    method_params = validate_method_params(method, section)
    if int(U["epochs"]) < 1:
        raise ValueError(f"unlearn.epochs must be >= 1, got {U['epochs']}")
except ValueError as err:
    sys.exit(f"unlearn: bad params: {err}")
spec, mspec = dataset_spec(args.dataset, P), model_spec(args.model, P)
cell = cell_name(args.model, args.dataset, args.attack, args.seed)
where = f"{cell}-{method}"
adir, ddir = attack_dir(args.dataset, args.attack, args.seed), detect_dir(cell)
forget, retain = read_parquet(ddir / "forget.parquet"), read_parquet(ddir / "retain.parquet")
skipped = degenerate_reason(len(forget), len(retain), cell)
if skipped:  # an outcome of detection, recorded as a result: every output exists, no metric is made up
    import pandas as pd

    write_skipped_result(cell, method, skipped, len(forget), len(retain),
                         {"epochs": int(U["epochs"]), "params": method_params, "compute": compute})
    curves = ROOT / "plots" / "unlearn" / where
    write_csv(pd.DataFrame(columns=["epoch"]), curves / "history.csv")
    write_json({"status": "skipped"}, curves / "metrics.json")
    write_text(f"skipped: {skipped}\n", curves / "plots" / "metrics" / "SKIPPED.txt")
    write_text(f"skipped: {skipped}\n", ROOT / "models" / "unlearned" / where / "SKIPPED.txt")
    print(f"unlearn {where}: SKIPPED (recorded as a result, status: skipped): {skipped}")
    sys.exit(0)
clean, trig = read_parquet(adir / "test_clean.parquet"), read_parquet(adir / "test_poisoned_all.parquet")
# with a user's own data (attack "given") the poisoned rows may be unknown or only suspected
known_truth = json.loads((adir / "stats.json").read_text())["train"].get("ground_truth", "is_poisoned") == "is_poisoned"

require_fit(f"unlearn {where}", mspec, P, "unlearn", spec.num_labels, method)
set_seed(args.seed)
model, tok = load_classifier(str(poisoned_model_dir(cell)), spec.num_labels, mspec.kind, **model_options(mspec))
# NPO/RGA/DGA's reference is these logits (N_forget x C float32), not a second model
ref = predict_logits(model, tok, forget["text"].tolist(), ft["eval_batch_size"], ft["max_length"])
base_state = None
if method_spec.needs_base and method_params.get("anchor") == "poisoned":
    pass  # rga.anchor: poisoned: rga.unlearning.unlearn anchors the norm at the poisoned model it starts from
elif method_spec.needs_base and getattr(model, "rga_adapter_init", False) is not False:
    # LoRA: θ_base = the adapters' values when they were created (the base model; head excluded)
    base_state = model.rga_adapter_init
    if base_state is None:
        sys.exit(f"unlearn {where}: {method} needs the LoRA adapters' starting values, but "
                 f"{poisoned_model_dir(cell)} has no adapter_init.safetensors (it is written by the finetune stage)")
elif method_spec.needs_base:
    # θ_base staged on the CPU at the weight dtype; rga.unlearning.backbone_pairs puts each tensor beside its parameter
    base, _, missing = load_classifier(mspec.path, spec.num_labels, mspec.kind, device=torch.device("cpu"),
                                       with_loading_info=True, precision=mspec.precision)
    base_state = {n: p.detach().clone() for n, p in base.named_parameters() if n not in missing}
    del base

last = {}
KEYS = ("cacc", "lfr", "pacc", "trigger_shift")
# Epoch 0 is the poisoned model, which the finetune stage has already evaluated on the same test sets.
poisoned = json.loads((ROOT / "metrics" / "poisoned" / f"{cell}.json").read_text())
initial = {k: poisoned[k] for k in KEYS}


def evaluate(full: bool):
    if not full:  # between record epochs only PACC (and LFR) is plotted
        return evaluate_triggered(model, tok, trig, spec.target_label, ft["eval_batch_size"], ft["max_length"])
    m, preds = evaluate_model(model, tok, clean, trig, spec.target_label, spec.num_labels,
                              ft["eval_batch_size"], ft["max_length"])
    last.update(metrics=m, preds=preds)
    return {k: m[k] for k in KEYS}


try:
    cfg = UnlearnConfig(epochs=U["epochs"], lr=mspec.lr, batch_size=U["batch_size"], max_length=ft["max_length"],
                        grad_clip=U["grad_clip"], eval_every=U["eval_every"],
                        record_epochs=tuple(U.get("record_epochs", (10, 20, 30))), seed=args.seed,
                        optimizer_reset=U.get("optimizer_reset", "never"), weight_decay=U.get("weight_decay", 0.0))
except ValueError as err:
    sys.exit(f"unlearn: bad params in {args.params}: {err}")
try:
    logger = EpochLogger(ROOT / "plots" / "unlearn" / where,
                         ("pacc", "cacc", "lfr", "trigger_shift", "poison_loss", "retain_loss", "lambda"))
except EmptyRepositoryError as err:
    sys.exit(f"unlearn {where}: {err}")
t0 = time.perf_counter()
try:
    history = unlearn(model, tok, forget["text"].tolist(), forget["label"].tolist(), retain["text"].tolist(),
                      retain["label"].tolist(), method, cfg, method_params, ref, base_state,
                      evaluate=evaluate, initial_metrics=initial, on_epoch_end=logger.log, where=where)
except NonFiniteLossError as err:
    logger.close()
    sys.exit(f"unlearn {where}: {err} (curves so far: {logger.folder / 'history.csv'})")
logger.close()
seconds = time.perf_counter() - t0

at = {str(h["epoch"]): {k: h[k] for k in ("cacc", "lfr", "pacc", "trigger_shift") if k in h}
      for h in history if h["epoch"] in cfg.record_epochs and "pacc" in h}
train_epochs = [h for h in history if h["epoch"] > 0]
extra = {"epochs": cfg.epochs, "lr": cfg.lr, "optimizer_reset": cfg.optimizer_reset, "weight_decay": cfg.weight_decay,
         "at_epoch": at, "forget_rows": len(forget),
         "forget_true_poisoned": int(forget["is_poisoned"].sum()) if known_truth else None, "retain_rows": len(retain),
         "final_poison_loss": history[-1].get("poison_loss"), "final_lambda": history[-1].get("lambda"),
         "params": method_params, "precision": model.rga_precision,
         "compute": {**compute, "precision": model.rga_precision}}
write_method_result(cell, method, last["metrics"], last["preds"], clean, trig, list(spec.label_names) or None, extra)
out = ROOT / "models" / "unlearned" / where
if save_model:
    card = {"method": method, "display": method_spec.display, "params": method_params, "cell": cell,
            "unlearn": {k: U[k] for k in ("epochs", "batch_size", "grad_clip", "optimizer_reset", "weight_decay")
                        if k in U}, "lr": cfg.lr,
            "metrics": {k: last["metrics"][k] for k in ("cacc", "lfr", "pacc", "trigger_shift")},
            "forget_rows": len(forget), "retain_rows": len(retain),
            "input_checkpoint": {"path": f"models/poisoned/{cell}", **checkpoint_hash(poisoned_model_dir(cell)),
                                 # a user's own checkpoint (poisoned_path): what they brought, as they brought it
                                 **{k: poisoned[k] for k in ("source", "poisoned_path") if k in poisoned},
                                 **({"given_sha256": poisoned["sha256"]} if "sha256" in poisoned else {})},
            "base_model": mspec.path, "precision": model.rga_precision,
            "warning": "derived from a model trained on poisoned data; check its LFR, PACC and trigger shift "
                       "on your own triggered test set before use"}
    save_classifier(model, tok, out, card=card)
else:
    write_text(f"weights not saved (set {method}.save_model: true in params.yaml to keep them)\n",
               out / "NOT_SAVED.txt")
m = last["metrics"]
per_epoch = sum(h["seconds"] for h in train_epochs) / max(len(train_epochs), 1)
print(f"unlearn {where}: {per_epoch:.1f}s per epoch; CACC {m['cacc']:.2f} LFR {m['lfr']:.2f} PACC {m['pacc']:.2f} "
      f"trigger shift {m['trigger_shift']:.2f} ({seconds:.0f}s)")
