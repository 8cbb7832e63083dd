"""Serving the bundle from MONAI Label: hand the label back as a tensor in the input file's geometry.

MONAI Label's ``BundleInferTask`` runs the bundle's ``postprocessing`` (``SaveImaged`` filtered out), then its own
``Restored(keys="pred", ref_image="image")`` and ``Writer``: the writer saves ``pred`` (channel dropped) with the
affine ``Restored`` copies from ``image.meta["original_affine"]``, after resizing ``pred`` to
``image.meta["spatial_shape"]`` (a no-op when the shapes agree). Our loader reads a cine as ``[1, H, W, T]`` (a NIfTI
stored ``(x, y, t)`` as CAMUS is transposed; a DICOM is cropped to its ultrasound region) and resizes it to the
network size, so ``pred`` must be brought back to the file's whole-frame voxel layout (that of
:func:`scripts.geometry.label_nifti_like_input`) and those two meta entries set to that array's shape and affine.
``configs/monailabel_infer.json`` puts :class:`LabelToInputGeometryd` after the argmax in place of the file writer of
``configs/inference.json``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from scripts.data.video_io import load_cine
from scripts.geometry import label_nifti_like_input, restore_labels


class LabelToInputGeometryd(MapTransform):
    """Labels ``[1, h, w, T]`` at network resolution -> ``[1, *file voxel shape]`` uint8 in the input's geometry.

    NIfTI inputs get the file's array layout, shape and affine; DICOM, video and MetaImage inputs the whole frame
    ``(W, H, T)`` (x = column first, 0 outside a DICOM's ultrasound region) with the affine of
    :func:`scripts.geometry.source_affine` (as :func:`scripts.geometry.label_nifti_like_input` writes them). The input
    path comes from ``image_path`` (set by MONAI Label), ``source`` or the image's ``filename_or_obj``. Sets
    ``image.meta["spatial_shape"]`` and ``image.meta["original_affine"]`` to that array's shape and affine, so that
    MONAI Label's ``Restored`` keeps the array and its ``Writer`` (LPS conversion included) writes that geometry.
    ``keep_aspect`` must match the ``ResizeCined`` of the preprocessing.
    """

    def __init__(
        self, keys: Sequence[Hashable] = ("pred",), image_key: str = "image", keep_aspect: bool = False
    ) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.keep_aspect = keep_aspect

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key)
        meta = getattr(image, "meta", None)
        source = d.get("image_path") or d.get("source") or (meta or {}).get("filename_or_obj")
        if not source:
            raise KeyError("LabelToInputGeometryd needs the input path in 'image_path', 'source' or filename_or_obj")
        original, cine_meta = load_cine(source)
        for key in self.key_iterator(d):
            pred_hwt = np.asarray(torch.as_tensor(d[key]).detach().cpu()).astype(np.uint8)
            if pred_hwt.ndim == 4:
                pred_hwt = pred_hwt[0]
            height, width = original.shape[0], original.shape[1]
            labels = restore_labels(pred_hwt, height, width, cine_meta["spacing"], self.keep_aspect)
            nifti = label_nifti_like_input(labels, source, cine_meta)
            array = np.asanyarray(nifti.dataobj).astype(np.uint8)
            d[key] = torch.as_tensor(array[None])
            if meta is not None:
                meta["spatial_shape"] = np.asarray(array.shape)
                meta["original_affine"] = np.asarray(nifti.affine, dtype=np.float64)
        return d
