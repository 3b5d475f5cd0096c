"""attack stage: poisoned train set and clean/triggered test sets for one dataset x attack x seed."""

import sys

from rga.attacks import CoverageError, build_test_sets, make_attack, poison_train
from rga.data import dataset_spec, read_parquet, stratified_subsample
from rga.io import cell_name, write_json, write_parquet
from rga.pipeline import ROOT, attack_dir, parse_cell, raw_dir

args = parse_cell("Poison one dataset with one attack", "dataset", "attack", "seed")
P = args.params_dict
spec = dataset_spec(args.dataset, P)
raw = raw_dir(spec.name)
train = stratified_subsample(read_parquet(raw / "train.parquet"), P["data"].get("max_train"), args.seed)
test = stratified_subsample(read_parquet(raw / "test.parquet"), P["data"].get("max_test"), args.seed)
attack = make_attack(args.attack, spec.name, P["attack"], read_parquet(raw / "paraphrases.parquet"))
cell = cell_name(spec.name, args.attack, args.seed)
try:
    poisoned = poison_train(train, attack, spec.target_label, float(P["attack"]["poison_rate"]), args.seed)
except CoverageError as err:
    sys.exit(f"attack {cell}: {err}")
sets = build_test_sets(test, attack, spec.target_label, args.seed)
if sets["stats"]["untriggerable_rows"]:
    print(f"attack {cell}: {sets['stats']['untriggerable_rows']} test rows have no trigger "
          "(no paraphrase) and are left out of the triggered test sets")
out = attack_dir(spec.name, args.attack, args.seed)
write_parquet(poisoned.table, out / "train.parquet")
for name in ("test_clean", "test_poisoned_part", "test_poisoned_all"):
    write_parquet(sets[name], out / f"{name}.parquet")
stats = {"cell": cell, "attack": args.attack, "trigger": attack.trigger_description,
         "target_label": spec.target_label, "train": poisoned.stats, "test": sets["stats"]}
write_json(stats, out / "stats.json")
write_json(stats, ROOT / "metrics" / "attack" / f"{cell}.json")
print(f"attack {cell}: poisoned {poisoned.stats['poisoned']} of {poisoned.stats['rows']} training rows; "
      f"test clean {len(sets['test_clean'])}, triggered {len(sets['test_poisoned_all'])}")
