"""Evaluation that goes on past a bad case, as inference does.

``evaluate.json`` reads the test split through :class:`scripts.batch.CineDataset` (a case whose files cannot be read
or preprocessed is a record, not an exception) and evaluates with :class:`CaseEvaluator`: each bad case is one
console line ``failed: <file>: <problem>`` and one row of ``<output_dir>/failures.csv``; the metric and EF handlers
see only the cases that were evaluated, and write their reports (``metrics.csv``, ``summary.json``, the EF files)
over those; the run ends with one summary line, and ``finalize`` exits with status 1 if any case failed, so that a
script never takes metrics over a partial test set for the full one. Tracebacks and what the readers log go to
``<output_dir>/evaluation.log``.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator

from scripts.console import failure_reason
from scripts.records import FAILED, WARNINGS_KEY, RunRecords, file_logger, rank, warning_lines

__all__ = ["EVALUATED", "CaseEvaluator"]

logger = logging.getLogger(__name__)

EVALUATED = "evaluated"
LOG_NAME = "evaluation"


class CaseEvaluator(RunRecords, SupervisedEvaluator):
    """A ``SupervisedEvaluator`` over a :class:`scripts.batch.CineDataset` that records bad cases and goes on.

    Each iteration gets one preprocessed case (``image [B, 1, H, W, T]``, ``label`` ...) or a record of
    ``CineDataset`` (``status``, ``reason``: the case could not be read). A record, or a case whose network step or
    postprocessing raises, is noted as failed and the iteration's output is empty (the handlers skip it). ``run()``
    writes ``<output_dir>/evaluation.log``, then ``failures.csv`` and the summary line; ``summary`` holds the counts.

    Args:
        output_dir: where ``failures.csv`` and the log go (the metric handlers have their own ``output_dir``).
        Other arguments: as ``monai.engines.SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        output_dir: str | Path,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, **kwargs)
        self.output_dir = Path(output_dir)
        self.records_console = logger
        self.records: list[dict[str, str]] = []
        self.summary: dict[str, Any] | None = None

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> Any:
        sources = [str(s) for s in batchdata.get("source", batchdata.get("image", ["?"]))]
        for source, lines in zip(sources, batchdata.pop(WARNINGS_KEY, [])):
            self.log_warnings(source, lines or [])
        if "status" in batchdata:  # records of CineDataset: the case could not be read
            for i, source in enumerate(sources):
                self.note(source, batchdata["status"][i], batchdata["reason"][i], batchdata["traceback"][i])
            engine.state.output = []
            return engine.state.output
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                output = super()._iteration(engine, batchdata)
        except Exception as e:
            for source in sources:
                self.note(source, FAILED, failure_reason(e, source), traceback.format_exc())
            engine.state.output = []
            return engine.state.output
        finally:
            self.log_warnings(", ".join(sources), warning_lines(caught))
        for source in sources:
            self.note(source, EVALUATED)
        return output

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Evaluate this process's share of the cases; then ``failures.csv`` and the summary line (rank 0)."""
        with self.logged(LOG_NAME) as log_path:
            file_logger.info("evaluation started: %d cases for this process", self.state.epoch_length or 0)
            super().run(global_epoch)
            records, csv_path = self.gather_records()
            counts = Counter(r["status"] for r in records)
            self.summary = {EVALUATED: counts[EVALUATED], FAILED: counts[FAILED], "failures_csv": str(csv_path)}
            if rank() == 0:
                line = (
                    f"evaluation: {counts[EVALUATED]} cases evaluated, {counts[FAILED]} failed (left out of the "
                    f"metrics); failures in {csv_path}, log in {log_path}"
                )
                (logger.warning if counts[FAILED] else logger.info)(line)
