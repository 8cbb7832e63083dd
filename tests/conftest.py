"""Shared pytest set-up: makes the bundle's ``scripts`` package importable as MONAI bundles expect."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    """Path of the bundle folder (``bundle/``)."""
    return BUNDLE_ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Path of the repository root."""
    return REPO_ROOT
