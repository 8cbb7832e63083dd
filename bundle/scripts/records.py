"""What happened to each input of a run that goes on past bad ones: the records, their lines, failures.csv, the log.

:class:`RunRecords` is mixed into the engines that must not stop at a bad input (``scripts.batch.CineEvaluator``
for inference, ``scripts.evaluation.CaseEvaluator`` for evaluation). It keeps one record per input (``file``,
``status``, ``reason``, ``verdict``), prints one console line ``failed: <file>: <problem>`` per failure (through the
engine's ``console`` logger) and sends tracebacks, warnings and one line per other input to the run's log file only
(``file_logger``). :meth:`RunRecords.logged` opens that log file for the run (and routes what the libraries that
read and write the files log, such as pydicom's traceback of a corrupt JPEG frame, to it instead of the console);
:meth:`RunRecords.gather_records` merges the records of all ``torch.distributed`` processes and writes
``failures.csv`` (``file,reason``, only the header when nothing failed); :meth:`RunRecords.exit_on_failure` ends
the command with status 1 when anything failed.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from scripts.clinical._io import atomic_paths

__all__ = [
    "FAILED",
    "FAILURES_CSV",
    "IGNORED",
    "LIBRARY_LOGGERS",
    "SEGMENTED",
    "SKIPPED",
    "WARNINGS_KEY",
    "RunRecords",
    "file_logger",
]

FAILED, SEGMENTED, SKIPPED, IGNORED = "failed", "segmented", "skipped", "ignored"
FAILURES_CSV = "failures.csv"
WARNINGS_KEY = "read_warnings"  # scripts.batch.CineDataset: the warnings raised while reading an input
# loggers of the libraries that read and write the files: their records (pydicom logs a corrupt JPEG frame with its
# traceback) go to the run's log file during a run, not to the console
LIBRARY_LOGGERS = ("pydicom", "PIL", "nibabel", "matplotlib", "skimage", "cv2", "itk", "h5py", "highdicom")

# file-only logger: tracebacks, warnings and one line per input, in the output folder's log (never on the console)
file_logger = logging.getLogger("scripts.batch.file")
file_logger.propagate = False
file_logger.setLevel(logging.INFO)
file_logger.addHandler(logging.NullHandler())


def warning_lines(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """``"<Category>: <message>"`` (on one line) of each caught warning."""
    return [f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught]


def rank() -> int:
    """This process's ``torch.distributed`` rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class RunRecords:
    """Records of a run's inputs (see the module). Set ``records_console`` (a logger) and ``output_dir``."""

    records_console: logging.Logger
    output_dir: Path
    records: list[dict[str, str]]
    summary: dict[str, Any] | None

    def note(self, source: str, status: str, reason: str = "", trace: str = "", verdict: str = "") -> None:
        """Record one input; a failure is one console line, its traceback goes to the log file."""
        self.records.append({"file": str(source), "status": status, "reason": reason, "verdict": verdict})
        if status == FAILED:
            self.records_console.error("failed: %s: %s", source, reason)
            if trace:
                file_logger.error("traceback of %s:\n%s", source, trace.rstrip())
        else:
            file_logger.info("%s: %s%s", status, source, f": {reason}" if reason else "")

    @staticmethod
    def log_warnings(source: str, lines: Sequence[str]) -> None:
        """One log-file line per warning raised for ``source``."""
        for line in lines:
            file_logger.warning("warning: %s: %s", source, line)

    @contextlib.contextmanager
    def logged(self, log_name: str) -> Iterator[Path]:
        """The run's log file ``<output_dir>/<log_name>.log`` (``<log_name>.rank<r>.log`` for ranks > 0), appended:
        the root logger's records, ``file_logger``'s and the libraries' (theirs not on the console) go there."""
        self.records = []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / (f"{log_name}.log" if rank() == 0 else f"{log_name}.rank{rank()}.log")
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        file_logger.addHandler(handler)
        saved = [(logging.getLogger(name), logging.getLogger(name).propagate) for name in LIBRARY_LOGGERS]
        for library, _ in saved:
            library.propagate = False
            library.addHandler(handler)
        try:
            yield path
        finally:
            for library, propagate in saved:
                library.removeHandler(handler)
                library.propagate = propagate
            root.removeHandler(handler)
            file_logger.removeHandler(handler)
            handler.close()

    def gather_records(self) -> tuple[list[dict[str, str]], Path]:
        """The records of all processes, and ``failures.csv`` (written by rank 0; sorted by file)."""
        records = self.records
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        failures = sorted((r["file"], r["reason"]) for r in records if r["status"] == FAILED)
        csv_path = self.output_dir / FAILURES_CSV
        if rank() == 0:
            with atomic_paths(csv_path) as (tmp,), open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["file", "reason"])
                writer.writerows(failures)
        return records, csv_path

    def exit_on_failure(self) -> None:
        """Exit with status 1 (``SystemExit``, no traceback) if any input failed in any process; else do nothing."""
        if self.summary is not None and self.summary[FAILED]:
            raise SystemExit(1)
