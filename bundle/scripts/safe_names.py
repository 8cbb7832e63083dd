"""Names that arrive over the network, checked before they name a file.

A server that stores what clients send (MONAI Label's datastore: image ids, label tags, upload names, session ids)
must never let one of those values leave its folder: ``..``, an absolute path, a path separator, a NUL or another
control character, an empty or over-long value. Each check here raises :class:`NameRefusedError`, whose message is one
line naming the value (shown with Python's ``repr``, so a NUL or a newline is visible and the line stays one line) and
the problem, and returns the value unchanged when it is safe. :func:`inside` is the second line of defence: a path built
from a checked name must still lie in its folder.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

# Longest image id, label tag and upload name, in UTF-8 bytes: file systems allow 255 per name, and the datastore adds
# a suffix (``.nii.gz``) and temporary names add more.
MAX_ID_BYTES = 200
MAX_TAG_BYTES = 64
MAX_UPLOAD_NAME_BYTES = 240
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class NameRefusedError(ValueError):
    """A name from a request that may not name a file; ``str(error)`` is one line: ``<what> <value>: <problem>``."""

    def __init__(self, what: str, value: object, problem: str) -> None:
        self.what, self.value, self.problem = what, value, problem
        super().__init__(f"{what} {shown(value)}: {problem}")


def shown(value: object, limit: int = 80) -> str:
    """``repr`` of a value on one line, cut after ``limit`` characters (with the full length said)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def _plain_name_problem(value: object, max_bytes: int) -> str | None:
    """Why ``value`` is not one plain file name of at most ``max_bytes`` UTF-8 bytes; None when it is."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value:
        return "empty"
    if "\x00" in value:
        return "contains a NUL character"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if "/" in value or "\\" in value:
        return "contains a path separator: a name may not climb into or out of a folder"
    if value in (".", ".."):
        return "names a folder, not a file"
    if value.startswith("."):
        return "starts with '.' (hidden files and the datastore's own files are not served)"
    if value != value.strip():
        return "starts or ends with white space"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text"
    if size > max_bytes:
        return f"too long ({size} bytes in UTF-8, at most {max_bytes})"
    return None


def check_image_id(value: object, what: str = "image id") -> str:
    """An image (or label) id of the datastore: the cine's file name without its suffix, one plain name."""
    problem = _plain_name_problem(value, MAX_ID_BYTES)
    if problem:
        raise NameRefusedError(what, value, problem)
    return str(value)


def check_label_tag(value: object) -> str:
    """A label tag (``final``, ``original``, a team's own): a folder name of letters, digits, ``_`` and ``-``."""
    if not isinstance(value, str) or not value:
        raise NameRefusedError("label tag", value, "empty" if isinstance(value, str) else "expected a string")
    if len(value) > MAX_TAG_BYTES or not TAG_PATTERN.fullmatch(value):
        problem = (
            f"too long ({len(value)} characters, at most {MAX_TAG_BYTES})"
            if len(value) > MAX_TAG_BYTES
            else "a tag is letters, digits, '_' and '-', starting with a letter or digit"
        )
        raise NameRefusedError("label tag", value, problem)
    return value


def check_session_id(value: object) -> str:
    """A MONAI Label session id: the canonical text of a UUID (the server makes them with ``uuid1``)."""
    try:
        if isinstance(value, str) and str(uuid.UUID(value)) == value.lower():
            return value
    except ValueError:
        pass
    example = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    raise NameRefusedError("session id", value, f"not a session id (a UUID such as '{example}')")


def upload_name(filename: object, what: str = "upload name") -> str:
    """The file name of an upload: the last part of what the client sent (MONAI Label's client sends the local path,
    ``/home/me/IM_0001.dcm`` or ``C:\\scans\\IM_0001.dcm``), which must be one plain name."""
    if not isinstance(filename, str) or not filename:
        raise NameRefusedError(what, filename, "no file name")
    name = re.split(r"[/\\]", filename)[-1]
    problem = _plain_name_problem(name, MAX_UPLOAD_NAME_BYTES)
    if problem:
        raise NameRefusedError(what, filename, problem)
    return name


def inside(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` made absolute, which must lie in ``folder`` (compared without resolving links, so a studies folder of
    links to cines elsewhere still works; names are checked first, so a link is the only way out and it is the
    operator's own). Raises :class:`NameRefusedError` otherwise."""
    root = Path(os.path.abspath(folder))
    target = Path(os.path.abspath(path))
    if target != root and root not in target.parents:
        raise NameRefusedError("path", str(path), f"outside the folder {root}")
    return target
