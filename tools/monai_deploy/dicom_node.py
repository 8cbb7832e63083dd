"""A DICOM node around the application: receives cines by C-STORE, runs the app, sends each SR back by C-STORE.

    python tools/monai_deploy/dicom_node.py --model model_dir --work node_work --port 11112 \\
        --send_to 127.0.0.1:11113:PACS [--ae_title GDKVM_ECHO] [--host 127.0.0.1] \\
        [--allowed_callers US_CART1,ECHO_LAB] [--max_associations 4] [--max_instances 500] [--max_mb 4096]

Every association is one batch: the instances it stores are written to ``<work>/incoming/<n>/IM00001.dcm``, ... (the
node names every folder and file; nothing a sender sends names one) and, when the sender releases the association,
the application (``app.py``, a subprocess in this venv) runs on that folder with output ``<work>/results/<n>/``; each
SR it wrote is then sent to ``--send_to`` (``host:port:AE title``). Batches run one at a
time, in order, in a worker thread, so the node keeps accepting associations meanwhile. The node logs one line per
batch (what the app said about each failed input is in ``<work>/results/<n>.log``) and per SR sent. It accepts every
storage SOP class in any transfer syntax (a wrong one is then reported by the app, not refused on the network) and
C-ECHO. Stop it with Ctrl-C (SIGINT) or SIGTERM.

What it trusts: with ``--allowed_callers`` only those calling AE titles may associate (pynetdicom's
``require_calling_aet``; any other is rejected, "calling AE title not recognised", with one log line); without it any
caller may store, and the node says so at start-up. An association must call the node's own AE title. At most
``--max_associations`` associations at once (more are rejected, "local limit exceeded"), ``--max_instances`` instances
and ``--max_mb`` megabytes per association. A store it refuses or fails is answered with the status that says why
(``ErrorComment`` naming the problem): 0xA700 out of resources (the association's limits, a failed write), 0xA900 a
dataset whose SOP Class is not the one it was sent as, 0xC000 a SOP Instance UID that is not a valid UID or not the
one it was sent as, 0xC210 a dataset that cannot be decoded.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID, Comprehensive3DSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

APP = Path(__file__).resolve().parent / "app.py"
logger = logging.getLogger("gdkvm_echo_node")


def store_status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an ``ErrorComment`` (LO: 64 characters at most) saying why."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def uid_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not a valid DICOM UID (digits and dots, at most 64 characters); None when it is one."""
    text = "" if value is None else str(value)
    if not text:
        return f"no {what}"
    if not UID(text).is_valid:
        return f"{what} is not a valid UID"
    return None


class EchoNode:
    """The C-STORE SCP, the batch worker and the SR sender (see the module doc)."""

    def __init__(
        self,
        model: Path,
        work: Path,
        send_to: tuple[str, int, str],
        ae_title: str = "GDKVM_ECHO",
        allowed_callers: list[str] | None = None,
        max_associations: int = 4,
        max_instances: int = 500,
        max_bytes: int = 4096 * 1024 * 1024,
    ) -> None:
        self.model, self.work, self.send_to, self.ae_title = model, work, send_to, ae_title
        self.allowed_callers = [title.strip() for title in allowed_callers or [] if title.strip()]
        self.max_associations, self.max_instances, self.max_bytes = max_associations, max_instances, max_bytes
        self.batches: queue.Queue[int | None] = queue.Queue()
        self.counter = max((int(p.name) for p in (work / "incoming").glob("*") if p.name.isdigit()), default=0)
        self.lock = threading.Lock()
        self.folders: dict[int, list[int]] = {}  # id(association) -> [batch number, instances stored, bytes stored]
        self.worker = threading.Thread(target=self._work, name="echo-batches", daemon=True)

    def _batch(self, event: evt.Event) -> list[int]:
        with self.lock:
            key = id(event.assoc)
            if key not in self.folders:
                self.counter += 1
                self.folders[key] = [self.counter, 0, 0]
            return self.folders[key]

    def on_store(self, event: evt.Event) -> int | Dataset:
        """Store one instance as ``incoming/<batch>/IM<k>.dcm`` or answer why not (see the module doc)."""
        batch = self._batch(event)
        number, caller = batch[0], event.assoc.requestor.ae_title
        request = event.request
        size = 0
        if request.DataSet is not None:
            with request.DataSet.getbuffer() as view:  # the encoded dataset as received, not copied
                size = view.nbytes
        if batch[1] >= self.max_instances or batch[2] + size > self.max_bytes:
            limit = (
                f"more than {self.max_instances} instances"
                if batch[1] >= self.max_instances
                else f"more than {self.max_bytes / (1024 * 1024):.4g} MB"
            )
            logger.warning("batch %d: store from %s refused: %s in one association", number, caller, limit)
            return store_status(0xA700, f"{limit} in one association")
        for value, what in ((request.AffectedSOPInstanceUID, "Affected SOP Instance UID"),
                            (request.AffectedSOPClassUID, "Affected SOP Class UID")):  # fmt: skip
            problem = uid_problem(value, what)
            if problem:
                logger.warning("batch %d: store from %s refused: %s (%r)", number, caller, problem, str(value)[:80])
                return store_status(0xC000, problem)
        try:
            ds = event.dataset
        except Exception as e:  # noqa: BLE001 - an undecodable dataset is the sender's problem
            logger.warning("batch %d: store from %s refused: dataset not decodable (%s)", number, caller, e)
            return store_status(0xC210, "the dataset cannot be decoded")
        sop_instance, sop_class = ds.get("SOPInstanceUID"), ds.get("SOPClassUID")
        problem = uid_problem(sop_instance, "SOP Instance UID")
        if problem is None and str(sop_instance) != str(request.AffectedSOPInstanceUID):
            problem = "SOP Instance UID differs from the one it was sent as"
        if problem:
            logger.warning("batch %d: store from %s refused: %s (%r)", number, caller, problem, str(sop_instance)[:80])
            return store_status(0xC000, problem)
        if str(sop_class) != str(request.AffectedSOPClassUID):
            logger.warning("batch %d: store from %s refused: SOP Class UID %r is not the one it was sent as (%s)",
                           number, caller, str(sop_class)[:80], request.AffectedSOPClassUID)  # fmt: skip
            return store_status(0xA900, "SOP Class UID differs from the one it was sent as")
        folder = self.work / "incoming" / str(number)
        name = f"IM{batch[1] + 1:05d}.dcm"
        part = folder / f".{name}.part"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ds.file_meta = event.file_meta
            ds.save_as(part, enforce_file_format=True)
            part.replace(folder / name)
        except OSError as e:
            part.unlink(missing_ok=True)
            logger.error("batch %d: could not write %s: %s", number, folder / name, e)
            return store_status(0xA700, f"could not write the instance ({e.strerror or type(e).__name__})")
        batch[1] += 1
        batch[2] += size
        return 0x0000

    def on_rejected(self, event: evt.Event) -> None:
        """One log line per association the node rejected, with who called and why."""
        requestor = event.assoc.requestor
        title, address = requestor.ae_title, f"{requestor.address}:{requestor.port}"
        if self.allowed_callers and title not in self.allowed_callers:
            why = f"calling AE title not in --allowed_callers ({', '.join(self.allowed_callers)})"
        elif event.assoc.acceptor.ae_title != getattr(requestor.primitive, "called_ae_title", self.ae_title):
            why = f"it called {requestor.primitive.called_ae_title!r}, not {self.ae_title!r}"
        else:
            why = f"more than {self.max_associations} associations at once (--max_associations)"
        logger.warning("association from %r at %s rejected: %s", title, address, why)

    def on_released(self, event: evt.Event) -> None:
        with self.lock:
            batch = self.folders.pop(id(event.assoc), None)
        if batch is not None:
            self.batches.put(batch[0])

    def _work(self) -> None:
        while (number := self.batches.get()) is not None:
            try:
                self.run_batch(number)
            except Exception:  # noqa: BLE001 - a failed batch is logged; the node goes on
                logger.exception("batch %d failed", number)

    def run_batch(self, number: int) -> None:
        incoming, results = self.work / "incoming" / str(number), self.work / "results" / str(number)
        log = self.work / "results" / f"{number}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(APP), "-i", str(incoming), "-o", str(results), "-m", str(self.model)]
        with log.open("w") as f:
            status = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
        failed = [line for line in log.read_text().splitlines() if line.startswith(("input failed: ", "model refused"))]
        srs = sorted(results.rglob("*_sr.dcm")) if results.is_dir() else []
        logger.info("batch %d: app exit status %d, %d SR(s), %d failed input(s) (%s)", number, status, len(srs),
                    len(failed), log)  # fmt: skip
        for line in failed:
            logger.warning("batch %d: %s", number, line)
        if srs:
            self.send(srs)

    def send(self, paths: list[Path]) -> None:
        host, port, title = self.send_to
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(host, port, ae_title=title)
        if not assoc.is_established:
            logger.error("could not associate with %s@%s:%d to send %d SR(s)", title, host, port, len(paths))
            return
        try:
            for path in paths:
                status = assoc.send_c_store(dcmread(path))
                code = getattr(status, "Status", None)  # None: no answer (timeout, aborted)
                if code == 0x0000:
                    logger.info("sent %s to %s@%s:%d", path, title, host, port)
                else:
                    shown = "no answer" if code is None else f"status 0x{code:04X}"
                    logger.error("sending %s to %s@%s:%d failed: %s", path, title, host, port, shown)
        finally:
            assoc.release()

    def serve(self, host: str, port: int) -> None:
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = self.allowed_callers
        ae.require_called_aet = True
        ae.maximum_associations = self.max_associations
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_RELEASED, self.on_released),
                    (evt.EVT_REJECTED, self.on_rejected)]  # fmt: skip
        self.worker.start()
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        logger.info("listening on %s:%d as %s; SRs go to %s@%s:%d", host, port, self.ae_title, self.send_to[2],
                    *self.send_to[:2])  # fmt: skip
        if self.allowed_callers:
            logger.info("callers allowed: %s", ", ".join(self.allowed_callers))
        else:
            logger.warning("any calling AE title may store here: give --allowed_callers to refuse unknown callers")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        server.shutdown()
        self.batches.put(None)
        self.worker.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="model folder (model.ts)")
    parser.add_argument("--work", required=True, type=Path, help="folder for received cines and results")
    parser.add_argument("--send_to", required=True, help="where the SRs go: host:port:AE_TITLE")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    parser.add_argument("--ae_title", default="GDKVM_ECHO")
    parser.add_argument("--allowed_callers", default="", help="calling AE titles allowed to associate, comma-separated "
                        "(default: any; give it whenever the node listens beyond loopback)")  # fmt: skip
    parser.add_argument("--max_associations", type=int, default=4, help="associations at once (more are rejected)")
    parser.add_argument("--max_instances", type=int, default=500, help="instances per association (more: 0xA700)")
    parser.add_argument("--max_mb", type=float, default=4096, help="megabytes per association (more: 0xA700)")
    args = parser.parse_args(argv)
    for name in ("max_associations", "max_instances", "max_mb"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} {getattr(args, name)}: expected a positive number")
    callers = [title.strip() for title in args.allowed_callers.split(",") if title.strip()]
    for title in callers:
        if len(title) > 16 or not title.isascii() or not title.isprintable() or "\\" in title:
            parser.error(f"--allowed_callers: {title!r} is not an AE title (at most 16 ASCII characters, no '\\')")
    host, port, title = args.send_to.rsplit(":", 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = EchoNode(args.model, args.work, (host, int(port), title), args.ae_title, callers, args.max_associations,
                    args.max_instances, int(args.max_mb * 1024 * 1024))  # fmt: skip
    node.serve(args.host, args.port)


if __name__ == "__main__":
    main()
