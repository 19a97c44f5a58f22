"""Where the shared data lives: ``../shared`` beside the clone (as in CI), else /work/shared."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _shared_dir() -> Path:
    candidates = [os.environ.get("CDS_SHARED_DIR"), REPO.parent / "shared", "/work/shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "data" / "synthea").is_dir():
            return Path(candidate)
    raise RuntimeError(
        "shared/data/synthea not found beside the repository or at /work/shared; "
        "set CDS_SHARED_DIR to the shared folder"
    )


SHARED_DIR = _shared_dir()
SYNTHEA_DIR = SHARED_DIR / "data" / "synthea"
