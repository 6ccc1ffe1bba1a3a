"""The package's C kernels for x86-64 CPUs, built from source on first use and loaded with ctypes:

- `small_gemm.c`: the decoding step's products of a few rows, its folded norm and its rotary op
  (used through `codefoundry.models.small_gemm`);
- `attention.c`: causal attention, forward and backward, for the training path (used through
  `codefoundry.models.cpu_ops`);
- `panels.h`: the panel product both are built on.

`library()` is None, and every caller keeps PyTorch's ops, wherever the kernels cannot run as intended:
not Linux x86-64, no AVX2/FMA, no C compiler, a failed build or self-check, `CODEFOUNDRY_NATIVE=0`, or a
PyTorch that does not share its OpenMP runtime (the kernels' threads must be PyTorch's own: a second
runtime's threads would fight them for the cores). `why_not()` says which. The built library is cached
under $CODEFOUNDRY_CACHE (default ~/.cache/codefoundry)/native, keyed by the sources, flags and compiler;
a build takes ~1-2 s.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["Strides", "library", "why_not"]

HERE = Path(__file__).parent
SOURCES = ("small_gemm.c", "attention.c")
HEADERS = ("panels.h",)
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")


class Strides(ctypes.Structure):
    """attention.c's `strides`: element strides of a (B, H, T, d) tensor's first three dims."""

    _fields_ = [("b", ctypes.c_long), ("h", ctypes.c_long), ("t", ctypes.c_long)]


_P, _L, _I, _F, _S = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float, Strides
_SIGNATURES = {
    "cf_small_gemm": ((_P, _L, _P, _L, _L, _P, _L, _L, _P, _I, _I), None),
    "cf_norm_rows": ((_P, _P, _L, _L, _F), None),
    "cf_rotate_store": ((_P, _L, _L, _L, _L, _P, _P, _L, _P, _L, _L, _L, _L, _P, _P, _L), None),
    "cf_attention_forward": ((_P, _S, _P, _S, _P, _S, _P, _S, _P, _L, _L, _L, _L, _L, _F, _I), _I),
    "cf_attention_backward": (
        (_P, _S, _P, _S, _P, _S, _P, _S, _P, _S, _P, _P, _S, _P, _S, _P, _S, _L, _L, _L, _L, _L, _F, _I), _I,
    ),
}  # fmt: skip


def library() -> ctypes.CDLL | None:
    """The loaded kernels, their argument types set, built and checked once per process; None where they
    cannot run as intended (see the module docstring; `why_not()` says which)."""
    return _load()[0]


def why_not() -> str | None:
    """Why `library()` is None, or None when it is not."""
    return _load()[1]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("CODEFOUNDRY_NATIVE", "1") == "0":
        return None, "disabled by CODEFOUNDRY_NATIVE=0"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None, f"needs Linux on x86-64, not {sys.platform} on {platform.machine()}"
    if not _cpu_flags() >= {"avx2", "fma"}:
        return None, "the CPU lacks AVX2 or FMA"
    before = _openmp_runtimes()
    if len(before) != 1:
        return None, f"PyTorch has {len(before)} OpenMP runtimes loaded, not one to share"
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return None, f"could not build or load the C kernels: {e}"
    if _openmp_runtimes() != before:
        return None, "the kernels loaded an OpenMP runtime of their own"
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib, None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtime libraries mapped into this process (PyTorch's, once torch is imported)."""
    torch.get_num_threads()  # torch is imported, and with it its runtime
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}
    except OSError:
        return set()


def _build() -> Path:
    """The compiled library: from the cache when the same sources, flags and compiler built it, else
    compiled now into a temporary name and renamed, so concurrent builders never see half a file."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler or not shutil.which(compiler):
        raise RuntimeError("no C compiler (cc, gcc or $CC)")
    real = Path(shutil.which(compiler)).resolve()
    stat = real.stat()
    digest = hashlib.sha256(repr((FLAGS, str(real), stat.st_size, stat.st_mtime_ns)).encode())
    for name in (*SOURCES, *HEADERS):
        digest.update((HERE / name).read_bytes())
    key = digest.hexdigest()[:16]
    root = Path(os.environ.get("CODEFOUNDRY_CACHE") or Path.home() / ".cache" / "codefoundry") / "native"
    target = root / f"kernels-{key}.so"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".kernels-{key}.{os.getpid()}.so"
    command = [compiler, *FLAGS, "-I", str(HERE), "-o", str(tmp), *(str(HERE / n) for n in SOURCES), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    os.replace(tmp, target)
    return target
