"""A DICOM node around the application: receives cines by C-STORE, runs the app, sends each SR back by C-STORE.

    python tools/monai_deploy/dicom_node.py --model model_dir --work node_work --port 11112 \\
        --send_to 127.0.0.1:11113:PACS [--ae_title GDKVM_ECHO] [--host 127.0.0.1]

Every association is one batch: the instances it stores are written to ``<work>/incoming/<n>/`` and, when the sender
releases the association, the application (``app.py``, a subprocess in this venv) runs on that folder with output
``<work>/results/<n>/``; each SR it wrote is then sent to ``--send_to`` (``host:port:AE title``). Batches run one at a
time, in order, in a worker thread, so the node keeps accepting associations meanwhile. The node logs one line per
batch (what the app said about each failed input is in ``<work>/results/<n>.log``) and per SR sent. It accepts every
storage SOP class in any transfer syntax (a wrong one is then reported by the app, not refused on the network) and
C-ECHO. Stop it with Ctrl-C (SIGINT) or SIGTERM.
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

from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

APP = Path(__file__).resolve().parent / "app.py"
logger = logging.getLogger("gdkvm_echo_node")


class EchoNode:
    """The C-STORE SCP, the batch worker and the SR sender (see the module doc)."""

    def __init__(self, model: Path, work: Path, send_to: tuple[str, int, str], ae_title: str = "GDKVM_ECHO") -> None:
        self.model, self.work, self.send_to, self.ae_title = model, work, send_to, ae_title
        self.batches: queue.Queue[int | None] = queue.Queue()
        self.counter = 0
        self.lock = threading.Lock()
        self.folders: dict[int, int] = {}  # id(association) -> batch number
        self.worker = threading.Thread(target=self._work, name="echo-batches", daemon=True)

    def _batch(self, event: evt.Event) -> int:
        with self.lock:
            key = id(event.assoc)
            if key not in self.folders:
                self.counter += 1
                self.folders[key] = self.counter
            return self.folders[key]

    def on_store(self, event: evt.Event) -> int:
        folder = self.work / "incoming" / str(self._batch(event))
        folder.mkdir(parents=True, exist_ok=True)
        ds = event.dataset
        ds.file_meta = event.file_meta
        part = folder / f".{ds.SOPInstanceUID}.part"
        ds.save_as(part, enforce_file_format=True)
        part.replace(folder / f"{ds.SOPInstanceUID}.dcm")
        return 0x0000

    def on_released(self, event: evt.Event) -> None:
        with self.lock:
            number = self.folders.pop(id(event.assoc), None)
        if number is not None:
            self.batches.put(number)

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
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_RELEASED, self.on_released)]
        self.worker.start()
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        logger.info("listening on %s:%d as %s; SRs go to %s@%s:%d", host, port, self.ae_title, self.send_to[2],
                    *self.send_to[:2])  # fmt: skip
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
    args = parser.parse_args(argv)
    host, port, title = args.send_to.rsplit(":", 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    EchoNode(args.model, args.work, (host, int(port), title), args.ae_title).serve(args.host, args.port)


if __name__ == "__main__":
    main()
