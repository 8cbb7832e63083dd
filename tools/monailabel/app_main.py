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
- **A datastore nobody can climb out of**: every image id, label id, label tag, upload name and session id a request
  carries is checked (:mod:`scripts.safe_names`) before any file is touched, at the door (:class:`RequestGuard`, for
  the query and the path), at the upload endpoints (the names of the files sent) and again in the datastore itself
  (:class:`CineDatastore`, for what reaches it from inside, e.g. ``label_tag`` in ``/infer``'s params); a bad one is
  answered 422 with one line naming the value, an unknown one 404. ``/infer`` reads only datastore images, uploads and
  sessions (MONAI Label would read any path on the server that an ``image`` value names). Request bodies are capped
  at ``GDKVM_MAX_UPLOAD_MB`` (default 512 MB): 413 past it, before the body is read when its length is announced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import monailabel
import torch
from fastapi import HTTPException
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
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
                   ("PUT", "/datastore/label"), ("PUT", "/session/"), ("GET", "/datastore/image"),
                   ("HEAD", "/datastore/image"))  # fmt: skip
# Query parameters that name a datastore object, and what they name (RequestGuard checks each before the endpoint runs).
NAMED_QUERY = {
    "image": "image id",
    "id": "image id",
    "label": "label id",
    "tag": "label tag",
    "session_id": "session id",
}
# The largest request body (an upload), in MB; GDKVM_MAX_UPLOAD_MB sets it.
DEFAULT_MAX_UPLOAD_MB = 512
# Suffixes a saved label may have (check_uploaded_label reads NIfTI, MetaImage and NRRD).
LABEL_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


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


def names():
    """The bundle's ``scripts.safe_names``: the checks of every name a request carries."""
    import scripts.safe_names

    return scripts.safe_names


def refused(error: BaseException, status: int = 422) -> HTTPException:
    """A name the server will not use, as an HTTP error whose detail is the check's one line."""
    return HTTPException(status_code=status, detail=" ".join(str(error).split()))


def check_name(kind: str, value: Any) -> str:
    """``value`` checked as a ``kind`` (a key of :data:`NAMED_QUERY`'s values); ``HTTPException`` 422 if it is bad."""
    checks = names()
    check = {
        "image id": checks.check_image_id,
        "label id": lambda v: checks.check_image_id(v, "label id"),
        "label tag": checks.check_label_tag,
        "session id": checks.check_session_id,
        "upload name": checks.upload_name,
    }[kind]
    try:
        return check(value)
    except checks.NameRefusedError as e:
        raise refused(e) from e


class CineInferTask(BundleInferTask):
    """The bundle's inference; the label is written as NIfTI (``.nii.gz``) also for DICOM, video and MetaImage inputs
    (MONAI Label would otherwise write it with the input's suffix, e.g. ``.dcm``). After the network, a few frames are
    segmented again alone (``scripts.memory_check``, the bundle's ``memory_check_frames``) for the verdict of the
    result JSON, unless the request sent corrections."""

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        from scripts.memory_check import DEFAULT_CHECKED_FRAMES, MEMORY_CHECK_KEY, memory_check

        data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        frames = int(self.bundle_config.get_parsed_content("memory_check_frames", default=DEFAULT_CHECKED_FRAMES))
        if frames and data.get("corrections") is None:
            network = self._get_network(device, data)
            image = torch.as_tensor(data[self.input_key]).to(torch.device(device))
            data[MEMORY_CHECK_KEY] = memory_check(network.eval(), image, data[self.output_label_key], frames)
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        path = str(data.get("image_path") or "")
        if extension is None and not data.get("result_extension") and not path.lower().endswith((".nii", ".nii.gz")):
            extension = ".nii.gz"
        return super().writer(data, extension=extension, dtype=dtype)


class CineDatastore(LocalDatastore):
    """MONAI Label's local datastore that lists every cine format, refuses unreadable uploads (HTTP 422) and never
    touches a file outside its folder: every id and tag is checked (:mod:`scripts.safe_names`, 422 with one line),
    every path it builds must lie in the studies folder (or its ``labels/<tag>`` folder), an unknown image or label
    is 404. Uploads are stored under ``<image id><cine suffix>``, labels under ``labels/<tag>/<image id><suffix>``.

    Viewers get what the label lies on (:meth:`viewer_image`): a DICOM, a video or a ``.mhd`` + ``.raw`` pair is
    handed out (``GET /datastore/image``) as ``<image id>.nii.gz`` in the label's geometry, kept in
    ``viewer_folder``; the image info (``GET /datastore/image/info``, the sample ``/activelearning`` returns, which
    3D Slicer downloads or opens by its ``name`` and ``path``) names that file, and ``source_name`` the cine's own.
    """

    def __init__(self, *args: Any, viewer_folder: str, **kwargs: Any) -> None:
        self.viewer_folder = viewer_folder
        super().__init__(*args, **kwargs)

    def viewer_image(self, image_id: str) -> str:
        """The file a viewer should open for ``image_id`` (:func:`scripts.serving.viewer_image`): the cine itself,
        or its NIfTI copy in the label's geometry (made now if missing or older than the cine); 404 for an unknown
        image, 422 for a cine that cannot be read."""
        image_id = self._known_image(image_id)
        source = self.get_image_uri(image_id)
        try:
            return str(serving().viewer_image(source, self.viewer_folder, image_id))
        except Exception as e:
            if is_bad_input(e):
                raise HTTPException(status_code=422, detail=one_line(e)) from e
            raise

    def _inside(self, folder: str, name: str) -> str:
        try:
            return str(names().inside(folder, os.path.join(folder, name)))
        except names().NameRefusedError as e:
            raise refused(e) from e

    def _known_image(self, image_id: Any, what: str = "image id") -> str:
        image_id = check_name(what, image_id)
        if image_id not in self._datastore.objects:
            raise HTTPException(status_code=404, detail=f"image '{image_id}': not in the datastore")
        return image_id

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        _, ext = self._to_id(os.path.basename(image_filename))
        cine_suffixes = tuple(pattern.lstrip("*") for pattern in serving().DATASTORE_PATTERNS)
        if ext.lower() not in cine_suffixes:
            raise HTTPException(
                status_code=422,
                detail=f"upload refused: {image_id or 'upload'}{ext}: suffix {ext or '(none)'!r} is not a cine's "
                f"({', '.join(cine_suffixes)})",
            )
        image_id = check_name("image id", image_id)
        name = f"{image_id}{ext}"
        self._inside(self._datastore.image_path(), name)
        try:
            serving().check_uploaded_cine(image_filename, name)
        except Exception as e:
            if is_bad_input(e):
                raise HTTPException(status_code=422, detail=f"upload refused: {one_line(e)}") from e
            raise
        if ext != ext.lower():  # IM_0001.DCM is stored as IM_0001.dcm, which the datastore lists
            with tempfile.TemporaryDirectory() as folder:
                lower = os.path.join(folder, f"upload{ext.lower()}")
                shutil.copyfile(image_filename, lower)
                return super().add_image(image_id, lower, image_info)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image_id = self._known_image(image_id)
        label_tag = check_name("label tag", label_tag or DefaultLabelTag.FINAL.value)
        image = self.get_image_uri(image_id)
        _, ext = self._to_id(os.path.basename(label_filename))
        if label_info.get("model") is None:  # an upload (a label that an inference made was checked by the bundle)
            if ext.lower() not in LABEL_FILE_SUFFIXES:
                raise HTTPException(
                    status_code=422,
                    detail=f"label refused: label of {image_id}: suffix {ext or '(none)'!r} is not a label file's "
                    f"({', '.join(LABEL_FILE_SUFFIXES)})",
                )
            try:
                serving().check_uploaded_label(label_filename, f"label of {image_id}{ext}", image)
            except Exception as e:
                if is_bad_input(e):
                    raise HTTPException(status_code=422, detail=f"label refused: {one_line(e)}") from e
                raise
        self._inside(self._datastore.label_path(label_tag), f"{image_id}{ext}")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        image_id = self._known_image(image_id)
        super().remove_image(image_id)
        serving().remove_viewer_image(self.viewer_folder, image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        label_id = self._known_image(label_id, "label id")
        label_tag = check_name("label tag", label_tag)
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"label '{label_id}' tag '{label_tag}': not in the datastore")
        super().remove_label(label_id, label_tag)

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(check_name("image id", image_id))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        image_id = check_name("image id", image_id)
        info = super().get_image_info(image_id)
        source = info.get("path")
        if source and os.path.isfile(source) and not serving().viewer_reads_as_is(source):
            name = serving().viewer_image_name(image_id, source)
            info.update(source_name=os.path.basename(source), name=name, path=os.path.join(self.viewer_folder, name))
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        super().update_image_info(self._known_image(image_id), info)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(check_name("label id", label_id), check_name("label tag", label_tag))

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(check_name("label id", label_id), check_name("label tag", label_tag))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        label_id, label_tag = check_name("label id", label_id), check_name("label tag", label_tag)
        if not self._datastore.label(label_id, label_tag):
            raise HTTPException(status_code=404, detail=f"label '{label_id}' tag '{label_tag}': not in the datastore")
        super().update_label_info(label_id, label_tag, info)


class CineTrainTask(BundleTrainTask):
    """MONAI Label's bundle training (fine-tuning the served weights) on every datastore cine with a saved label,
    whatever its format, answering what happened.

    - Cines whose saved label has no LV frame are left out (and named); none left -> 422, no training.
    - ``val_split`` > 0: MONAI Label's split, at least one cine kept for training; with 0 (or a split that leaves
      no validation cine) the training cines are validated, and the answer says the metric measures fit only.
    - The served weights are validated first (epoch 0) and replaced only by an epoch that beats them.

    The answer (``/train``'s JSON, also the result of an asynchronous run): ``cines`` (each with its labelled
    frames), ``left_out``, ``validation`` (``"split"`` or ``"training cines"``, the cines, ``metric``,
    ``before_training``, ``best``, ``best_epoch``, ``per_epoch``), ``epochs``, ``weights_replaced`` (bool) and
    ``weights`` (one line: replaced, or kept and why), ``model`` (the served file, its SHA-256 before and after).
    """

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        items = super()._fetch_datalist(request, datastore)
        self._cines, self._left_out = [], []
        kept = []
        for item in items:
            name = os.path.basename(item["image"])
            try:
                frames = serving().labelled_frames(item["label"])
            except Exception as e:  # noqa: BLE001 - an unreadable label is left out and named
                self._left_out.append({"image": name, "reason": one_line(e)})
                continue
            if frames == 0:
                self._left_out.append({"image": name, "reason": "its label has no LV (1) in any frame"})
                continue
            self._cines.append({"image": name, "labelled_frames": frames})
            kept.append(item)
        if not kept:
            reasons = "; ".join(f"{c['image']}: {c['reason']}" for c in self._left_out)
            why = f" ({reasons})" if reasons else ""
            raise HTTPException(
                status_code=422,
                detail="no labelled cine to train on: save a label with the LV on at least one frame "
                f"(PUT /datastore/label?image=<image id>&tag=final) first{why}",
            )
        return kept

    def _partition_datalist(self, datalist: list, request: dict[str, Any], shuffle: bool = False) -> tuple:
        val_split = float(request.get("val_split", 0.2))
        train_ds, val_ds = super()._partition_datalist(datalist, request, shuffle) if val_split > 0 else (datalist, [])
        if not train_ds:  # a split that took every cine for validation
            train_ds, val_ds = val_ds[:1], val_ds[1:]
        self._validated_on_training = not val_ds
        return train_ds, (val_ds or list(train_ds))

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """``monai.bundle.run`` as MONAI Label runs it, keeping the workflow to read what the training did."""
        from monai.bundle.scripts import create_workflow

        workflow = create_workflow(
            config_file=self.bundle_config_path,
            meta_file=self.bundle_metadata_path,
            init_id=None,
            run_id=request.get("run_id", "run"),
            final_id=None,
            **overrides,
        )
        workflow.run()
        workflow.finalize()
        best = workflow.parser.get_parsed_content("validate#best_model")
        trainer = workflow.parser.get_parsed_content("train#trainer")
        self._trained = {
            "epochs": int(trainer.state.epoch),
            "metric_name": workflow.parser.get_parsed_content("validate#evaluator").state.key_metric_name,
            "history": list(best.history),
            "best_epoch": int(best.best_epoch),
            "best": float(best.best_metric),
            "val_cines": [os.path.basename(v["image"]) for v in overrides.get("validate#dataset#data", [])],
        }

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        import hashlib

        model_file = os.path.join(self.bundle_path, "models", str(request.get("model_filename") or "model.pt"))

        def sha256() -> str | None:
            if not os.path.isfile(model_file):
                return None
            with open(model_file, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()

        before = sha256()
        self._cines, self._left_out, self._trained, self._validated_on_training = [], [], {}, False
        super().__call__(request, datastore)
        after = sha256()
        trained = self._trained
        history = trained.get("history", [])
        start = next((value for epoch, value in history if epoch == 0), None)
        replaced = before != after
        if replaced:
            weights = (
                f"replaced: epoch {trained.get('best_epoch')} reached {trained.get('metric_name')} "
                f"{trained.get('best', float('nan')):.4f}"
                + (f" (the served weights had {start:.4f})" if start is not None else "")
            )
        elif not trained:
            weights = "kept: the training did not run (see the server log)"
        else:
            weights = (
                f"kept: no epoch beat the served weights on the validation cines ({trained.get('metric_name')} "
                f"{start if start is None else round(start, 4)} before training, best epoch "
                f"{max((v for e, v in history if e > 0), default=float('nan')):.4f})"
            )
        validation = {
            "on": "training cines" if self._validated_on_training else "split",
            "cines": trained.get("val_cines", []),
            "metric": trained.get("metric_name"),
            "before_training": start,
            "best": trained.get("best"),
            "best_epoch": trained.get("best_epoch"),
            "per_epoch": [{"epoch": e, "value": v} for e, v in history],
        }
        if self._validated_on_training:
            validation["note"] = (
                "no cine was held out (val_split 0 or too few cines): validated on the training cines, so the metric "
                "measures fit, not how the model does on new cines"
            )
        answer = {
            "cines": self._cines,
            "left_out": self._left_out,
            "epochs": trained.get("epochs"),
            "validation": validation,
            "weights_replaced": replaced,
            "weights": weights,
            "model": {"file": os.path.basename(model_file), "sha256_before": before, "sha256_after": after},
        }
        logger.info(f"train: {json.dumps(answer)}")
        return answer


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
            viewer_folder=os.path.join(self.app_dir, "viewer_images"),
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
            task = CineTrainTask(path, self.conf)
            if task and task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's ``infer`` with each failure mapped to an ``HTTPException`` with a one-line reason.

        ``request["image"]`` is either the temporary copy MONAI Label made of a cine sent with the request (or a
        session's), or an image id, which is looked up in the datastore and nowhere else (MONAI Label itself reads
        any existing path the value names, and then never saves the label). ``save_label`` is honoured for an image
        id as MONAI Label does it (``label_tag`` checked by the datastore).
        """
        model = request.get("model")
        if model not in self._infers:
            served = ", ".join(sorted(self._infers)) or "none"
            raise HTTPException(status_code=404, detail=f"model '{model}': not served here (served: {served})")
        datastore = datastore or self.datastore()
        image = request.get("image")
        source = image
        image_id, save = None, False
        replaced = isinstance(image, str) and image != getattr(upload, "client_image", image)
        if isinstance(image, str) and not (replaced and self.received_file(image)):
            image_id = check_name("image id", image)
            source = datastore.get_image_uri(image_id)
            if not source:
                raise HTTPException(
                    status_code=404,
                    detail=f"image '{image}': not in the datastore {self.studies} (GET /datastore/?output=all lists "
                    "the image ids: file names without the suffix)",
                )
            save = bool(request.get("save_label", False))
            tag = request.get("label_tag") or DefaultLabelTag.ORIGINAL.value
            if save:
                check_name("label tag", tag)  # before the inference: a label that cannot be saved is not made
            request = {**request, "image": source, "save_label": False}
        shown = getattr(upload, "name", None)  # the upload's name in messages instead of its temporary copy's
        try:
            result = super().infer(request, datastore)
            if image_id is not None and save and result.get("file") and os.path.exists(result["file"]):
                info = {"model": model, "params": result.get("params")}
                result["label"] = datastore.save_label(image_id, result["file"], tag, info)
            return result
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

    def received_file(self, path: str) -> bool:
        """True for a file that may be MONAI Label's copy of a cine sent with this request as ``file``, or a session's
        image: an absolute path under the temporary folder or the sessions folder. Asked only when the endpoint put
        that path in place of the client's ``image`` value (``upload.client_image``)."""
        if not os.path.isabs(path) or not os.path.isfile(path):
            return False
        folders = [tempfile.gettempdir()]
        if self._sessions is not None:
            folders.append(self._sessions.store_path)
        for folder in folders:
            try:
                names().inside(os.path.realpath(folder), os.path.realpath(path))
                return True
            except names().NameRefusedError:
                continue
        return False

    def on_init_complete(self) -> None:
        super().on_init_complete()
        hand_out_viewer_images()
        run_blocking_routes_in_threads()
        guard_requests(max_upload_bytes())


def uploaded_files(kwargs: dict[str, Any]) -> Iterator[Any]:
    """The files a request sent (FastAPI ``UploadFile`` objects of the endpoint's arguments)."""
    for value in kwargs.values():
        for item in value if isinstance(value, list) else [value]:
            if hasattr(item, "filename") and hasattr(item, "file"):
                yield item


def in_thread(endpoint: Callable, path: str) -> Callable:
    """A synchronous twin of an ``async`` endpoint (same signature), which FastAPI runs in a worker thread. The names
    of the files sent are checked first (:func:`scripts.safe_names.upload_name`: 422 for a bad one); a session upload
    asking the server to unpack an archive is refused (422): unpacking a client's tar file may write anywhere."""

    infer = path.endswith("/infer/{model}")
    session = "/session" in path

    def run(*args: Any, **kwargs: Any) -> Any:
        if infer and not (kwargs.get("image") or kwargs.get("file") or kwargs.get("session_id")):  # MONAI Label: 500
            raise HTTPException(status_code=422, detail="no image: pass ?image=<image id> or upload a cine as 'file'")
        if session and kwargs.get("uncompress"):
            raise HTTPException(status_code=422, detail="uncompress=true refused: send the cine itself, not an archive")
        sent = [check_name("upload name", item.filename) for item in uploaded_files(kwargs)]
        upload.name = sent[0] if infer and kwargs.get("file") is not None and sent else None
        upload.client_image = kwargs.get("image") if infer else None
        try:
            return asyncio.run(endpoint(*args, **kwargs))
        finally:
            upload.name = upload.client_image = None

    run.__signature__ = inspect.signature(endpoint)  # type: ignore[attr-defined]
    run.__name__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    return run


def hand_out_viewer_images() -> None:
    """Make MONAI Label's ``GET``/``HEAD /datastore/image`` hand out :meth:`CineDatastore.viewer_image` (what the
    label ``/infer`` returns lies on, e.g. a DICOM's NIfTI copy in the ultrasound region's millimetres) instead of
    the cine's own file. Both endpoints call the module's ``download_image``, which is replaced."""
    module = sys.modules.get("monailabel.endpoints.datastore")
    if module is None or getattr(module.download_image, "hands_out_viewer_images", False):
        return
    original = module.download_image

    def download_image(image: str, check_only: bool = False, check_sum: str | None = None) -> Any:
        from fastapi.responses import FileResponse
        from monailabel.interfaces.utils.app import app_instance
        from monailabel.utils.others.generic import file_checksum, get_mime_type

        datastore = app_instance().datastore()
        if not isinstance(datastore, CineDatastore):
            return original(image, check_only, check_sum)
        source = datastore.get_image_uri(image)
        if not source or not os.path.isfile(source):
            raise HTTPException(status_code=404, detail=f"image '{image}': not in the datastore")
        if check_only and not check_sum:
            return {}
        path = datastore.viewer_image(image)
        if check_only:
            algo, _, digest = check_sum.rpartition(":")
            algo = algo.upper() or "SHA256"
            if algo not in ("SHA256", "SHA512", "MD5"):
                raise HTTPException(status_code=422, detail=f"check_sum {check_sum!r}: use SHA256:, SHA512: or MD5:")
            if f"{algo}:{digest.lower()}" != file_checksum(path, algo=algo):
                raise HTTPException(status_code=404, detail=f"image '{image}': checksum differs")
            return {}
        return FileResponse(path, media_type=get_mime_type(path), filename=os.path.basename(path))

    download_image.hands_out_viewer_images = True  # type: ignore[attr-defined]
    module.download_image = download_image
    logger.info("GET /datastore/image hands out DICOM, video and .mhd cines as NIfTI in the label's geometry")


def max_upload_bytes() -> int:
    """The cap on a request's body: ``GDKVM_MAX_UPLOAD_MB`` (default :data:`DEFAULT_MAX_UPLOAD_MB`) megabytes."""
    text = os.environ.get("GDKVM_MAX_UPLOAD_MB", "").strip() or str(DEFAULT_MAX_UPLOAD_MB)
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1
    if not megabytes > 0:
        raise SystemExit(f"GDKVM_MAX_UPLOAD_MB={text!r}: expected a positive number of megabytes")
    return int(megabytes * 1024 * 1024)


class BodyTooLarge(HTTPException):
    """Raised while the body is read past the cap: FastAPI passes an ``HTTPException`` through as the answer."""


class RequestGuard:
    """ASGI middleware in front of MONAI Label's app: refuses, before the endpoint runs or the body is read,

    - a query value that names a datastore object (:data:`NAMED_QUERY`: ``image``, ``id``, ``label``, ``tag``,
      ``session_id``) or a session id in the path (``/session/<id>``) that is not a safe name: 422, one line;
    - a body longer than ``max_bytes``: 413 at once when ``Content-Length`` says so, else as soon as the bytes read
      pass it;
    - ``PUT``/``DELETE /model/<name>`` (MONAI Label's upload and removal of the served weights, which only its
      authentication guards) while ``MONAI_LABEL_AUTH_ENABLE`` is off: 403.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is not None:
            await self.answer(send, *problem)
            return
        read = 0

        async def receive_capped() -> dict:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_bytes:
                raise BodyTooLarge(status_code=413, detail=self.too_large(f"more than {self.max_bytes}"))
            return message

        await self.app(scope, receive_capped, send)

    def too_large(self, size: str) -> str:
        cap = self.max_bytes / 1024 / 1024
        return f"request body of {size} bytes refused: uploads are capped at {cap:g} MB (GDKVM_MAX_UPLOAD_MB)"

    def problem(self, scope: dict) -> tuple[int, str] | None:
        """(status, one line) for a request refused at the door; None for one that may go on."""
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.max_bytes:
            return 413, self.too_large(length)
        path = scope.get("path", "")
        prefix = settings.MONAI_LABEL_API_STR
        path = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        weights_change = path.startswith("/model/") and scope.get("method") in ("PUT", "DELETE")
        if weights_change and not settings.MONAI_LABEL_AUTH_ENABLE:
            return 403, (
                f"{scope['method']} {path}: replacing or deleting the served weights over HTTP is off without MONAI "
                "Label's authentication (MONAI_LABEL_AUTH_ENABLE); /train replaces them when it beats them"
            )
        try:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            for key, value in query:
                if key in NAMED_QUERY and value:
                    check_name(NAMED_QUERY[key], value)
            if path.startswith("/session/") and path.rstrip("/") != "/session":
                check_name("session id", path[len("/session/") :])
        except HTTPException as e:
            return e.status_code, str(e.detail)
        return None

    @staticmethod
    async def answer(send: Callable, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def guard_requests(max_bytes: int) -> None:
    """Put :class:`RequestGuard` in front of MONAI Label's FastAPI app (its middleware stack is built by the time the
    app's start-up hook runs, so the guard wraps the built stack; before that, it is added as a middleware)."""
    module = sys.modules.get("monailabel.app")  # absent when MONAI Label runs a task in a subprocess
    if module is None:
        return
    fastapi_app = module.app
    if getattr(fastapi_app, "middleware_stack", None) is None:
        fastapi_app.add_middleware(RequestGuard, max_bytes=max_bytes)
    elif not isinstance(fastapi_app.middleware_stack, RequestGuard):
        fastapi_app.middleware_stack = RequestGuard(fastapi_app.middleware_stack, max_bytes)
    logger.info(f"requests guarded: datastore names checked, bodies capped at {max_bytes} bytes")


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
