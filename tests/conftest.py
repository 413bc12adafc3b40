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


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny random two-class CARN-PCSR x4 saved as a model file (the command's tests)."""
    import torch

    from pcsr import weights
    from pcsr.models.pcsr import build_model
    from pcsr.models.specs import ModelSpec
    torch.manual_seed(0)
    spec = ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}, scale=4, upsamplers=((4,), (8,)),
                     classifier=(4,))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    weights.save(build_model(spec), path)
    return path
