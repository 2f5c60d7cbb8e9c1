"""Building the embedded data: each part in a temporary folder renamed into place, completion markers, first use."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rswb.data.synthetic.captions import synth_captions
from rswb.data.synthetic.common import (
    _STALE_TMP_SECONDS,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    MARKER_NAME,
    PARTS,
    default_data_dir,
)
from rswb.data.synthetic.mspan import synth_mspan_scene
from rswb.data.synthetic.scenes import synth_scene_folder

# ----------------------------------------------------------------------------------------------------------
# Orchestration: atomic parts, completion markers, first-use generation
# ----------------------------------------------------------------------------------------------------------

_GENERATORS: dict[str, Callable[..., Path]] = {
    "mspan": synth_mspan_scene,
    "scenes": synth_scene_folder,
    "captions": synth_captions,
}


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path, seed: int | None) -> bool:
    """A part is complete when its marker names the current generator version (and ``seed``, unless None)."""
    marker = _read_marker(folder)
    if marker is None or marker.get("version") != GENERATOR_VERSION:
        return False
    return seed is None or marker.get("seed") == seed


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # signal 0 is not a probe on Windows; fall back to the age rule
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _remove_stale_tmp(out: Path, part: str) -> None:
    # Leftovers of interrupted runs. A folder whose process still runs belongs to a concurrent generator (e.g.
    # a parallel test worker) and is left alone.
    for tmp in out.glob(f".tmp-{part}-*"):
        pid_text = tmp.name.rsplit("-", 1)[-1]
        pid = int(pid_text) if pid_text.isdigit() else -1
        try:
            too_old = time.time() - tmp.stat().st_mtime > _STALE_TMP_SECONDS
        except OSError:
            continue
        if pid == os.getpid() or pid < 0 or not _pid_alive(pid) or too_old:
            shutil.rmtree(tmp, ignore_errors=True)


def _generate_part(out: Path, part: str, seed: int, force: bool = False) -> Path:
    final = out / part
    tmp = out / f".tmp-{part}-{os.getpid()}"
    _remove_stale_tmp(out, part)
    tmp.mkdir(parents=True)
    try:
        _GENERATORS[part](tmp, seed=seed)
        marker = {"part": part, "seed": seed, "version": GENERATOR_VERSION, "generator": "rswb.data.synthetic"}
        # The marker is written last: its presence means every other file is complete.
        (tmp / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")
        if final.exists():
            if not force and _is_complete(final, seed):  # a concurrent run finished the same part first
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            shutil.rmtree(final)  # half-written, other seed or older version
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final, seed):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def synth_all(
    out: Path | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    parts: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Generate the embedded demo data (all parts, default sizes) into ``out``.

    Each part is written to ``out/.tmp-<part>-<pid>`` and renamed to ``out/<part>`` when complete, with a
    ``.complete`` marker (JSON: part, seed, generator version). A part whose marker matches ``seed`` and the
    current :data:`GENERATOR_VERSION` is skipped unless ``force``; a part folder without a valid marker is
    removed and regenerated; temp folders left by dead processes are removed.

    Args:
        out: Root folder; default :func:`default_data_dir`.
        seed: Random seed of every part.
        force: Regenerate even complete parts.
        progress: Show a tqdm.auto progress bar over the parts.
        parts: Subset of :data:`PARTS` to generate (default all).

    Returns:
        ``{"mspan": out/"mspan", "scenes": out/"scenes", "captions": out/"captions"}`` (only the requested
        parts).

    Raises:
        ValueError: If ``parts`` names an unknown part.
    """
    out = Path(out) if out is not None else default_data_dir()
    wanted = tuple(PARTS if parts is None else parts)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; expected some of {list(PARTS)}")
    out.mkdir(parents=True, exist_ok=True)
    for part in PARTS:  # also for parts that are complete and skipped below
        _remove_stale_tmp(out, part)
    from tqdm.auto import tqdm

    result: dict[str, Path] = {}
    with tqdm(wanted, desc="rswb synthetic data", unit="part", disable=not progress) as bar:
        for part in bar:
            bar.set_postfix_str(part)
            final = out / part
            if not force and _is_complete(final, seed):
                result[part] = final
                continue
            result[part] = _generate_part(out, part, seed, force=force)
    return result


def ensure_embedded(kind: str | None = None, root: Path | None = None) -> Path | dict[str, Path]:
    """Return the embedded demo data, generating it on first use.

    A part counts as present when its ``.complete`` marker names the current generator version (whatever seed
    it was made with, so data deliberately generated with another seed is not overwritten); missing parts are
    generated with :data:`DEFAULT_SEED` through :func:`synth_all`.

    Args:
        kind: ``"mspan"``, ``"scenes"`` or ``"captions"`` for one part; ``None`` for all.
        root: Root folder; default :func:`default_data_dir`.

    Returns:
        The part folder when ``kind`` is given, else ``{part: folder}`` for all parts.

    Raises:
        ValueError: If ``kind`` is not a known part.
    """
    if kind is not None and kind not in PARTS:
        raise ValueError(f"unknown embedded data kind {kind!r}; expected one of {list(PARTS)} or None")
    root = Path(root) if root is not None else default_data_dir()
    wanted = PARTS if kind is None else (kind,)
    missing = [p for p in wanted if not _is_complete(root / p, None)]
    if missing:
        synth_all(root, seed=DEFAULT_SEED, progress=True, parts=missing)
    paths = {p: root / p for p in wanted}
    return paths[kind] if kind is not None else paths

