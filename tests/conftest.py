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


def infer(net, lr, routing_=None, engine: str = "auto", precision: str = "fp32", **kw):
    """Run a model as the inference core does: the engine for the CPU (the fast one by default,
    "reference" for plain torch), fp32 unless asked."""
    import torch

    from pcsr.engines import pick_engine
    return pick_engine(net, torch.device("cpu"), precision, engine).run(lr, routing_, **kw)
