"""The one exception type of the echo data code and the checks that every loaded cine and label goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["EchoDataError", "check_cine", "check_label"]

CAMUS_LABELS = (0, 1, 2, 3)


class EchoDataError(ValueError):
    """Bad echo input. The message always starts with the file (or folder) and names the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def check_cine(image_HWT: np.ndarray, path: str | Path) -> np.ndarray:
    """Check a decoded cine ``[H, W, T]`` (any numeric dtype) and return it unchanged.

    Raises :class:`EchoDataError` for a 2D image, zero frames, empty frames, non-finite values or constant frames.
    """
    if image_HWT.ndim != 3:
        raise EchoDataError(path, f"expected a cine H x W x T, got an array of shape {tuple(image_HWT.shape)}")
    H, W, T = image_HWT.shape
    if T == 0:
        raise EchoDataError(path, "the cine has zero frames")
    if T == 1:
        raise EchoDataError(path, "a single 2D image, expected a cine (at least 2 frames)")
    if H < 2 or W < 2:
        raise EchoDataError(path, f"frames of {H} x {W} pixels are not an image")
    if np.issubdtype(image_HWT.dtype, np.floating):
        bad = ~np.isfinite(image_HWT).all(axis=(0, 1))
        if bad.any():
            raise EchoDataError(path, f"NaN or infinite values in frames {np.flatnonzero(bad)[:10].tolist()}")
    flat = image_HWT.reshape(H * W, T)
    constant = flat.min(axis=0) == flat.max(axis=0)
    if constant.any():
        raise EchoDataError(path, f"constant (blank) frames {np.flatnonzero(constant)[:10].tolist()} of {T}")
    return image_HWT


def check_label(
    label_HWT: np.ndarray,
    path: str | Path,
    image_shape: tuple[int, ...] | None = None,
    allowed: tuple[int, ...] = CAMUS_LABELS,
) -> np.ndarray:
    """Check a label volume ``[H, W, T]`` (or ``[H, W]``) and return it as uint8.

    Raises :class:`EchoDataError` when the shape differs from ``image_shape``, values are not integers or a value
    is outside ``allowed``.
    """
    if image_shape is not None and tuple(label_HWT.shape) != tuple(image_shape):
        raise EchoDataError(
            path, f"label shape {tuple(label_HWT.shape)} differs from its image shape {tuple(image_shape)}"
        )
    if np.issubdtype(label_HWT.dtype, np.floating):
        if not np.isfinite(label_HWT).all() or not np.array_equal(label_HWT, np.round(label_HWT)):
            raise EchoDataError(path, "label values are not integers")
    values = np.unique(label_HWT)
    extra = sorted(set(values.tolist()) - set(allowed))
    if extra:
        raise EchoDataError(path, f"label values {extra[:10]} outside the expected set {list(allowed)}")
    return label_HWT.astype(np.uint8)
