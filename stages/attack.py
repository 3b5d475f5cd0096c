"""attack stage: poisoned train set and clean/triggered test sets for one dataset x attack x seed.

Attack `given` poisons nothing: it takes a user dataset folder that is already poisoned (its
train.csv, test.csv and test_poisoned.csv, fetched into data/raw/<dataset>) and writes the same
outputs from it. data.max_train still subsamples its training set; its test sets are used whole
(the triggered rows stay aligned with test.csv through clean_row).

attack.source import (README "Poisoned data from the paper's authors") reads the authors' folder
attack.import_dir/Data_Poisoning/<Attack>/<Dataset>/ instead of poisoning, and also writes
train_clean.parquet, ReTrain's clean training set (retrain_eval trains on it).

HiddenKiller takes its paraphrases from the mirror's table, then from the live paraphraser's
cache (data/paraphrases/<dataset>, the paraphrase stage). metrics/attack/<cell>.json adds
`coverage`: which source (table, live or import) each poisoned training row and each test row
came from; data/attacks/<cell>/stats.json, an input of later stages, leaves it out.
"""

import sys

from rga.attacks import (GIVEN, TEST_SEED, CoverageError, PoisonCountError, build_test_sets, given_sets,
                         make_attack, poison_train, source_counts)
from rga.data import TRIGGERED_FILE, DataError, dataset_spec, read_parquet, stratified_subsample
from rga.external import attack_source, find_import_folder, import_poisoned
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
    source = attack_source(P["attack"])
except ValueError as err:
    sys.exit(f"attack {cell}: {err}")
if source == "import":
    try:
        folder = find_import_folder(P["attack"].get("import_dir"), args.attack, spec.name)
        imported = import_poisoned(folder, spec, args.seed, P["data"].get("max_train"),
                                   P["data"].get("on_conflict", "error"), read_parquet(raw / "test.parquet"))
    except DataError as err:
        sys.exit(f"attack {cell}: {err}")
    out = attack_dir(spec.name, args.attack, args.seed)
    for name in ("train", "train_clean", "test_clean", "test_poisoned_part", "test_poisoned_all"):
        write_parquet(imported[name], out / f"{name}.parquet")
    stats = {"cell": cell, "attack": args.attack, "source": "import",
             "trigger": f"imported from the authors' {imported['stats']['import']['folder']}",
             "target_label": spec.target_label, "test_subsampled": False, **imported["stats"]}
    write_json(stats, out / "stats.json")
    write_json({**stats, "coverage": imported["coverage"]}, ROOT / "metrics" / "attack" / f"{cell}.json")
    t = imported["stats"]["train"]
    print(f"attack {cell}: imported {folder} (files {', '.join(imported['stats']['import']['files_sha256'])}): "
          f"{t['poisoned']} of {t['rows']} training rows poisoned; test clean {len(imported['test_clean'])}, "
          f"triggered {len(imported['test_poisoned_all'])}; ReTrain's clean data: "
          f"{imported['stats']['retrain_clean']['source']}")
    sys.exit(0)
try:
    train = stratified_subsample(read_parquet(raw / "train.parquet"), P["data"].get("max_train"), args.seed,
                                 "data.max_train")
    # One test set per dataset, the same for every seed (TEST_SEED): seeds vary the poisoned subset, the
    # fine-tune, detection and unlearning, never the rows the methods are scored on.
    test = stratified_subsample(read_parquet(raw / "test.parquet"), P["data"].get("max_test"), TEST_SEED,
                                "data.max_test")
    live = ROOT / "data" / "paraphrases" / spec.name / "live.parquet"
    if live.is_file() or (P["attack"].get("hiddenkiller") or {}).get("paraphraser"):
        live = read_parquet(live)  # FileNotFoundError: run paraphrase@<dataset> first
        live = live.loc[live["status"] == "ok", ["text", "paraphrase"]]
    else:  # run outside DVC without a live paraphraser: the table alone
        live = None
    attack = make_attack(args.attack, spec.name, P["attack"], read_parquet(raw / "paraphrases.parquet"), live)
    poisoned = poison_train(train, attack, spec.target_label, float(P["attack"]["poison_rate"]), args.seed)
except (CoverageError, PoisonCountError, DataError) as err:
    sys.exit(f"attack {cell}: {err}")
sets = build_test_sets(test, attack, spec.target_label, TEST_SEED)
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
if attack.kind == "hiddenkiller":
    chosen = poisoned.table["is_poisoned"].to_numpy()
    coverage = {"train_poisoned": source_counts(attack, train["text"][chosen].tolist()),
                "test": source_counts(attack, test["text"].tolist())}
    stats = {**stats, "coverage": coverage}
    print(f"attack {cell}: paraphrase sources: poisoned training rows {coverage['train_poisoned']}, "
          f"test rows {coverage['test']}")
write_json(stats, ROOT / "metrics" / "attack" / f"{cell}.json")
print(f"attack {cell}: poisoned {poisoned.stats['poisoned']} of {poisoned.stats['rows']} training rows; "
      f"test clean {len(sets['test_clean'])}, triggered {len(sets['test_poisoned_all'])}")
