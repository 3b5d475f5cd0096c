"""Switch params.yaml between profiles: ``python -m rga.profile {cpu,paper,tiny} [--params P]``.

A profile (``profiles/<name>.yaml``) lists only the keys it changes; they are merged into
params.yaml in place, comments kept. Every profile sets the same keys, so switching back and
forth is lossless.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"


def available(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def _merge(dst, src) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        elif k not in dst or dst[k] != v:
            dst[k] = v  # equal values keep their original spelling (1.0e-4 stays 1.0e-4)


def apply_profile(name: str, params_path: str | Path = "params.yaml", profiles_dir: Path = PROFILES_DIR) -> dict:
    """Merge ``profiles/<name>.yaml`` into ``params_path`` (round-trip, atomically).

    Raises:
        ValueError: unknown profile (lists the available ones).
    """
    from ruamel.yaml import YAML

    from .io import write_text

    src = profiles_dir / f"{name}.yaml"
    if not src.is_file():
        raise ValueError(f"unknown profile {name!r}; valid choices: {', '.join(available(profiles_dir))}")
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    params = yaml.load(Path(params_path).read_text(encoding="utf-8"))
    _merge(params, YAML(typ="safe").load(src.read_text(encoding="utf-8")) or {})
    import io

    buf = io.StringIO()
    yaml.dump(params, buf)
    write_text(buf.getvalue(), params_path)
    return params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", choices=available())
    p.add_argument("--params", default="params.yaml")
    a = p.parse_args()
    apply_profile(a.profile, a.params)
    print(f"params.yaml now uses the {a.profile!r} profile; run `dvc repro` (or `dvc exp run`)")


if __name__ == "__main__":
    main()
