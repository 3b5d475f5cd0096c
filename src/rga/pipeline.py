"""Pipeline wiring shared by the thin ``stages/*.py`` entry points: cell names and paths.

Data between stages is files named by the cell, ``<model>-<dataset>-<attack>-<seed>[-<method>]``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .io import cell_name, load_params

ROOT = Path(os.environ.get("RGA_ROOT", "."))


def raw_dir(dataset: str) -> Path:
    return ROOT / "data" / "raw" / dataset


def attack_dir(dataset: str, attack: str, seed: int) -> Path:
    return ROOT / "data" / "attacks" / cell_name(dataset, attack, seed)


def poisoned_model_dir(cell: str) -> Path:
    return ROOT / "models" / "poisoned" / cell


def retrain_model_dir(model: str, dataset: str, seed: int) -> Path:
    return ROOT / "models" / "retrain" / cell_name(model, dataset, seed)


def detect_dir(cell: str) -> Path:
    return ROOT / "data" / "detect" / cell


def parse_cell(description: str, *fields: str) -> argparse.Namespace:
    """Parse ``--model/--dataset/--attack/--seed/--method`` (the requested ``fields``)."""
    p = argparse.ArgumentParser(description=description)
    for f in fields:
        p.add_argument(f"--{f}", required=True, type=int if f == "seed" else str)
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args.params_dict = load_params(args.params)
    return args


# glibc's mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
MMAP_THRESHOLD = 1 << 30  # bytes: blocks below this come from the heap and are reused after free
TRIM_THRESHOLD = 2 ** 31 - 1  # bytes: free memory at the heap's top kept before trimming (the int maximum)
TOP_PAD = 256 << 20  # bytes: extra heap grown (and kept) at each heap extension


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of returning it to the kernel.

    With glibc's defaults a block above the mmap threshold (dynamic, at most 32 MiB) is mapped
    fresh on every allocation and unmapped on free, and every 4 KiB page of it then faults on
    first touch. MiniLM's word-embedding tensors are 30,522 × 384 float32 (47 MB): every
    training step allocates several of them (the dense embedding gradient of each forward pass,
    RGA's θ − θ_base difference and its gradient), and in the profiler zero-filling them took 5%
    of an unlearning epoch (README "Performance"). This call raises the mmap threshold to
    ``MMAP_THRESHOLD`` (1 GiB), keeps up to ``TRIM_THRESHOLD`` (2 GiB) of free memory at the
    heap's top instead of trimming it, and pads heap growth by ``TOP_PAD``: freed blocks stay in
    the process and the next tensor of that size reuses them. This holds for the main thread's
    heap (torch's CPU tensors are allocated there); other threads' arenas keep glibc's limits.
    A glibc older than about 2.35 refuses thresholds above 32 MiB: mmap is then switched off
    instead (``M_MMAP_MAX`` = 0), to the same effect. Arithmetic is unchanged (the same kernels
    on the same values), so metrics are byte-identical; the cost is that the process keeps its
    peak heap until it exits (a stage is one process).

    Call it once, early, in a process that will run torch on the CPU (:func:`stage_runtime`
    does). Does nothing where the C library is not glibc, or when the environment sets
    ``RGA_MALLOC_TUNING=0``.

    Returns:
        True when the settings took effect, False when skipped or refused (a refused setting is
        logged as a warning, by name).

    Raises:
        ValueError: ``RGA_MALLOC_TUNING`` is set to something other than ``0`` or ``1``.
    """
    import ctypes
    import platform

    flag = os.environ.get("RGA_MALLOC_TUNING", "1")
    if flag not in ("0", "1"):
        raise ValueError(f"RGA_MALLOC_TUNING={flag!r}: valid values are '1' (tune glibc's allocator, the default) "
                         "and '0' (leave glibc's defaults)")
    if flag == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    log = logging.getLogger("rga")
    refused = [name for name, key, value in (("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                             ("M_TOP_PAD", M_TOP_PAD, TOP_PAD))
               if libc.mallopt(ctypes.c_int(key), ctypes.c_int(value)) != 1]
    if libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD)) != 1 and \
            libc.mallopt(ctypes.c_int(M_MMAP_MAX), ctypes.c_int(0)) != 1:
        refused.append("M_MMAP_THRESHOLD (and the fallback M_MMAP_MAX = 0)")
    if refused:
        log.warning("glibc refused mallopt %s: CPU training keeps glibc's default allocator behaviour there "
                    "(slower, same results)", ", ".join(refused))
    return not refused


COMPUTE_KEYS = ("threads", "onednn_max_isa")
# oneDNN's names for ONEDNN_MAX_CPU_ISA (its documentation, "CPU dispatcher control"); the value
# caps the instruction set, it cannot raise it above what the CPU has.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL")


def compute_settings(params: dict) -> dict:
    """The tracked ``compute:`` section of params.yaml, validated.

    ``threads`` (int >= 1) is the torch thread count of every model stage: the same stage gives
    other numbers with 1 and 2 threads (reductions split differently), so it is a parameter of
    the experiment, in every model stage's params, used by ``dvc repro`` and by every
    ``rga-launch`` job alike. ``onednn_max_isa`` ("" = no cap) caps the instruction set oneDNN
    may use (``ONEDNN_MAX_CPU_ISA``, one of :data:`ONEDNN_ISAS`).

    Returns:
        ``{"threads": int, "onednn_max_isa": str}``.

    Raises:
        ValueError: a missing section, a thread count that is not an integer >= 1, or an
            unknown instruction set; the message names the key, the value and the valid choices.
    """
    c = params.get("compute")
    if not isinstance(c, dict) or "threads" not in c:
        raise ValueError("params.yaml has no compute.threads: add `compute: {threads: N, onednn_max_isa: \"\"}` "
                         "(N = torch threads per model stage, an integer >= 1)")
    unknown = set(c) - set(COMPUTE_KEYS)
    if unknown:
        raise ValueError(f"compute: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(COMPUTE_KEYS)}")
    threads = c["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"compute.threads must be an integer >= 1 (torch threads per model stage), got {threads!r}")
    isa = str(c.get("onednn_max_isa") or "").upper()
    if isa and isa not in ONEDNN_ISAS:
        raise ValueError(f"compute.onednn_max_isa {c.get('onednn_max_isa')!r} is not one of oneDNN's: "
                         f"{', '.join(ONEDNN_ISAS)} (or \"\" for no cap)")
    return {"threads": threads, "onednn_max_isa": isa}


_COMPUTE: dict | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _onednn_isa() -> str | None:
    """The instruction set oneDNN reports for this process (its verbose ``isa:`` line), asked
    with one small convolution before any other oneDNN primitive exists; None when oneDNN was
    already initialised in this process (it prints the line once) or torch has no oneDNN."""
    import ctypes
    import sys
    import tempfile

    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    libc = ctypes.CDLL(None)
    had = os.environ.get("ONEDNN_VERBOSE")
    os.environ["ONEDNN_VERBOSE"] = "1"  # read when oneDNN makes its first primitive
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            with torch.no_grad():  # large enough that torch hands it to oneDNN
                torch.nn.functional.conv2d(torch.ones(2, 64, 32, 32), torch.ones(64, 64, 3, 3))
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            torch._C._verbose.mkldnn_set_verbose(0)
            if had is None:
                os.environ.pop("ONEDNN_VERBOSE", None)
            else:
                os.environ["ONEDNN_VERBOSE"] = had
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    found = [ln.split("isa:", 1)[1].strip() for ln in text.splitlines() if ",cpu,isa:" in ln]
    return found[0] if found else None


def compute_info() -> dict:
    """Where a stage's numbers come from: the compute it ran on, nothing that changes between
    runs on one machine (no host name, no time), so re-runs there stay byte-identical.

    Returns:
        ``{"device": "cpu"|"cuda"|..., "cpu": model name, "cpu_capability": ATen's vector ISA
        (e.g. "AVX512"), "onednn_isa": oneDNN's instruction set (e.g. "Intel AVX-512 with Intel
        DL Boost"; None if it could not be asked), "onednn_max_isa": the cap or None, "gpu": name
        or None, "cuda": CUDA version or None, "threads": torch threads, "python", "torch",
        "transformers", "dvc"}``. The first call in a process asks oneDNN (before any model is
        built; :func:`stage_runtime` does it); later calls return the same dict.
    """
    global _COMPUTE
    if _COMPUTE is None:
        import platform
        from importlib.metadata import PackageNotFoundError, version

        import torch

        from .models import pick_device

        def ver(pkg):
            try:
                return version(pkg)
            except PackageNotFoundError:
                return None

        device = pick_device()
        cuda = device.type == "cuda"
        _COMPUTE = {"device": device.type, "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "onednn_isa": _onednn_isa(), "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
                    "gpu": torch.cuda.get_device_name(device) if cuda else None,
                    "cuda": torch.version.cuda if cuda else None, "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": ver("transformers"), "dvc": ver("dvc")}
    return {**_COMPUTE, "threads": __import__("torch").get_num_threads()}


def stage_runtime(params: dict) -> dict:
    """Set up a stage process that runs torch, from the tracked ``compute:`` params
    (:func:`compute_settings`): torch's thread count, oneDNN's instruction-set cap (set before
    any oneDNN primitive exists; a cap already in the environment that disagrees is refused) and,
    when the process has no accelerator (its tensors live on the CPU), the CPU allocator
    (:func:`tune_cpu_allocator`). With a GPU the tuning is left out: a large model loaded on the
    host first would otherwise keep that host memory for the whole stage.

    Returns:
        :func:`compute_info`, for the stage's metrics file.

    Raises:
        SystemExit: bad ``compute:`` params, or ``ONEDNN_MAX_CPU_ISA`` in the environment that
            differs from ``compute.onednn_max_isa`` (the numbers would then not be the params').
    """
    import sys

    import torch

    from .models import pick_device

    try:
        c = compute_settings(params)
    except ValueError as err:
        sys.exit(f"bad params: {err}")
    env_isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "").upper()
    if env_isa and env_isa != c["onednn_max_isa"]:
        sys.exit(f"ONEDNN_MAX_CPU_ISA={env_isa} is set in the environment but compute.onednn_max_isa is "
                 f"{c['onednn_max_isa'] or 'empty'}: set the cap in params.yaml (a tracked setting) and unset the variable")
    if c["onednn_max_isa"]:
        os.environ["ONEDNN_MAX_CPU_ISA"] = c["onednn_max_isa"]
    if pick_device().type == "cpu":
        tune_cpu_allocator()
    torch.set_num_threads(c["threads"])
    return compute_info()
