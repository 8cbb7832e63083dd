"""DICOM Structured Report of the LV measurements of one echo cine (TID 1500 Measurement Report, Comprehensive 3D SR).

One SR per source cine, written with highdicom. Content tree (``docs/deploy.md`` shows it in full):

- per beat with a valid EF, two planar ROI groups (TID 1410), one at ED and one at ES, each with the LV outline as a
  closed POLYLINE (SCOORD) on the referenced frame of the source cine and the LV volume (LOINC 18026-5 EDV or
  18148-7 ESV, ml, method DCM 125208 "Method of Disks, Single Plane"), and one measurement group (TID 1501) with the
  beat's LVEF (LOINC 18043-0, %) whose source is the cine's ED and ES frames;
- one measurement group "LV function" with the cine's LVEF, EDV and ESV (the mean over the valid beats, as in the
  bundle's JSON report; derivation "Mean" when there are several beats).

Frame numbers are DICOM's (1-based: frame index ``t`` of the JSON report is frame number ``t + 1``). Outline points
are (column, row) in the source's full pixel grid, DICOM's image coordinates (the top left corner of the top left
pixel is (0, 0), so the centre of pixel (r, c) is (c + 0.5, r + 0.5)): the loader's crop to the ultrasound region is
undone. The patient and study identifiers are copied from the source so that the SR files with its study; no other
patient data (birth date, sex, age, ...) is copied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_paths
from .evaluation import largest_component
from .volumes import lv_geometry

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# Attributes copied from the source: identifiers that file the SR with the patient and the study, and the equipment
# that made the images (type 2 Patient/Study attributes that are not copied are written empty).
PATIENT_STUDY_KEYS = (
    "PatientID",
    "PatientName",
    "IssuerOfPatientID",
    "StudyInstanceUID",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
)
# Attributes of the source image that highdicom needs to reference it (no personal data).
SOURCE_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Manufacturer",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PixelRepresentation",
)
SERIES_NUMBER = 900  # the SR's series number (an SR series beside the cine's)
ML = ("ml", "UCUM", "milliliter")
# The finding of a cine whose verdict is "review" (a code of this bundle's own scheme: DICOM has none for it).
REVIEW_FINDING = ("REVIEW", "99GDKVM", "Automated measurement requires review")


class SRUnavailableError(Exception):
    """The input cannot have an SR (not DICOM, unknown spacing, no measurable beat); the message says why."""


def _codes() -> Any:
    from pydicom.sr.codedict import codes

    return codes


def bundle_version() -> str:
    """The bundle's version from ``configs/metadata.json`` (``"unknown"`` when it cannot be read)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "metadata.json"
    try:
        return str(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def sr_problem(meta: Mapping[str, Any], report: Mapping[str, Any]) -> str | None:
    """Why no SR can be written for a cine with loader ``meta`` and measured ``report``, or ``None``.

    ``report``: :func:`scripts.clinical.measure_cine` (with ``quality``) or :func:`scripts.clinical.cine_report`.
    """
    if meta.get("format") != "dicom":
        return f"the input is {meta.get('format') or 'not a DICOM file'}, not DICOM: an SR must reference a DICOM cine"
    if not meta.get("spacing_known"):
        reason = meta.get("spacing_problem") or "the DICOM has no pixel spacing (no calibrated ultrasound region)"
        return f"{reason}: volumes in ml are unknown"
    quality = report.get("quality") or {}
    if quality.get("verdict") == "reject":
        return "verdict reject: " + "; ".join(quality.get("reasons") or [])
    if not _reported_beats(report):
        return f"no accepted beat with a measurable EF ({report.get('reason')})"
    return None


def _reported_beats(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The beats an SR carries: accepted ones (every beat for a report without ``accepted``) with a finite EF."""
    return [b for b in report["beats"] if b.get("accepted", True) and math.isfinite(b["ef_percent"])]


def device_uid(model: Mapping[str, Any] | None, algorithm_version: str) -> str:
    """A UID for the device observer that is the same for the same weights (derived from their checksum)."""
    from pydicom.uid import generate_uid

    key = (model or {}).get("sha256") or f"GDKVM echo bundle {algorithm_version}"
    return generate_uid(entropy_srcs=["GDKVM echo bundle device", str(key)])


def _source_evidence(source: Dataset) -> Dataset:
    """A copy of the source's references, patient and study identifiers and equipment, nothing else."""
    from pydicom.dataset import Dataset

    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if k not in source]
    if missing:
        raise SRUnavailableError(f"the DICOM lacks {', '.join(missing)}: an SR cannot reference it")
    evidence = Dataset()
    for key in SOURCE_KEYS:
        if key in source:
            setattr(evidence, key, source[key].value)
    for key in PATIENT_STUDY_KEYS:
        setattr(evidence, key, source[key].value if key in source else "")
    evidence.PatientBirthDate = ""
    evidence.PatientSex = ""
    evidence.ReferringPhysicianName = ""
    return evidence


def lv_outline(labels_HW: np.ndarray, spacing_mm: Sequence[float], crop: Sequence[int] | None) -> np.ndarray:
    """Closed LV outline ``[N + 1, 2]`` (column, row) in the source's full pixel grid (DICOM image coordinates).

    The outline is the contour that the volume was measured on (:func:`scripts.clinical.lv_geometry`), shifted by the
    crop offset ``(y0, y1, x0, x1)`` of the loader; the first point is repeated at the end.
    """
    geometry, reason, _ = lv_geometry(labels_HW, spacing_mm)
    if geometry is None:
        raise SRUnavailableError(f"no LV outline: {reason}")
    rc = geometry.contour_mm / np.asarray(geometry.spacing_mm)
    y0, x0 = (int(crop[0]), int(crop[2])) if crop is not None else (0, 0)
    xy = np.stack([rc[:, 1] + x0 + 0.5, rc[:, 0] + y0 + 0.5], axis=1)
    return np.vstack([xy, xy[:1]]).astype(np.float32)


def build_lv_sr(
    source: Dataset,
    labels_HWT: np.ndarray,
    report: Mapping[str, Any],
    meta: Mapping[str, Any],
    lv_label: int = 1,
    algorithm_version: str = "unknown",
    model: Mapping[str, Any] | None = None,
) -> Any:
    """The TID 1500 Comprehensive 3D SR of one cine (see the module docstring for the content tree).

    Args:
        source: the source cine's dataset (pixel data not needed).
        labels_HWT: ``[H, W, T]`` labels on the loader's (cropped) grid, as measured by ``report`` (each outline is
            the largest LV component of its frame, the one the measurement used).
        report: :func:`scripts.clinical.measure_cine` of ``labels_HWT`` (its ``quality`` decides what is written).
        meta: the loader's metadata (``format``, ``spacing``, ``spacing_known``, ``crop``).
        algorithm_version: recorded as the algorithm's version (the bundle version).
        model: :func:`scripts.checkpoint.model_identity` of the weights (checksum, training data), recorded as the
            algorithm's parameters and the source of the device observer's UID.

    Raises:
        SRUnavailableError: the input cannot have an SR (see :func:`sr_problem`).
    """
    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    problem = sr_problem(meta, report)
    if problem is not None:
        raise SRUnavailableError(problem)
    codes = _codes()
    evidence = _source_evidence(source)
    n_frames = int(source.get("NumberOfFrames", 1) or 1)
    ml = Code(*ML)
    labels = np.asarray(labels_HWT)
    spacing = tuple(float(s) for s in meta["spacing"])
    model = dict(model or {})
    verdict = (report.get("quality") or {}).get("verdict", "ok")
    parameters = [
        f"weights sha256 {model.get('sha256', 'unknown')}",
        f"trained on {model.get('trained_on', 'not recorded')}",
        "research use only",
        f"verdict {verdict}",
    ]
    algorithm = hd.sr.AlgorithmIdentification(
        name="GDKVM echo LV segmentation", version=algorithm_version, parameters=parameters
    )
    method = codes.DCM.MethodOfDisksSinglePlane
    lv = codes.SCT.LeftVentricle
    groups: list[Any] = []
    valid = _reported_beats(report)

    def frame_source(*frames: int) -> list[Any]:
        numbers = [int(f) + 1 for f in frames]
        if any(not 1 <= n <= n_frames for n in numbers):
            raise SRUnavailableError(f"frame numbers {numbers} outside the source's {n_frames} frames")
        return [hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence, referenced_frame_numbers=numbers)]

    for k, beat in enumerate(valid, start=1):
        for phase, frame, name, value in (
            ("ED", beat["ed"], codes.LN.LeftVentricularEndDiastolicVolume, beat["edv_ml"]),
            ("ES", beat["es"], codes.LN.LeftVentricularEndSystolicVolume, beat["esv_ml"]),
        ):
            frame_number = int(frame) + 1
            frame_source(frame)  # checks the frame number
            outline = lv_outline(largest_component(labels[..., int(frame)] == lv_label), spacing, meta.get("crop"))
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=outline,
                source_image=hd.sr.SourceImageForRegion.from_source_image(
                    evidence, referenced_frame_numbers=[frame_number]
                ),
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=generate_uid(), identifier=f"LV endocardium beat {k} {phase} frame {frame_number}"
                    ),
                    referenced_region=region,
                    finding_type=lv,
                    algorithm_id=algorithm,
                    measurements=[hd.sr.Measurement(name=name, value=float(value), unit=ml, method=method)],
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(),
                    identifier=f"LV function beat {k} ED frame {int(beat['ed']) + 1} ES frame {int(beat['es']) + 1}",
                ),
                finding_type=lv,
                algorithm_id=algorithm,
                source_images=frame_source(beat["ed"], beat["es"]),
                measurements=[
                    hd.sr.Measurement(
                        name=codes.LN.LeftVentricularEjectionFractionByUS,
                        value=float(beat["ef_percent"]),
                        unit=codes.UCUM.Percent,
                        method=method,
                    )
                ],
            )
        )
    mean = codes.SCT.Mean if len(valid) > 1 else None
    frames = sorted({int(b[p]) for b in valid for p in ("ed", "es")})
    if verdict != "ok":
        groups.append(_review_group(hd, algorithm, frame_source(*frames), report))
        return _assemble(hd, evidence, groups, model, algorithm_version, verdict)
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier=f"LV function, {'mean of ' if mean else ''}{len(valid)} beat(s)"
            ),
            finding_type=lv,
            algorithm_id=algorithm,
            source_images=frame_source(*frames),
            measurements=[
                hd.sr.Measurement(name=name, value=float(report[key]), unit=unit, method=method, derivation=mean)
                for name, key, unit in (
                    (codes.LN.LeftVentricularEjectionFractionByUS, "ef_percent", codes.UCUM.Percent),
                    (codes.LN.LeftVentricularEndDiastolicVolume, "edv_ml", ml),
                    (codes.LN.LeftVentricularEndSystolicVolume, "esv_ml", ml),
                )
            ],
        )
    )
    return _assemble(hd, evidence, groups, model, algorithm_version, verdict)


def _review_group(hd: Any, algorithm: Any, source_images: list[Any], report: Mapping[str, Any]) -> Any:
    """A measurement group that says the cine's numbers need review: a coded finding and the reasons as text.

    It takes the place of the cine's summary (mean LVEF, EDV, ESV), which is written only for verdict "ok".
    """
    from pydicom.sr.coding import Code

    codes = _codes()
    reasons = (report.get("quality") or {}).get("reasons") or ["not stated"]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(), identifier="LV function: review required"),
        finding_type=codes.SCT.LeftVentricle,
        algorithm_id=algorithm,
        source_images=source_images,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=Code(*REVIEW_FINDING)),
        ],
    )
    text = "; ".join(str(r) for r in reasons)[:1024]
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    return group


def _uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def _assemble(
    hd: Any, evidence: Dataset, groups: list[Any], model: Mapping[str, Any], algorithm_version: str, verdict: str
) -> Any:
    """The Comprehensive 3D SR around ``groups``, observed by the device that the model's checksum names."""
    codes = _codes()
    checksum = str(model.get("sha256", ""))[:16] or None
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model, algorithm_version),
            name="GDKVM echo bundle",
            model_name=f"GDKVM {algorithm_version}",
            serial_number=checksum,
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.Echocardiography,
        imaging_measurements=groups,
    )
    description = "LV function (GDKVM, Simpson), research use only" + (", REVIEW" if verdict != "ok" else "")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[evidence],
        content=content[0],
        series_number=SERIES_NUMBER,
        series_instance_uid=_uid(),
        sop_instance_uid=_uid(),
        instance_number=1,
        manufacturer="GDKVM echo bundle",
        series_description=description,
    )
    if str(evidence.get("IssuerOfPatientID", "")):
        sr.IssuerOfPatientID = evidence.IssuerOfPatientID
    return sr


def write_lv_sr(
    source_path: str | Path,
    labels_HWT: np.ndarray,
    report: Mapping[str, Any],
    meta: Mapping[str, Any],
    out_path: str | Path,
    lv_label: int = 1,
    algorithm_version: str = "unknown",
    model: Mapping[str, Any] | None = None,
) -> Path:
    """Build the SR of :func:`build_lv_sr` for the DICOM ``source_path`` and write it atomically to ``out_path``.

    Raises:
        SRUnavailableError: the input cannot have an SR; nothing is written.
    """
    import pydicom

    problem = sr_problem(meta, report)
    if problem is not None:
        raise SRUnavailableError(problem)
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    sr = build_lv_sr(
        source, labels_HWT, report, meta, lv_label=lv_label, algorithm_version=algorithm_version, model=model
    )
    out = Path(out_path)
    with atomic_paths(out) as (tmp,):
        sr.save_as(tmp, enforce_file_format=True)
    return out
