"""Stream cine files frame by frame to the Triton model of ``scripts.triton_repository``; write the bundle's outputs.

Each cine is one Triton *sequence*: every frame is one request carrying the cine's ``sequence_id``, the first with
``sequence_start`` and the last with ``sequence_end``; the server keeps the recurrent state between requests
(implicit state, see ``bundle/scripts/triton_repository.py``). The frames are prepared, and the outputs written, by
the bundle's own ``inference.json`` ``preprocessing`` (``LoadCined`` + ``ResizeCined`` at the model's frame size,
``keep_aspect`` from the model config's parameters) and ``postprocessing`` (``AsDiscreted`` + ``SaveCineResultd``):
``<output_dir>/<name>_seg.nii.gz``, ``<name>_seg.json`` and the clinical report, as ``python -m monai.bundle run
--config_file bundle/configs/inference.json`` writes them.

Usage (needs ``tritonclient[grpc]``, pinned in requirements.txt; the server: docs/deploy.md)::

    python tools/triton_serving/client.py --url localhost:8001 --model gdkvm_echo --output_dir out \\
        cine1.dcm study/cine2.avi
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _bundle_importable(bundle_root: Path) -> None:
    if str(bundle_root) not in sys.path:
        sys.path.insert(0, str(bundle_root))


def model_settings(client: Any, model: str) -> dict[str, Any]:
    """Frame size and preprocessing of the served model, from its config (``client.get_model_config``).

    Returns:
        ``{"frame_shape": [1, 1, H, W], "keep_aspect": bool, "logits": name}``.
    """
    config = client.get_model_config(model).config
    frames = [i for i in config.input if i.name == "frame"]
    if not frames or list(frames[0].dims)[:2] != [1, 1] or len(frames[0].dims) != 4:
        raise ValueError(f"Triton model {model!r} has no input 'frame' [1, 1, H, W] (not a GDKVM step)")
    keep = config.parameters["keep_aspect"].string_value if "keep_aspect" in config.parameters else "true"
    return {"frame_shape": [int(d) for d in frames[0].dims], "keep_aspect": keep.lower() == "true"}


def bundle_transforms(
    bundle_root: Path, output_dir: str | Path, spatial_size: Sequence[int], keep_aspect: bool, **options: Any
) -> tuple[Callable, Callable]:
    """``(preprocessing, postprocessing)`` of the bundle's ``inference.json`` for frames of ``spatial_size``.

    ``options``: ``write_clinical_report``, ``write_overlays``, ``save_image`` (as on the bundle command line).
    """
    _bundle_importable(bundle_root)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_root)
    parser["output_dir"] = str(output_dir)
    parser["spatial_size"] = list(spatial_size)
    parser["keep_aspect"] = bool(keep_aspect)
    for key, value in options.items():
        parser[key] = value
    return parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")


def stream_frames(client: Any, model: str, video_1HWT: np.ndarray, sequence_id: int) -> np.ndarray:
    """Send the frames of one cine ``[1, H, W, T]`` as one sequence; returns logits ``[K, H, W, T]`` (float32)."""
    import tritonclient.grpc as grpcclient

    frames = video_1HWT.shape[-1]
    logits = []
    for t in range(frames):
        frame = np.ascontiguousarray(video_1HWT[None, ..., t], dtype=np.float32)  # [1, 1, H, W]
        request = grpcclient.InferInput("frame", list(frame.shape), "FP32")
        request.set_data_from_numpy(frame)
        result = client.infer(
            model,
            [request],
            outputs=[grpcclient.InferRequestedOutput("logits")],
            sequence_id=sequence_id,
            sequence_start=t == 0,
            sequence_end=t == frames - 1,
        )
        logits.append(result.as_numpy("logits")[0])
    return np.stack(logits, axis=-1)


def segment_files(
    client: Any,
    model: str,
    files: Sequence[str | Path],
    output_dir: str | Path,
    bundle_root: str | Path = REPO_ROOT / "bundle",
    first_sequence_id: int = 1,
    **options: Any,
) -> list[dict[str, Any]]:
    """Segment ``files`` through the served model, one sequence each, writing the bundle's outputs.

    Returns:
        The items after the bundle's postprocessing (``pred`` the labels ``[1, H, W, T]``), one per file.
    """
    bundle_root = Path(bundle_root).resolve()
    settings = model_settings(client, model)
    height, width = settings["frame_shape"][2:]
    preprocessing, postprocessing = bundle_transforms(
        bundle_root, output_dir, (height, width), settings["keep_aspect"], **options
    )
    from scripts.inference import find_cines

    done = []
    paths = [Path(f).resolve() for f in files]
    common = Path(os.path.commonpath([p.parent for p in paths]))  # outputs named relative to it, as inference.json
    for offset, item in enumerate(find_cines(common, [str(p) for p in paths])):
        item = preprocessing(item)
        image = item["image"]
        if tuple(image.shape[1:3]) != (height, width):
            raise ValueError(
                f"{item['source']}: preprocessed to {tuple(image.shape[1:3])}, model takes {height, width}"
            )
        logits = stream_frames(client, model, np.asarray(image.detach().cpu()), first_sequence_id + offset)
        item["pred"] = torch.from_numpy(logits)
        done.append(postprocessing(item))
        print(f"{item['source']}: {image.shape[-1]} frames, sequence {first_sequence_id + offset}", flush=True)
    return done


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="cine files (DICOM, AVI/MP4, NIfTI, MetaImage)")
    parser.add_argument("--url", default="localhost:8001", help="Triton's gRPC address")
    parser.add_argument("--model", default="gdkvm_echo")
    parser.add_argument("--output_dir", default="triton_outputs")
    parser.add_argument("--bundle_root", default=str(REPO_ROOT / "bundle"))
    parser.add_argument("--first_sequence_id", type=int, default=1)
    parser.add_argument("--write_overlays", default="True", choices=["True", "False"])
    parser.add_argument("--write_clinical_report", default="True", choices=["True", "False"])
    parser.add_argument("--save_image", default="False", choices=["True", "False"])
    args = parser.parse_args(argv)
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=args.url)
    options = {k: getattr(args, k) == "True" for k in ("write_overlays", "write_clinical_report", "save_image")}
    segment_files(client, args.model, args.files, args.output_dir, args.bundle_root, args.first_sequence_id, **options)


if __name__ == "__main__":
    main()
