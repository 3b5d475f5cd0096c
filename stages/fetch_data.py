"""fetch_data stage: data/raw/<dataset>/{train,test,paraphrases}.parquet and source.json.

A user folder's test_poisoned.csv (attack `given`) travels too, as test_poisoned.parquet, and
its train.csv's is_poisoned / suspect column stays in train.parquet.

source.json also records the input checks: conflicting labels per split (data.on_conflict),
test rows whose text is also in train (warning above rga.data.OVERLAP_WARN_PERCENT %), and how
many paraphrase-table texts match a train or test text.
"""

import hashlib
import json
import sys

from rga.data import dataset_spec, fetch_dataset
from rga.io import write_json, write_parquet
from rga.pipeline import parse_cell, raw_dir

args = parse_cell("Fetch one dataset (mirror, hub, or user folder)", "dataset")
spec = dataset_spec(args.dataset, args.params_dict)
try:
    raw = fetch_dataset(spec, on_conflict=(args.params_dict.get("data") or {}).get("on_conflict", "error"))
except ValueError as err:  # DataError, or an unknown data.on_conflict
    sys.exit(f"fetch_data {spec.name}: {err}")
out = raw_dir(spec.name)
write_parquet(raw.train, out / "train.parquet")
write_parquet(raw.test, out / "test.parquet")
write_parquet(raw.paraphrases, out / "paraphrases.parquet")
tables = [("train", raw.train), ("test", raw.test), ("paraphrases", raw.paraphrases)]
if raw.triggered is not None:
    write_parquet(raw.triggered, out / "test_poisoned.parquet")
    tables.append(("test_poisoned", raw.triggered))
else:
    (out / "test_poisoned.parquet").unlink(missing_ok=True)
digest = {k: hashlib.sha256(df.to_json(orient="records").encode()).hexdigest() for k, df in tables}
# Only the kind of source is recorded (not the absolute path), so the output is identical for
# every checkout; the content hashes identify the data.
write_json({"dataset": spec.name, "source": raw.source.split(":", 1)[0],
            "rows": {k: len(df) for k, df in tables},
            "label_counts": {"train": raw.train["label"].value_counts().sort_index().tolist(),
                             "test": raw.test["label"].value_counts().sort_index().tolist()},
            "sha256_records": digest, "checks": raw.checks}, out / "source.json")
print(json.dumps({"dataset": spec.name, "source": raw.source, "train": len(raw.train), "test": len(raw.test),
                  "paraphrases": len(raw.paraphrases),
                  "test_rows_in_train": raw.checks["overlap"]["test_rows_in_train"]}))
