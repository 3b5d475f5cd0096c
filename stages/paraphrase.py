"""paraphrase stage: the live HiddenKiller paraphrase cache of one dataset -> data/paraphrases/<dataset>/.

With attack.hiddenkiller.paraphraser set (and hiddenkiller in matrix.attacks, attack.source
generate), the seq2seq model paraphrases every text the attack stage may trigger and the mirror's
table does not cover: the non-target training rows and the test rows of the data.max_train /
data.max_test subsample of every seed in matrix.seeds (one test subsample, TEST_SEED). live.parquet keeps every output with its
status (ok, or the reason it was rejected); stats.json counts them. Otherwise the cache is empty
and no model is loaded (this is the default, and it takes a second).

The output is persistent (dvc.yaml `persist: true`): a re-run (a new seed, a larger max_train)
sends only texts the cache has not seen to the model, as long as the paraphraser settings are
the same; changed settings discard the old cache.
"""

import json
import sys

import numpy as np

from rga.attacks import TEST_SEED
from rga.data import dataset_spec, read_parquet, stratified_subsample
from rga.external import attack_source
from rga.io import write_json, write_parquet
from rga.paraphrase import LiveParaphraser, config_record, empty_cache, fill_cache, paraphraser_config
from rga.pipeline import ROOT, parse_cell, raw_dir, stage_runtime

args = parse_cell("Live HiddenKiller paraphrases of one dataset", "dataset")
P = args.params_dict
spec = dataset_spec(args.dataset, P)
hk = (P.get("attack") or {}).get("hiddenkiller") or {}
syntactic = str(hk.get("template") or "")
try:
    cfg = paraphraser_config(hk.get("paraphraser"))
    source = attack_source(P.get("attack") or {})
except ValueError as err:
    sys.exit(f"paraphrase {spec.name}: {err}")
out = ROOT / "data" / "paraphrases" / spec.name
needed = cfg is not None and source == "generate" and "hiddenkiller" in P["matrix"]["attacks"]
record = config_record(cfg, syntactic) if needed else None
previous = None
if needed and (out / "live.parquet").is_file() and (out / "stats.json").is_file():
    if json.loads((out / "stats.json").read_text()).get("paraphraser") == record:
        previous = read_parquet(out / "live.parquet")
texts = []
if needed:
    raw = raw_dir(spec.name)
    train, test = read_parquet(raw / "train.parquet"), read_parquet(raw / "test.parquet")
    for seed in P["matrix"]["seeds"]:  # the same training subsamples as the attack stage
        sub = stratified_subsample(train, P["data"].get("max_train"), seed, "data.max_train")
        texts += sub["text"][sub["label"].to_numpy() != spec.target_label].tolist()
    # the test subsample is the same for every seed (TEST_SEED)
    texts += stratified_subsample(test, P["data"].get("max_test"), TEST_SEED, "data.max_test")["text"].tolist()
    compute = stage_runtime(P)
    table = read_parquet(raw / "paraphrases.parquet")
    try:
        cache, stats = fill_cache(texts, table, previous, LiveParaphraser(cfg, syntactic))
    except (OSError, ValueError, RuntimeError) as err:  # a model that cannot be loaded safely
        sys.exit(f"paraphrase {spec.name}: {err}")
else:
    cache, stats = empty_cache(), {"texts": 0}
write_parquet(cache, out / "live.parquet")
reason = None if needed else ("no attack.hiddenkiller.paraphraser" if cfg is None else
                              "attack.source is import" if source != "generate" else "hiddenkiller not in matrix.attacks")
write_json({"dataset": spec.name, "paraphraser": record, "skipped": reason, **stats,
            **({"compute": compute} if needed else {})}, out / "stats.json")
if needed:
    rej = stats["rejected"]
    print(f"paraphrase {spec.name}: {stats['requested']} texts not in the table; {stats['reused']} reused from the "
          f"cache, {stats['generated']} sent to {cfg.model}; {stats['accepted']} accepted, rejected "
          + ", ".join(f"{k} {v}" for k, v in rej.items()) + f" (of {int(np.sum(list(rej.values())))})")
else:
    print(f"paraphrase {spec.name}: skipped ({reason}); empty cache")
