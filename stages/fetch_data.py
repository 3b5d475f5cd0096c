"""fetch_data stage: data/raw/<dataset>/{train,test,paraphrases}.parquet and source.json."""

import hashlib
import json

from rga.data import dataset_spec, fetch_dataset
from rga.io import write_json, write_parquet
from rga.pipeline import parse_cell, raw_dir

args = parse_cell("Fetch one dataset (mirror, hub, or user folder)", "dataset")
spec = dataset_spec(args.dataset, args.params_dict)
raw = fetch_dataset(spec)
out = raw_dir(spec.name)
write_parquet(raw.train, out / "train.parquet")
write_parquet(raw.test, out / "test.parquet")
write_parquet(raw.paraphrases, out / "paraphrases.parquet")
digest = {k: hashlib.sha256(df.to_json(orient="records").encode()).hexdigest()
          for k, df in (("train", raw.train), ("test", raw.test), ("paraphrases", raw.paraphrases))}
# Only the kind of source is recorded (not the absolute path), so the output is identical for
# every checkout; the content hashes identify the data.
write_json({"dataset": spec.name, "source": raw.source.split(":", 1)[0],
            "rows": {"train": len(raw.train), "test": len(raw.test), "paraphrases": len(raw.paraphrases)},
            "label_counts": {"train": raw.train["label"].value_counts().sort_index().tolist(),
                             "test": raw.test["label"].value_counts().sort_index().tolist()},
            "sha256_records": digest}, out / "source.json")
print(json.dumps({"dataset": spec.name, "source": raw.source, "train": len(raw.train), "test": len(raw.test),
                  "paraphrases": len(raw.paraphrases)}))
