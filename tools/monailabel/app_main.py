"""The MONAI Label app that serves the GDKVM echo bundle (``make_app.py`` copies this file to ``<app>/main.py``).

It is MONAI Label's ``monaibundle`` sample app (bundles found as ``<app>/model/<name>``, ``--conf models``), with what
an annotation team needs on top:

- **Cines of every format the bundle reads** in the studies folder and as uploads (DICOM, AVI/MP4, NIfTI,
  MetaImage/NRRD: :data:`scripts.serving.DATASTORE_PATTERNS`); the label comes back as NIfTI whatever the input.
- **Clear errors**: a request that fails answers with a fitting status and a one-line ``detail`` naming the file and
  the problem (FastAPI ``HTTPException``): 404 for an unknown model or image id, 422 for a file that is not a readable
  cine or label (the bundle's ``EchoDataError``), also refused at upload so nothing unreadable enters the datastore,
  504 for an inference that ran past ``MONAI_LABEL_INFER_TIMEOUT``, 500 (with the exception in one line) for a fault
  of the server. A failed inference never saves a label.
- **A responsive server**: MONAI Label's ``/infer`` and upload endpoints are ``async`` functions that run the work
  on the event loop, so a running inference froze every other request (``GET /info/`` included). At start-up
  (:meth:`GDKVMEchoApp.on_init_complete`) those routes are swapped for the same endpoints run in FastAPI's worker
  threads; inferences then queue on MONAI Label's own pool of ``MONAI_LABEL_INFER_CONCURRENCY`` threads (set to 1
  by ``start_server.sh``) while the event loop keeps answering.
- **A studies folder that can work** or a refusal at start-up (:func:`scripts.serving.datastore_layout_problem`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import monailabel
from fastapi import HTTPException
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models, strtobool

logger = logging.getLogger(__name__)

# The file name of the cine sent with the current /infer request (MONAI Label hands the app a temporary copy).
upload = threading.local()

# (method, path) of MONAI Label's endpoints that do blocking work and are run in worker threads instead.
THREADED_ROUTES = (("POST", "/infer/{model}"), ("PUT", "/datastore/image"), ("PUT", "/datastore/"),
                   ("PUT", "/datastore/label"))  # fmt: skip


def one_line(error: BaseException) -> str:
    """An exception as one line: ``"RuntimeError: ..."`` (an ``EchoDataError`` as its message, file first)."""
    text = " ".join(str(error).split())
    if is_bad_input(error):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_bad_input(error: BaseException) -> bool:
    """True for the bundle's ``EchoDataError`` (matched by name: MONAI Label may re-import ``scripts`` per request)."""
    return any(cls.__name__ == "EchoDataError" for cls in type(error).__mro__)


def serving():
    """The bundle's ``scripts.serving`` (the bundle folder is on ``sys.path``, see :class:`GDKVMEchoApp`)."""
    import scripts.serving

    return scripts.serving


class CineInferTask(BundleInferTask):
    """The bundle's inference; the label is written as NIfTI (``.nii.gz``) also for DICOM, video and MetaImage inputs
    (MONAI Label would otherwise write it with the input's suffix, e.g. ``.dcm``)."""

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        path = str(data.get("image_path") or "")
        if extension is None and not data.get("result_extension") and not path.lower().endswith((".nii", ".nii.gz")):
            extension = ".nii.gz"
        return super().writer(data, extension=extension, dtype=dtype)


class CineDatastore(LocalDatastore):
    """MONAI Label's local datastore that lists every cine format and refuses unreadable uploads (HTTP 422)."""

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        _, ext = self._to_id(os.path.basename(image_filename))
        name = f"{image_id or 'upload'}{ext}"
        try:
            serving().check_uploaded_cine(image_filename, name)
        except Exception as e:
            if is_bad_input(e):
                raise HTTPException(status_code=422, detail=f"upload refused: {one_line(e)}") from e
            raise
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise HTTPException(status_code=404, detail=f"image '{image_id}': not in the datastore")
        _, ext = self._to_id(os.path.basename(label_filename))
        if label_info.get("model") is None:  # an upload (a label that an inference made was checked by the bundle)
            try:
                serving().check_uploaded_label(label_filename, f"label of {image_id}{ext}", image)
            except Exception as e:
                if is_bad_input(e):
                    raise HTTPException(status_code=422, detail=f"label refused: {one_line(e)}") from e
                raise
        return super().save_label(image_id, label_filename, label_tag, label_info)


class GDKVMEchoApp(MONAILabelApp):
    """Serves the bundles named by ``--conf models`` (folders ``<app>/model/<name>``); see the module docstring."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.models = get_bundle_models(app_dir, conf)
        for path in self.models.values():  # scripts.serving for the datastore (the infer tasks add it per request)
            if path not in sys.path:
                sys.path.append(path)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"GDKVM echo segmentation (MONAI Label {monailabel.__version__})",
            description="Heart chambers in echocardiography cines (GDKVM bundle)",
            version=monailabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        problem = serving().datastore_layout_problem(self.studies)
        if problem:
            raise RuntimeError(f"studies folder {self.studies}: {problem}")
        return CineDatastore(
            self.studies,
            extensions=list(serving().DATASTORE_PATTERNS),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            infers[name] = CineInferTask(path, self.conf)
            logger.info(f"+++ Adding Inferer:: {name} => {infers[name]}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers: dict[str, TrainTask] = {}
        for name, path in self.models.items():
            task = BundleTrainTask(path, self.conf)
            if task and task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's ``infer`` with each failure mapped to an ``HTTPException`` with a one-line reason."""
        model = request.get("model")
        if model not in self._infers:
            served = ", ".join(sorted(self._infers)) or "none"
            raise HTTPException(status_code=404, detail=f"model '{model}': not served here (served: {served})")
        image = request.get("image")
        source = image
        if isinstance(image, str) and not os.path.exists(image):
            source = (datastore or self.datastore()).get_image_uri(image)
            if not source:
                raise HTTPException(
                    status_code=404,
                    detail=f"image '{image}': not in the datastore {self.studies} (GET /datastore/?output=all lists "
                    "the image ids: file names without the suffix)",
                )
        shown = getattr(upload, "name", None)  # the upload's name in messages instead of its temporary copy's
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except concurrent.futures.TimeoutError as e:
            raise HTTPException(
                status_code=504,
                detail=f"{source}: inference ran past MONAI_LABEL_INFER_TIMEOUT={settings.MONAI_LABEL_INFER_TIMEOUT} s",
            ) from e
        except (Exception, SystemExit) as e:
            reason = one_line(e).replace(image, shown) if shown and isinstance(image, str) else one_line(e)
            if is_bad_input(e):
                logger.warning(f"infer {model} {image}: {reason}")
                raise HTTPException(status_code=422, detail=reason) from e
            logger.exception(f"infer {model} {image} failed")
            raise HTTPException(status_code=500, detail=f"{shown or source}: inference failed: {reason}") from e

    def on_init_complete(self) -> None:
        super().on_init_complete()
        run_blocking_routes_in_threads()


def in_thread(endpoint: Callable, path: str) -> Callable:
    """A synchronous twin of an ``async`` endpoint (same signature), which FastAPI runs in a worker thread."""

    infer = path.endswith("/infer/{model}")

    def run(*args: Any, **kwargs: Any) -> Any:
        if infer and not (kwargs.get("image") or kwargs.get("file") or kwargs.get("session_id")):  # MONAI Label: 500
            raise HTTPException(status_code=422, detail="no image: pass ?image=<image id> or upload a cine as 'file'")
        upload.name = getattr(kwargs.get("file"), "filename", None) if infer else None
        try:
            return asyncio.run(endpoint(*args, **kwargs))
        finally:
            upload.name = None

    run.__signature__ = inspect.signature(endpoint)  # type: ignore[attr-defined]
    run.__name__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    return run


def routers(router: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """``router`` and every router included in it: FastAPI >= 0.120 keeps included routers apart (``_IncludedRouter``
    with ``original_router``), older versions copy their routes into the app's router."""
    seen = set() if seen is None else seen
    seen.add(id(router))
    yield router
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None and id(inner) not in seen:
            yield from routers(inner, seen)


def run_blocking_routes_in_threads() -> None:
    """Swap MONAI Label's blocking ``async`` routes (:data:`THREADED_ROUTES`) for thread-run twins, in place."""
    module = sys.modules.get("monailabel.app")  # the FastAPI app (absent when MONAI Label runs a task in a subprocess)
    if module is None:
        return
    swapped = []
    for router in routers(module.app.router):
        changed = False
        for index, route in enumerate(router.routes):
            if not isinstance(route, APIRoute) or not inspect.iscoroutinefunction(route.endpoint):
                continue
            paths = {(method, path) for method in route.methods for path in (route.path, route.path_format)}
            if not any((m, p) in paths or (m, settings.MONAI_LABEL_API_STR + p) in paths for m, p in THREADED_ROUTES):
                continue
            router.routes[index] = APIRoute(
                route.path,
                in_thread(route.endpoint, route.path),
                methods=list(route.methods),
                name=route.name,
                summary=route.summary,
                description=route.description,
                tags=route.tags,
                responses=route.responses,
                include_in_schema=route.include_in_schema,
                deprecated=route.deprecated,
            )
            swapped.append(f"{'/'.join(sorted(route.methods))} {route.path}")
            changed = True
        if changed and hasattr(router, "_mark_routes_changed"):  # FastAPI >= 0.120 caches the effective routes
            router._mark_routes_changed()
    if swapped:
        logger.info(f"run in worker threads: {', '.join(swapped)}")
    else:
        logger.warning("MONAI Label's /infer route was not found: each inference blocks the server while it runs")
