"""The scale-out launcher (`rga-launch`, src/rga/launch.py).

Two kinds of repositories, both temporary git + DVC repositories:

* a toy pipeline of plain Python one-liners (no model; seconds), for the workspace lock,
  Ctrl-C, uncommitted edits, the stale-stage plan and the settings;
* this project's pipeline on the tiny profile (attack BadNets, methods GA and NPO), for the
  results: a launch matches a serial `dvc repro` byte for byte, a failing cell does not stop the
  others and a second launch runs only what failed, the submitit path with a DVC remote instead
  of a shared cache, and a `dvc exp run --queue` sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rga.launch import LaunchError, Progress, Job, WorkspaceLock, _pick, load_settings, plan, rank
from tinyrepo import GIT_ID, env_for, make_tiny_repo, run, scratch_dir

pytestmark = pytest.mark.e2e

TOY_DVC = textwrap.dedent("""\
    stages:
      make:
        foreach: [a, b]
        do:
          cmd: python step.py make ${item}
          deps: [step.py]
          params: [factor, wait]
          outs:
            - out/${item}.txt
            - info/${item}.json:
                cache: false
      combine:
        cmd: python step.py combine
        deps: [step.py, out]
        outs: [total.txt]
    """)

TOY_STEP = textwrap.dedent("""\
    import json, os, sys, time, yaml
    p = yaml.safe_load(open("params.yaml"))
    if sys.argv[1] == "make":
        name = sys.argv[2]
        open(f"started-{name}.pid", "w").write(str(os.getpid())) if p["wait"] else None
        time.sleep(p["wait"])
        os.makedirs("out", exist_ok=True); os.makedirs("info", exist_ok=True)
        open(f"out/{name}.txt", "w").write(str(p["factor"] * len(name)))
        json.dump({"name": name, "factor": p["factor"]}, open(f"info/{name}.json", "w"))
    else:
        total = sum(int(open(f"out/{n}").read()) for n in sorted(os.listdir("out")) if n.endswith(".txt"))
        open("total.txt", "w").write(str(total))
    """)


def _toy_env(tmp: Path) -> dict:
    env = env_for(tmp)  # the mirror is unused here
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture()
def toy(tmp_path) -> tuple[Path, dict]:
    """A committed toy pipeline: make@a, make@b (factor, wait params) -> combine."""
    root = tmp_path / "toy"
    root.mkdir()
    (root / "dvc.yaml").write_text(TOY_DVC)
    (root / "step.py").write_text(TOY_STEP)
    (root / "params.yaml").write_text("factor: 2\nwait: 0\n")
    env = _toy_env(tmp_path)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", *GIT_ID, "commit", "-qm", "toy"], root, env)
    return root, env


def launch_cli(root: Path, env: dict, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "rga.launch", *args], root, env, check=check)


def test_toy_launch_carries_params_and_restores_everything(toy):
    root, env = toy
    params = root / "params.yaml"
    params.write_text("factor: 5\nwait: 0\n")  # uncommitted: goes into every job
    proc = launch_cli(root, env, "--workers", "2", check=True)
    assert (root / "total.txt").read_text() == "10"  # 5*1 + 5*1
    assert json.loads((root / "info" / "a.json").read_text()) == {"name": "a", "factor": 5}
    assert "3/3 done" in proc.stderr
    assert "DVC still ran" not in proc.stderr  # the final dvc repro restored all three stages
    combine_log = (root / ".dvc" / "tmp" / "launch" / "logs" / "combine.log").read_text()
    assert "Running stage 'make@" not in combine_log  # combine waited: its upstream came ready-made
    assert "Running stage 'combine'" in combine_log
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    assert run(["git", "worktree", "list"], root, env).stdout.count("\n") == 1  # job worktrees removed
    # nothing is stale now; a changed param makes both make cells and combine stale again
    assert plan(root) == {}
    params.write_text("factor: 7\nwait: 0\n")
    jobs = plan(root)
    assert sorted(jobs) == ["combine", "make@a", "make@b"]
    assert jobs["combine"].upstream == {"make@a", "make@b"}
    assert [(jobs[n].height, jobs[n].priority) for n in ("make@a", "make@b", "combine")] == [(2, 1), (2, 1), (1, 0)]
    assert sorted(plan(root, ["make@a"])) == ["make@a"]
    with pytest.raises(LaunchError, match=r"unknown target 'nope'; stages: combine, make"):
        plan(root, ["nope"])


def test_uncommitted_code_is_refused_and_a_second_launcher_too(toy):
    root, env = toy
    (root / "step.py").write_text(TOY_STEP + "\n# edited\n")
    proc = launch_cli(root, env)
    assert proc.returncode == 2
    assert "uncommitted changes the jobs would not see: step.py" in proc.stderr
    run(["git", "checkout", "step.py"], root, env)
    with WorkspaceLock(root):
        proc = launch_cli(root, env)
    assert proc.returncode == 2
    assert f"another rga-launch (pid {os.getpid()}) is running on this workspace" in proc.stderr


def test_ctrl_c_stops_the_jobs_and_writes_nothing_into_the_workspace(toy):
    root, env = toy
    (root / "params.yaml").write_text("factor: 2\nwait: 120\n")
    proc = subprocess.Popen([sys.executable, "-m", "rga.launch", "--workers", "2"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    launch_dir = root / ".dvc" / "tmp" / "launch"
    deadline = time.time() + 90
    pids = []
    while time.time() < deadline and len(pids) < 2:  # both make jobs are sleeping
        pids = [int(p.read_text()) for p in launch_dir.glob("workers/*/started-*.pid") if p.read_text()]
        time.sleep(0.5)
    assert len(pids) == 2, "the two make jobs did not start"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: stopping 2 running job(s)" in err
    for pid in pids:  # the stage processes are gone (or zombies waiting for a reaper)
        assert _gone(pid), f"stage process {pid} still runs"
    assert not (root / "out").exists() and not (root / "info").exists() and not (root / "total.txt").exists()
    assert not any((launch_dir / "workers").iterdir())  # the worker worktrees are gone
    assert run(["git", "worktree", "list"], root, env).stdout.count("\n") == 1


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_settings_are_checked(tmp_path):
    (tmp_path / "params.yaml").write_text("launch:\n  workers: 3\n  wrokers: 2\n")
    with pytest.raises(LaunchError, match=r"unknown key\(s\) \['launch.wrokers'\]; valid keys: launch.executor"):
        load_settings(tmp_path, {})
    (tmp_path / "params.yaml").write_text("compute: {threads: 4}\nlaunch:\n  workers: 3\n  slurm: {partition: gpu}\n")
    cfg = load_settings(tmp_path, {})
    assert (cfg["workers"], cfg["threads"], cfg["slurm"]["partition"], cfg["slurm"]["mem_gb"]) == (3, 4, "gpu", 64)
    # torch threads are the tracked compute.threads, never a launcher setting
    with pytest.raises(LaunchError, match="launch.threads / --threads is gone: torch threads per job are compute.threads"):
        load_settings(tmp_path, {"threads": 1})
    (tmp_path / "params.yaml").write_text("compute: {threads: 0}\nlaunch:\n  workers: 3\n")
    with pytest.raises(LaunchError, match=r"compute.threads must be an integer >= 1 .*got 0"):
        load_settings(tmp_path, {})
    with pytest.raises(LaunchError, match=r"unknown executor 'pbs'.*valid choices: local, slurm, submitit-local"):
        load_settings(tmp_path, {"executor": "pbs"})
    with pytest.raises(LaunchError, match="positive integer, got 0"):
        load_settings(tmp_path, {"workers": 0})


def test_job_environment_gpus_and_slurm_requests(tmp_path, monkeypatch):
    from rga.launch import LocalExecutor, SubmititExecutor, _visible_gpus, job_overrides

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("RGA_DATA_MIRROR", "../shared/data")
    ex = LocalExecutor(3, _visible_gpus())
    assert [ex.gpu_for(i) for i in range(3)] == ["2", "3", "2"]  # the physical GPUs this process may use
    env = job_overrides(tmp_path / "w", ex.gpu_for(1))
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    # no thread variables: the stage takes compute.threads from params.yaml, as in a serial run
    assert not {"RGA_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"} & set(env)
    assert env["RGA_DATA_MIRROR"] == str(Path("../shared/data").resolve())
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "w" / "src")

    import submitit

    # no SLURM here: let submitit build its sbatch parameters as on a cluster (nothing is submitted)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    (tmp_path / "params.yaml").write_text("compute: {threads: 2}\n")
    cfg = load_settings(tmp_path, {})["slurm"] | {"partition": "gpu", "mem_gb": 96, "extra": {"qos": "high"}}
    sub = SubmititExecutor(tmp_path / "submitit", "slurm", 4, cfg)
    unlearn = sub._executor(Job("unlearn@m-d-a-0-rga", "unlearn"))._executor.parameters
    attack = sub._executor(Job("attack@d-a-0", "attack"))._executor.parameters
    assert (unlearn["partition"], unlearn["mem"], unlearn["cpus_per_task"], unlearn["time"]) == ("gpu", "96G", 8, 240)
    assert unlearn["gpus_per_node"] == 1 and unlearn["additional_parameters"] == {"qos": "high"}
    assert "gpus_per_node" not in attack  # a stage without a model asks for no GPU


def test_the_scheduler_starts_the_critical_path_first():
    # the default DAG's shape: attack -> finetune -> detect -> unlearn x2 -> report, for cells a
    # and b; cell a is ahead (its unlearn cells are ready), cell b's finetune is ready too
    def chain(cell):
        return [Job(f"finetune@{cell}", "finetune", {f"attack@{cell}"}),
                Job(f"detect@{cell}", "detect", {f"attack@{cell}", f"finetune@{cell}"})] + [
            Job(f"unlearn@{cell}-{m}", "unlearn", {f"attack@{cell}", f"finetune@{cell}", f"detect@{cell}"})
            for m in ("ga", "rga")]
    jobs = {j.name: j for j in chain("a") + chain("b")}
    jobs["report"] = Job("report", "report", {n for n in jobs})
    rank(jobs)
    assert [jobs[n].height for n in ("finetune@b", "detect@b", "unlearn@b-ga", "report")] == [4, 3, 2, 1]
    ready = [jobs["unlearn@a-ga"], jobs["unlearn@a-rga"], jobs["finetune@b"]]
    have = {"attack@a", "finetune@a", "detect@a"}  # this worker's worktree already holds cell a
    assert _pick(ready, have).name == "finetune@b"  # the longer chain beats the worktree's affinity
    assert _pick(ready[:2], have).name == "unlearn@a-ga"  # equal heights: affinity, then name
    assert _pick([jobs["unlearn@b-rga"], jobs["unlearn@a-rga"]], have).name == "unlearn@a-rga"


def test_progress_line_counts_and_eta():
    import io

    jobs = {n: Job(n, n.split("@")[0]) for n in ("finetune@x", "finetune@y", "unlearn@x", "unlearn@y")}
    jobs["finetune@x"].seconds = 100.0
    jobs["unlearn@x"].seconds = 40.0
    jobs["finetune@y"].started = time.time() - 30  # running for 30 s of an expected 100
    out = io.StringIO()
    prog = Progress(total=4, workers=2, stream=out)
    prog.update(jobs, {"finetune@x", "unlearn@x"}, {"finetune@y"}, {}, set(), {"unlearn@y"})
    line = out.getvalue().strip()
    assert line.startswith("[rga-launch] 2/4 done · 1 running · 0 failed · 1 left")
    assert line.endswith("ETA 0m55s")  # (70 s left of finetune@y + 40 s of unlearn@y) / 2 workers


# --------------------------------------------------------------------------- the tiny rga pipeline

GA, NPO = "unlearn@minilm-sst2-badnets-0-ga", "unlearn@minilm-sst2-badnets-0-npo"


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory, mirror) -> Iterator[tuple[Path, dict]]:
    """The tiny pipeline (BadNets; GA and NPO), committed, then reproduced serially; the tiny
    profile's compute.threads (1) is what both the serial run and every launched job use."""
    with scratch_dir(request, tmp_path_factory, "launch") as base:
        yield build_reference(base / "serial", mirror)


def build_reference(root: Path, mirror: Path) -> tuple[Path, dict]:
    """Build :func:`reference` at ``root``; returns it and the environment its commands ran with."""
    env = make_tiny_repo(root, mirror)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["matrix"].update(attacks=["badnets"], methods=["ga", "npo"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], root, env)
    run(["git", *GIT_ID, "commit", "-qm", "tiny pipeline"], root, env)
    assert params["compute"]["threads"] == 1
    run(["dvc", "repro"], root, env)
    return root, env


def clone_of(reference: Path, dest: Path, env: dict) -> Path:
    run(["git", "clone", "-q", str(reference), str(dest)], dest.parent, env)
    run(["dvc", "config", "--local", "core.analytics", "false"], dest, env)
    return dest


def result_files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for sub in ("metrics", "report")
            for f in sorted((root / sub).rglob("*")) if f.is_file()}


def lock_without_timings(root: Path) -> dict:
    """dvc.lock minus the hashes of history.csv files and the folders holding them (their
    ``seconds`` column is wall time)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for entry in lock["stages"].values():
        for kind in ("deps", "outs"):
            for item in entry.get(kind, []):
                if item["path"].endswith("history.csv") or item["path"] in ("plots/unlearn",):
                    item.pop("md5", None)
                    item.pop("size", None)
    return lock


def test_a_failing_cell_does_not_stop_the_others_and_a_relaunch_matches_serial(reference, tmp_path):
    ref, env = reference
    root = clone_of(ref, tmp_path / "launched", env)
    # a committed dvc.lock whose outputs this clone's cache lacks (as after `git clone`): DVC
    # must find the jobs' results through the run-cache, not by the entries' hashes
    shutil.copy2(ref / "dvc.lock", root / "dvc.lock")
    run(["git", "add", "dvc.lock"], root, env)
    run(["git", *GIT_ID, "commit", "-qm", "a lock from elsewhere"], root, env)
    params = root / "params.yaml"
    good = params.read_text()
    params.write_text(good.replace("npo:\n  beta: 1.0", "npo:\n  beta: -1.0"))  # a bad param for one method
    proc = launch_cli(root, env, "--workers", "2")
    assert proc.returncode == 1
    assert "DVC still ran" not in proc.stderr
    logs = root / ".dvc" / "tmp" / "launch" / "logs"
    ran = [ln for f in logs.glob("*.log") for ln in f.read_text().splitlines() if ln.startswith("Running stage")]
    assert len(ran) == len(set(ran)), "a stage ran twice: a job recomputed its upstream"
    log = root / ".dvc" / "tmp" / "launch" / "logs" / f"{NPO}.log"
    assert f"stage {NPO} failed; log: {log}" in proc.stderr
    assert "npo.beta must be > 0, got -1.0" in log.read_text()
    assert "1 stage(s) not run because a stage they depend on failed: report" in proc.stderr
    # the independent cells finished and are in the workspace already
    assert (root / "metrics" / "unlearn" / "minilm-sst2-badnets-0-ga.json").read_bytes() == \
        (ref / "metrics" / "unlearn" / "minilm-sst2-badnets-0-ga.json").read_bytes()

    params.write_text(good)
    proc = launch_cli(root, env, "--workers", "2", check=True)
    started = sorted(ln.split()[2] for ln in proc.stderr.splitlines() if ln.startswith("[rga-launch] started"))
    assert started == sorted([NPO, "report"])  # everything else came from the first launch
    assert "DVC still ran" not in proc.stderr
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    assert run(["dvc", "status", "-q"], root, env, check=False).returncode == 0
    assert result_files(root) == result_files(ref)
    assert lock_without_timings(root) == lock_without_timings(ref)


def test_degenerate_detection_through_the_launcher_finishes_and_is_recorded(reference, tmp_path):
    """A training set with no poisoned row (attack.poison_rate 0, a user checking a clean dataset):
    the detector flags no row, so the forget set is empty. Through rga-launch with 2 workers every
    unlearning cell is a recorded skip, the report is made and the launcher exits 0 (byte equality
    of launched and serial runs: the failing-cell test above)."""
    ref, env = reference
    root = clone_of(ref, tmp_path / "degenerate", env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["attack"]["poison_rate"] = 0.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "params.yaml"], root, env)
    run(["git", *GIT_ID, "commit", "-qm", "no poisoned row"], root, env)
    proc = launch_cli(root, env, "--workers", "2", check=True)
    assert "failed; log:" not in proc.stderr and "not run because" not in proc.stderr
    cell = "minilm-sst2-badnets-0"
    assert json.loads((root / "metrics" / "detect" / f"{cell}.json").read_text())["flagged"] == 0
    for m in ("ga", "npo"):
        res = json.loads((root / "metrics" / "unlearn" / f"{cell}-{m}.json").read_text())
        assert (res["status"], res["forget_rows"], res["retain_rows"], res["pacc"]) == ("skipped", 0, 240, None)
        assert res["reason"].startswith(f"cell {cell}: the detected forget set is empty (detection flagged 0 of 240")
    table = (root / "report" / "table.md").read_text()
    assert "‡ | 0 of 1 |" in table and "not run (status: skipped" in table
    summary = json.loads((root / "metrics" / "summary.json").read_text())["minilm-sst2-badnets"]
    assert summary["ga"]["delta_pacc"] is None and summary["ga"]["seeds_run"] == 0
    assert run(["dvc", "status", "-q"], root, env, check=False).returncode == 0


def test_a_launch_on_a_real_slurm_cluster_matches_the_serial_run(reference, slurm_cluster, tmp_path):
    """rga-launch --executor slurm against real slurmctld/slurmd/slurmdbd (scripts/slurm-cluster.sh):
    a request no node can meet is refused before anything is submitted; a fitting one runs every
    stage as a SLURM job, and the workspace equals the serial run byte for byte."""
    ref, env = reference
    env = dict(env, SLURM_CONF=str(slurm_cluster))
    root = clone_of(ref, tmp_path / "slurm", env)
    # launch.slurm's defaults (8 CPUs, 64 GB, a GPU per model stage) on a 2-core node without GPUs
    proc = launch_cli(root, env, "--executor", "slurm", "--workers", "2")
    assert proc.returncode == 2
    cpus = int(run(["sinfo", "-h", "-o", "%c"], root, env).stdout.split()[0])
    if cpus < 8:
        assert (f"rga-launch: launch.slurm.cpus_per_job / --cpus-per-job 8 exceeds partition 'debug': it has {cpus} "
                "CPUs per node, so SLURM would keep every job pending forever") in proc.stderr, proc.stderr
    else:
        assert "launch.slurm.gpus_per_job / --gpus-per-job 1 exceeds partition 'debug': it has 0 GPUs" in proc.stderr
    proc = launch_cli(root, env, "--executor", "slurm", "--cpus-per-job", "1", "--gpus-per-job", "0", "--mem-gb", "100000")
    assert proc.returncode == 2 and "launch.slurm.mem_gb / --mem-gb 100000 exceeds partition 'debug'" in proc.stderr
    assert run(["squeue", "-h"], root, env).stdout.strip() == ""  # nothing was submitted
    proc = launch_cli(root, env, "--executor", "slurm", "--workers", "2", "--cpus-per-job", "1", "--mem-gb", "4",
                      "--gpus-per-job", "0", "--time-min", "30", "--sbatch", "comment=rga-test", check=True)
    assert "DVC still ran" not in proc.stderr
    states = run(["sacct", "-n", "-X", "-o", "JobName%60,State", "--starttime", "now-1hour"], root, env).stdout
    names = [ln.split()[0] for ln in states.splitlines() if "COMPLETED" in ln]
    assert "rga-report" in names and any(n.startswith("rga-unlearn@") for n in names), states
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    assert result_files(root) == result_files(ref)
    assert lock_without_timings(root) == lock_without_timings(ref)


def test_submitit_jobs_through_a_dvc_remote(reference, tmp_path):
    ref, env = reference
    root = clone_of(ref, tmp_path / "remote-user", env)
    store = tmp_path / "store"
    run(["dvc", "remote", "add", "--local", "-d", "store", str(store)], root, env)
    run(["dvc", "remote", "add", "--local", "aaa-unused", str(tmp_path / "unused")], root, env)
    proc = launch_cli(root, env, "--executor", "submitit-local", "--remote", "store", "--workers", "2",
                      GA, check=True)
    assert "6 stage(s) done and restored in the workspace" in proc.stderr
    assert "DVC still ran" not in proc.stderr
    assert any((root / ".dvc" / "tmp" / "launch" / "submitit").glob("*_submitted.pkl"))
    assert list((store / "runs").rglob("*"))  # the run-cache went through the remote
    assert "Running stage" not in run(["dvc", "repro", GA], root, env).stdout
    for rel in ("metrics/unlearn/minilm-sst2-badnets-0-ga.json", "metrics/poisoned/minilm-sst2-badnets-0.json"):
        assert (root / rel).read_bytes() == (ref / rel).read_bytes()
    # without a default remote the launcher refuses before running anything
    run(["dvc", "remote", "default", "--local", "--unset"], root, env)
    proc = launch_cli(root, env, "--remote", "store", NPO)
    assert proc.returncode == 2 and "must be the default remote" in proc.stderr


def test_parameter_sweep_through_the_dvc_queue(reference, tmp_path):
    ref, env = reference
    root = clone_of(ref, tmp_path / "sweep", env)
    shutil.copytree(ref / ".dvc" / "cache", root / ".dvc" / "cache")  # the serial run's results, committed
    shutil.copy2(ref / "dvc.lock", root / "dvc.lock")
    for sub in ("metrics", "plots", "report"):
        shutil.copytree(ref / sub, root / sub, dirs_exist_ok=True)
    for ignore in ref.glob("[dm]*/**/.gitignore"):  # DVC's .gitignore files are part of folder hashes
        (root / ignore.relative_to(ref)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ignore, root / ignore.relative_to(ref))
    run(["dvc", "checkout", "-q"], root, env)
    assert run(["dvc", "status", "-q"], root, env, check=False).returncode == 0
    env = dict(env, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "results"], root, env)
    run(["dvc", "exp", "run", "--queue", "-S", "npo.beta=0.5,2"], root, env)
    # `dvc queue start` leaves daemon workers behind that inherit its stdout and stderr. With pipes
    # there (as `run` captures) the call would wait until the last worker exits, and one worker
    # has been seen to hang in its shutdown for many minutes after both tasks succeeded; so its
    # output goes to a file, and the workers are stopped at the end.
    with open(tmp_path / "queue-start.log", "w") as log:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True, timeout=300)
    try:
        deadline, torn, status = time.time() + 600, 0, ""
        while time.time() < deadline:
            proc = run(["dvc", "queue", "status"], root, env, check=False)
            # A running worker rewrites its executor-info JSON in place (DVC's ExecutorInfo.dump_json
            # truncates, then writes), so a status read at that instant finds an empty file and
            # fails with a JSONDecodeError (seen once in CI). That read is retried; any other
            # failure, or more than five torn reads, fails the test.
            if proc.returncode != 0:
                torn += 1
                assert "Expecting value" in proc.stderr and torn <= 5, proc.stdout + proc.stderr
                time.sleep(1)
                continue
            status = proc.stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:
        with open(tmp_path / "queue-stop.log", "w") as log:
            subprocess.run(["dvc", "queue", "stop"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                           timeout=120, check=False)
    assert status.count("Success") == 2, status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    exps = [e for rev in shown for exp in (rev.get("experiments") or []) for e in exp["revs"]]
    betas = sorted(e["data"]["params"]["params.yaml"]["data"]["npo"]["beta"] for e in exps)
    assert betas == [0.5, 2]
    for e in exps:  # the GA cell was up to date in each experiment, NPO's ran there
        logs = run(["dvc", "queue", "logs", e["name"]], root, env).stdout
        assert f"Stage '{GA}' didn't change, skipping" in logs, logs[-2000:]
        assert f"Running stage '{NPO}'" in logs
    ga = json.loads((root / "metrics" / "summary.json").read_text())["minilm-sst2-badnets"]["ga"]
    for e in exps:  # GA does not read npo.beta: its cell is the workspace's, its numbers unchanged
        m = e["data"]["metrics"]["metrics/summary.json"]["data"]["minilm-sst2-badnets"]
        assert {k: m["ga"][k] for k in ("pacc", "cacc", "delta_pacc")} == \
            {k: ga[k] for k in ("pacc", "cacc", "delta_pacc")}
        assert "npo" in m


def test_the_partition_check_needs_one_node_configuration_that_gives_everything():
    from rga.launch import _minutes, check_partition, partition_limits

    assert [_minutes(t) for t in ("infinite", "30", "05:00", "2:00:00", "1-02", "1-02:30:00", "NOT_SET")] == \
        [float("inf"), 30, 5, 120, 1560, 1590, float("inf")]
    assert partition_limits("gpu*|64|514000|gpu:a100:4(S:0-1)|2-00:00:00") == {
        "partition": "gpu", "default": True, "cpus": 64, "mem_gb": 514000 / 1024, "gpus": 4, "time_min": 2880}
    ask = {"partition": "", "cpus_per_job": 48, "mem_gb": 64, "gpus_per_job": 1, "time_min": 240}
    two_sizes = "cpu*|32|257000|(null)|infinite\ncpu*|64|514000|(null)|infinite\n"
    check_partition(ask, wants_gpu=False, sinfo=two_sizes)  # 48 CPUs fit the 64-CPU nodes
    with pytest.raises(LaunchError, match=r"--cpus-per-job 96 exceeds partition 'cpu': it has 64 CPUs per node"):
        check_partition(dict(ask, cpus_per_job=96), wants_gpu=False, sinfo=two_sizes)
    split = "gpu*|64|514000|(null)|infinite\ngpu*|8|514000|gpu:4|infinite\n"  # CPUs on one node, GPUs on another
    with pytest.raises(LaunchError, match=r"no node of partition 'gpu' has all of --cpus-per-job 32.*--gpus-per-job 1"):
        check_partition(dict(ask, cpus_per_job=32), wants_gpu=True, sinfo=split)
    with pytest.raises(LaunchError, match=r"--time-min 240 exceeds partition 'short': it has 60 minutes"):
        check_partition(dict(ask, partition="short", cpus_per_job=1), wants_gpu=False,
                        sinfo="short|8|96000|(null)|1:00:00\n" + two_sizes)
    with pytest.raises(LaunchError, match=r"--partition 'gpu2': no such partition; the cluster has cpu, short"):
        check_partition(dict(ask, partition="gpu2"), wants_gpu=False, sinfo="short|8|96000|(null)|1:00:00\n" + two_sizes)
