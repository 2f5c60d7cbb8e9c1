"""Run folders and the run registry.

A run is a folder ``runs/<name>/``:

* ``config.yaml``: the resolved training config, the task's own config, what the task is (method, version, data)
  and the environment (torch version, device, processes);
* ``metrics.jsonl``: one JSON line per finished epoch (train loss terms, lr, validation metrics, time);
* ``metrics.json``: the final result (best epoch, its validation metrics, the test metrics, total time), written
  once training has finished, so its presence means the run completed;
* ``checkpoint.pt``: the last epoch's full training state (for ``--resume``); ``best.pt``: the selected weights.

Every file is replaced atomically. :func:`list_runs` and :func:`compare` read the folders back as pandas tables.

**One writer per run folder**: :func:`run_lock` takes an exclusive ``fcntl.flock`` on ``.lock`` in the folder for as
long as a run writes there (``rswb train`` takes it before any data is loaded); the kernel releases it when the
process ends, killed or not, so a crash never leaves a stale lock. A second writer, ``--overwrite`` included, gets a
one-line :class:`RunLockedError` naming the holder's pid, host and start time. Only the holder sweeps the folder's
temp files. (Without ``fcntl``, on Windows, runs are not locked.)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None

import pandas as pd

from rswb.io import DiskFullError, atomic_write_text, is_no_space, load_yaml, save_yaml

__all__ = ["HEADLINE_METRICS", "LOCK_NAME", "RunFolder", "RunLockedError", "check_run_name", "compare", "format_table",
           "list_runs", "resolve_run", "run_lock", "run_summary"]

LOCK_NAME = ".lock"
"""The lock file in a run folder (its content names the holder; the lock itself is the kernel's flock)."""


def check_run_name(name: str) -> str:
    """``name`` if it is one folder name (what ``--name`` takes); else a ``ValueError`` saying why.

    ``../../x`` would write outside the runs root and ``a/b`` would make a run that ``rswb runs list`` never shows.
    """
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or text != text.strip() or "\0" in text:
        raise ValueError(f"--name must be one folder name (no '/', '\\', '..' or surrounding spaces), got {text!r}")
    return text


class RunLockedError(FileExistsError):
    """Another process is writing this run folder (it holds the folder's lock)."""


_HELD: dict[str, int] = {}  # run folder -> fd of this process's lock: flock conflicts between two fds of one process


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[Path]:
    """Hold the exclusive writer's lock of run folder ``path`` (created if missing) for the ``with`` block.

    Re-entrant within a process (``rswb train`` locks before loading data, :func:`rswb.engine.fit` again).

    Raises:
        RunLockedError: another process holds it (the message names its pid, host and start time).
    """
    folder = Path(path).resolve()
    key = str(folder)
    if key in _HELD:  # already ours: the outer block releases it
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield folder
        return
    lock = folder / LOCK_NAME
    while True:
        folder.mkdir(parents=True, exist_ok=True)  # again after a retry: a releasing holder may have removed it
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "a process that has not said who it is"
            os.close(fd)
            raise RunLockedError(f"{folder}: another process is writing this run ({holder}); wait for it to finish "
                                 "or choose another name") from None
        try:  # the file locked must still be the folder's lock file (a releasing holder may have just removed it)
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
    _HELD[key] = fd
    try:
        yield folder
    finally:
        del _HELD[key]
        # A folder this lock created and nothing else wrote into (the run was refused or failed before it started)
        # is removed, so a failed start leaves nothing behind.
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            lock.unlink()
            folder.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class RunFolder:
    """Paths and writers of one run folder (only rank 0 writes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml", doc="resolved config")
    history = property(lambda self: self.path / "metrics.jsonl", doc="one line per epoch")
    final = property(lambda self: self.path / "metrics.json", doc="final metrics")
    checkpoint = property(lambda self: self.path / "checkpoint.pt", doc="last training state")
    best = property(lambda self: self.path / "best.pt", doc="selected weights")

    def exists(self) -> bool:
        """Whether a run has already written into this folder."""
        return self.config.exists() or self.checkpoint.exists() or self.history.exists()

    def write_config(self, data: dict[str, Any]) -> None:
        """Write ``config.yaml``."""
        save_yaml(data, self.config)

    def read_config(self) -> dict[str, Any]:
        """Read ``config.yaml`` back."""
        return load_yaml(self.config)

    def write_history(self, records: Iterable[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from ``records`` (used on resume, so it matches the checkpoint exactly)."""
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), self.history)

    def append_history(self, record: dict[str, Any]) -> None:
        """Append one epoch line to ``metrics.jsonl`` (on a full disk the file is cut back to its complete lines)."""
        with open(self.history, "a") as f:
            size = f.tell()
            try:
                f.write(json.dumps(record) + "\n")
                f.flush()
            except OSError as err:
                if not is_no_space(err):
                    raise
                f.truncate(size)
                raise DiskFullError(self.history) from None

    def read_history(self) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl`` (empty when absent).

        A last line without its newline is an append cut short by a killed process: it is left out (that epoch is
        redone on ``--resume``). Any other unreadable line is damage.

        Raises:
            ValueError: a line that is not a JSON record (the message names the file and the line).
        """
        if not self.history.exists():
            return []
        text = self.history.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        complete, cut = lines[:-1], lines[-1]  # cut: "" when the file ends with a newline
        records = []
        for n, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"{self.history}: line {n} is not a JSON record") from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.history}: line {n} is not a JSON record")
            records.append(record)
        del cut  # an unfinished last line
        return records

    def write_final(self, data: dict[str, Any]) -> None:
        """Write ``metrics.json``."""
        atomic_write_text(json.dumps(data, indent=2) + "\n", self.final)

    def read_final(self) -> dict[str, Any] | None:
        """``metrics.json`` or None while the run is unfinished.

        Raises:
            ValueError: the file is not a JSON object (the message names it).
        """
        if not self.final.exists():
            return None
        try:
            data = json.loads(self.final.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{self.final}: not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.final}: expected a JSON object, got {type(data).__name__}")
        return data


def resolve_run(run: str | Path, root: str | Path = "runs") -> Path:
    """A run folder given as a path, or as a name under ``root`` (a path holding ``config.yaml`` wins)."""
    p = Path(run)
    return p if (p / "config.yaml").exists() else Path(root) / str(run)


def run_summary(path: str | Path) -> dict[str, Any]:
    """One run as a flat dict: name, status, method, version, data, epochs, best epoch, metrics, time.

    Metrics of a finished run are its test metrics (``test_*``) and best validation metrics (``val_*``); an
    unfinished run shows its last epoch's validation metrics.
    """
    run = RunFolder(path)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.path}: not a run folder (no config.yaml)")
    cfg = run.read_config()
    final = run.read_final()
    history = run.read_history()
    task = cfg.get("task", {}) or {}
    row: dict[str, Any] = {
        "run": run.path.name,
        "task": cfg.get("task_name", ""),
        "status": "finished" if final else ("running/stopped" if history else "started"),
        "method": task.get("method", ""),
        "version": task.get("version", ""),
        "data": task.get("data", ""),
        "epochs": len(history),
        "best_epoch": (final or {}).get("best_epoch"),
        "time_s": (final or {}).get("time_s", sum(r.get("time_s", 0.0) for r in history)),
    }
    if final:
        row.update(final.get("protocol") or {})  # e.g. ties: the rule behind the numbers, shown beside them
        row.update({f"test_{k}": v for k, v in (final.get("test") or {}).items()})
        row.update({f"val_{k}": v for k, v in (final.get("val") or {}).items()})
    elif history:
        row.update({k: v for k, v in history[-1].items() if k.startswith("val_")})
    row["path"] = str(run.path)
    return row


def _summary_or_damage(path: Path) -> dict[str, Any]:
    """:func:`run_summary`, or a row that says the run is damaged, which file and why (the other runs stay listed)."""
    try:
        return run_summary(path)
    except (ValueError, OSError) as err:
        return {"run": path.name, "status": f"damaged: {err}", "path": str(path)}


def list_runs(root: str | Path = "runs") -> pd.DataFrame:
    """All runs under ``root`` (one row each, newest folder last); an empty frame when there are none.

    A run whose files cannot be read (a damaged ``config.yaml`` or ``metrics.json``) is listed with the status
    ``damaged: FILE: why``, not dropped, and does not stop the others from being listed.
    """
    root = Path(root)
    folders = sorted((p for p in root.glob("*") if (p / "config.yaml").exists()), key=lambda p: p.stat().st_mtime)
    rows = [_summary_or_damage(p) for p in folders]
    return pd.DataFrame(rows)


HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "pha": ("OA", "AA", "kappa"),
    "retrieval": ("mR", "i2t_R@1", "t2i_R@1"),
    "hash": ("code_bits", "mAP@20", "mAP@20_nocue", "class_acc"),
    "classification": ("OA", "AA", "kappa"),
}
"""The numbers a task is judged by: what ``rswb runs compare`` shows unless asked for others."""


def compare(runs: Sequence[str | Path], root: str | Path = "runs", metrics: Sequence[str] | str | None = None,
            split: str = "test") -> pd.DataFrame:
    """A table of runs side by side, indexed by run name: method, version, data, metrics, epochs, time.

    Args:
        runs: run names (folders under ``root``) or paths.
        root: where names are looked up.
        metrics: metric names without prefix (e.g. ``["OA", "AA", "kappa"]``); ``"headline"``: the
            :data:`HEADLINE_METRICS` of the runs' tasks (those any run has); default: all of ``split``.
        split: ``"test"`` or ``"val"``: which metrics of each run to show.
    """
    rows = []
    for r in runs:
        path = resolve_run(r, root)
        if not (path / "config.yaml").exists():
            raise FileNotFoundError(f"{path}: not a run folder (no config.yaml)")
        rows.append(_summary_or_damage(path))
    df = pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()
    if df.empty:
        return df
    prefix = f"{split}_"
    metric_cols = [c for c in df.columns if c.startswith(prefix)]
    if metrics == "headline":
        names = dict.fromkeys(m for t in df["task"] for m in HEADLINE_METRICS.get(t, ()))
        metric_cols = [prefix + m for m in names if prefix + m in df.columns] or metric_cols
    elif metrics is not None:
        wanted = [prefix + m for m in metrics]
        missing = [w for w in wanted if w not in df.columns]
        if missing:
            raise KeyError(f"no run has {', '.join(missing)}; available: {', '.join(metric_cols) or '(none)'}")
        metric_cols = wanted
    protocol = [c for c in ("ties",) if c in df.columns]  # evaluation choices recorded by the runs
    cols = [c for c in ("method", "version", "data", "status", *protocol, *metric_cols, "epochs", "best_epoch",
                        "time_s") if c in df.columns]  # a table of damaged runs alone has only run, status, path
    out = df[cols].rename(columns={c: c[len(prefix):] for c in metric_cols})
    return out


def format_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A plain-text table for the terminal (floats shortened, missing values blank)."""
    if df.empty:
        return "(no runs)"
    shown = df.copy()
    for c in shown.columns:
        if pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else floatfmt.format(v))
    return shown.fillna("").to_string()
