"""Atomic file writing: every file is written to a temporary name in its folder, then renamed into place."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


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
            suffixes = "".join(target.suffixes)  # keep ".nii.gz" whole: writers pick the format from it
            base = target.name[: -len(suffixes)] if suffixes else target.name
            fd, name = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffixes}", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp in temps:
            if not temp.exists() or temp.stat().st_size == 0:
                raise OSError(f"writing {targets[temps.index(temp)]} produced no data")
        for temp, target in zip(temps, targets):
            os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes the file private; the result gets the usual mode
            os.replace(temp, target)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def json_safe(value: Any) -> Any:
    """For strict JSON: NaN/inf -> None, numpy scalars -> Python numbers, dict keys -> str, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
