"""Write a HiddenKiller attack of SST-2 at another training size ('full' = all 6,911 rows).

Usage (repository root, after fetch_data): python experiments/hiddenkiller-detection/attack_full.py full 0 /tmp/att-full-0
"""
import sys, os
from rga.attacks import make_attack, poison_train, build_test_sets
from rga.data import read_parquet, stratified_subsample
from rga.io import write_parquet
import yaml
P = yaml.safe_load(open("params.yaml"))
n = None if sys.argv[1] == "full" else int(sys.argv[1]); seed = int(sys.argv[2]); out = sys.argv[3]
raw = "data/raw/sst2"
train = stratified_subsample(read_parquet(f"{raw}/train.parquet"), n, seed, "x")
test = stratified_subsample(read_parquet(f"{raw}/test.parquet"), 600, 0, "x")
att = make_attack("hiddenkiller", "sst2", P["attack"], read_parquet(f"{raw}/paraphrases.parquet"))
p = poison_train(train, att, 1, 0.1, seed)
sets = build_test_sets(test, att, 1, 0)
os.makedirs(out, exist_ok=True)
write_parquet(p.table, f"{out}/train.parquet")
for k in ("test_clean", "test_poisoned_part", "test_poisoned_all"):
    write_parquet(sets[k], f"{out}/{k}.parquet")
print(p.stats)
