"""The compiled rank-counting kernel (``rank_counts.c``): built on first use, loaded with ctypes, optional.

numpy has no fused compare-and-count, so counting the negatives above *and* tied with each query's best positive
costs it four comparison passes over the similarity matrix; the C kernel makes all four decisions in one read
(``benchmarks/results/bench.md`` has the timings). It is compiled once per machine with the C compiler Python was
built with (``$CC``, else ``cc`` / ``gcc`` / ``clang``) into ``$RSWB_CACHE_DIR/native`` (default
``~/.cache/rswb/native``), keyed by a digest of the source, the compiler, its flags and the CPU, written atomically.

Where no compiler works (or ``RSWB_NATIVE=0`` is set), :func:`rank_counts_kernel` returns ``None`` and the metrics
use their numpy kernels: the same counts, slower. :func:`native_status` says which and why. ctypes releases the GIL
for the call, so several Python threads count row blocks in parallel.
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
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["native_status", "rank_counts_kernel"]

_SOURCE = Path(__file__).with_name("rank_counts.c")
_ABI = 1
_BASE_FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC")
# -march=native lets the compiler use the CPU's widest vectors; the cache key holds the CPU's signature, so a
# shared home folder never hands one machine another's build. Tried without it when the compiler refuses it.
_FLAG_SETS = (("-march=native",), ())
_status = "not loaded yet"


def _cache_dir() -> Path:
    # rswb.metrics imports nothing else of rswb, so the cache-folder rule of rswb.data.features is repeated here.
    root = os.environ.get("RSWB_CACHE_DIR") or Path.home() / ".cache" / "rswb"
    return Path(root) / "native"


def _compilers() -> list[str]:
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"]
    found = []
    for name in names:
        path = shutil.which(name) if name else None
        if path and path not in found:
            found.append(path)
    return found


def _cpu_signature() -> str:
    """What the build depends on besides source and flags: machine, and on Linux the CPU's model and features."""
    sig = f"{platform.system()}|{platform.machine()}|{sys.implementation.cache_tag}"
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return sig + "|" + platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return sig + "|" + "\n".join(sorted(set(lines)))


def _build(compiler: str, flags: tuple[str, ...], source: bytes) -> Path:
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                     _cpu_signature().encode()])).hexdigest()[:20]
    target = _cache_dir() / f"rank_counts-{key}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name in the same folder, then rename: a concurrent process never loads half a file.
    fd, tmp = tempfile.mkstemp(prefix=".rank_counts-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *_BASE_FLAGS, *flags, str(_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:400]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.rswb_rank_counts_abi.restype = ctypes.c_int
    if lib.rswb_rank_counts_abi() != _ABI:
        raise OSError(f"{path} has ABI {lib.rswb_rank_counts_abi()}, expected {_ABI}")
    args = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, *[ctypes.c_void_p] * 6]
    for name in ("rswb_rank_counts_f32", "rswb_rank_counts_f64"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, None
    return lib


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    global _status
    if os.environ.get("RSWB_NATIVE", "1") == "0":
        _status = "disabled by RSWB_NATIVE=0 (numpy kernels)"
        return None
    compilers = _compilers()
    if not compilers:
        _status = "no C compiler found (set CC); numpy kernels"
        return None
    source = _SOURCE.read_bytes()
    errors = []
    for compiler in compilers:
        for flags in _FLAG_SETS:
            try:
                lib = _load(_build(compiler, flags, source))
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(str(e))
                continue
            _status = f"compiled: {Path(compiler).name} {' '.join((*_BASE_FLAGS[:2], *flags))}"
            return lib
    _status = "compilation failed, numpy kernels: " + " | ".join(errors)[:600]
    return None


def rank_counts_kernel(dtype: np.dtype):
    """The compiled ``rswb_rank_counts_*`` function for float32 or float64 scores, or ``None``.

    ``None`` when the dtype has no kernel or the library could not be built (see :func:`native_status`).
    Arguments of the returned function: ``(s, rows, cols, row_stride, row_thr, col_thr, row_gt, row_eq, col_gt,
    col_eq)``, the arrays as addresses (``arr.ctypes.data``); see ``rank_counts.c``.
    """
    name = {np.dtype(np.float32): "rswb_rank_counts_f32", np.dtype(np.float64): "rswb_rank_counts_f64"}.get(
        np.dtype(dtype))
    lib = _library() if name else None
    return getattr(lib, name) if lib is not None else None


def native_status() -> str:
    """How the retrieval rank counts are computed here: the compiler and flags, or why numpy is used instead."""
    _library()
    return _status
