"""The operators of the echo LV application (``app.py``): cine loader -> bundle inference -> measurements -> writer.

Each operator handles one cine per call (the loader's ``CountCondition`` sets how many calls). A cine that fails in
any operator is recorded in the :class:`Ledger` (one line on stderr naming the file and the problem) and is not
passed on, so the operators after it do not run for it and nothing is written for it; the other cines go on.
Everything the bundle does (reading, preprocessing, the network's config, measurements, the SR and the files) is the
bundle's own code from ``bundle/scripts``, never a copy.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from model_folder import BUNDLE_ROOT, SETTING_KEYS, ModelRefused, ServedModel, check_config  # puts bundle/ on sys.path
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import MonaiBundleInferenceOperator

# Transforms of the bundle's inference.json that touch files: the application reads and writes in its own operators.
# The SDK's operator drops only LoadImage/SaveImage; the bundle's cine reader and writer have other names.
FILE_TRANSFORMS = ["LoadImage", "SaveImage", "LoadCine", "SaveCineResult"]
Result = TypeVar("Result")


@dataclass
class Ledger:
    """What happened to each input: failures (one line each on stderr) and the files written, with timings."""

    failed: list[tuple[str, str]] = field(default_factory=list)
    written: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)  # input -> the verdict of its measurement
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def fail(self, path: str | Path, problem: str) -> None:
        problem = " ".join(str(problem).split())  # one line
        self.failed.append((str(path), problem))
        print(f"input failed: {path}: {problem}", file=sys.stderr, flush=True)

    def time(self, path: str | Path, step: str, seconds: float) -> None:
        self.seconds.setdefault(str(path), {})[step] = seconds

    def run(
        self,
        path: str | Path,
        step: str,
        work: Callable[[], Result],
        failure: Callable[[BaseException, str], str] | None = None,
    ) -> Result | None:
        """``work()`` as the timed ``step`` of input ``path``; if it raises, the input fails (one line: the problem,
        or ``failure(error, problem)``) and the result is None, so that the operator passes nothing on for it."""
        start = time.perf_counter()
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - every failure is reported per file; the others go on
            problem = _problem(e, path)
            self.fail(path, failure(e, problem) if failure else problem)
            return None
        self.time(path, step, time.perf_counter() - start)
        return result


class InputError(Exception):
    """A cine that this application cannot give an SR (the message is the problem, the ledger adds the file)."""


def _problem(error: BaseException, path: str | Path) -> str:
    """The message of ``error`` without a leading ``<path>: `` (the ledger names the file); unexpected errors keep
    their type."""
    from scripts.data.errors import EchoDataError

    text = str(error)
    prefix = f"{path}: "
    if isinstance(error, (EchoDataError, InputError)):
        return text[len(prefix) :] if text.startswith(prefix) else text
    return f"{type(error).__name__}: {text}"


def list_inputs(input_path: str | Path) -> list[Path]:
    """The files of the input: the file itself, or every file under the folder (recursive, sorted, no hidden ones)."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return found


def read_ultrasound_cine(path: Path) -> tuple[np.ndarray, dict, Any]:
    """A multi-frame ultrasound DICOM cine with the bundle's reader: ``(image [H, W, T], meta, header dataset)``.

    Raises:
        scripts.data.errors.EchoDataError: not DICOM, not ultrasound (Modality), no pixel data, one frame, ...
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from scripts.data.errors import EchoDataError
    from scripts.data.video_io import load_cine

    if path.stat().st_size == 0:
        raise EchoDataError(path, "empty file (0 bytes)")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise EchoDataError(path, "not a DICOM file (no DICOM header)") from None
    except Exception as e:  # truncated files
        raise EchoDataError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    modality = str(header.get("Modality", ""))
    if modality != "US":
        kind = f"Modality {modality}" if modality else "no Modality"
        raise EchoDataError(path, f"not an ultrasound image ({kind}, expected US)")
    image, meta = load_cine(path)  # multi-frame, pixel data, ultrasound region, spacing, frame time
    if meta.get("format") != "dicom":
        raise EchoDataError(path, "not a DICOM file")
    return image, meta, header


class CineLoaderOperator(Operator):
    """Emits one input cine per call on ``cine``: ``{"path", "stem", "image" [H, W, T], "meta", "header"}``.

    A file that is not a multi-frame ultrasound DICOM cine is reported (:meth:`Ledger.fail`) and not emitted.
    """

    def __init__(self, fragment: Fragment, *args: Any, files: list[Path], stems: list[str], ledger: Ledger, **kw):
        self.files, self.stems, self.ledger, self.index = list(files), list(stems), ledger, 0
        super().__init__(fragment, *args, **kw)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("cine")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        if self.index >= len(self.files):
            return
        path, stem = self.files[self.index], self.stems[self.index]
        self.index += 1
        read = self.ledger.run(path, "load", lambda: read_ultrasound_cine(path))
        if read is not None:
            image, meta, header = read
            op_output.emit({"path": path, "stem": stem, "image": image, "meta": meta, "header": header}, "cine")


def bundle_config(served: ServedModel) -> Any:
    """The bundle config stored in ``model.ts`` (``extra/metadata.json`` + ``extra/inference.json``), pointed at this
    repository's ``bundle/`` for its code and given the trained settings of the model instead of reading them from
    ``models/model.pt``; :class:`model_folder.ModelRefused` when the file holds no such config or when the config would
    serve the model otherwise than it was trained.

    The files are read wherever the archive keeps them: the SDK's ``get_bundle_config`` finds them only under a top
    folder named after the file (``model/extra/...`` for ``model.ts``); for a renamed file (``torch.jit.save`` named
    the folder after the old name) it returned an empty config without an error (monai-deploy-app-sdk 4.0.0).
    """
    from monai.bundle import ConfigParser

    from scripts.export import read_torchscript_extra

    texts = {name: read_torchscript_extra(served.path, name) for name in ("metadata.json", "inference.json")}
    missing = [f"extra/{name}" for name, text in texts.items() if not text]
    if missing:
        raise ModelRefused(
            f"{served.path}: no {' or '.join(missing)} in the TorchScript file, so the app has no bundle config to "
            "run it with: export it with tools/monai_deploy/model_folder.py --ckpt <model.pt> --out <model folder>"
        )
    parser = ConfigParser()
    parser.read_meta(f=json.loads(texts["metadata.json"]))
    parser.read_config(f=json.loads(texts["inference.json"]))
    parser.parse()
    parser["bundle_root"] = str(BUNDLE_ROOT)
    parser["ckpt_dir"] = str(served.path.parent)
    parser["trained"] = dict(served.settings)  # was: scripts.checkpoint.trained_settings(<ckpt_dir>/model.pt)
    check_config(served, {k: parser.get_parsed_content(k) for k in SETTING_KEYS if parser.get(k) is not None})
    return parser


class EchoBundleInferenceOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle inference operator for a cine: one ``cine`` in, the same dict plus ``"pred"`` (labels
    ``[1, h, w, T]`` at network resolution) out.

    What it keeps from the SDK's operator: the bundle config read from ``model.ts``'s extra files, the config's
    ``device``, ``inferer`` (the bundle's ``StreamingInferer``), ``preprocessing`` and ``postprocessing`` with the
    file transforms dropped, and ``pre_process``/``predict``/``post_process``. What it changes (docs/deploy.md, "MONAI
    Deploy"): the trained settings come from the model's description (:func:`bundle_config`); the bundle's own reader
    and writer (``LoadCined``, ``SaveCineResultd``) are dropped too; the input is the loader's cine (a MetaTensor with
    the cine's spacing, as ``LoadCined`` makes it), not an SDK ``Image`` (whose conversion swaps axes for DICOM
    volumes); the output is not squeezed or transposed; and a failing cine is reported, not the end of the app.
    """

    def __init__(self, fragment: Fragment, *args: Any, served: ServedModel, ledger: Ledger, **kw: Any) -> None:
        self.served, self.ledger = served, ledger
        super().__init__(fragment, *args, bundle_path=served.path, **kw)

    def _init_config(self, config_names: Any) -> None:
        parser = bundle_config(self.served)
        self._parser = parser
        self._device = parser.get_parsed_content("device")
        self._inferer = parser.get_parsed_content("inferer")
        meta = parser["_meta_"]
        self._inputs = meta["network_data_format"]["inputs"]
        self._outputs = meta["network_data_format"]["outputs"]
        self._preproc = self._get_compose("preprocessing", FILE_TRANSFORMS)
        self._postproc = self._get_compose("postprocessing", FILE_TRANSFORMS)
        self._meta_key_postfix = self._get_meta_key_postfix(self._preproc)
        self.keep_aspect = bool(parser.get_parsed_content("keep_aspect"))
        self.num_classes = int(parser.get_parsed_content("num_classes"))
        from scripts.memory_check import DEFAULT_CHECKED_FRAMES

        self.memory_check_frames = int(parser.get_parsed_content("memory_check_frames", default=DEFAULT_CHECKED_FRAMES))

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("cine")
        spec.output("seg")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        cine = op_input.receive("cine")
        pred = self.ledger.run(
            cine["path"], "inference", lambda: self._segment(cine), lambda e, problem: f"inference failed: {problem}"
        )
        if pred is not None:
            labels, confidence, checked = pred
            seg = {**cine, "pred": labels, "confidence": confidence, "memory_check": checked}
            op_output.emit({**seg, "keep_aspect": self.keep_aspect}, "seg")

    def _segment(self, cine: dict[str, Any]) -> tuple[np.ndarray, list[float], dict[str, Any] | None]:
        """Labels ``[1, h, w, T]`` (uint8, network resolution) of the loader's cine, the network's per-frame
        confidence in its LV (:func:`scripts.clinical.lv_confidence`, ``[T]``) and the stepped masks against a few
        frames segmented alone (:func:`scripts.memory_check.memory_check`, the bundle's ``memory_check_frames``)."""
        from scripts.clinical import lv_confidence
        from scripts.data.video_io import to_meta_tensor
        from scripts.memory_check import memory_check

        if self._model_network is None:
            self._model_network = torch.jit.load(str(self.served.path), map_location=self._device).eval()
        meta = cine["meta"]
        data = {
            "image": to_meta_tensor(cine["image"], meta),  # [1, H, W, T], as LoadCined gives it
            "spacing": np.asarray(meta["spacing"], dtype=np.float32),
            "frame_rate": meta["frame_rate"],
        }
        with torch.no_grad():
            data = self.pre_process(data)
            image = data["image"]
            logits = self.predict(data=image.as_tensor()[None].to(self._device, torch.float32))
            if logits.ndim != 5 or logits.shape[1] != self.num_classes:
                raise InputError(
                    f"the network gave logits of shape {tuple(logits.shape)}, expected "
                    f"[1, {self.num_classes}, H, W, T] for labels {self.served.settings['labels']!r}"
                )
            confidence = lv_confidence(torch.softmax(logits[0].float().cpu(), dim=0).numpy())
            checked = memory_check(self._model_network, image.as_tensor(), logits[0], self.memory_check_frames)
            out = self.post_process(logits[0].cpu(), **{self.kw_preprocessed_inputs: data})
        return np.asarray(torch.as_tensor(out["pred"]).cpu()).astype(np.uint8), confidence, checked


class EchoMeasurementsOperator(Operator):
    """LV measurements of a segmented cine with the bundle's clinical code (:func:`scripts.clinical.measure_cine`,
    as the bundle's inference makes them): labels back on the cine's grid, the largest LV component per frame, beats
    accepted or rejected, single-plane Simpson EDV/ESV and EF over the accepted beats, and the verdict. A cine whose
    verdict is "reject", without an accepted beat or without calibrated spacing cannot have an SR: it fails here,
    before anything is written."""

    def __init__(self, fragment: Fragment, *args: Any, ledger: Ledger, lv_label: int = 1, **kw: Any) -> None:
        self.ledger, self.lv_label = ledger, lv_label
        super().__init__(fragment, *args, **kw)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg")
        spec.output("measured")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        seg = op_input.receive("seg")
        report = self.ledger.run(seg["path"], "measure", lambda: self._measure(seg))
        if report is not None:
            op_output.emit({**seg, "report": report}, "measured")

    def _measure(self, seg: dict[str, Any]) -> dict[str, Any]:
        """The clinical report of one segmented cine; :class:`InputError` when it cannot have an SR."""
        from scripts import clinical
        from scripts.clinical.dicom_sr import sr_problem
        from scripts.geometry import restore_labels

        meta, (H, W, _) = seg["meta"], seg["image"].shape
        labels = restore_labels(seg["pred"][0], H, W, meta["spacing"], seg["keep_aspect"])
        spacing = tuple(float(s) for s in meta["spacing"]) if meta.get("spacing_known") else None
        rate = meta.get("frame_rate")
        rate = float(rate) if rate is not None and math.isfinite(float(rate)) else None
        report = clinical.measure_cine(
            labels,
            spacing,
            rate,
            meta,
            seg["image"],
            seg.get("confidence"),
            lv_label=self.lv_label,
            memory_check=seg.get("memory_check"),
        )
        self.ledger.verdicts[str(seg["path"])] = report["quality"]["verdict"]
        problem = sr_problem(meta, report)
        if problem is not None:
            raise InputError(f"no DICOM SR: {problem}")
        return report


class EchoResultWriterOperator(Operator):
    """Writes one cine's results into the output folder, all or nothing: the DICOM SR (``<stem>_sr.dcm``), the label
    NIfTI, the clinical report (JSON, CSV, curve), the overlay pictures and, last, ``<stem>_seg.json``, exactly as the
    bundle's ``inference.json --write_sr True`` writes them (:class:`scripts.inference.SaveCineResultd`). The files
    are written into a temporary folder inside the output folder and moved into place once all exist."""

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_dir: Path,
        ledger: Ledger,
        model_file: Path | None = None,
        **kw: Any,
    ) -> None:
        self.output_dir, self.ledger, self.model_file = Path(output_dir), ledger, model_file
        super().__init__(fragment, *args, **kw)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("measured")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        item = op_input.receive("measured")
        path, report = item["path"], item["report"]
        moved = self.ledger.run(
            path,
            "write",
            lambda: self._write(item),
            lambda e, problem: problem if isinstance(e, InputError) else f"writing the results failed: {problem}",
        )
        if moved is None:
            return
        verdict = report["quality"]["verdict"]
        self.ledger.written.append(
            {"input": str(path), "files": moved, "ef_percent": report["ef_percent"], "verdict": verdict}
        )
        why = f": {'; '.join(report['quality']['reasons'])}" if verdict != "ok" else ""
        print(
            f"{path}: EF {report['ef_percent']:.1f} % (EDV {report['edv_ml']:.1f} ml, ESV {report['esv_ml']:.1f} ml, "
            f"{report['beats_accepted']} of {len(report['beats'])} beat(s) accepted), verdict {verdict}{why} "
            f"-> {moved['sr']}",
            flush=True,
        )

    def _write(self, item: dict[str, Any]) -> dict[str, str]:
        """Write one cine's files into a temporary folder, then move them into place (the summary JSON last);
        returns ``{kind: path}`` of the files in the output folder."""
        from scripts.inference import SaveCineResultd, summary_path

        path, stem, report = item["path"], item["stem"], item["report"]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.output_dir, prefix=".partial-") as tmp:
            saver = SaveCineResultd(
                output_dir=tmp, keep_aspect=item["keep_aspect"], write_sr=True, model_file=self.model_file
            )
            files = saver.write(
                item["pred"], path, stem, confidence=item.get("confidence"), memory_check=item.get("memory_check")
            )
            if "sr" not in files:  # e.g. a DICOM without Study/Series/SOP Instance UIDs
                reason = json.loads(Path(files["summary"]).read_text()).get("sr_reason")
                raise InputError(f"no DICOM SR: {reason}")
            written = _json_number(Path(files["summary"]), "ef_percent")
            if not _same(written, report["ef_percent"]):
                raise InputError(f"the written EF {written} differs from the measured {report['ef_percent']}")
            final = summary_path(self.output_dir, stem)
            final.unlink(missing_ok=True)  # a complete output of an earlier run is replaced whole
            moved = {}
            for key in sorted(files, key=lambda k: k == "summary"):  # the summary JSON last: marks complete
                relative = Path(files[key]).relative_to(tmp)
                target = self.output_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(files[key], target)
                moved[key] = str(target)
        return moved


def _json_number(path: Path, key: str) -> float:
    value = json.loads(path.read_text())[key]
    return math.nan if value is None else float(value)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def remove_stale(output_dir: Path, stem: str) -> None:
    """Remove an earlier run's SR and summary of a cine that failed now (they would contradict this run)."""
    for suffix in ("_seg.json", "_sr.dcm"):
        (output_dir / f"{stem}{suffix}").unlink(missing_ok=True)


__all__ = [
    "CineLoaderOperator",
    "EchoBundleInferenceOperator",
    "EchoMeasurementsOperator",
    "EchoResultWriterOperator",
    "Ledger",
    "bundle_config",
    "list_inputs",
    "remove_stale",
]
