"""EchoNet-Dynamic: the bundle's full-video EF of every video of a split against ``FileList.csv``'s EF.

The command a user types (``configs/echonet_ef.json`` on top of ``configs/inference.json``; docs/evaluation.md,
"EchoNet-Dynamic: full-video EF against FileList.csv")::

    python -m monai.bundle run --config_file "['bundle/configs/inference.json','bundle/configs/echonet_ef.json']" \\
        --dataset_dir /data/EchoNet-Dynamic --output_dir bundle/eval/echonet_ef [--split test|val|train|all] \\
        [--predictions DIR]

1. The inference command segments the videos (``Videos/<FileName>.avi``) of the ``FileList.csv`` rows of the split
   into ``output_dir`` (``<FileName>_seg.json`` etc.; a rerun skips finished videos). With ``--predictions DIR`` no
   video is segmented (the network is built by the config but not run, and no weights are needed): the
   ``<FileName>_seg.json`` files already in ``DIR`` are read.
2. :meth:`EchoNetEF.compare` reads each video's ``ef_percent`` (the mean EF over the accepted beats of the whole
   video) and compares it with the row's ``EF``: it writes ``echonet_ef_per_video.csv``, ``echonet_ef_summary.json``
   (agreement over all videos with an EF, over those not rejected and over verdict ``ok`` only; beats; verdicts;
   failures) and the Bland-Altman and correlation plots, and prints a short table.

Exit status (the config's ``finalize``, :meth:`EchoNetEF.exit_on_failure`): 1 when a video of the split has no
``seg.json`` (it failed in inference, see ``failures.csv``, or is missing from ``--predictions DIR``) or when no video
has an EF to compare; 0 otherwise. A video the bundle measured but gave no EF (no accepted beat) is a result, not a
failure: it is a row of the CSV (status ``no_ef``) and counted in the summary.

Bad input ends the command with one line ``error: <file>: <problem>`` (:class:`scripts.data.EchoDataError` through
:func:`scripts.console.install_excepthook`) and no comparison output: no ``FileList.csv`` or a column missing, no row
of the split, the video of a row missing (when segmenting), ``--predictions`` not a folder, a ``seg.json`` that cannot
be read or lacks the full-video EF (written by an older bundle). All outputs are written together, atomically
(:func:`scripts.clinical._io.atomic_paths`), after every input has been read; the outputs of an earlier comparison in
``output_dir`` are removed first, so that present outputs always belong to the last comparison.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.clinical._io import atomic_paths, json_safe
from scripts.clinical.plots import plot_bland_altman, plot_correlation
from scripts.clinical.stats import agreement
from scripts.data.echonet import FILELIST_COLUMNS, SPLITS, _num
from scripts.data.errors import EchoDataError
from scripts.inference import find_cines, output_stem, summary_path

__all__ = [
    "OUTPUT_NAMES",
    "EchoNetEF",
    "FileListRow",
    "VideoResult",
    "collect_results",
    "compare_ef",
    "format_table",
    "read_failures",
    "read_file_list",
    "read_prediction",
    "write_comparison",
]

OUTPUT_NAMES = {
    "csv": "echonet_ef_per_video.csv",
    "summary": "echonet_ef_summary.json",
    "bland_altman": "echonet_ef_bland_altman.png",
    "correlation": "echonet_ef_correlation.png",
    "bland_altman_ok": "echonet_ef_bland_altman_ok.png",
    "correlation_ok": "echonet_ef_correlation_ok.png",
}
CSV_COLUMNS = (
    "FileName",
    "split",
    "ef_reference",
    "ef_predicted",
    "ef_difference",
    "ef_sd",
    "beats_accepted",
    "beats_total",
    "verdict",
    "reasons",
    "status",
    "problem",
)
MEASURED, NO_EF, FAILED, MISSING = "measured", "no_ef", "failed", "missing"
SUBSETS = ("all", "not_rejected", "ok")
REQUIRED_KEYS = ("ef_percent", "ef_sd", "beats_accepted", "beats", "quality")
FAILURES_CSV = "failures.csv"


@dataclass(frozen=True)
class FileListRow:
    """One row of ``FileList.csv``: ``name`` (FileName without ``.avi``), ``ef`` (NaN when empty), ``split``."""

    name: str
    ef: float
    split: str


@dataclass
class VideoResult:
    """One video of the comparison: its FileList row and what its ``seg.json`` says (``None``: no seg.json)."""

    row: FileListRow
    status: str
    ef: float = math.nan
    ef_sd: float = math.nan
    beats_accepted: int | None = None
    beats_total: int | None = None
    verdict: str = ""
    reasons: tuple[str, ...] = ()
    problem: str = ""

    def csv_row(self) -> list[str]:
        """The row of ``echonet_ef_per_video.csv`` (:data:`CSV_COLUMNS`); empty cells for unknown values."""
        ef_ref, ef = self.row.ef, self.ef
        return [
            self.row.name,
            self.row.split,
            _cell(ef_ref),
            _cell(ef),
            _cell(ef - ef_ref),
            _cell(self.ef_sd),
            "" if self.beats_accepted is None else str(self.beats_accepted),
            "" if self.beats_total is None else str(self.beats_total),
            self.verdict,
            "; ".join(self.reasons),
            self.status,
            self.problem,
        ]


def _cell(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ""


def read_file_list(root: str | Path, split: str = "test") -> list[FileListRow]:
    """The rows of ``<root>/FileList.csv`` of one split (``train``, ``val``, ``test`` in any case, or ``all``).

    Every row counts, traced or not (the full-video EF needs no tracing). ``FileName`` may carry ``.avi``.

    Raises:
        EchoDataError: no ``FileList.csv``, a column of :data:`scripts.data.echonet.FILELIST_COLUMNS` missing, a
            FileName twice in the split, or no row of the split.
        ValueError: ``split`` is none of the above.
    """
    file_list = Path(root) / "FileList.csv"
    want = str(split).strip().upper()
    if want != "ALL" and want not in SPLITS:
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    if not file_list.is_file():
        raise EchoDataError(file_list, "FileList.csv not found (is dataset_dir the EchoNet-Dynamic folder?)")
    try:
        with file_list.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in FILELIST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise EchoDataError(file_list, f"missing columns {missing}")
            rows: list[FileListRow] = []
            for r in reader:
                row_split = (r.get("Split") or "").strip().upper()
                if want != "ALL" and row_split != want:
                    continue
                name = output_stem((r.get("FileName") or "").strip())
                if name:
                    rows.append(FileListRow(name=name, ef=_num(r.get("EF")), split=row_split))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EchoDataError(file_list, f"unreadable ({type(e).__name__}: {e})") from e
    twice = sorted(name for name, k in Counter(r.name for r in rows).items() if k > 1)
    if twice:
        raise EchoDataError(file_list, f"FileName listed more than once: {twice[:5]}")
    if not rows:
        raise EchoDataError(file_list, f"no row with Split {want}" if want != "ALL" else "no rows")
    return rows


def read_failures(folder: str | Path) -> dict[str, str]:
    """``{output stem: reason}`` from ``<folder>/failures.csv`` of the inference command (``{}`` without one)."""
    path = Path(folder) / FAILURES_CSV
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return {output_stem(Path(r["file"]).name): r.get("reason") or "" for r in csv.DictReader(handle)}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as e:
        raise EchoDataError(path, f"unreadable failures list ({type(e).__name__}: {e})") from e


def read_prediction(path: str | Path) -> dict[str, Any]:
    """The full-video EF of one ``<stem>_seg.json``: ``ef`` (NaN when null), ``ef_sd``, ``beats_accepted``,
    ``beats_total``, ``verdict``, ``reasons``, ``reason`` (why there is no EF).

    Raises:
        EchoDataError: the file cannot be read or parsed, or lacks the keys of the full-video EF
            (:data:`REQUIRED_KEYS`: written by an older bundle), or holds a value of the wrong type.
    """
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EchoDataError(path, f"unreadable seg.json ({type(e).__name__}: {' '.join(str(e).split())})") from e
    if not isinstance(summary, dict):
        raise EchoDataError(path, f"not a seg.json: a JSON {type(summary).__name__}, not an object")
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    if missing:
        raise EchoDataError(
            path, f"no {', '.join(missing)}: written by an older bundle? Segment again with --overwrite True"
        )
    quality = summary["quality"]
    if not isinstance(quality, dict) or not isinstance(quality.get("verdict"), str):
        raise EchoDataError(path, f"quality is not {{'verdict': ..., 'reasons': [...]}}: {quality!r:.100}")

    def number(key: str) -> float:
        value = summary[key]
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EchoDataError(path, f"{key} is {value!r:.60}, not a number or null")
        return float(value)

    accepted, beats = summary["beats_accepted"], summary["beats"]
    if isinstance(accepted, bool) or not isinstance(accepted, int) or not isinstance(beats, list):
        raise EchoDataError(path, f"beats_accepted {accepted!r:.40} or beats is not a count and a list")
    reasons = quality.get("reasons") or []
    return {
        "ef": number("ef_percent"),
        "ef_sd": number("ef_sd"),
        "beats_accepted": accepted,
        "beats_total": len(beats),
        "verdict": quality["verdict"],
        "reasons": tuple(str(r) for r in (reasons if isinstance(reasons, list) else [reasons])),
        "reason": summary.get("reason") or "",
    }


def collect_results(rows: Sequence[FileListRow], predictions: str | Path) -> list[VideoResult]:
    """One :class:`VideoResult` per row from ``<predictions>/<FileName>_seg.json`` (and ``failures.csv`` there for
    the videos without one). Reads every file before returning (raises :class:`EchoDataError` on the first bad one).
    """
    folder = Path(predictions)
    failures = read_failures(folder)
    results = []
    for row in rows:
        path = summary_path(folder, row.name)
        if not path.is_file():
            if row.name in failures:
                results.append(VideoResult(row, FAILED, problem=failures[row.name] or "failed in inference"))
            else:
                results.append(VideoResult(row, MISSING, problem=f"no {path.name} in {folder}"))
            continue
        p = read_prediction(path)
        status = MEASURED if math.isfinite(p["ef"]) else NO_EF
        problem = "" if status == MEASURED else (p["reason"] or "no EF")
        results.append(
            VideoResult(
                row,
                status,
                ef=p["ef"],
                ef_sd=p["ef_sd"],
                beats_accepted=p["beats_accepted"],
                beats_total=p["beats_total"],
                verdict=p["verdict"],
                reasons=p["reasons"],
                problem=problem,
            )
        )
    return results


def compare_ef(results: Sequence[VideoResult]) -> dict[str, Any]:
    """The summary of a comparison (see docs/evaluation.md): counts, agreement per subset, beats, verdicts.

    ``agreement[subset]`` is :func:`scripts.clinical.stats.agreement` of the predicted EF against FileList's EF over
    the videos with both (``all``), those of them whose verdict is not ``reject`` (``not_rejected``) and those with
    verdict ``ok`` (``ok``). Beats are counted over the videos with a ``seg.json``.
    """
    status = Counter(r.status for r in results)
    segmented = [r for r in results if r.status in (MEASURED, NO_EF)]
    measured = [r for r in results if r.status == MEASURED]
    keep = {
        "all": measured,
        "not_rejected": [r for r in measured if r.verdict != "reject"],
        "ok": [r for r in measured if r.verdict == "ok"],
    }
    stats = {}
    for subset in SUBSETS:
        chosen = keep[subset]
        stats[subset] = agreement([r.ef for r in chosen], [r.row.ef for r in chosen])
    accepted = sum(r.beats_accepted or 0 for r in segmented)
    total = sum(r.beats_total or 0 for r in segmented)
    failures = status[FAILED] + status[MISSING]
    return {
        "videos": len(results),
        "status": {k: status[k] for k in (MEASURED, NO_EF, FAILED, MISSING)},
        "failures": failures,
        "no_reference_ef": sum(1 for r in measured if not math.isfinite(r.row.ef)),
        "verdicts": dict(sorted(Counter(r.verdict for r in segmented).items())),
        "beats": {
            "accepted": accepted,
            "rejected": total - accepted,
            "total": total,
            "accepted_mean_per_video": accepted / len(segmented) if segmented else math.nan,
        },
        "agreement": stats,
        "exit_status": 1 if failures or stats["all"]["n"] == 0 else 0,
    }


def write_comparison(
    results: Sequence[VideoResult], summary: Mapping[str, Any], output_dir: str | Path, plots: bool = True
) -> dict[str, Path]:
    """Write the per-video CSV, the summary JSON and (``plots``, with at least one pair) the four PNGs together,
    atomically. Returns ``{key of OUTPUT_NAMES: path}`` of the files written."""
    out = Path(output_dir)
    measured = [r for r in results if r.status == MEASURED]
    ok = [r for r in measured if r.verdict == "ok"]
    keys = ["csv", "summary"]
    if plots and summary["agreement"]["all"]["n"]:
        keys += ["bland_altman", "correlation"]
    if plots and summary["agreement"]["ok"]["n"]:
        keys += ["bland_altman_ok", "correlation_ok"]
    targets = {k: out / OUTPUT_NAMES[k] for k in keys}
    full = {**summary, "outputs": {k: p.name for k, p in targets.items()}}
    with atomic_paths(*targets.values()) as temps:
        temp = dict(zip(keys, temps))
        with open(temp["csv"], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(r.csv_row() for r in results)
        temp["summary"].write_text(json.dumps(json_safe(full), indent=2) + "\n", encoding="utf-8")
        for suffix, chosen, label in (("", measured, "all videos"), ("_ok", ok, "verdict ok")):
            if f"bland_altman{suffix}" not in temp:
                continue
            pred, ref = [r.ef for r in chosen], [r.row.ef for r in chosen]
            plot_bland_altman(pred, ref, temp[f"bland_altman{suffix}"], title=_plot_title(pred, ref, label, "ba"))
            plot_correlation(pred, ref, temp[f"correlation{suffix}"], title=_plot_title(pred, ref, label, "r"))
    return targets


def _plot_title(pred: Sequence[float], ref: Sequence[float], label: str, kind: str) -> str:
    s = agreement(pred, ref)
    if kind == "r":
        return f"EchoNet EF, {label}: r = {s['r']:.3f} (n = {s['n']})"
    return f"EchoNet EF, {label}: bias {s['bias']:.2f}, SD {s['sd']:.2f} (n = {s['n']})"


def format_table(summary: Mapping[str, Any], split: str, outputs: Sequence[str | Path]) -> str:
    """The console table of a comparison; ``outputs``: the files written (the first named with its folder)."""

    def f(value: Any, digits: int) -> str:
        return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "-"

    s = summary["status"]
    lines = [
        f"EchoNet-Dynamic EF, split {split}: {summary['videos']} videos, {s[MEASURED]} with an EF, {s[NO_EF]} "
        f"without (no accepted beat), {s[FAILED]} failed, {s[MISSING]} without a seg.json",
        f"{'videos':<14}{'n':>6}{'r':>8}{'bias':>8}{'SD':>8}{'MAE':>8}   (EF points, predicted - FileList)",
    ]
    for subset in SUBSETS:
        a = summary["agreement"][subset]
        lines.append(
            f"{subset:<14}{a['n']:>6}{f(a['r'], 3):>8}{f(a['bias'], 2):>8}{f(a['sd'], 2):>8}{f(a['mae'], 2):>8}"
        )
    beats = summary["beats"]
    verdicts = ", ".join(f"{k or 'none'} {v}" for k, v in summary["verdicts"].items()) or "none"
    lines.append(
        f"beats accepted: {beats['accepted']} of {beats['total']} "
        f"(mean {f(beats['accepted_mean_per_video'], 2)} per video); verdicts: {verdicts}"
    )
    names = [str(outputs[0])] + [Path(p).name for p in outputs[1:]] if outputs else []
    lines.append(f"outputs: {', '.join(names)}")
    return "\n".join(lines)


class EchoNetEF:
    """The EchoNet-Dynamic EF comparison as ``configs/echonet_ef.json`` uses it (see the module's docstring).

    Args:
        dataset_dir: the EchoNet-Dynamic folder (``FileList.csv``, ``Videos/``).
        output_dir: where inference writes and where the comparison goes.
        split: ``test`` (default), ``val``, ``train`` or ``all``.
        predictions: a folder of ``<FileName>_seg.json`` to compare instead of segmenting (empty: segment into
            ``output_dir`` and compare those).
        plots: write the PNGs.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        output_dir: str | Path,
        split: str = "test",
        predictions: str | Path | None = "",
        plots: bool = True,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.split = str(split).strip().upper()
        self.predictions = str(predictions or "")
        self.plots = bool(plots)
        self._rows: list[FileListRow] | None = None
        self.summary: dict[str, Any] | None = None

    @property
    def prediction_dir(self) -> Path:
        """``predictions`` when given, else ``output_dir``."""
        return Path(self.predictions) if self.predictions else self.output_dir

    def rows(self) -> list[FileListRow]:
        """The FileList rows of the split (read once)."""
        if self._rows is None:
            self._rows = read_file_list(self.dataset_dir, self.split)
        return self._rows

    def check_inputs(self) -> None:
        """Read ``FileList.csv``; with ``predictions`` check that it is a folder, else that every video exists.

        Raises:
            EchoDataError: see :func:`read_file_list`; ``predictions`` is not a folder; a row's video is missing.
        """
        rows = self.rows()
        if self.predictions:
            if not Path(self.predictions).is_dir():
                raise EchoDataError(self.predictions, "predictions folder not found")
            return
        for row in rows:
            video = self.dataset_dir / "Videos" / f"{row.name}.avi"
            if not video.is_file():
                raise EchoDataError(video, f"video of FileList row {row.name!r} is missing")

    def cines(self) -> list[dict[str, str]]:
        """The inference command's datalist (``dataset#data``): the split's videos, named by FileName; ``[]`` with
        ``predictions`` (nothing is segmented)."""
        if self.predictions:
            return []
        self.check_inputs()
        videos = self.dataset_dir / "Videos"
        return find_cines(videos, [f"{row.name}.avi" for row in self.rows()])

    def compare(self) -> dict[str, Any] | None:
        """Compare, write the outputs and print the table; returns the summary (``None`` on ranks > 0 of a
        ``torch.distributed`` run, where rank 0 compares)."""
        if _rank() != 0:
            return None
        self.check_inputs()
        for name in OUTPUT_NAMES.values():  # outputs of an earlier comparison would contradict a failed one
            (self.output_dir / name).unlink(missing_ok=True)
        results = collect_results(self.rows(), self.prediction_dir)
        summary = {
            "dataset_dir": str(self.dataset_dir),
            "split": self.split,
            "predictions": str(self.prediction_dir),
            "segmented_here": not self.predictions,
            "reference": "FileList.csv EF (%)",
            "prediction": "seg.json ef_percent: mean EF over the accepted beats of the whole video",
            **compare_ef(results),
        }
        written = write_comparison(results, summary, self.output_dir, self.plots)
        self.summary = summary
        print(format_table(summary, self.split, list(written.values())), flush=True)
        return summary

    def exit_on_failure(self) -> None:
        """Exit with status 1 (``SystemExit``, one line) when a video has no seg.json or no video has an EF."""
        s = self.summary
        if s is None or not s["exit_status"]:
            return
        if s["failures"]:
            where = self.prediction_dir / FAILURES_CSV
            raise SystemExit(
                f"echonet_ef: {s['failures']} of {s['videos']} videos have no seg.json (status failed/missing in "
                f"{self.output_dir / OUTPUT_NAMES['csv']}; inference failures in {where})"
            )
        raise SystemExit(f"echonet_ef: no video of {s['videos']} has an EF to compare")


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
