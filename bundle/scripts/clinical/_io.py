"""Atomic file writing: every file is written to a temporary name in its folder, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths (one per target, same folder and suffix); rename them all onto the targets on success.

    On any exception the temporaries are deleted and no target is created or changed, so nothing is left
    half-written. Parent folders are created.
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp in temps:
            if not temp.exists() or temp.stat().st_size == 0:
                raise OSError(f"writing {targets[temps.index(temp)]} produced no data")
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
