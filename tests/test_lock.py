"""The lock file: every dependency pinned exactly, and the environment the tests run in is the
one it describes (scripts/in-venv.sh installs from it)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)")


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_every_declared_dependency_is_pinned_exactly_and_torch_is_left_to_its_own_pin():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    locked = pins()
    assert len(locked) > 100  # the whole tree, not just the direct dependencies
    missing = [r.name for r in declared if r.name != "torch" and canonicalize_name(r.name) not in locked]
    assert not missing, f"in pyproject.toml but not pinned in requirements.lock: {missing} (run scripts/lock.sh)"
    for r in declared:  # each pin satisfies the range pyproject.toml asks for
        if r.name != "torch":
            assert r.specifier.contains(locked[canonicalize_name(r.name)], prereleases=True), (r, locked[canonicalize_name(r.name)])
    # torch is installed first from scripts/torch.txt (the build that fits the machine), never by the lock
    assert "torch" not in locked
    torch_pin = (REPO / "scripts" / "torch.txt").read_text().split()[0]
    assert torch_pin == "torch==2.13.0"
    assert "scripts/torch.txt" in (REPO / "requirements.lock").read_text()  # resolved against that pin
    # nothing machine-specific: this machine's index and wheel folders stay out of the file
    text = (REPO / "requirements.lock").read_text()
    assert "--extra-index-url" not in text and "--find-links" not in text and "file://" not in text


def test_the_installed_environment_is_the_locked_one():
    wrong = {}
    for name, want in pins().items():
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong[name] = (want, None)
            continue
        if have != want:
            wrong[name] = (want, have)
    assert not wrong, f"installed versions differ from requirements.lock (want, have): {wrong}"
    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"
