"""Shared fixtures. Data and reference artifacts are read from ../shared; tests that need them skip without it."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AUTHORS = SHARED / "reference" / "lw_irstnet_authors"
SAMPLES = AUTHORS / "samples" / "images"


def require_shared(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a message saying what is missing and why."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared research data beside the repository "
                    f"(../shared), which is not distributed with edge-irst")
    return path


@pytest.fixture(scope="session")
def authors_dir() -> Path:
    return require_shared("reference", "lw_irstnet_authors")


@pytest.fixture(scope="session")
def sample_paths(authors_dir) -> list[Path]:
    return sorted((authors_dir / "samples" / "images").glob("*.png"))
