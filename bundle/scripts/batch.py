"""Archive-scale inference: one bad file never stops a batch.

- :func:`cine_datalist` lists the inputs (:func:`scripts.inference.find_cines`); no input at all ends the command with
  one line (``SystemExit``).
- :class:`CineDataset` (a MONAI ``Dataset``) turns an input that is already done (its summary JSON exists), one that
  is not a cine, or one whose loading/preprocessing fails into a *record* ``{"source", "status", "reason"}`` instead
  of an image or an exception.
- :class:`CineEvaluator` (a MONAI ``SupervisedEvaluator``) segments every image and hands the postprocessing (the
  file writer) of each cine to a :class:`scripts.writer_pool.WriterPool` (``writers`` processes, bounded), which
  never raises: a failure, reading or writing, becomes one console line ``failed: <file>: <problem>`` and a row of
  ``failures.csv``; the traceback goes to ``inference.log`` in the output folder only, as do the warnings raised
  while reading or writing a cine (one line each, naming the file, from DataLoader workers and writers alike) and
  what libraries log (pydicom's traceback of a corrupt JPEG frame). At the end it waits for the writers, gathers the
  records of all processes (``torch.distributed``), writes ``failures.csv`` and logs one summary line;
  :meth:`CineEvaluator.exit_on_failure` (the config's ``finalize``) exits with status 1 if any input failed.
- :func:`collate_cines` is the inference DataLoader's ``collate_fn``: it passes the decoded source
  (``source_cine``) and the reading warnings past collation, so that the writer takes the input decoded once.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset, decollate_batch, list_data_collate
from monai.engines import SupervisedEvaluator
from monai.utils import CommonKeys

from scripts.cine_streams import CineStreams, FinishedCine
from scripts.console import failure_reason
from scripts.data.errors import EchoDataError
from scripts.data.video_io import SOURCE_KEY
from scripts.inference import find_cines, is_complete, output_stem
from scripts.memory_check import DEFAULT_CHECKED_FRAMES, MEMORY_CHECK_KEY, memory_check
from scripts.records import (
    FAILED,
    IGNORED,
    SEGMENTED,
    SKIPPED,
    WARNINGS_KEY,
    RunRecords,
    file_logger,
    rank,
    warning_lines,
)
from scripts.writer_pool import WriteResult, WriterPool, default_workers, network_threads, workers_for_inputs

__all__ = ["CineDataset", "CineEvaluator", "cine_datalist", "collate_cines", "default_workers", "failure_reason"]

logger = logging.getLogger(__name__)

LOG_NAME = "inference"  # <output_dir>/inference.log
CARRIED_KEYS = (SOURCE_KEY, WARNINGS_KEY)  # passed by collate_cines as lists, past collation and decollation


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


VERDICTS = ("ok", "review", "reject")  # scripts.clinical.quality's verdicts, counted in the run's summary


def _record(source: str, status: str, reason: str, trace: str = "") -> dict[str, str]:
    return {"source": source, "status": status, "reason": reason, "traceback": trace}


def collate_cines(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """MONAI's ``list_data_collate`` of ``items``, except :data:`CARRIED_KEYS` (the decoded source, the reading
    warnings): each becomes the list of the items' values (``None`` where missing), untouched."""
    carried = {key: [item.get(key) for item in items] for key in CARRIED_KEYS if any(key in i for i in items)}
    batch = list_data_collate([{k: v for k, v in item.items() if k not in CARRIED_KEYS} for item in items])
    batch.update(carried)
    return batch


class CineDataset(Dataset):
    """A MONAI ``Dataset`` of cines in which one bad input is a record, not an exception.

    ``data`` items are :func:`cine_datalist`'s. ``__getitem__`` returns the preprocessed item (``image [1, H, W, T]``
    etc.), or a record ``{"source", "status", "reason", "traceback"}`` with status

    - ``"ignored"``: the item is a file that is not a cine (``item["ignored"]`` says why);
    - ``"skipped"``: its outputs are complete (``<output_dir>/<output_stem>_seg.json`` exists) and not ``overwrite``;
    - ``"failed"``: loading or preprocessing raised (reason: the problem, see :func:`failure_reason`).

    Either carries ``read_warnings``: the warnings raised while reading it (``"<Category>: <message>"``), for the
    evaluator to log (a DataLoader worker has no log file). Use it with ``batch_size=1`` (cines differ in size, and a
    record does not collate with an image) and :func:`collate_cines`.
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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = dict(super()._transform(index))
            except Exception as e:
                result = _record(source, FAILED, failure_reason(e, source), traceback.format_exc())
        result[WARNINGS_KEY] = warning_lines(caught)
        return result


class CineEvaluator(RunRecords, SupervisedEvaluator):
    """A ``SupervisedEvaluator`` that segments every readable cine of a :class:`CineDataset` and records the rest.

    Each iteration gets one preprocessed cine ``image [B=1, 1, H, W, T]`` or a record of :class:`CineDataset`. The
    network runs as in ``SupervisedEvaluator``; then ``postprocessing`` (``LVConfidenced``, ``AsDiscreted`` and the
    file writer) of each decollated item goes to a :class:`scripts.writer_pool.WriterPool` of ``writers`` processes
    (it is *not* registered as MONAI's event handler, whose exception would stop the run), and the network goes on
    with the next cine. A failure, of the network or of a writer, logs one line ``failed: <file>: <problem>`` (its
    traceback goes to the log file only) and the run goes on.

    ``run()`` writes ``<output_dir>/inference.log`` (``inference.rank<r>.log`` for ranks > 0 under
    ``torch.distributed``), waits for the writers, then gathers the records of all ranks, and rank 0 writes
    ``failures.csv`` (``file, reason``) and logs the summary line. ``summary`` holds the merged counts on every rank.

    Args:
        output_dir: where the outputs, ``failures.csv`` and the log file go.
        postprocessing: transform applied to each decollated ``{**batch_item, **output_item}`` (keeps MONAI's
            ``evaluator#postprocessing`` property).
        writers: writer processes (``inference.json``: ``writers``, default from the cores); 0 writes each cine in
            this process before the next one is segmented.
        streams: cines stepped together (``inference.json``: ``streams``): above 1, each cine joins a
            :class:`scripts.cine_streams.CineStreams` of that many slots (the inferer's precision and backend) and is
            written when its last frame is done; an iteration then hands the writers the cines that finished during
            it, and the rest are drained at the end. Cines with a user's corrections, and networks without GDKVM's
            fixed-size state, are segmented one by one as with 1.
        memory_check_frames: at most this many frames of each cine (one in 8, at least 3) segmented again alone by
            the same network (:func:`scripts.memory_check.memory_check`; ``inference.json``: ``memory_check_frames``),
            handed to the writer as ``item["memory_check"]`` for the verdict; 0 turns it off. Cines with a user's
            corrections are not checked (their stepped masks follow the drawn ones on purpose).
        Other arguments: as ``monai.engines.SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        output_dir: str | Path,
        postprocessing: Callable | None = None,
        writers: int = 0,
        streams: int = 1,
        memory_check_frames: int = DEFAULT_CHECKED_FRAMES,
        **kwargs: Any,
    ) -> None:
        kwargs["decollate"] = True
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, **kwargs)
        self.postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.writers = max(0, int(writers))
        self.records_console = logger
        self.records: list[dict[str, str]] = []
        self.summary: dict[str, Any] | None = None
        self._pool: WriterPool | None = None
        if int(streams) < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        self.streams = int(streams)
        self._cines: CineStreams | None = None
        if int(memory_check_frames) < 0:
            raise ValueError(f"memory_check_frames must be 0 (off) or more, got {memory_check_frames}")
        self.memory_check_frames = int(memory_check_frames)

    # ------------------------------------------------------------------------------------------------ iteration
    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> Any:
        carried = {key: batchdata.pop(key) for key in CARRIED_KEYS if key in batchdata}
        sources = [str(s) for s in batchdata.get("source", ["?"])]
        for source, lines in zip(sources, carried.pop(WARNINGS_KEY, [])):
            self.log_warnings(source, lines or [])
        engine.state.output = []
        if "status" in batchdata:  # records of CineDataset: nothing to segment
            for i, source in enumerate(sources):
                self.note(source, batchdata["status"][i], batchdata["reason"][i], batchdata["traceback"][i])
            return engine.state.output
        if self._streamed(batchdata):
            self._add_to_streams(engine, batchdata, carried, sources)
            return engine.state.output
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                super()._iteration(engine, batchdata)  # prepare_batch, inferer, decollate (MODEL_COMPLETED)
                for item, output in zip(engine.state.batch, engine.state.output):
                    self._check_memory(item, output)
        except Exception as e:
            for source in sources:
                self.note(source, FAILED, failure_reason(e, source), traceback.format_exc())
            self._free_memory(e)
            engine.state.output = []
            return engine.state.output
        finally:
            self.log_warnings(", ".join(sources), warning_lines(caught))
        for i, (item, output) in enumerate(zip(engine.state.batch, engine.state.output)):
            item.update({key: values[i] for key, values in carried.items()})
            self._write(str(item.get("source", sources[min(i, len(sources) - 1)])), item, output)
        return engine.state.output

    # ------------------------------------------------------------------------------------------------ streams
    def _streamed(self, batchdata: Mapping[str, Any]) -> bool:
        """Whether this cine goes through the many-cine stepper (see ``streams``)."""
        if self.streams == 1 or "corrections" in batchdata:
            return False
        if self._cines is None:
            try:
                precision, backend = (
                    getattr(self.inferer, "precision", "float32"),
                    getattr(self.inferer, "backend", "auto"),
                )
                self._cines = CineStreams(self.network, self.streams, precision=precision, backend=backend)
            except TypeError:  # no fixed-size state: one by one
                self.streams = 1
                return False
        return True

    def _add_to_streams(
        self, engine: SupervisedEvaluator, batchdata: dict[str, Any], carried: dict[str, list], sources: list[str]
    ) -> None:
        """Start one cine in the many-cine stepper; write the cines that finish meanwhile."""
        assert self._cines is not None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                inputs = self.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[0]
                if inputs.shape[0] != 1:
                    raise ValueError(f"streams need one cine per batch, got a batch of {inputs.shape[0]}")
                with self.mode(self.network):  # eval mode and no gradients, as SupervisedEvaluator steps
                    finished = self._cines.add(sources[0], inputs[0], (batchdata, carried))
        except Exception as e:
            self._streams_failed(e, sources)
            return
        finally:
            self.log_warnings(sources[0], warning_lines(caught))
        self._write_finished(finished)

    def _drain_streams(self) -> None:
        """Step the cines still in the many-cine stepper to their ends and write them."""
        if self._cines is None or not self._cines.pending:
            return
        try:
            with self.mode(self.network):
                finished = self._cines.drain()
        except Exception as e:
            self._streams_failed(e, [])
            return
        self._write_finished(finished)

    def _streams_failed(self, error: Exception, sources: list[str]) -> None:
        """A step failed: every cine in the stepper (and ``sources``) failed with it."""
        assert self._cines is not None
        for source in dict.fromkeys([*sources, *map(str, self._cines.abandon())]):
            self.note(source, FAILED, failure_reason(error, source), traceback.format_exc())
        self._free_memory(error)

    def _write_finished(self, finished: list[FinishedCine]) -> None:
        """Hand finished cines to the writers, as ``SupervisedEvaluator`` decollates one: ``{**item, **output}``."""
        for cine in finished:
            batchdata, carried = cine.payload
            output = {CommonKeys.IMAGE: batchdata["image"], CommonKeys.LABEL: None, CommonKeys.PRED: cine.logits[None]}
            items = decollate_batch(batchdata, detach=True)
            outputs = decollate_batch(output, detach=True)
            for i, (item, out) in enumerate(zip(items, outputs)):
                item.update({key: values[i] for key, values in carried.items()})
                try:
                    self._check_memory(item, out)
                except Exception as e:
                    self.note(str(cine.key), FAILED, failure_reason(e, str(cine.key)), traceback.format_exc())
                    continue
                self._write(str(cine.key), item, out)

    def _check_memory(self, item: Mapping[str, Any], output: dict[str, Any]) -> None:
        """``output["memory_check"]``: :func:`scripts.memory_check.memory_check` of one segmented cine (``image``
        ``[1, H, W, T]`` and ``pred`` logits ``[K, H, W, T]`` of ``output``); nothing for a corrected cine or with
        ``memory_check_frames`` 0."""
        if self.memory_check_frames == 0 or "corrections" in item:
            return
        with self.mode(self.network):
            output[MEMORY_CHECK_KEY] = memory_check(
                self.network, output[CommonKeys.IMAGE], output[CommonKeys.PRED], self.memory_check_frames
            )

    def _write(self, source: str, item: dict, output: Any) -> None:
        """Hand one segmented cine to the writers; note the cines whose writing finished meanwhile."""
        pool = self._pool if self._pool is not None else WriterPool(self.postprocessing, 0)
        for result in pool.submit(source, item, output):
            self._finish(result)

    def _finish(self, result: WriteResult) -> None:
        self.log_warnings(result.source, result.warnings)
        if result.ok:
            self.note(result.source, SEGMENTED, verdict=result.verdict)
        else:
            self.note(result.source, FAILED, result.reason, result.trace)

    @staticmethod
    def _free_memory(error: BaseException) -> None:
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------------ run
    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Segment this process's share of the inputs, then merge the records of all processes (see the class)."""
        # DataLoader workers and writers start (fork) inside: they inherit the log file and the libraries' routing
        with self.logged(LOG_NAME) as log_path:
            file_logger.info("inference started: %d inputs for this process", self.state.epoch_length or 0)
            self._one_process_for_one_input()
            try:
                with WriterPool(self.postprocessing, self.writers) as self._pool:
                    super().run(global_epoch)
                    self._drain_streams()
                    for result in self._pool.drain():
                        self._finish(result)
            finally:
                self._pool, self._cines = None, None
            self.summary = self._summarize(log_path)

    def _one_process_for_one_input(self) -> None:
        """No reader or writer processes when this process has a single input (``workers_for_inputs``); the network
        then gets the threads they would have taken, unless the user chose them (``OMP_NUM_THREADS``, or a thread
        count other than the config's ``network_threads``)."""
        loader = self.data_loader
        readers = int(getattr(loader, "num_workers", 0) or 0)
        inputs = int(self.state.epoch_length or 0)
        new_readers, new_writers = workers_for_inputs(readers, self.writers, inputs)
        if (new_readers, new_writers) == (readers, self.writers):
            return
        on_cpu = torch.device(self.state.device).type == "cpu"  # MONAI's Workflow keeps the device in its state
        if on_cpu and torch.get_num_threads() == network_threads(readers, self.writers):
            torch.set_num_threads(network_threads(new_readers, new_writers))
        if isinstance(loader, torch.utils.data.DataLoader):
            loader.num_workers = new_readers
        self.writers = new_writers
        file_logger.info("%d input(s): %d reader and %d writer processes", inputs, new_readers, new_writers)

    def _summarize(self, log_path: Path) -> dict[str, Any]:
        records, csv_path = self.gather_records()
        counts = Counter(r["status"] for r in records)
        verdicts = Counter(r.get("verdict") or "" for r in records if r["status"] == SEGMENTED)
        summary = {
            SEGMENTED: counts[SEGMENTED],
            FAILED: counts[FAILED],
            SKIPPED: counts[SKIPPED],
            IGNORED: counts[IGNORED],
            "verdicts": {v: verdicts[v] for v in VERDICTS},
            "output_dir": str(self.output_dir),
            "failures_csv": str(csv_path),
            "log": str(self.output_dir / f"{LOG_NAME}.log"),
        }
        if rank() == 0:
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
