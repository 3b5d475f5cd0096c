"""Temporary git + DVC repositories holding this project's pipeline, for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIT_ID = ["-c", "user.name=rga-test", "-c", "user.email=rga-test@example.com"]

# Real CUBE on the tiny cell's real rows with clusters larger than the data allows: HDBSCAN
# leaves every row as noise, CUBE flags noise, and without the fit filter every training row is
# flagged, so the retain set is empty (a degenerate cell). On these 240 rows no CUBE setting
# flagged zero rows (HDBSCAN always leaves noise, and CUBE flags noise); the empty forget set,
# the other degenerate case, is reached in test_launch on a training set with no poisoned row.
DEGENERATE_CUBE = {"detector": "cube", "min_cluster_size": 0.4, "min_samples": 0.03, "n_neighbors": 15,
                   "fit_filter": False}


@contextlib.contextmanager
def scratch_dir(request, tmp_path_factory, name: str) -> Iterator[Path]:
    """A new numbered folder under pytest's base temp for a module-scoped fixture.

    When the module's tests are done it is removed if none of them failed, and kept for
    inspection otherwise. Function-scoped ``tmp_path`` folders get the same treatment from
    ``tmp_path_retention_policy = "failed"`` (pyproject.toml); a module's repository holds
    several 90 MB checkpoints twice (workspace and DVC cache), so keeping them all to the end
    of the session would peak at several GB of disk.
    """
    path = tmp_path_factory.mktemp(name)
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


def env_for(mirror: Path, root: Path | None = None) -> dict:
    """The environment a stage sees: this venv first on PATH, the data mirror, offline hub."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(RGA_DATA_MIRROR=str(mirror), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DVC_NO_ANALYTICS="1")
    env.pop("RGA_ROOT", None)
    if root is not None:
        env["RGA_ROOT"] = str(root)
    return env


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd``; with ``check`` a non-zero exit fails the test with the output's tail."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_tiny_repo(root: Path, mirror: Path) -> dict:
    """Copy the pipeline into a new git + DVC repository at ``root`` with the tiny profile applied.

    Returns the environment to run its commands with (:func:`env_for`).
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("stages", "src", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = env_for(mirror)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # the project's page for `dvc plots show`
    run(["dvc", "config", "plots.html_template", "plots/page.html"], root, env)
    run([sys.executable, "-m", "rga.profile", "tiny"], root, env)
    return env
