"""MONAI Deploy application: ultrasound DICOM cines in, one DICOM SR with the LV measurements per cine out.

    python tools/monai_deploy/app.py -i INPUT -o OUTPUT -m MODEL_DIR      # in the venv of setup_env.sh
    tools/monai_deploy/run.sh -i INPUT -o OUTPUT -m MODEL_DIR             # the same, picking that venv

INPUT is a DICOM file or a folder searched recursively; MODEL_DIR holds ``model.ts`` (exported by
``tools/monai_deploy/model_folder.py``). The SDK's own ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``/
``HOLOSCAN_MODEL_PATH`` work instead of the flags (a MAP sets them). The graph (echo_operators.py)::

    CineLoaderOperator --cine--> EchoBundleInferenceOperator --seg--> EchoMeasurementsOperator --measured-->
        EchoResultWriterOperator

Exit status: 0 when every input gave its SR, 1 when any input failed (one ``input failed: <file>: <problem>`` line on
stderr each; the others are still processed), 2 when the model folder is refused (nothing runs).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from echo_operators import (  # noqa: E402
    CineLoaderOperator,
    EchoBundleInferenceOperator,
    EchoMeasurementsOperator,
    EchoResultWriterOperator,
    Ledger,
    bundle_config,
    list_inputs,
    remove_stale,
)
from model_folder import ModelRefused, ServedModel, served_model  # noqa: E402
from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import AppContext, Application  # noqa: E402
from monai.deploy.core.io_type import IOType  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import IOMapping  # noqa: E402

logger = logging.getLogger("gdkvm_echo_deploy")


class EchoLVApp(Application):
    """Segments the LV in each ultrasound DICOM cine with the GDKVM bundle and writes its DICOM SR, JSON report and
    overlays. :meth:`prepare` must run before :meth:`run` (it checks the model and lists the inputs)."""

    name = "gdkvm_echo_lv_sr"
    description = "LV ejection fraction and volumes from echo cines as a DICOM SR (GDKVM bundle)"
    version = "0.1.0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = Ledger()
        self.context: AppContext | None = None
        self.served: ServedModel | None = None
        self.files: list[Path] = []
        self.stems: list[str] = []

    def prepare(self) -> None:
        """Read -i/-o/-m (or the HOLOSCAN_* variables), check the model folder and list the inputs.

        Raises:
            ModelRefused: the model cannot be served as trained (exit status 2).
            SystemExit: no input files (exit status 1).
        """
        from scripts.inference import output_names

        self.context = Application.init_app_context(self.argv)
        self.served = served_model(self.context.model_path)
        bundle_config(self.served)  # refuses a config that contradicts the model before any cine is read
        input_path = Path(self.context.input_path)
        self.files = list_inputs(input_path)
        if not self.files:
            raise SystemExit(f"{input_path}: no input files")
        self.stems = output_names(self.files, input_path if input_path.is_dir() else input_path.parent)
        logger.info("serving %s as trained: %s (from %s)", self.served.path, self.served.settings, self.served.source)

    def compose(self) -> None:
        assert self.context is not None and self.served is not None, "call prepare() first"
        output_dir = Path(self.context.output_path)
        loader = CineLoaderOperator(
            self,
            CountCondition(self, len(self.files)),
            files=self.files,
            stems=self.stems,
            ledger=self.ledger,
            name="cine_loader",
        )
        inference = EchoBundleInferenceOperator(
            self,
            app_context=self.context,
            input_mapping=[IOMapping("cine", dict, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("seg", dict, IOType.IN_MEMORY)],
            served=self.served,
            ledger=self.ledger,
            name="echo_bundle_inference",
        )
        measurements = EchoMeasurementsOperator(self, ledger=self.ledger, name="echo_measurements")
        writer = EchoResultWriterOperator(
            self, output_dir=output_dir, ledger=self.ledger, model_file=self.served.path, name="echo_sr_writer"
        )
        self.add_flow(loader, inference, {("cine", "cine")})
        self.add_flow(inference, measurements, {("seg", "seg")})
        self.add_flow(measurements, writer, {("measured", "measured")})

    def finish(self) -> int:
        """Remove stale outputs of the failed inputs, print the summary; the exit status."""
        output_dir = Path(self.context.output_path)
        failed = {path for path, _ in self.ledger.failed}
        for path, stem in zip(self.files, self.stems):
            if str(path) in failed:
                remove_stale(output_dir, stem)
        unfinished = [p for p in self.files if str(p) not in failed and not self._written(p)]
        for path in unfinished:  # the graph stopped before this input reached the writer
            self.ledger.fail(path, "not processed (the application stopped early)")
        n_failed = len(self.ledger.failed)
        verdicts = [w["verdict"] for w in self.ledger.written]
        rejected = sum(1 for path, _ in self.ledger.failed if self.ledger.verdicts.get(path) == "reject")
        print(
            f"{len(self.files)} input(s): {len(self.ledger.written)} SR(s) written ({verdicts.count('ok')} ok, "
            f"{verdicts.count('review')} review), {rejected} rejected, {n_failed - rejected} failed otherwise",
            flush=True,
        )
        for path, steps in self.ledger.seconds.items():
            logger.info("%s: %s", path, ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
        return 1 if n_failed else 0

    def _written(self, path: Path) -> bool:
        return any(w["input"] == str(path) for w in self.ledger.written)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = EchoLVApp(argv) if argv is not None else EchoLVApp()
    try:
        app.prepare()
    except ModelRefused as e:
        print(f"model refused: {e.message}", file=sys.stderr, flush=True)
        return 2
    start = time.perf_counter()
    app.run()
    status = app.finish()
    logger.info("application ran in %.1f s", time.perf_counter() - start)
    return status


if __name__ == "__main__":
    sys.exit(main())
