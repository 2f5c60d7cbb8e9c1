"""The compiled rank-counting kernel (``rank_counts.c``): built on first use, loaded with ctypes, optional.

numpy has no fused compare-and-count, so counting the negatives above *and* tied with each query's best positive
costs it four comparison passes over the similarity matrix; the C kernel makes all four decisions in one read
(``benchmarks/results/bench.md`` has the timings). It is compiled once per machine with the C compiler Python was
built with (``$CC``, else ``cc`` / ``gcc`` / ``clang``) into ``$RSWB_CACHE_DIR/native`` (default
``~/.cache/rswb/native``), keyed by a digest of the source, the compiler, its flags and the CPU, written atomically.

A library is loaded only if it and its folder belong to the current user and nobody else can write them (the folder
is created 0700), and its bytes match the SHA-256 recorded beside it when rswb built it: a library planted in a shared
or writable cache folder is never loaded (rswb builds a private copy in a fresh 0700 temporary folder instead, with
a warning). On systems without POSIX ownership (Windows) only the digest is checked.

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
import warnings
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


def _untrusted(path: Path) -> str | None:
    """Why ``path`` (a file or folder) must not be trusted with code (another owner, or writable by others), or None."""
    if os.name != "posix":
        return None
    st = path.stat()
    if st.st_uid != os.getuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user"
    if st.st_mode & 0o022:
        return f"{path} can be written by others (mode {st.st_mode & 0o777:o})"
    return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private_folder(folder: Path) -> Path:
    """``folder``, created 0700 when missing; a fresh private temporary folder if it cannot be trusted."""
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    why = _untrusted(folder)
    if why is None:
        return folder
    fresh = Path(tempfile.mkdtemp(prefix="rswb-native-"))  # 0700, owned by this user
    warnings.warn(f"rswb: not using the native kernel cache: {why}; building a private copy in {fresh}",
                  stacklevel=3)
    return fresh


def _build(compiler: str, flags: tuple[str, ...], source: bytes, folder: Path | None = None) -> Path:
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                     _cpu_signature().encode()])).hexdigest()[:20]
    folder = folder or _private_folder(_cache_dir())
    target = folder / f"rank_counts-{key}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    sidecar = target.with_name(target.name + ".sha256")
    if target.exists():
        why = _untrusted(target)
        if why is None and sidecar.exists() and sidecar.read_text().strip() == _digest(target):
            return target
        if why is not None:  # not ours to replace: build elsewhere
            fresh = Path(tempfile.mkdtemp(prefix="rswb-native-"))
            warnings.warn(f"rswb: not loading {target}: {why}; building a private copy in {fresh}", stacklevel=3)
            return _build(compiler, flags, source, fresh)
        if sidecar.exists():  # a digest that does not match: someone changed the library
            warnings.warn(f"rswb: not loading {target}: it does not match the digest rswb recorded when it built it; "
                          "building it again", stacklevel=3)
        # (no digest at all: a build from before digests were recorded, rebuilt in place without a word)
    # Compile to a temporary name in the same folder, then rename: a concurrent process never loads half a file.
    fd, tmp = tempfile.mkstemp(prefix=".rank_counts-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *_BASE_FLAGS, *flags, str(_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:400]}")
        os.chmod(tmp, 0o700)
        # The digest first, then the library: a library never stands without the digest that vouches for it.
        fd2, tmp_digest = tempfile.mkstemp(prefix=".rank_counts-", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd2, "w") as fh:
            fh.write(_digest(Path(tmp)) + "\n")
        os.replace(tmp_digest, sidecar)
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
