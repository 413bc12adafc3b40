import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFICIAL = SHARED / "official"


@pytest.fixture(scope="session")
def official():
    """The authors' checkpoints and outputs (../shared/official), used as a test oracle."""
    if not (OFFICIAL / "parity_crop.npz").is_file():
        pytest.skip(f"reference data not available: {OFFICIAL} is missing (see ../shared/README.md)")
    return OFFICIAL
