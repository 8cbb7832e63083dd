"""Writing a batch's results off the network's path: the postprocessing of each cine in a bounded pool of processes.

:class:`WriterPool` runs the inference ``postprocessing`` (``LVConfidenced``, ``AsDiscreted``, ``SaveCineResultd``:
the label NIfTI, JSON, CSV, pictures, SR) of one segmented cine as one task, in ``workers`` processes, while the main
process steps the network through the next cines. At most ``max_pending`` cines wait or are being written (their
decoded sources stay in memory until written), so the network waits when the writers fall behind. ``workers=0``
runs each task at once in the calling process (the same function, so the same files and records).

Processes, not threads: the writers are Python-heavy (matplotlib, contour tracing), and a thread holding the GIL
stalls every one of the network's operator calls for up to the interpreter's switch interval. Tensors reach the
writers through shared memory (``torch.multiprocessing``'s pickler), so a decoded cine is not copied.

A task never raises: it returns a :class:`WriteResult`, with the failure's one-line reason (:func:`failure_reason`)
and traceback when the writer failed (that cine's failure, named by its source), and the warnings it raised.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.engines.utils import engine_apply_transform

from scripts.console import failure_reason
from scripts.inference import VERDICT_SUFFIX

__all__ = ["WriteResult", "WriterPool", "default_workers", "network_threads", "workers_for_inputs"]

_TRANSFORM: Callable | None = None  # the postprocessing, in each writer process (set by _start_writer)


def default_workers(cpu_count: int | None = None) -> int:
    """Processes for reading or for writing by default: half the logical CPUs, between 1 and 4."""
    return max(1, min(4, (cpu_count or os.cpu_count() or 2) // 2))


def workers_for_inputs(num_workers: int, writers: int, inputs: int) -> tuple[int, int]:
    """``(num_workers, writers)`` for a run of ``inputs`` cines: at most ``inputs - 1`` each, so one cine runs in one
    process. A reader or writer process only pays when another cine can be read or written while the network steps
    this one; for a single cine its start-up and the core it takes from the network are pure cost (14 s instead of
    17-20 s for one cine on 2 cores, ``docs/deploy.md``, archive inference)."""
    most = max(0, int(inputs) - 1)
    return min(max(0, int(num_workers)), most), min(max(0, int(writers)), most)


def network_threads(num_workers: int, writers: int, cpu_count: int | None = None) -> int:
    """Torch CPU threads for the network's process beside ``num_workers`` readers and ``writers`` writers: the
    logical CPUs they leave (at least 1), or ``OMP_NUM_THREADS`` when the user set it.

    Torch's OpenMP threads spin at their barriers: two of them on a 2-core machine whose other core a reader or a
    writer is using made the whole run twice as slow as one thread (``docs/benchmarks.md``, "Archive inference").
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (cpu_count or os.cpu_count() or 1) - max(0, int(num_workers)) - max(0, int(writers)))


@dataclass
class WriteResult:
    """What became of one cine's postprocessing.

    Attributes:
        source: the input file. ok: every file was written. verdict: the measurement's verdict (``""`` without one).
        reason, trace: the one-line problem and the traceback when not ok. warnings: ``"<Category>: <message>"``
        of each warning raised while writing.
    """

    source: str
    ok: bool
    verdict: str = ""
    reason: str = ""
    trace: str = ""
    warnings: list[str] = field(default_factory=list)


def _verdict(item: Mapping[Hashable, Any]) -> str:
    """The verdict ``SaveCineResultd`` put into ``item`` (``d["<key>_verdict"]``; ``""`` without one)."""
    return next((str(v) for k, v in item.items() if str(k).endswith(f"_{VERDICT_SUFFIX}")), "")


def run_postprocessing(transform: Callable | None, source: str, item: dict, output: dict) -> WriteResult:
    """Apply ``transform`` to one decollated ``(item, output)`` of the evaluator; never raises (see the module)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if transform is not None:
                item, output = engine_apply_transform(item, output, transform)
            verdict = _verdict(output if isinstance(output, Mapping) else {}) or _verdict(item)
            result = WriteResult(source, True, verdict=verdict)
        except Exception as e:  # noqa: BLE001 - any failure is this cine's, reported by name; the run goes on
            result = WriteResult(source, False, reason=failure_reason(e, source), trace=traceback.format_exc())
    result.warnings = [f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught]
    return result


def _start_writer(transform: Callable | None) -> None:
    global _TRANSFORM
    _TRANSFORM = transform
    torch.set_num_threads(1)  # as DataLoader workers: the network's process keeps the cores' threads


def _write_in_writer(source: str, item: dict, output: dict) -> WriteResult:
    return run_postprocessing(_TRANSFORM, source, item, output)


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor (in dicts, lists, tuples) detached and on the CPU, for another process."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class WriterPool:
    """A bounded pool of writer processes for the per-cine postprocessing (see the module).

    Args:
        transform: the postprocessing applied to each ``(item, output)`` (picked up by each process once, at fork).
        workers: writer processes; 0 writes in the calling process, in turn.
        max_pending: cines submitted and not yet collected (default ``2 * workers``); :meth:`submit` waits for the
            oldest beyond it.

    Use :meth:`submit` for each cine; it returns the results that finished meanwhile. :meth:`drain` waits for the
    rest and returns them; :meth:`close` ends the processes (also as a context manager).
    """

    def __init__(self, transform: Callable | None, workers: int = 1, max_pending: int | None = None) -> None:
        self.transform = transform
        self.workers = max(0, int(workers))
        self.max_pending = max(1, int(max_pending or 2 * self.workers))
        self._pending: deque[tuple[str, Future]] = deque()
        self._executor: ProcessPoolExecutor | None = None
        if self.workers:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_writer,
                initargs=(transform,),
            )

    def submit(self, source: str, item: dict, output: dict) -> list[WriteResult]:
        """Write one cine (at once without workers); returns the results collected meanwhile, oldest first."""
        if self._executor is None:
            return [run_postprocessing(self.transform, source, item, output)]
        done = self._collect(block=len(self._pending) >= self.max_pending)
        self._pending.append((source, self._executor.submit(_write_in_writer, source, _to_cpu(item), _to_cpu(output))))
        return done

    def drain(self) -> list[WriteResult]:
        """Wait for every submitted cine; their results, in submission order."""
        done = []
        while self._pending:
            done.append(self._result(*self._pending.popleft()))
        return done

    def close(self) -> None:
        """End the writer processes (after :meth:`drain`; pending writes are waited for)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=False)
            self._executor = None

    def __enter__(self) -> WriterPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collect(self, block: bool) -> list[WriteResult]:
        """The finished results at the head of the queue (waiting for the oldest first when ``block``)."""
        if block:
            wait([self._pending[0][1]], return_when=FIRST_COMPLETED)
        done = []
        while self._pending and self._pending[0][1].done():
            done.append(self._result(*self._pending.popleft()))
        return done

    @staticmethod
    def _result(source: str, future: Future) -> WriteResult:
        try:
            return future.result()
        except Exception as e:  # noqa: BLE001 - the process died (killed, out of memory): that cine failed
            return WriteResult(source, False, reason=f"writer process failed: {type(e).__name__}: {e}")
