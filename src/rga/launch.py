"""Scale-out launcher: run the expanded DVC DAG's stages as parallel jobs over one DVC cache.

``rga-launch`` (or ``python -m rga.launch``) reads the expanded DAG (``matrix:``/``foreach:``
stages and their dependencies) through DVC's Python API, works out which stages are stale, and
runs each stale stage as one job in its own git worktree of the current commit:

1. the worktree gets the workspace's ``params.yaml`` and ``dvc.lock`` (uncommitted params go with
   it; other uncommitted source edits are refused, since a job would not see them);
2. the job runs ``dvc repro <stage>`` there: the stages upstream of it are restored from DVC's
   run-cache ("Stage ... is cached - skipping run, checking out outputs"), which the jobs that
   produced them filled, and the stage itself runs (or is restored, if it ever ran with the
   same dependencies and params);
3. all jobs share the workspace's DVC cache directory (``dvc cache dir``), or, without a shared
   file system, a DVC remote: ``dvc pull --run-cache`` before and ``dvc push --run-cache`` after.

A job starts when every stage it depends on has finished (the dependency graph, not waves).
When all are done, ``dvc repro`` in the workspace restores every output from the run-cache and
computes nothing; it writes the same ``dvc.lock``, metrics and plots as a serial run.

Stages DVC cannot run-cache (outputs with ``persist: true``, e.g. the paraphrase cache) run in
the workspace itself, one at a time, so that their persisted outputs carry over between runs.

Torch threads per job are params.yaml's ``compute.threads``, a tracked param of every model
stage, so a job computes exactly what a serial ``dvc repro`` computes; local executors run at
most ``cores // compute.threads`` jobs at once (fewer than ``--workers`` when that is more).

Executors: ``local`` (N worker processes here, one GPU per worker through
``CUDA_VISIBLE_DEVICES`` when there are GPUs), ``slurm`` (submitit: one SLURM
job per stage, a GPU only for stages that load a model) and ``submitit-local`` (submitit's local
executor, how the SLURM path is tested on one machine).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

EXECUTORS = ("local", "slurm", "submitit-local")
# stage kinds (the name before '@') that load a model: these get a GPU under SLURM/local GPUs
MODEL_STAGES = ("paraphrase", "finetune", "detect", "retrain", "retrain_eval", "unlearn", "unlearn_plugin")
LAUNCH_DIR = Path(".dvc") / "tmp" / "launch"
# files a job carries from the workspace besides the commit; edits to other tracked files are refused
CARRIED = ("params.yaml", "dvc.lock")
DEFAULTS = {
    "executor": "local",
    "workers": 2,
    "remote": "",            # DVC remote for clusters without a shared file system
    "finish": True,          # run `dvc repro` in the workspace afterwards (restores from the run-cache)
    "slurm": {"partition": "", "gpus_per_job": 1, "cpus_per_job": 8, "mem_gb": 64, "time_min": 240,
              "account": "", "gpu_stages": list(MODEL_STAGES), "extra": {}},
}


class LaunchError(RuntimeError):
    """The launcher refuses to start or cannot go on; the message says why and what to do."""


@dataclass
class Job:
    """One stage of the expanded DAG to run.

    Attributes:
        name: DVC's address of the stage (``unlearn@minilm-sst2-badnets-0-rga``).
        kind: the stage's name before ``@`` (``unlearn``).
        upstream: addresses of the stale stages it depends on, directly or not (it waits for them).
        restore: upstream stages its worktree checks out by the workspace's dvc.lock before it
            runs (those not run in this launch, and those run in the workspace itself).
        copy_outs: ``cache: false`` outputs of upstream stages that are not stale, copied from
            the workspace into its worktree (DVC keeps them in git, not the cache).
        cacheable: DVC can restore it from the run-cache (no ``persist`` outputs, has deps and outs).
        priority: how many stale stages depend on it, directly or not.
        height: stages on the longest chain of stale stages from it to the end of the DAG, itself
            included (the scheduler starts the highest first: its critical path).
    """

    name: str
    kind: str
    upstream: set[str] = field(default_factory=set)
    cacheable: bool = True
    started: float = 0.0
    seconds: float = 0.0
    log: Path | None = None
    workdir: Path | None = None
    restore: list[str] = field(default_factory=list)
    copy_outs: list[str] = field(default_factory=list)
    handle: object = None
    slot: int | None = None
    priority: int = 0
    height: int = 1


# --------------------------------------------------------------------------- the DAG

def _run_cacheable(stage) -> bool:
    """Whether DVC's run-cache can save and restore ``stage``: it has a command, dependencies and
    outputs, is not always-changed, and has no ``persist`` outputs (DVC's own rule)."""
    if not (stage.cmd and stage.deps and stage.outs) or stage.always_changed:
        return False
    return not any(out.persist for out in stage.outs)


def plan(root: Path, targets: Sequence[str] = ()) -> dict[str, Job]:
    """The stale stages of the workspace at ``root``, from DVC's expanded DAG.

    A stage is stale when ``dvc status`` reports it (changed deps, params, command or missing
    outputs), or when a stage upstream of it is stale (its inputs will change). With
    ``targets`` (stage addresses or names, as ``dvc repro`` takes them), only those and their
    upstream stages are considered.

    Returns:
        address -> :class:`Job`, each job's ``upstream`` restricted to stale stages.

    Raises:
        LaunchError: an unknown target (names it and lists the pipeline's stage names).
    """
    import networkx as nx
    from dvc.repo import Repo, lock_repo
    from dvc.stage import PipelineStage

    # stage addresses are relative to the cwd; DVC's repository lock as `dvc status` takes it
    with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
        graph = repo.index.graph
        stages = {s.addressing: s for s in graph if isinstance(s, PipelineStage)}
        if targets:
            keep: set[str] = set()
            for t in targets:
                hits = [a for a in stages if a == t or a.split("@")[0] == t]
                if not hits:
                    kinds = sorted({a.split("@")[0] for a in stages})
                    raise LaunchError(f"unknown target {t!r}; stages: {', '.join(kinds)} (or one expanded "
                                      "address such as unlearn@minilm-sst2-badnets-0-rga)")
                for a in hits:
                    keep.add(a)
                    keep.update(u.addressing for u in nx.descendants(graph, stages[a]) if u.addressing in stages)
            stages = {a: s for a, s in stages.items() if a in keep}
        # each stage's own status (what `dvc status` reports for it), from the index loaded
        # once: repo.status(targets) would parse dvc.yaml and dvc.lock again for every target,
        # which was most of the launcher's start-up (about 6 s for the default matrix)
        changed = {a for a, s in stages.items() if s.status(check_updates=True)}
        stale = set()
        for a, s in stages.items():
            ups = {u.addressing for u in nx.descendants(graph, s)}
            if a in changed or ups & changed:
                stale.add(a)
        jobs = {}
        for a in stale:
            s = stages[a]
            all_ups = [u for u in nx.descendants(graph, s) if isinstance(u, PipelineStage)]
            ups = {u.addressing for u in all_ups} & stale
            restore = sorted(u.addressing for u in all_ups if u.addressing not in stale or not _run_cacheable(u))
            copy_outs = sorted(str(o.def_path) for u in all_ups if u.addressing not in stale
                               for o in u.outs if not o.use_cache)
            jobs[a] = Job(a, a.split("@")[0], ups, _run_cacheable(s), restore=restore, copy_outs=copy_outs)
        rank(jobs)
    return jobs


def rank(jobs: dict[str, Job]) -> None:
    """Set each job's ``priority`` (stale stages depending on it) and ``height`` (the longest
    chain of stale stages from it to the end, itself included), from the jobs' ``upstream`` sets
    (each holds every stale ancestor, so a dependent always has more of them)."""
    below = {name: [o for o in jobs.values() if name in o.upstream] for name in jobs}
    for job in sorted(jobs.values(), key=lambda j: len(j.upstream), reverse=True):  # dependents first
        job.priority = len(below[job.name])
        job.height = 1 + max((o.height for o in below[job.name]), default=0)


# --------------------------------------------------------------------------- the workspace

def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LaunchError(f"git {' '.join(args)} failed in {root}: {proc.stderr.strip()}")
    return proc


def check_workspace(root: Path, output_paths: set[str]) -> str:
    """The commit jobs start from, after checking that nothing uncommitted would be lost.

    ``params.yaml`` and ``dvc.lock`` edits are carried into every job; edits to DVC outputs are
    rewritten by the run. Any other modified tracked file (code, dvc.yaml, a profile) is refused.

    Raises:
        LaunchError: not a git repository, no commit yet, or uncommitted edits a job would miss
            (lists them and says to commit or stash them).
    """
    if _git(root, "rev-parse", "--git-dir", check=False).returncode != 0:
        raise LaunchError(f"{root} is not a git repository; the launcher runs jobs in worktrees of its commit")
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    if head.returncode != 0:
        raise LaunchError("the repository has no commit yet; commit the pipeline first (git add -A && git commit)")
    modified = [ln[3:] for ln in _git(root, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    blocked = []
    for path in modified:
        path = path.split(" -> ")[-1].strip('"')
        if path in CARRIED or any(path == o or path.startswith(o.rstrip("/") + "/") for o in output_paths):
            continue
        blocked.append(path)
    if blocked:
        raise LaunchError("uncommitted changes the jobs would not see: " + ", ".join(sorted(blocked)) +
                          "; commit or stash them (params.yaml edits are carried into the jobs)")
    return head.stdout.strip()


def output_paths(root: Path) -> set[str]:
    """Every pipeline output path (relative to ``root``), from DVC's index."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        return {str(o.def_path) for s in repo.index.stages for o in s.outs}


class WorkspaceLock:
    """One launcher per workspace: an exclusive ``flock`` on ``.dvc/tmp/launch/lock``.

    Raises:
        LaunchError: another launcher holds it (names its pid).
    """

    def __init__(self, root: Path):
        self.path = root / LAUNCH_DIR / "lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "?"
            self.fh.close()
            raise LaunchError(f"another rga-launch (pid {pid}) is running on this workspace ({self.path.parent}); "
                              "wait for it to finish or stop it (Ctrl-C) first") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def cache_dir(root: Path) -> str:
    """The workspace's DVC cache directory (absolute), which every job shares."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return str(Path(repo.cache.local.path).parents[1])  # <cache>/files/md5 -> <cache>


def dvc_config(root: Path, key: str) -> str:
    """``dvc config <key>`` of the workspace, '' when unset."""
    proc = subprocess.run(["dvc", "config", key], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


# --------------------------------------------------------------------------- one job

def job_command(job: Job, remote: str) -> list[str]:
    """The command a job runs in its worktree: ``python -m rga.launch --job <stage>`` (see :func:`run_job`)."""
    cmd = [sys.executable, "-m", "rga.launch", "--job", job.name]
    for name in job.restore:
        cmd += ["--restore", name]
    return cmd + (["--remote", remote] if remote else [])


def run_job(stage: str, restore: Sequence[str] = (), remote: str = "") -> int:
    """Body of one job, run inside its worktree, through DVC's Python API in this one process
    (one DVC start and one index per job instead of a ``dvc`` command per step).

    Shared cache: ``checkout`` of ``restore`` (the upstream stages not run in this launch, by
    the workspace's dvc.lock), then ``reproduce`` of ``stage``: the upstream stages this launch
    ran are restored from the run-cache, then the stage runs (or is restored too, if it ran
    before with the same dependencies and params). With a remote (no shared file system):
    ``reproduce(pull=True)`` pulls the run-cache and the data it needs from the default remote.
    Then the stage is saved to the run-cache (:func:`save_run_cache`) and, with a remote,
    ``dvc push --run-cache``. DVC's log lines go to the job's log as its CLI writes them.

    Returns:
        0 on success, 1 when ``reproduce`` or the save failed (the error is in the log), the
        push's exit code with a remote. A failed checkout is not fatal: ``reproduce`` then
        recomputes what is missing.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo  # importing dvc sets up its console logging, as its CLI has it

    with Repo(".") as repo:
        if restore and not remote:
            print(f"[rga-launch job] dvc checkout {' '.join(restore)}", flush=True)
            try:
                repo.checkout(targets=list(restore))
            except DvcException as err:
                print(f"[rga-launch job] checkout failed, reproduce will recompute: {err}", flush=True)
        print(f"[rga-launch job] dvc repro {'--pull ' if remote else ''}{stage}", flush=True)
        try:
            ran = repo.reproduce(targets=[stage], pull=bool(remote))
        except DvcException as err:
            print(f"[rga-launch job] FAILED: {err}", flush=True)
            return 1
        print(f"[rga-launch job] saving {stage} to the run-cache", flush=True)
        try:
            save_run_cache(Path.cwd(), stage, remote, repo=repo,
                           reproduced=next((st for st in ran if st.addressing == stage), None))
        except DvcException as err:
            print(f"[rga-launch job] FAILED to save the run-cache entry: {err}", flush=True)
            return 1
    if remote:
        print(f"[rga-launch job] $ dvc push --run-cache -r {remote}", flush=True)
        return subprocess.call(["dvc", "push", "--run-cache", "-r", remote])
    return 0


def save_run_cache(root: Path, stage: str, remote: str = "", repo=None, reproduced=None) -> None:
    """Save a stage that has just run at ``root`` to DVC's run-cache (``StageCache.save``).

    ``dvc repro`` itself skips the run-cache for a stage with a plain ``cache: false`` output
    (one that is neither a metric nor a plot), which every stage here has: the committed
    per-stage detail files (``metrics/<stage>/*.json``, ``history.csv``). DVC's run-cache stores
    such outputs as copies when asked (the same path it takes for ``cache: false`` metrics), and
    these files are small, so each job saves its stage explicitly: a later ``dvc repro``
    restores it ("Stage ... is cached - skipping run, checking out outputs"). With ``remote``,
    the objects of the entry are pushed there too (:func:`push_run_cache_objects`).

    Args:
        repo: an open ``dvc.repo.Repo`` at ``root`` (default: one is opened).
        reproduced: the stage object ``Repo.reproduce`` returned for ``stage``, whose outputs
            are already hashed (saved as is); default: the stage is looked up and hashed again.

    Raises:
        LaunchError: ``stage`` is not in ``root``'s dvc.yaml.
    """
    from dvc.repo import Repo

    if repo is None:
        with contextlib.chdir(root), Repo(str(root)) as opened:
            return save_run_cache(root, stage, remote, repo=opened)
    with contextlib.chdir(root):
        target = reproduced
        if target is None:
            found = [s for s in repo.index.stages if s.addressing == stage]
            if not found:
                raise LaunchError(f"stage {stage!r} is not in {root}/dvc.yaml")
            target = found[0]
        with repo.lock:
            if reproduced is None:
                target.save(run_cache=True)
            else:
                repo.stage_cache.save(target)
            if remote:
                push_run_cache_objects(repo, target, remote)


def push_run_cache_objects(repo, stage, remote: str) -> None:
    """Push every object a run-cache entry of ``stage`` refers to, ``cache: false`` outputs
    included (``dvc push --run-cache`` sends only the cached ones), so that another machine can
    restore the stage from the remote (the mirror of what ``dvc repro --pull`` fetches)."""
    from dvc.stage.serialize import to_single_stage_lockfile

    cached = repo.stage_cache._create_stage(to_single_stage_lockfile(stage), wdir=stage.wdir)
    for objs in cached.get_used_objs().values():
        repo.cloud.push(objs, remote=remote)


def prepare_worktree(root: Path, commit: str, work: Path, cache: str, remote: str, shared_group: bool,
                     lock_text: str | None = None) -> Path:
    """A fresh git worktree of ``commit`` at ``work`` (under ``.dvc/tmp/launch/``), holding the
    workspace's params.yaml and dvc.lock (``lock_text``: a snapshot of it) and configured to use the shared cache (or, with a
    remote, a cache of its own)."""
    from dvc.config import Config

    if work.exists():
        remove_worktree(root, work)
    work.parent.mkdir(parents=True, exist_ok=True)
    _git(root, "worktree", "add", "-q", "--detach", str(work), commit)
    if (root / "params.yaml").exists():
        shutil.copy2(root / "params.yaml", work / "params.yaml")
    if lock_text is not None:  # the launcher's snapshot of the workspace's dvc.lock
        (work / "dvc.lock").write_text(lock_text)
    elif (root / "dvc.lock").exists():
        shutil.copy2(root / "dvc.lock", work / "dvc.lock")
    if (root / ".dvc" / "config.local").exists():  # the user's local remotes and credentials
        shutil.copy2(root / ".dvc" / "config.local", work / ".dvc" / "config.local")
    with Config(dvc_dir=str(work / ".dvc"), validate=False).edit("local") as conf:
        conf.setdefault("core", {})["analytics"] = "false"
        if remote:  # no shared file system: a cache of the job's own, data through the remote
            conf.setdefault("cache", {})["dir"] = str(work / ".dvc" / "cache")  # not a repo-level cache.dir
            conf["core"]["remote"] = remote
        else:
            conf.setdefault("cache", {})["dir"] = cache
            if shared_group:
                conf["cache"]["shared"] = "group"
    return work


def refresh_lock(lock_text: str | None, work: Path, stages: Sequence[str]) -> None:
    """Bring the dvc.lock entries of ``stages`` from ``lock_text`` (the launcher's snapshot of
    the workspace's dvc.lock) into a reused worktree's dvc.lock: a stage run in the workspace
    since the worktree was made, e.g. the paraphrase cache."""
    src = yaml.safe_load(lock_text) if lock_text else None
    if not src or not stages:
        return
    path = work / "dvc.lock"
    dst = yaml.safe_load(path.read_text()) if path.exists() else None
    dst = dst or {"schema": src.get("schema", "2.0"), "stages": {}}
    changed = False
    for name in stages:
        entry = src.get("stages", {}).get(name)
        if entry is not None and dst["stages"].get(name) != entry:
            dst["stages"][name] = entry
            changed = True
    if changed:
        path.write_text(yaml.safe_dump(dst, sort_keys=False))


def copy_outputs(root: Path, work: Path, paths: Sequence[str]) -> None:
    """Copy ``cache: false`` outputs of upstream stages not run in this launch from the
    workspace into a job's worktree (DVC keeps them in git, not in the cache)."""
    for rel in paths:
        src, dst = root / rel, work / rel
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def remove_worktree(root: Path, work: Path) -> None:
    """Remove a job's worktree (its outputs live on in the cache and the run-cache)."""
    _git(root, "worktree", "remove", "--force", str(work), check=False)
    shutil.rmtree(work, ignore_errors=True)
    _git(root, "worktree", "prune", check=False)


def job_overrides(work: Path, gpu: str | None) -> dict:
    """The variables a job sets on top of the environment it starts in: the job's own source
    tree first on PYTHONPATH, its GPU, and ``RGA_DATA_MIRROR`` made absolute (the job runs in
    another folder). No thread variables: the stage sets torch's threads from
    ``compute.threads``, as in a serial run, so the job's environment matches it."""
    env = {"PYTHONPATH": str(work / "src") + (os.pathsep + os.environ["PYTHONPATH"]
                                              if os.environ.get("PYTHONPATH") else "")}
    if os.environ.get("RGA_DATA_MIRROR"):
        env["RGA_DATA_MIRROR"] = str(Path(os.environ["RGA_DATA_MIRROR"]).resolve())
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def job_env(root: Path, work: Path, gpu: str | None) -> dict:
    """The full environment of a local job: this process's, with :func:`job_overrides`."""
    env = dict(os.environ)
    env.pop("RGA_ROOT", None)
    env.update(job_overrides(work, gpu))
    return env


# --------------------------------------------------------------------------- executors

class LocalExecutor:
    """N worker processes on this machine; each job is a process group (killed as one)."""

    def __init__(self, workers: int, gpus: Sequence[str] = ()):
        self.workers = workers
        self.gpus = list(gpus)

    def gpu_for(self, slot: int) -> str | None:
        """The GPU of worker ``slot``: entry ``slot`` mod n of the GPUs this process sees (as
        ``CUDA_VISIBLE_DEVICES`` names them), or None without GPUs."""
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def submit(self, job: Job, cmd: list[str], cwd: Path, env: dict, log: Path):
        """Start ``cmd`` in ``cwd`` as a new process group writing to ``log``; returns the Popen."""
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    @staticmethod
    def poll(handle) -> int | None:
        """The job's exit code, or None while it runs."""
        return handle.poll()

    @staticmethod
    def cancel(handle) -> None:
        """SIGTERM the job's process group, then SIGKILL what is left of it after 20 s."""
        try:
            os.killpg(handle.pid, signal.SIGTERM)
            handle.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(handle.pid, signal.SIGKILL)  # stragglers of the group, if any
        except ProcessLookupError:
            pass


class SubmititExecutor:
    """One submitit job per stage: SLURM (``cluster="slurm"``) or submitit's local executor.

    Stages whose kind is in ``slurm.gpu_stages`` ask for ``gpus_per_job`` GPUs, the others for none.
    """

    def __init__(self, folder: Path, cluster: str, workers: int, slurm: dict):
        import submitit

        self.submitit = submitit
        self.folder = folder
        self.cluster = cluster
        self.workers = workers
        self.slurm = slurm

    def _executor(self, job: Job):
        ex = self.submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        s = self.slurm
        gpu = job.kind in s["gpu_stages"]
        common = {"timeout_min": s["time_min"], "name": f"rga-{job.name}"}
        if self.cluster == "slurm":
            extra = {"slurm_partition": s["partition"] or None, "slurm_mem": f"{s['mem_gb']}G",
                     "slurm_cpus_per_task": s["cpus_per_job"],
                     "slurm_gpus_per_node": s["gpus_per_job"] if gpu and s["gpus_per_job"] else None,
                     "slurm_account": s["account"] or None,
                     "slurm_additional_parameters": dict(s["extra"]) or None}
            common.update({k: v for k, v in extra.items() if v is not None})
        elif gpu and s["gpus_per_job"] and _visible_gpus():
            common["gpus_per_node"] = s["gpus_per_job"]
        ex.update_parameters(**common)
        return ex

    def submit(self, job: Job, cmd: list[str], cwd: Path, env: dict, log: Path):
        """Submit ``cmd`` as one job. Only the job's own variables are set (``env K=V``), on top
        of the environment the node gives the job (SLURM's GPU mask, ``TMPDIR``, ...)."""
        sets = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        shell = f"env {sets} {shlex.join(cmd)} >> {shlex.quote(str(log))} 2>&1"  # the same log as local jobs
        fn = self.submitit.helpers.CommandFunction(["bash", "-c", shell], cwd=str(cwd), verbose=False)
        return self._executor(job).submit(fn)

    @staticmethod
    def poll(handle, log: Path | None = None) -> int | None:
        """0 when the job succeeded, 1 when it failed (submitit's error, e.g. a timeout or the
        command's exit, is appended to ``log``), None while it runs."""
        if not handle.done():
            return None
        try:
            handle.result()
            return 0
        except Exception as err:  # noqa: BLE001 - submitit wraps every failure; keep its text
            if log is not None:
                with open(log, "a") as out:
                    out.write(f"\n[rga-launch] submitit job {handle.job_id} failed: {err}\n"
                              f"[rga-launch] submitit logs: {handle.paths.stdout} {handle.paths.stderr}\n")
            return 1

    @staticmethod
    def cancel(handle) -> None:
        """Cancel the submitted job (scancel under SLURM)."""
        try:
            handle.cancel(check=False)
        except Exception:  # noqa: BLE001
            pass


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (its own list when
    set, else 0..n-1 from torch)."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        return [g.strip() for g in mask.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


# --------------------------------------------------------------------------- progress

def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A live line: stages done / running / failed / left, and an ETA from finished stages'
    durations per stage kind, spread over the workers."""

    def __init__(self, total: int, workers: int, stream=sys.stderr):
        self.total = total
        self.workers = workers
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.time()
        self.last = ""

    def eta(self, jobs: dict[str, Job], done: set, pending: set, running: set) -> str:
        by_kind: dict[str, list[float]] = {}
        for name in done:
            by_kind.setdefault(jobs[name].kind, []).append(jobs[name].seconds)
        if not by_kind:
            return "?"
        overall = sum(sum(v) for v in by_kind.values()) / sum(len(v) for v in by_kind.values())
        now = time.time()
        left = 0.0
        for name in set(pending) | set(running):
            est = by_kind.get(jobs[name].kind)
            mean = sum(est) / len(est) if est else overall
            left += max(mean - (now - jobs[name].started), 0.0) if name in running else mean
        return _fmt_seconds(left / max(self.workers, 1))

    def update(self, jobs, done, running, failed, skipped, pending, final: bool = False) -> None:
        line = (f"[rga-launch] {len(done)}/{self.total} done · {len(running)} running · {len(failed)} failed"
                f"{f' ({len(skipped)} skipped)' if skipped else ''} · {len(pending)} left · "
                f"elapsed {_fmt_seconds(time.time() - self.t0)} · ETA {self.eta(jobs, done, pending, running)}")
        counts = line.split(" · elapsed")[0]
        if (line if self.tty else counts) == self.last and not final:
            return
        self.last = line if self.tty else counts
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else "\033[K"))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- the scheduler

@dataclass
class LaunchResult:
    """What a launch did: stage addresses that finished, failed, or were skipped because a stage
    they depend on failed; the logs of the failed ones; whether the workspace step ran."""

    done: list[str]
    failed: dict[str, Path]
    skipped: list[str]
    finished_workspace: bool = False
    workspace_ran: list[str] = field(default_factory=list)


def load_settings(root: Path, overrides: dict) -> dict:
    """The ``launch:`` section of params.yaml over :data:`DEFAULTS`, then the CLI ``overrides``.

    Raises:
        LaunchError: an unknown key or executor, or a non-positive worker count.
    """
    params = (yaml.safe_load((root / "params.yaml").read_text()) or {}) if (root / "params.yaml").exists() else {}
    section = params.get("launch") or {}
    if not isinstance(section, dict) or not isinstance(section.get("slurm") or {}, dict):
        raise LaunchError("params.yaml: launch (and launch.slurm) must be a mapping of settings, e.g. "
                          "launch: {executor: local, workers: 2}")
    if "threads" in section or overrides.get("threads") is not None:
        raise LaunchError("launch.threads / --threads is gone: torch threads per job are compute.threads in "
                          "params.yaml, a tracked param of every model stage (the same stage gives other numbers "
                          "with another thread count), used by dvc repro and by every launcher job alike")
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise LaunchError(f"params.yaml: unknown key(s) {sorted('launch.' + k for k in unknown)}; "
                          f"valid keys: {', '.join('launch.' + k for k in DEFAULTS)}")
    bad_slurm = set(section.get("slurm") or {}) - set(DEFAULTS["slurm"])
    if bad_slurm:
        raise LaunchError(f"params.yaml: unknown key(s) {sorted('launch.slurm.' + k for k in bad_slurm)}; "
                          f"valid keys: {', '.join('launch.slurm.' + k for k in DEFAULTS['slurm'])}")
    out = {**DEFAULTS, **section, "slurm": {**DEFAULTS["slurm"], **(section.get("slurm") or {})}}
    out.update({k: v for k, v in overrides.items() if v is not None and k not in ("threads", "slurm")})
    for k, v in (overrides.get("slurm") or {}).items():
        if v is not None:  # --sbatch options add to launch.slurm.extra
            out["slurm"][k] = {**out["slurm"]["extra"], **v} if k == "extra" and isinstance(v, dict) else v
    if out["executor"] not in EXECUTORS:
        raise LaunchError(f"unknown executor {out['executor']!r} (launch.executor / --executor); "
                          f"valid choices: {', '.join(EXECUTORS)}")
    if not isinstance(out["workers"], int) or out["workers"] < 1:
        raise LaunchError(f"launch.workers / --workers must be a positive integer, got {out['workers']!r}")
    from .pipeline import compute_settings

    try:  # a DVC pipeline without rga's compute section (no stage that reads it) counts one thread per job
        out["threads"] = compute_settings(params)["threads"] if "compute" in params else 1
    except ValueError as err:
        raise LaunchError(f"params.yaml: {err}") from None
    if not isinstance(out["finish"], bool):
        raise LaunchError(f"launch.finish must be true or false, got {out['finish']!r}")
    if not isinstance(out["remote"], str):
        raise LaunchError(f"launch.remote must be a DVC remote name (a string), got {out['remote']!r}")
    sl = out["slurm"]
    for key in ("gpus_per_job", "cpus_per_job", "mem_gb", "time_min"):
        low = 0 if key == "gpus_per_job" else 1
        if isinstance(sl[key], bool) or not isinstance(sl[key], int) or sl[key] < low:
            raise LaunchError(f"launch.slurm.{key} must be an integer >= {low}, got {sl[key]!r}")
    for key in ("partition", "account"):
        if not isinstance(sl[key], str):
            raise LaunchError(f"launch.slurm.{key} must be a string, got {sl[key]!r}")
    if not isinstance(sl["extra"], dict):
        raise LaunchError(f"launch.slurm.extra must be a mapping of sbatch settings, got {sl['extra']!r}")
    unknown_kinds = set(sl["gpu_stages"] or []) - set(MODEL_STAGES) - {"fetch_data", "attack", "report"}
    if not isinstance(sl["gpu_stages"], list) or unknown_kinds:
        raise LaunchError(f"launch.slurm.gpu_stages must list stage names; unknown: {sorted(unknown_kinds)}; "
                          f"valid: {', '.join(('fetch_data', 'attack', 'report') + MODEL_STAGES)}")
    return out


def _minutes(limit: str) -> float:
    """A SLURM time limit (``infinite``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", "", "NOT_SET") or not limit[:1].isdigit():
        return float("inf")  # no limit, or one sinfo does not state: nothing to refuse on
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        h, m, sec = parts
    else:
        h, m, sec = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + sec / 60


def partition_limits(sinfo_line: str) -> dict:
    """One line of ``sinfo -a -e -h -o "%P|%c|%m|%G|%l"`` (``-e``: one line per distinct node
    configuration, so the values are exact) as ``{"partition", "cpus", "mem_gb", "gpus",
    "time_min"}``: what one node of that configuration can give (a trailing ``*`` marks the
    default partition; GPUs from the ``gpu:[type:]N`` GRES, 0 without)."""
    name, cpus, mem, gres, limit = sinfo_line.strip().split("|")
    gpus = 0
    for g in gres.split(","):
        f = g.split("(")[0].split(":")
        if f[0] == "gpu" and f[-1].isdigit():
            gpus = max(gpus, int(f[-1]))
    return {"partition": name.rstrip("*"), "default": name.endswith("*"), "cpus": int(cpus.rstrip("+")),
            "mem_gb": int(mem.rstrip("+")) / 1024, "gpus": gpus, "time_min": _minutes(limit)}


def check_partition(slurm: dict, wants_gpu: bool, sinfo: str | None = None) -> None:
    """Refuse, before anything is submitted, a request that no node of the partition can ever
    satisfy (SLURM would keep such a job PENDING forever).

    Args:
        slurm: the ``launch.slurm`` settings (flags applied).
        wants_gpu: whether a stage to run asks for GPUs (``gpu_stages``).
        sinfo: the output of ``sinfo -h -o "%P|%c|%m|%G|%l"`` (read here when None).

    Raises:
        LaunchError: unknown partition (lists the known ones), or a setting above the
            partition's limit; names the setting, its flag, the value and the limit.
    """
    if sinfo is None:
        try:
            proc = subprocess.run(["sinfo", "-a", "-e", "-h", "-o", "%P|%c|%m|%G|%l"], capture_output=True, text=True)
        except OSError as err:
            raise LaunchError(f"cannot read the cluster's partitions: {err} (is SLURM installed here?)") from None
        if proc.returncode != 0:
            raise LaunchError(f"cannot read the cluster's partitions (sinfo failed: {proc.stderr.strip()}); "
                              "is SLURM_CONF set and slurmctld running?")
        sinfo = proc.stdout
    rows = [partition_limits(ln) for ln in sinfo.splitlines() if ln.strip()]
    want = slurm["partition"]
    mine = [r for r in rows if (r["partition"] == want if want else r["default"])]
    if not mine:
        raise LaunchError(f"launch.slurm.partition / --partition {want or '(the default)'!r}: no such partition; "
                          f"the cluster has {', '.join(sorted({r['partition'] for r in rows})) or 'none'}")
    name = mine[0]["partition"]
    checks = [("cpus_per_job", "--cpus-per-job", slurm["cpus_per_job"], "cpus", "CPUs per node"),
              ("mem_gb", "--mem-gb", slurm["mem_gb"], "mem_gb", "GB of memory per node"),
              ("time_min", "--time-min", slurm["time_min"], "time_min", "minutes of time limit")]
    if wants_gpu:
        checks.append(("gpus_per_job", "--gpus-per-job", slurm["gpus_per_job"], "gpus", "GPUs per node"))
    if any(all(value <= row[k] for _, _, value, k, _ in checks) for row in mine):
        return  # one node configuration gives everything at once
    for key, flag, value, k, what in checks:  # name the first setting no node configuration can give
        limit = max(r[k] for r in mine)
        if value > limit:
            shown = f"{limit:g}" if limit != float("inf") else "no limit"
            raise LaunchError(f"launch.slurm.{key} / {flag} {value} exceeds partition {name!r}: it has {shown} {what}, "
                              "so SLURM would keep every job pending forever; lower the setting or pick another "
                              "partition")
    raise LaunchError(f"no node of partition {name!r} has all of {', '.join(f'{f} {v}' for _, f, v, _, _ in checks)} "
                      "at once (each is available on some node, never together), so SLURM would keep every job "
                      "pending forever; lower a setting or pick another partition")


def launch(root: Path, targets: Sequence[str] = (), overrides: dict | None = None,
           progress_stream=sys.stderr) -> LaunchResult:
    """Run the stale stages of the workspace at ``root`` as parallel jobs, then (``finish``) let
    ``dvc repro`` in the workspace restore every output from the run-cache.

    Args:
        root: the workspace (a git + DVC repository with at least one commit).
        targets: stage names or addresses to run with their upstream (default: the whole DAG).
        overrides: settings over params.yaml's ``launch:`` (executor, workers, remote,
            finish).

    Returns:
        :class:`LaunchResult`. A failed stage does not stop stages that do not depend on it.

    Raises:
        LaunchError: another launcher runs here, uncommitted edits, bad settings, or the final
            workspace ``dvc repro`` failed.
        KeyboardInterrupt: after stopping every running job and removing the worktrees (the
            workspace itself is not written by jobs, so nothing half-written is left in it).
    """
    root = Path(root).resolve()
    cfg = load_settings(root, overrides or {})
    with WorkspaceLock(root):
        commit = check_workspace(root, output_paths(root))
        jobs = plan(root, targets)
        workers, threads = cfg["workers"], cfg["threads"]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cfg["executor"] == "slurm":
            check_partition(cfg["slurm"], any(j.kind in cfg["slurm"]["gpu_stages"] for j in jobs.values())
                            and cfg["slurm"]["gpus_per_job"] > 0)
            if cfg["slurm"]["cpus_per_job"] < threads:
                raise LaunchError(f"launch.slurm.cpus_per_job {cfg['slurm']['cpus_per_job']} is below compute.threads "
                                  f"{threads}: give each job at least as many CPUs as the torch threads it runs")
        elif workers * threads > cores:
            fit = max(cores // threads, 1)
            progress_stream.write(f"[rga-launch] {workers} workers x compute.threads {threads} > {cores} cores: "
                                  f"running {fit} job(s) at a time (compute.threads is tracked, so it is not lowered)\n")
            workers = fit
        remote = cfg["remote"]
        logs = root / LAUNCH_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if cfg["executor"] == "local":
            gpus = _visible_gpus()
            if gpus and workers > len(gpus):
                progress_stream.write(f"[rga-launch] warning: {workers} workers share {len(gpus)} GPU(s); "
                                      "workers i and i + n use the same GPU\n")
            executor = LocalExecutor(workers, gpus)
        else:
            executor = SubmititExecutor(root / LAUNCH_DIR / "submitit",
                                        "slurm" if cfg["executor"] == "slurm" else "local", workers, cfg["slurm"])
        cache = cache_dir(root)
        shared_group = dvc_config(root, "cache.shared") == "group"
        if remote:
            check_remote(root, remote)
            _dvc(root, ["push", "-r", remote], "push the workspace's data to the remote")
        result = _schedule(root, commit, jobs, executor, workers, cache, remote, shared_group, logs,
                           Progress(len(jobs), workers, progress_stream))
        if cfg["finish"] and (result.done or not jobs):
            # with failures, the stages that did finish are still brought into the workspace
            result.workspace_ran = finish(root, list(targets) if not result.failed else result.done, remote,
                                          rerun=[n for n in result.done if jobs[n].cacheable])
            result.finished_workspace = True
        return result


def _dvc(root: Path, args: list[str], what: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"could not {what}: dvc {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def check_remote(root: Path, remote: str) -> None:
    """A remote for clusters without a shared file system must exist and be the default one:
    ``dvc repro --pull`` (in the jobs and the final workspace step) reads the default remote.

    Raises:
        LaunchError: unknown remote (lists the configured ones) or not the default.
    """
    listed = subprocess.run(["dvc", "remote", "list"], cwd=root, capture_output=True, text=True).stdout
    names = [ln.split()[0] for ln in listed.splitlines() if ln.strip()]
    if remote not in names:
        raise LaunchError(f"unknown DVC remote {remote!r} (--remote / launch.remote); configured remotes: "
                          f"{', '.join(names) or 'none'} (add one: dvc remote add -d NAME URL)")
    default = dvc_config(root, "core.remote")
    if default != remote:
        raise LaunchError(f"DVC remote {remote!r} must be the default remote (it is {default or 'unset'}): "
                          f"dvc repro --pull reads the default; run `dvc remote default {remote}`")


def without_entries(lock_text: str, stages: set[str]) -> str:
    """``lock_text`` (a dvc.lock) without the entries of ``stages``.

    Why: when a stage's dependencies still match its dvc.lock entry but its outputs are missing,
    DVC restores the outputs the entry names and, if the cache lacks them, runs the stage again;
    it consults the run-cache only for a stage without a matching entry. A stage this launch
    re-runs can produce other bytes than the entry names (torch's results depend on the thread
    count), so the jobs and the final ``dvc repro`` must find it through the run-cache.
    """
    lock = yaml.safe_load(lock_text) or {}
    entries = lock.get("stages") or {}
    if not set(entries) & stages:
        return lock_text
    lock["stages"] = {k: v for k, v in entries.items() if k not in stages}
    return yaml.safe_dump(lock, sort_keys=False)


def finish(root: Path, targets: Sequence[str] = (), remote: str = "", rerun: Sequence[str] = ()) -> list[str]:
    """``dvc repro`` in the workspace after the jobs: every stage is restored from the run-cache.

    The dvc.lock entries of the stages the jobs ran (``rerun``) are dropped first (see
    :func:`without_entries`); DVC writes them anew, and afterwards the entries are put back in
    the file's original order so that dvc.lock diffs show changed values, not moved entries.

    Returns:
        the stages that DVC still ran there (empty when every job's result was restored).

    Raises:
        LaunchError: the ``dvc repro`` failed.
    """
    from dvc.utils.serialize import modify_yaml

    lock_path = root / "dvc.lock"
    order: list[str] = []
    if lock_path.exists() and rerun:
        with modify_yaml(str(lock_path)) as lock:
            entries = lock.get("stages") or {}
            order = list(entries)
            for name in rerun:
                entries.pop(name, None)
    out = _dvc(root, ["repro", *(["--pull"] if remote else []), *targets], "restore the results in the workspace")
    if order and lock_path.exists():
        with modify_yaml(str(lock_path)) as lock:
            entries = lock["stages"]
            rank = {name: i for i, name in enumerate(order)}
            names = sorted(entries, key=lambda n: (rank.get(n, len(rank)), list(entries).index(n)))
            items = [(n, entries[n]) for n in names]
            for n in list(entries):
                del entries[n]
            for n, v in items:
                entries[n] = v
    return [ln.split("'")[1] for ln in out.splitlines() if ln.startswith("Running stage '")]


def _pick(ready: list[Job], have: set[str]) -> Job:
    """The next job for a worker whose worktree already holds the stages in ``have``: the one
    on the longest remaining chain of stages (critical path first, so that no long chain is left
    to run alone at the end while other workers idle), then the one sharing most of its upstream
    stages with ``have`` (nothing to restore), then the one most other stale stages wait for,
    then by name."""
    return max(ready, key=lambda j: (j.height, len((j.upstream | set(j.restore)) & have), j.priority,
                                     [-ord(c) for c in j.name]))


def _schedule(root, commit, jobs, executor, workers, cache, remote, shared_group, logs, progress):
    """Run ``jobs`` in dependency order, at most ``workers`` at a time (stages DVC cannot
    run-cache: one at a time in the workspace).

    Local workers keep one worktree each for the whole launch (``.dvc/tmp/launch/workers/<i>``):
    a job runs in a worktree no other running job uses, and a worker's next job finds the
    upstream outputs its previous jobs restored (the scheduler prefers such a job), so DVC
    restores nothing twice. Submitted (submitit) jobs get a fresh worktree each
    (``.dvc/tmp/launch/jobs/<stage>``), since a SLURM job may land on any node.
    """
    pending = set(jobs)
    running: dict[str, Job] = {}
    done: set[str] = set()
    failed: dict[str, Path] = {}
    skipped: set[str] = set()
    workspace_busy = [None]  # the persist stage running in the workspace, if any
    slots = list(range(workers))
    per_worker = isinstance(executor, LocalExecutor)
    worker_dirs: dict[int, Path] = {}
    worker_have: dict[int, set[str]] = {i: set() for i in range(workers)}
    lock_path = root / "dvc.lock"
    # one snapshot of the workspace's dvc.lock, taken again only when a workspace stage has
    # finished writing it (never read while DVC writes it in place)
    rerun = {n for n, j in jobs.items() if j.cacheable}
    snapshot = [without_entries(lock_path.read_text(), rerun) if lock_path.exists() else None]

    def start(job: Job, slot: int) -> None:
        job.log = logs / f"{job.name}.log"
        job.log.write_text("")
        job.started = time.time()
        job.slot = slot
        gpu = executor.gpu_for(slot) if per_worker else None
        if not job.cacheable:  # runs in the workspace itself (its persist outputs stay there)
            env = job_env(root, root, gpu)
            with open(job.log, "ab") as out:
                job.handle = subprocess.Popen(["dvc", "repro", *(["--pull"] if remote else []), job.name], cwd=root,
                                              env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            workspace_busy[0] = job.name
            return
        if per_worker:
            if slot not in worker_dirs:
                work = root / LAUNCH_DIR / "workers" / str(slot)
                worker_dirs[slot] = work  # registered first: a half-made worktree is removed too
                prepare_worktree(root, commit, work, cache, remote, shared_group, snapshot[0])
            job.workdir = worker_dirs[slot]
            refresh_lock(snapshot[0], job.workdir, job.restore)
        else:
            job.workdir = root / LAUNCH_DIR / "jobs" / job.name.replace("@", "_at_")
            prepare_worktree(root, commit, job.workdir, cache, remote, shared_group, snapshot[0])
        copy_outputs(root, job.workdir, job.copy_outs)
        if per_worker:
            job.handle = executor.submit(job, job_command(job, remote), job.workdir,
                                         job_env(root, job.workdir, gpu), job.log)
        else:
            job.handle = executor.submit(job, job_command(job, remote), job.workdir,
                                         job_overrides(job.workdir, None), job.log)

    def poll(job: Job) -> int | None:
        if not job.cacheable or per_worker:
            return job.handle.poll()
        return executor.poll(job.handle, job.log)

    def stop(job: Job) -> None:
        if job.handle is None:
            return
        if not job.cacheable or per_worker:
            LocalExecutor.cancel(job.handle)
        else:
            executor.cancel(job.handle)

    def cleanup() -> None:
        for job in running.values():
            if job.workdir and not per_worker:
                remove_worktree(root, job.workdir)
        for work in worker_dirs.values():
            remove_worktree(root, work)
        worker_dirs.clear()

    def finished(job: Job, rc: int) -> None:
        job.seconds = time.time() - job.started
        slots.append(job.slot)
        slots.sort()
        if not job.cacheable:
            workspace_busy[0] = None
            snapshot[0] = without_entries(lock_path.read_text(), rerun) if lock_path.exists() else None
            if rc == 0 and remote:  # its outputs reach later jobs through the remote
                with open(job.log, "ab") as out:
                    rc = subprocess.call(["dvc", "push", "-r", remote, job.name], cwd=root, stdout=out,
                                         stderr=subprocess.STDOUT)
        else:
            if rc == 0:
                worker_have[job.slot] |= {job.name} | job.upstream | set(job.restore)
            if not per_worker and job.workdir:
                remove_worktree(root, job.workdir)
        if rc == 0:
            done.add(job.name)
            progress.note(f"[rga-launch] done {job.name} in {_fmt_seconds(job.seconds)}")
        else:
            failed[job.name] = job.log
            progress.note(f"[rga-launch] FAILED {job.name} (exit {rc}); log: {job.log}")

    try:
        while pending or running:
            for name in sorted(pending):  # stages whose upstream failed will not run
                if jobs[name].upstream & (set(failed) | skipped):
                    pending.discard(name)
                    skipped.add(name)
            ready = [jobs[n] for n in pending if jobs[n].upstream <= done]
            if workspace_busy[0] is not None:  # one workspace stage at a time; jobs meanwhile
                ready = [j for j in ready if j.cacheable]
            while slots and ready:
                slot = slots.pop(0)
                job = _pick(ready, worker_have[slot])
                ready.remove(job)
                if not job.cacheable:
                    ready = [j for j in ready if j.cacheable]
                pending.discard(job.name)
                try:
                    start(job, slot)
                except Exception as err:  # noqa: BLE001 - e.g. sbatch refused it, git worktree failed
                    with open(job.log, "a") as out:
                        out.write(f"[rga-launch] could not start {job.name}: {err}\n")
                    finished(job, 1)
                    continue
                running[job.name] = job
                where = " (in the workspace)" if not job.cacheable else ""
                progress.note(f"[rga-launch] started {job.name}{where}")
            progress.update(jobs, done, running, failed, skipped, pending)
            time.sleep(0.1)  # a finished job's worker idles until the next poll
            for name, job in list(running.items()):
                rc = poll(job)
                if rc is not None:
                    del running[name]
                    finished(job, rc)
            progress.update(jobs, done, running, failed, skipped, pending)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            progress.note(f"[rga-launch] interrupted: stopping {len(running)} running job(s)")
        for job in running.values():
            stop(job)
        cleanup()
        if isinstance(err, KeyboardInterrupt):
            progress.note(f"[rga-launch] {len(done)} stage(s) finished and are in the run-cache; run rga-launch "
                          "again to go on")
        raise
    cleanup()
    progress.update(jobs, done, running, failed, skipped, pending, final=True)
    return LaunchResult(sorted(done), failed, sorted(skipped))


# --------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    """``rga-launch`` command line (see ``rga-launch --help``); returns the exit code: 0 done,
    1 some stage failed, 2 refused (bad settings, uncommitted edits, another launcher), 130
    interrupted."""
    p = argparse.ArgumentParser(
        prog="rga-launch",
        description="Run the DVC pipeline's stale stages in parallel (local workers, SLURM through submitit) "
                    "over one DVC cache; then `dvc repro` restores everything from the run-cache.")
    p.add_argument("targets", nargs="*", help="stage names or addresses (default: the whole pipeline)")
    p.add_argument("--executor", choices=EXECUTORS, help="default: launch.executor in params.yaml (local)")
    p.add_argument("--workers", "-j", type=int, help="jobs at a time (default: launch.workers, 2)")
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # gone: compute.threads (refused with the reason)
    p.add_argument("--remote", help="DVC remote for clusters without a shared file system")
    s = p.add_argument_group("SLURM (over launch.slurm in params.yaml)")
    s.add_argument("--partition", help="partition (default: the cluster's default partition)")
    s.add_argument("--account", help="account to charge")
    s.add_argument("--cpus-per-job", type=int, help="CPUs per job (at least compute.threads)")
    s.add_argument("--mem-gb", type=int, help="memory per job, GB")
    s.add_argument("--gpus-per-job", type=int, help="GPUs per job for the stages in launch.slurm.gpu_stages (0: none)")
    s.add_argument("--time-min", type=int, help="time limit per job, minutes")
    s.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="another sbatch option, e.g. --sbatch qos=high --sbatch constraint=h100 (repeatable)")
    p.add_argument("--no-finish", dest="finish", action="store_false", default=None,
                   help="do not run `dvc repro` in the workspace afterwards")
    p.add_argument("--dry", action="store_true", help="list the stale stages and exit")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--restore", action="append", default=[], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.job:
        return run_job(a.job, a.restore, a.remote or "")
    from dvc.exceptions import DvcException

    def _terminate(signum, frame):  # SIGTERM/SIGHUP (e.g. a closed terminal) stop the jobs as Ctrl-C does
        raise KeyboardInterrupt

    # Ctrl-C works even where the launcher was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that); SIGTERM stops it the same way; SIGHUP too, unless it
    # is ignored on purpose (`nohup rga-launch ...`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _terminate)
    try:
        root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                   check=True).stdout.strip())
    except subprocess.CalledProcessError:
        print(f"rga-launch: {Path.cwd()} is not inside a git repository", file=sys.stderr)
        return 2
    try:
        if a.dry:
            jobs = plan(root, a.targets)
            for name in sorted(jobs, key=lambda n: (len(jobs[n].upstream), n)):
                print(name)
            print(f"{len(jobs)} stale stage(s)", file=sys.stderr)
            return 0
        bad = [kv for kv in a.sbatch if "=" not in kv or not kv.split("=", 1)[0]]
        if bad:
            raise LaunchError(f"--sbatch takes KEY=VALUE (e.g. --sbatch qos=high), got {bad}")
        slurm = {"partition": a.partition, "account": a.account, "cpus_per_job": a.cpus_per_job, "mem_gb": a.mem_gb,
                 "gpus_per_job": a.gpus_per_job, "time_min": a.time_min,
                 "extra": dict(kv.split("=", 1) for kv in a.sbatch) or None}
        overrides = {"executor": a.executor, "workers": a.workers, "threads": a.threads, "remote": a.remote,
                     "finish": a.finish, "slurm": slurm}
        res = launch(root, a.targets, overrides)
    except LaunchError as err:
        print(f"rga-launch: {err}", file=sys.stderr)
        return 2
    except DvcException as err:
        print(f"rga-launch: DVC cannot read this pipeline: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for name, log in res.failed.items():
        print(f"rga-launch: stage {name} failed; log: {log}", file=sys.stderr)
    if res.skipped:
        print(f"rga-launch: {len(res.skipped)} stage(s) not run because a stage they depend on failed: "
              + ", ".join(res.skipped), file=sys.stderr)
    if res.finished_workspace:
        extra = f" (DVC still ran {', '.join(res.workspace_ran)} there)" if res.workspace_ran else ""
        print(f"rga-launch: {len(res.done)} stage(s) done and restored in the workspace{extra}", file=sys.stderr)
    if res.failed:
        print("rga-launch: fix the cause and run rga-launch again; finished stages are restored from the "
              "run-cache, only the failed ones and what depends on them run again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
