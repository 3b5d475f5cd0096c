"""attack stage: poisoned train set and clean/triggered test sets for one dataset x attack x seed.

Attack `given` poisons nothing: it takes a user dataset folder that is already poisoned (its
train.csv, test.csv and test_poisoned.csv, fetched into data/raw/<dataset>) and writes the same
outputs from it. data.max_train still subsamples its training set; its test sets are used whole
(the triggered rows stay aligned with test.csv through clean_row).
"""

import sys

from rga.attacks import GIVEN, CoverageError, PoisonCountError, build_test_sets, given_sets, make_attack, poison_train
from rga.data import TRIGGERED_FILE, DataError, dataset_spec, read_parquet, stratified_subsample
from rga.io import cell_name, write_json, write_parquet
from rga.pipeline import ROOT, attack_dir, parse_cell, raw_dir

args = parse_cell("Poison one dataset with one attack", "dataset", "attack", "seed")
P = args.params_dict
spec = dataset_spec(args.dataset, P)
raw = raw_dir(spec.name)
cell = cell_name(spec.name, args.attack, args.seed)
if args.attack == GIVEN:
    try:
        if spec.path is None:
            raise DataError(f"dataset {spec.name!r} is builtin; attack {GIVEN!r} needs a dataset folder of your own "
                            f"(datasets.<name>.path) holding train.csv, test.csv and {TRIGGERED_FILE}")
        if not (raw / "test_poisoned.parquet").is_file():
            raise DataError(f"missing {spec.path}/{TRIGGERED_FILE}: attack {GIVEN!r} needs the dataset's fully "
                            f"triggered test set; add {TRIGGERED_FILE} (header text,label[,clean_row]: every row "
                            "carries the trigger, label = the row's original label, clean_row = its 0-based row in "
                            "test.csv) to the folder, then re-run fetch_data "
                            f"(dvc repro -f fetch_data@{spec.name})")
        train = stratified_subsample(read_parquet(raw / "train.parquet"), P["data"].get("max_train"), args.seed,
                                     "data.max_train")
        given = given_sets(train, read_parquet(raw / "test.parquet"), read_parquet(raw / "test_poisoned.parquet"),
                           spec.target_label)
    except DataError as err:
        sys.exit(f"attack {cell}: {err}")
    out = attack_dir(spec.name, args.attack, args.seed)
    write_parquet(given["train"], out / "train.parquet")
    for name in ("test_clean", "test_poisoned_part", "test_poisoned_all"):
        write_parquet(given[name], out / f"{name}.parquet")
    stats = {"cell": cell, "attack": GIVEN, "trigger": f"given ({TRIGGERED_FILE} of dataset {spec.name})",
             "target_label": spec.target_label, "test_subsampled": False, **given["stats"]}
    write_json(stats, out / "stats.json")
    write_json(stats, ROOT / "metrics" / "attack" / f"{cell}.json")
    t = given["stats"]["train"]
    print(f"attack {cell}: given dataset, {t['rows']} training rows (ground truth: {t['ground_truth']}); "
          f"test clean {len(given['test_clean'])}, triggered {len(given['test_poisoned_all'])}")
    sys.exit(0)
try:
    train = stratified_subsample(read_parquet(raw / "train.parquet"), P["data"].get("max_train"), args.seed,
                                 "data.max_train")
    test = stratified_subsample(read_parquet(raw / "test.parquet"), P["data"].get("max_test"), args.seed,
                                "data.max_test")
    attack = make_attack(args.attack, spec.name, P["attack"], read_parquet(raw / "paraphrases.parquet"))
    poisoned = poison_train(train, attack, spec.target_label, float(P["attack"]["poison_rate"]), args.seed)
except (CoverageError, PoisonCountError, DataError) as err:
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
