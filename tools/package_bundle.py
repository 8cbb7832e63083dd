"""Pack ``bundle/`` into a versioned MONAI bundle zip the way the model zoo releases one.

    python tools/package_bundle.py [--out_dir dist] [--name gdkvm_echo_segmentation]
                                   [--weights bundle/models/model.pt] [--weights_url URL] [--include_weights False]

Writes ``<out_dir>/<name>_v<version>.zip`` (version from ``configs/metadata.json``) holding one top-level ``<name>/``
folder, which is what ``python -m monai.bundle download --name <name> --url <url of the zip>`` unpacks. The zip is
deterministic: sorted entries, fixed timestamps (1980-01-01) and permissions, so the same tree gives the same bytes
and checksum. Left out: ``data/``, ``eval/``, ``models/`` (weights and checkpoints), ``__pycache__``, ``*.pyc`` and
hidden files.

Weights, as the model zoo does it: never in git; ``large_files.yml`` lists ``models/model.pt`` with the URL it will be
downloaded from and its md5, and ``python -m monai.bundle download_large_files --bundle_path <bundle>`` fetches and
checks it. The URL is where *you* upload the weights, so there is no default: with ``--weights_url`` the zip gets a
``large_files.yml`` (md5 computed from ``--weights``) and the weights file is copied beside the zip under the URL's
file name, ready to upload; without it no ``large_files.yml`` is written (a repository ``bundle/large_files.yml``, if
any, is shipped as it is). ``--include_weights`` also puts ``models/model.pt`` inside the zip (the zoo's release zips
on NGC/Hugging Face carry the weights so that ``monai.bundle.load`` works right after ``download``).

When weights are shipped (either option), the zip's ``configs/metadata.json`` describes *them*: its output
``num_channels`` and ``channel_def`` come from the classes the checkpoint was trained with (a 4-class CAMUS model
ships a 4-channel description), so the model zoo's checks (``verify_net_in_out``, ``ckpt_export``) pass on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundle"
DEFAULT_NAME = "gdkvm_echo_segmentation"
EXCLUDED_DIRS = {"data", "eval", "models"}  # top-level bundle folders never shipped (models: weights come separately)
EXCLUDED_PARTS = {"__pycache__"}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
WEIGHTS_PATH = "models/model.pt"
CHANNELS = {
    "lv": {"0": "background", "1": "left ventricle"},
    "all": {"0": "background", "1": "left ventricle", "2": "myocardium", "3": "left atrium"},
}


def metadata_for_weights(metadata: dict, weights_file: Path, bundle: Path) -> dict:
    """``metadata`` with the output channels of the model in ``weights_file`` (unchanged for an undescribed one)."""
    import sys

    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    from scripts.checkpoint import read_description, settings_of

    description = read_description(weights_file)
    if description is None:
        return metadata
    labels = settings_of(description).get("labels", "lv")
    updated = json.loads(json.dumps(metadata))
    pred = updated["network_data_format"]["outputs"]["pred"]
    pred["num_channels"] = len(CHANNELS[labels])
    pred["channel_def"] = dict(CHANNELS[labels])
    return updated


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file (the hash ``large_files.yml`` carries and ``download_large_files`` checks)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(bundle_dir: Path) -> Iterator[tuple[str, Path]]:
    """``(path inside the bundle, file)`` for every shipped file, sorted."""
    for path in sorted(bundle_dir.rglob("*")):
        rel = path.relative_to(bundle_dir)
        if not path.is_file() or rel.parts[0] in EXCLUDED_DIRS:
            continue
        if EXCLUDED_PARTS.intersection(rel.parts) or any(p.startswith(".") for p in rel.parts) or path.suffix == ".pyc":
            continue
        yield rel.as_posix(), path


def large_files_yaml(url: str, md5: str, path: str = WEIGHTS_PATH) -> str:
    """The ``large_files.yml`` text for one weights file (model-zoo format)."""
    return f'large_files:\n- path: "{path}"\n  url: "{url}"\n  hash_val: "{md5}"\n  hash_type: "md5"\n'


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # Unix, so the permissions above are honoured
    archive.writestr(info, data, compresslevel=9)


def package(
    out_dir: str = "dist",
    name: str = DEFAULT_NAME,
    weights: str | None = None,
    weights_url: str | None = None,
    include_weights: bool = False,
    bundle_dir: str = str(BUNDLE_DIR),
) -> str:
    """Write ``<out_dir>/<name>_v<version>.zip`` and return its path.

    Args:
        out_dir: output folder (created).
        name: bundle name, the zip's top-level folder and the ``--name`` users pass to ``monai.bundle download``.
        weights: the weights file (plain state dict); default ``<bundle_dir>/models/model.pt``.
        weights_url: where the weights will be downloaded from; writes ``large_files.yml`` into the zip and copies the
            weights to ``<out_dir>/<file name of the URL>``.
        include_weights: also store the weights as ``<name>/models/model.pt`` inside the zip.
        bundle_dir: the bundle folder to pack.

    Raises:
        FileNotFoundError: no ``configs/metadata.json``, or weights needed but missing.
        ValueError: metadata without a ``version``, or a bad name or URL.
    """
    bundle = Path(bundle_dir).resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: not a bundle (configs/metadata.json missing)")
    version = json.loads(meta_file.read_text()).get("version")
    if not version:
        raise ValueError(f"{meta_file}: no 'version'")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad bundle name: {name!r}")
    weights_file = Path(weights) if weights else bundle / WEIGHTS_PATH
    if (weights_url or include_weights) and not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: weights not found (train first, or pass --weights PATH)")
    url_name = Path(urlparse(weights_url).path).name if weights_url else ""
    if weights_url and not url_name:
        raise ValueError(f"--weights_url must end with a file name: {weights_url}")

    entries = {arc: path.read_bytes() for arc, path in bundle_files(bundle)}
    if weights_url:
        entries["large_files.yml"] = large_files_yaml(weights_url, md5sum(weights_file)).encode()
    if include_weights:
        entries[WEIGHTS_PATH] = weights_file.read_bytes()
    if weights_url or include_weights:
        metadata = json.loads(meta_file.read_text())
        described = metadata_for_weights(metadata, weights_file, bundle)
        if described != metadata:
            entries["configs/metadata.json"] = (json.dumps(described, indent=4) + "\n").encode()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}_v{version}.zip"
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out)
    os.close(handle)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for arc in sorted(entries):
                _add(archive, f"{name}/{arc}", entries[arc])
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if weights_url and (out / url_name).resolve() != weights_file.resolve():
        shutil.copyfile(weights_file, out / url_name)
    return str(target)


if __name__ == "__main__":
    import fire

    fire.Fire(package)
