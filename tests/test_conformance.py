"""One conformance suite: every engine available here x every registered backbone x every precision
the engine declares x input layouts, against the reference engine in fp32.

A new engine or backbone passes this before it is used. Models are tiny and random (batch-norm
statistics randomised too), inputs fresh; the class map is compared where the reference's heavy
probability is not a near-tie, and the pixels with the reference's class map imposed.
"""
import pytest
import torch

from pcsr.engines import ENGINES, pick_engine
from pcsr.engines.base import Engine
from pcsr.models.backbones import REGISTRY
from pcsr.models.pcsr import Routing, build_model
from pcsr.models.specs import ModelSpec

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def engine_cases():
    """(engine name, device, precision) for every engine that runs here and every precision it declares."""
    out = []
    for device in DEVICES:
        for name in ENGINES:
            if name == "auto" or (name == "cpu" and device.type != "cpu"):
                continue
            for precision in precisions(device):
                out.append(pytest.param(name, device, precision, id=f"{name}-{device.type}-{precision}"))
    return out


def precisions(device: torch.device) -> tuple[str, ...]:
    return ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")


def model(backbone: str, classes: int, seed: int = 0):
    torch.manual_seed(seed)
    ups = (((4,), (8, 8)), ((4,), (6,), (8, 8)))[classes - 2] if classes else ()
    spec = ModelSpec(backbone=backbone, backbone_args=REGISTRY[backbone].tiny, scale=3 if classes else 2,
                     upsamplers=ups, classifier=(6,) if classes else (), mean=(0.4, 0.45, 0.5))
    net = build_model(spec).eval()
    for m in net.modules():  # random BN statistics, so that eval-mode BN is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    if classes:  # a classifier that splits the pixels instead of sending nearly all to one class
        last = net.classifier.layers[-1]
        with torch.no_grad():
            last.weight.mul_(20.0)
            last.bias.zero_()
    return net


def layouts(g: torch.Generator):
    """LR batches as callers hand them over: (name, tensor)."""
    hwc = torch.rand(9, 11, 3, generator=g)
    return [
        ("contiguous", torch.rand(1, 3, 9, 11, generator=g)),
        ("permuted-hwc-view", hwc.permute(2, 0, 1).unsqueeze(0)),  # strides (3, 1, 33, 3): the API's old crash
        ("channels-last", torch.rand(1, 3, 8, 10, generator=g).contiguous(memory_format=torch.channels_last)),
        ("batch-of-2", torch.rand(2, 3, 7, 6, generator=g)),
        ("strided-slice", torch.rand(1, 3, 20, 30, generator=g)[:, :, ::2, 1::3]),
        ("1x1", torch.rand(1, 3, 1, 1, generator=g)),
        ("1xN", torch.rand(1, 3, 1, 13, generator=g)),
        ("Nx1", torch.rand(1, 3, 12, 1, generator=g)),
    ]


def tolerance(precision: str, ref: torch.Tensor) -> float:
    span = float(ref.abs().max()) + 1e-3
    return {"fp32": 2e-5, "bf16": 4e-2, "fp16": 1e-2}[precision] * span


@pytest.mark.parametrize("engine,device,precision", engine_cases())
@pytest.mark.parametrize("backbone", list(REGISTRY))
@pytest.mark.parametrize("classes", [2, 0, 3], ids=["pcsr", "original", "pcsr-3-classes"])
def test_engine_conforms_to_the_reference(engine, device, precision, backbone, classes):
    if classes == 3 and backbone != "carn":
        pytest.skip("three classes: one backbone is enough")
    net = model(backbone, classes)
    ref = Engine(net, CPU, "fp32")
    eng = pick_engine(model(backbone, classes), device, precision, engine)
    g = torch.Generator().manual_seed(hash((engine, precision, backbone, classes)) % 2**31)
    for name, lr in layouts(g):
        want = ref.run(lr.clone(), Routing(k=0.0), return_prob=bool(classes))
        if not classes:
            got = eng.run(lr)
            assert got.sr.shape == want.sr.shape == (lr.shape[0], 3, lr.shape[2] * 2, lr.shape[3] * 2), name
            assert (got.sr.cpu() - want.sr).abs().max() <= tolerance(precision, want.sr), name
            assert got.flops == want.flops, name
            continue
        # the engine's own routing: the same classes wherever the reference is not a near-tie
        own = eng.run(lr, Routing(k=0.0))
        assert own.sr.dtype == torch.float32 and own.sr.shape == want.sr.shape, name
        p = want.prob.sort(dim=1).values
        clear = (p[:, -1] - p[:, -2]) > (1e-4 if precision == "fp32" else 2e-2)
        assert torch.equal(own.classes.cpu()[clear], want.classes[clear]), name
        assert sum(map(sum, own.counts)) == want.classes.numel(), name
        # the reference's class map imposed: the same pixels, counts and FLOPs
        imposed = eng.run(lr, Routing(k=0.0), classes=want.classes.to(device))
        assert torch.equal(imposed.classes.cpu(), want.classes), name
        assert imposed.counts == want.counts and imposed.flops == want.flops, name
        assert (imposed.sr.cpu() - want.sr).abs().max() <= tolerance(precision, want.sr), name
    if engine == "cpu":
        assert eng.fell_back is None, eng.fell_back  # the fast path ran, it did not give up


@pytest.mark.parametrize("backbone", list(REGISTRY))
def test_the_query_path_conforms_too(backbone):
    """The point-query heads (any scale; the reference's own arithmetic) on the CPU engine."""
    net = model(backbone, 2)
    lr = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(4))
    ref = Engine(net, CPU, "fp32").run(lr, Routing(k=0.0), path="query", return_prob=True)
    got = pick_engine(model(backbone, 2), CPU, "fp32", "cpu").run(lr, Routing(k=0.0), classes=ref.classes,
                                                                 path="query")
    assert (got.sr - ref.sr).abs().max() <= tolerance("fp32", ref.sr)
    odd = pick_engine(model(backbone, 2), CPU, "fp32", "cpu").run(lr, Routing(k=0.0), out_size=(13, 17))
    assert odd.sr.shape == (1, 3, 13, 17) and odd.classes.shape == (1, 13, 17)


def test_a_failing_fast_path_falls_back_to_the_reference(monkeypatch):
    """A private op or kernel that raises makes the CPU engine run the reference, not crash."""
    from pcsr.engines import cpu
    net = model("carn", 2)
    eng = pick_engine(net, CPU, "fp32", "cpu")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated: a private op refused its arguments")

    monkeypatch.setattr(cpu.CpuEngine, "_run_fast", broken)
    monkeypatch.setattr(cpu.CpuEngine, "scatter", broken)
    lr = torch.rand(1, 3, 5, 6)
    got = eng.run(lr, Routing(k=0.0))
    want = Engine(model("carn", 2), CPU, "fp32").run(lr, Routing(k=0.0))
    assert eng.fell_back and "simulated" in eng.fell_back
    assert torch.equal(got.classes, want.classes) and (got.sr - want.sr).abs().max() < 1e-6


@pytest.mark.parametrize("engine,device,precision", [c for c in engine_cases() if c.values[2] == "fp32"])
@pytest.mark.parametrize("classes", [2, 3])
def test_composed_candidates_equal_the_run(engine, device, precision, classes):
    """A live preview's composition (every upsampler cached, then routed) gives `run`'s image, class
    map and FLOPs for every routing rule: the same rule, refinement and accounting."""
    net = model("carn", classes)
    eng = pick_engine(net, device, precision, engine)
    lr = torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(5)).to(device)
    cands = eng.candidates(lr)
    for routing in [Routing(k=0.0), Routing(k=1.5), Routing(k=0.0, refine=False), Routing(adaptive=True),
                    Routing(budget=0.4)]:
        want, got = eng.run(lr, routing), eng.compose(cands, routing)
        assert torch.equal(got.classes, want.classes)
        assert 0 < int((want.classes > 0).sum()) < want.classes.numel()  # a class map worth comparing
        assert torch.allclose(got.sr, want.sr, atol=1e-5)
        assert got.flops == want.flops and got.max_flops == want.max_flops and got.counts == want.counts
