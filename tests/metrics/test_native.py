"""The compiled rank-counting kernel (rswb/metrics/rank_counts.c) against plain numpy comparisons.

Every count the kernel returns is checked against ``(s > t).sum`` / ``(s == t).sum`` over seeded random matrices full
of exact ties (and NaN), for both dtypes, strided views, odd row counts (the 4-row tile and its remainder) and several
threads; the build is checked for its cache entry and the fallbacks for the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rswb.metrics._counting as C
import rswb.metrics._native as N
import rswb.metrics.retrieval as R
from rswb.metrics import retrieval_metrics, retrieval_ranks

pytestmark = pytest.mark.skipif(N.rank_counts_kernel(np.float32) is None,
                                reason=f"no compiled kernel here: {N.native_status()}")


def reference_counts(s: np.ndarray, row_thr: np.ndarray, col_thr: np.ndarray) -> dict:
    """``>`` and ``>=`` counts per row (against ``row_thr``) and per column (against ``col_thr``), by broadcasting."""
    return {
        True: ((s > row_thr[:, None]).sum(1), (s > col_thr[None, :]).sum(0)),
        False: ((s >= row_thr[:, None]).sum(1), (s >= col_thr[None, :]).sum(0)),
    }


def tied_matrix(rng: np.random.Generator, shape: tuple[int, int], dtype) -> np.ndarray:
    s = rng.integers(0, 4, shape).astype(dtype)
    s[rng.random(shape) < 0.05] = np.nan  # NaN compares False everywhere, as in numpy
    return s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 9), (5, 1), (13, 64), (31, 257)])
def test_counts_equal_numpy_comparisons(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    s = tied_matrix(rng, shape, dtype)
    row_thr = rng.integers(0, 4, shape[0]).astype(dtype)
    col_thr = rng.integers(0, 4, shape[1]).astype(dtype)
    kernel = R._native_kernel_for(s)
    got = R._count_native(s, row_thr, col_thr, kernel, workers=1)
    ref = reference_counts(s, row_thr, col_thr)
    for mode in (True, False):
        for g, r in zip(got[mode], ref[mode]):
            np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_strided_views_and_threads(monkeypatch, workers):
    rng = np.random.default_rng(7 + workers)
    big = tied_matrix(rng, (90, 300), np.float32)
    monkeypatch.setattr(C, "_MIN_THREADED_ENTRIES", 0)
    for view in (big[:, 3:211], big[::2], big[5:78:3, 100:]):  # unit column stride, other row strides
        assert R._native_kernel_for(view) is not None
        row_thr = rng.integers(0, 4, view.shape[0]).astype(np.float32)
        col_thr = rng.integers(0, 4, view.shape[1]).astype(np.float32)
        for chunk in (4, 6, 256):
            monkeypatch.setattr(C, "_native_chunk_rows", lambda n_i, w, chunk=chunk: chunk)
            got = R._count_native(view, row_thr, col_thr, R._native_kernel_for(view), workers=workers)
            ref = reference_counts(view, row_thr, col_thr)
            for mode in (True, False):
                for g, r in zip(got[mode], ref[mode]):
                    np.testing.assert_array_equal(g, r)


def test_layouts_and_dtypes_without_a_kernel_use_numpy(monkeypatch):
    rng = np.random.default_rng(3)
    cap2img = rng.permutation(np.repeat(np.arange(20), 3))
    s = rng.integers(0, 4, (20, 60)).astype(np.float32)
    assert R._native_kernel_for(np.asfortranarray(s)) is None  # columns not contiguous
    assert R._native_kernel_for(s.astype(np.float16)) is None  # no float16 kernel
    expected = retrieval_metrics(s, cap2img)
    assert retrieval_metrics(np.asfortranarray(s), cap2img) == expected
    for ties in ("expected", "optimistic", "pessimistic"):
        a = retrieval_ranks(s, cap2img, ties=ties, backend="native")
        b = retrieval_ranks(s, cap2img, ties=ties, backend="numpy")
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    monkeypatch.setattr(R, "rank_counts_kernel", lambda dtype: None)
    assert retrieval_metrics(s, cap2img) == expected  # auto falls back to numpy
    with pytest.raises(RuntimeError, match="backend='native' is not available"):
        retrieval_ranks(s, cap2img, backend="native")
    with pytest.raises(ValueError, match="backend must be one of"):
        retrieval_ranks(s, cap2img, backend="fortran")


def test_a_failed_build_falls_back_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(N, "_compilers", lambda: ["/bin/false"])
    N._library.cache_clear()
    try:
        assert N.rank_counts_kernel(np.float32) is None
        assert N.native_status().startswith("compilation failed")
        assert not list((tmp_path / "native").glob("*"))  # no half-written library or temp file left behind
    finally:
        monkeypatch.undo()  # the real compilers and cache folder again, before the next test loads the library
        N._library.cache_clear()
    assert N.rank_counts_kernel(np.float32) is not None


def run_python(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                         timeout=300, check=True)
    return out.stdout.strip()


@pytest.mark.slow
def test_build_is_cached_once_and_can_be_disabled(tmp_path):
    code = "from rswb.metrics._native import native_status; print(native_status())"
    first = run_python(code, {"RSWB_CACHE_DIR": str(tmp_path)})
    assert first.startswith("compiled:")
    built = sorted((tmp_path / "native").iterdir())  # the library and the digest that vouches for it
    assert len(built) == 2 and built[0].name.startswith("rank_counts-") and built[1].name == built[0].name + ".sha256"
    assert (tmp_path / "native").stat().st_mode & 0o777 == 0o700  # a private folder
    mtime = [p.stat().st_mtime_ns for p in built]
    assert run_python(code, {"RSWB_CACHE_DIR": str(tmp_path)}) == first
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "native").iterdir())] == mtime  # reused, not rebuilt
    off = run_python(code, {"RSWB_CACHE_DIR": str(tmp_path / "off"), "RSWB_NATIVE": "0"})
    assert off.startswith("disabled by RSWB_NATIVE=0")
    assert not Path(tmp_path / "off").exists()


@pytest.mark.slow
def test_a_planted_library_is_never_loaded(tmp_path):
    """A library someone put in the cache folder (right name, other bytes; or a folder others can write) never runs:
    rswb builds a private copy instead, and the numbers stay the kernel's own."""
    import shutil

    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    code = "from rswb.metrics._native import native_status; print(native_status())"
    env = {"RSWB_CACHE_DIR": str(tmp_path)}
    assert run_python(code, env).startswith("compiled:")
    target = next(p for p in (tmp_path / "native").iterdir() if not p.name.endswith(".sha256"))
    marker = tmp_path / "planted-ran"
    src = tmp_path / "planted.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }} }}\n'
                   "int rswb_rank_counts_abi(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(target)], check=True)  # same name, other bytes
    probe = ("import warnings, numpy as np\nfrom rswb.metrics._native import native_status, rank_counts_kernel\n"
             "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
             "    print(native_status(), rank_counts_kernel(np.float32) is not None)\n"
             "    print([str(x.message) for x in w])")
    out = run_python(probe, env)
    assert out.splitlines()[0].startswith("compiled:") and out.splitlines()[0].endswith("True")
    assert "does not match the digest" in out and not marker.exists()
    import hashlib  # rebuilt in place: rswb's own library again, vouched for by its digest

    assert hashlib.sha256(target.read_bytes()).hexdigest() == Path(f"{target}.sha256").read_text().strip()
    assert run_python(probe, env).splitlines()[1] == "[]"  # and trusted again, without a warning
    (tmp_path / "native").chmod(0o777)  # a folder others can write: nothing in it is trusted
    out = run_python(probe, env)
    assert "can be written by others" in out and not marker.exists()
