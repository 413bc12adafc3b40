"""The reference engine under torch.compile: same results as eager, and a compile failure runs the
module itself instead of failing the image."""

import shutil

import pytest
import torch

import pcsr
from pcsr.engines import pick_engine
from pcsr.engines.base import Compiled
from pcsr.errors import PcsrError
from pcsr.models.pcsr import Routing, build_model
from pcsr.models.specs import ModelSpec

# torch.compile's own imports use a deprecated torch.jit decorator: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

SPEC = ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 2}, scale=4, upsamplers=((4,), (8,)),
                 classifier=(4,))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_reference_engine_equals_eager():
    torch.manual_seed(0)
    net = build_model(SPEC)
    eager = pick_engine(net, torch.device("cpu"), "fp32", "reference")
    compiled = pick_engine(net, torch.device("cpu"), "fp32", compile=True)
    assert compiled.name == "reference" and isinstance(compiled.backbone, Compiled)
    for h, w in [(13, 17), (9, 22)]:  # two sizes: dynamic shapes, not a recompile per tile
        lr = torch.rand(1, 3, h, w)
        a, b = eager.run(lr, Routing(k=0.0)), compiled.run(lr, Routing(k=0.0))
        assert compiled.backbone.failed is None
        assert (a.classes == b.classes).float().mean() >= 0.999
        same = (a.classes == b.classes).unsqueeze(1).expand_as(a.sr)
        assert torch.allclose(a.sr[same], b.sr[same], atol=1e-4)


def test_a_failed_compile_runs_the_module_itself(monkeypatch):
    torch.manual_seed(0)
    net = build_model(SPEC)

    def refuse(x):
        raise RuntimeError("backend compiler failed\nlong trace")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: refuse)
    engine = pick_engine(net, torch.device("cpu"), "fp32", compile=True)
    assert list(engine.backbone.state_dict()) == ["module." + k for k in net.backbone.state_dict()]
    lr = torch.rand(1, 3, 11, 12)
    got = engine.run(lr, Routing())
    want = pick_engine(net, torch.device("cpu"), "fp32", "reference").run(lr, Routing())
    assert engine.backbone.failed == "RuntimeError: backend compiler failed"
    assert torch.equal(got.sr, want.sr) and torch.equal(got.classes, want.classes)


def test_compile_is_for_the_reference_engine(model_file):
    with pytest.raises(PcsrError, match="compile applies to the reference engine"):
        pcsr.load(model_file, device="cpu", engine="cpu", compile=True)
    assert pcsr.load(model_file, device="cpu", compile=True).engine.name == "reference"
