"""Echo data: cine I/O (DICOM, AVI, NIfTI, MetaImage), CAMUS and EchoNet-Dynamic datalists, clip transforms.

Everything follows the data contract of DESIGN.md: image ``[1, H, W, T]`` float32 in [0, 1], label ``[1, H, W, T]``
uint8 (0 bg, 1 LV, 2 myocardium, 3 LA), ``label_frames [T]`` bool, spacing in mm in the MetaTensor affine and in
``spacing``.
"""

from .camus import LoadCamusd, camus_datalist, read_info_cfg, read_split
from .echonet import LoadEchoNetd, echonet_datalist, read_volume_tracings, trace_to_mask
from .errors import EchoDataError
from .transforms import (
    RandClipd,
    RandContrastCined,
    RandGammaCined,
    RandRotateCined,
    RandScaleCined,
    ResizeCined,
    SampleClipd,
    aspect_padding,
    clip_frame_indices,
)
from .video_io import LoadCined, load_cine

__all__ = [
    "EchoDataError",
    "LoadCamusd",
    "LoadCined",
    "LoadEchoNetd",
    "RandClipd",
    "RandContrastCined",
    "RandGammaCined",
    "RandRotateCined",
    "RandScaleCined",
    "ResizeCined",
    "SampleClipd",
    "aspect_padding",
    "camus_datalist",
    "clip_frame_indices",
    "echonet_datalist",
    "load_cine",
    "read_info_cfg",
    "read_split",
    "read_volume_tracings",
    "trace_to_mask",
]
