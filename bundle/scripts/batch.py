"""Archive-scale inference: one bad file never stops a batch.

- :func:`cine_datalist` lists the inputs (:func:`scripts.inference.find_cines`); no input at all ends the command with
  one line (``SystemExit``).
- :class:`CineDataset` (a MONAI ``Dataset``) turns an input that is already done (its summary JSON exists), one that
  is not a cine, or one whose loading/preprocessing fails into a *record* ``{"source", "status", "reason"}`` instead
  of an image or an exception.
- :class:`CineEvaluator` (a MONAI ``SupervisedEvaluator``) segments every image and runs the postprocessing (the file
  writer) itself, inside a ``try``: a failure becomes one console line ``failed: <file>: <problem>`` and a row of
  ``failures.csv``; the traceback goes to ``inference.log`` in the output folder only. At the end it gathers the
  records of all processes (``torch.distributed``), writes ``failures.csv`` and logs one summary line;
  :meth:`CineEvaluator.exit_on_failure` (the config's ``finalize``) exits with status 1 if any input failed.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.data import Dataset
from monai.engines import SupervisedEvaluator
from monai.engines.utils import engine_apply_transform

from scripts.clinical._io import atomic_paths
from scripts.console import echo_data_error_in, exception_chain
from scripts.data.errors import EchoDataError
from scripts.inference import VERDICT_SUFFIX, find_cines, is_complete, output_stem

__all__ = ["CineDataset", "CineEvaluator", "cine_datalist", "failure_reason"]

logger = logging.getLogger(__name__)
# file-only logger: tracebacks, warnings and one line per input, in the output folder's log (never on the console)
file_logger = logging.getLogger(f"{__name__}.file")
file_logger.propagate = False
file_logger.setLevel(logging.INFO)
file_logger.addHandler(logging.NullHandler())

FAILED, SEGMENTED, SKIPPED, IGNORED = "failed", "segmented", "skipped", "ignored"
FAILURES_CSV = "failures.csv"
LOG_FILE = "inference.log"


def cine_datalist(
    dataset_dir: str | Path | None, datalist: Sequence[str] | str | None = None, output_dir: str | Path | None = None
) -> list[dict[str, str]]:
    """:func:`scripts.inference.find_cines` for the inference command, non-cine files of the folder included.

    Files under ``output_dir`` are left out (an output folder inside the dataset folder).

    Raises:
        SystemExit: there is nothing to segment (no folder, an empty folder): one line, exit status 1.
    """
    try:
        return find_cines(dataset_dir, datalist, exclude=output_dir, report_ignored=True)
    except (FileNotFoundError, EchoDataError) as e:
        raise SystemExit(f"inference: {e}") from None


def failure_reason(error: BaseException, source: str | Path) -> str:
    """The problem of an input that failed, on one line (at most 1000 characters); its path shortened to the name.

    The :class:`scripts.data.EchoDataError` inside MONAI's ``RuntimeError("applying transform ...")`` chain gives its
    problem (with its file if that is not ``source``); any other error gives ``"<Type>: <message>"`` of the innermost
    exception.
    """
    echo = echo_data_error_in(error)
    if echo is not None:
        text = echo.problem if Path(echo.path) == Path(source) else str(echo)
    else:
        root = exception_chain(error)[-1]
        message = str(root).replace(str(source), Path(source).name)
        text = f"{type(root).__name__}: {message}" if message.strip() else type(root).__name__
    return " ".join(text.split())[:1000]


@contextlib.contextmanager
def _warnings_to_log(source: str | Path) -> Iterator[None]:
    """Send the warnings raised for one input to the log file (one line each, naming the file), not the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        file_logger.warning("warning: %s: %s: %s", source, w.category.__name__, " ".join(str(w.message).split()))


VERDICTS = ("ok", "review", "reject")  # scripts.clinical.quality's verdicts, counted in the run's summary


def _verdict(item: Mapping[str, Any]) -> str:
    """The verdict ``SaveCineResultd`` put into ``item`` (``d["<key>_verdict"]``; ``""`` without one)."""
    return next((str(v) for k, v in item.items() if str(k).endswith(f"_{VERDICT_SUFFIX}")), "")


def _record(source: str, status: str, reason: str, trace: str = "") -> dict[str, str]:
    return {"source": source, "status": status, "reason": reason, "traceback": trace}


class CineDataset(Dataset):
    """A MONAI ``Dataset`` of cines in which one bad input is a record, not an exception.

    ``data`` items are :func:`cine_datalist`'s. ``__getitem__`` returns the preprocessed item (``image [1, H, W, T]``
    etc.), or a record ``{"source", "status", "reason", "traceback"}`` with status

    - ``"ignored"``: the item is a file that is not a cine (``item["ignored"]`` says why);
    - ``"skipped"``: its outputs are complete (``<output_dir>/<output_stem>_seg.json`` exists) and not ``overwrite``;
    - ``"failed"``: loading or preprocessing raised (reason: the problem, see :func:`failure_reason`).

    Use it with ``batch_size=1`` (cines differ in size, and a record does not collate with an image).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable | None = None,
        output_dir: str | Path | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(data, transform)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.overwrite = bool(overwrite)

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        source = str(item.get("source") or item.get("image"))
        if item.get("ignored"):
            return _record(source, IGNORED, str(item["ignored"]))
        stem = item.get("output_stem") or output_stem(source)
        if self.output_dir is not None and not self.overwrite and is_complete(self.output_dir, stem):
            return _record(source, SKIPPED, "already done")
        in_worker = torch.utils.data.get_worker_info() is not None  # no log file in a worker: warnings stay
        with contextlib.nullcontext() if in_worker else _warnings_to_log(source):
            try:
                return super()._transform(index)
            except Exception as e:
                return _record(source, FAILED, failure_reason(e, source), traceback.format_exc())


class CineEvaluator(SupervisedEvaluator):
    """A ``SupervisedEvaluator`` that segments every readable cine of a :class:`CineDataset` and records the rest.

    Each iteration gets one preprocessed cine ``image [B=1, 1, H, W, T]`` or a record of :class:`CineDataset`. The
    network runs as in ``SupervisedEvaluator``; then ``postprocessing`` (``AsDiscreted`` and the file writer) runs
    here, per decollated item, inside a ``try`` (it is *not* registered as MONAI's event handler, whose exception
    would stop the run). A failure logs one line ``failed: <file>: <problem>`` (its traceback goes to the log file
    only) and the run goes on.

    ``run()`` writes ``<output_dir>/inference.log`` (``inference.rank<r>.log`` for ranks > 0 under
    ``torch.distributed``), then gathers the records of all ranks, and rank 0 writes ``failures.csv`` (``file,
    reason``) and logs the summary line. ``summary`` holds the merged counts on every rank.

    Args:
        output_dir: where the outputs, ``failures.csv`` and the log file go.
        postprocessing: transform applied to each decollated ``{**batch_item, **output_item}`` (keeps MONAI's
            ``evaluator#postprocessing`` property).
        Other arguments: as ``monai.engines.SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        output_dir: str | Path,
        postprocessing: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["decollate"] = True
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, **kwargs)
        self.postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.records: list[dict[str, str]] = []
        self.summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------ iteration
    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> Any:
        if "status" in batchdata:  # records of CineDataset: nothing to segment
            for i, source in enumerate(batchdata["source"]):
                self._note(source, batchdata["status"][i], batchdata["reason"][i], batchdata["traceback"][i])
            engine.state.output = []
            return engine.state.output
        sources = [str(s) for s in batchdata.get("source", ["?"])]
        try:
            with _warnings_to_log(", ".join(sources)):
                super()._iteration(engine, batchdata)  # prepare_batch, inferer, decollate (MODEL_COMPLETED)
        except Exception as e:
            for source in sources:
                self._note(source, FAILED, failure_reason(e, source), traceback.format_exc())
            self._free_memory(e)
            engine.state.output = []
            return engine.state.output
        for i, (item, output) in enumerate(zip(engine.state.batch, engine.state.output)):
            source = str(item.get("source", sources[min(i, len(sources) - 1)]))
            try:
                with _warnings_to_log(source):
                    if self.postprocessing is not None:
                        item, output = engine_apply_transform(item, output, self.postprocessing)
            except Exception as e:
                self._note(source, FAILED, failure_reason(e, source), traceback.format_exc())
                self._free_memory(e)
                continue
            engine.state.batch[i], engine.state.output[i] = item, output
            self._note(
                source, SEGMENTED, verdict=_verdict(output if isinstance(output, Mapping) else {}) or _verdict(item)
            )
        return engine.state.output

    @staticmethod
    def _free_memory(error: BaseException) -> None:
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _note(self, source: str, status: str, reason: str = "", trace: str = "", verdict: str = "") -> None:
        self.records.append({"file": str(source), "status": status, "reason": reason, "verdict": verdict})
        if status == FAILED:
            logger.error("failed: %s: %s", source, reason)
            if trace:
                file_logger.error("traceback of %s:\n%s", source, trace.rstrip())
        else:
            file_logger.info("%s: %s%s", status, source, f": {reason}" if reason else "")

    # ------------------------------------------------------------------------------------------------ run
    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Segment this process's share of the inputs, then merge the records of all processes (see the class)."""
        self.records = []
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.output_dir / (LOG_FILE if rank == 0 else f"inference.rank{rank}.log")
        handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        file_logger.addHandler(handler)
        try:
            file_logger.info("inference started: %d inputs for this process", self.state.epoch_length or 0)
            super().run(global_epoch)
            self.summary = self._summarize(rank)
        finally:
            root.removeHandler(handler)
            file_logger.removeHandler(handler)
            handler.close()

    def _summarize(self, rank: int) -> dict[str, Any]:
        records = self.records
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        counts = Counter(r["status"] for r in records)
        verdicts = Counter(r.get("verdict") or "" for r in records if r["status"] == SEGMENTED)
        failures = sorted((r["file"], r["reason"]) for r in records if r["status"] == FAILED)
        csv_path = self.output_dir / FAILURES_CSV
        if rank == 0:
            with atomic_paths(csv_path) as (tmp,), open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["file", "reason"])
                writer.writerows(failures)
        summary = {
            SEGMENTED: counts[SEGMENTED],
            FAILED: counts[FAILED],
            SKIPPED: counts[SKIPPED],
            IGNORED: counts[IGNORED],
            "verdicts": {v: verdicts[v] for v in VERDICTS},
            "output_dir": str(self.output_dir),
            "failures_csv": str(csv_path),
            "log": str(self.output_dir / LOG_FILE),
        }
        if rank == 0:
            ignored = f", {counts[IGNORED]} ignored (not cines, listed in the log)" if counts[IGNORED] else ""
            judged = ", ".join(f"{verdicts[v]} {v}" for v in VERDICTS)
            judged = f"; verdicts of the segmented: {judged}" if sum(verdicts[v] for v in VERDICTS) else ""
            line = (
                f"inference: {counts[SEGMENTED]} segmented, {counts[FAILED]} failed, {counts[SKIPPED]} skipped "
                f"(already done){ignored}{judged}; outputs in {self.output_dir}, failures in {csv_path}, "
                f"log in {summary['log']}"
            )
            (logger.warning if counts[FAILED] else logger.info)(line)
        return summary

    def exit_on_failure(self) -> None:
        """Exit with status 1 (``SystemExit``, no traceback) if any input failed in any process; else do nothing."""
        if self.summary is not None and self.summary[FAILED]:
            raise SystemExit(1)
