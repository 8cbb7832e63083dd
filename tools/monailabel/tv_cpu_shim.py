"""Import hook that makes the CUDA build of torchvision importable beside a CPU-only torch (MONAI Label venv only).

PyPI's only torchvision for torch 2.13.0 is the CUDA build (0.28.0+cu130). Its ``_C.so`` cannot load without
``libtorch_cuda.so``, and ``torchvision/_meta_registrations.py`` then fails with
``RuntimeError: operator torchvision::nms does not exist``. MONAI Label imports ``torchvision.utils`` at module level
(``monailabel/transform/post.py``), so no inference is possible without a fix.

This hook, installed by ``tools/monailabel/setup_env.sh`` as ``site-packages/gdkvm_tv_cpu_shim.py`` and loaded by a
``.pth`` file (so the ``/train`` subprocesses get it too), waits until something imports ``torchvision`` and only then
imports torch and defines the schemas of the ``torchvision::nms`` and ``torchvision::qnms`` operators. Python-level
torchvision (``utils``, ``transforms``, ``models``) then works; the C++ operators (``nms``, ``roi_align``) stay
unavailable, which MONAI Label's segmentation path does not use. Other interpreter starts do not import torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES: list[object] = []  # keep the torch.library.Library objects alive


class TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    """Meta-path finder that defines the missing torchvision op schemas just before ``torchvision`` is imported."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Run once, on the first ``import torchvision``; the normal finders then import the real package."""
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            torch.ops.torchvision.nms  # noqa: B018 - the real extension loaded (CPU torchvision): nothing to do
        except (AttributeError, RuntimeError):
            library = torch.library.Library("torchvision", "DEF")
            for schema in _SCHEMAS:
                library.define(schema)
            _LIBRARIES.append(library)
        return None


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, TorchvisionCpuShim) for finder in sys.meta_path) and "torchvision" not in sys.modules:
        sys.meta_path.insert(0, TorchvisionCpuShim())


install()
