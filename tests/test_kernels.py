"""The compiled kernels (pcsr/csrc/: the MLP in fp32 and bf16, the grouped convolution) against the
plain modules, and the torch fallback."""
import pytest
import torch
from conftest import infer

from pcsr.engines import fast_carn, kernels
from pcsr.engines.cpu import CpuEngine, CpuTuning
from pcsr.models.heads import MLP, SubpixelQueries
from pcsr.models.pcsr import Routing

from test_models import tiny_pcsr

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="the C kernel is not built or not for this CPU")
needs_bf16 = pytest.mark.skipif(not kernels.bf16_available(),
                                reason="the bf16 kernel is not built or this CPU has no AVX512-BF16")


def cpu_engine(precision: str = "fp32") -> CpuEngine:
    """A CPU engine whose head steps the tests call on MLPs of their own."""
    return CpuEngine(tiny_pcsr(), torch.device("cpu"), precision)


def plain_rows(q: SubpixelQueries, mlp: MLP) -> torch.Tensor:
    with torch.enable_grad():
        return q.run(mlp).detach()  # autograd on: plain module calls


@needs_kernel
@pytest.mark.parametrize("hidden", [(20, 20, 20), (74, 74, 74, 74), (10, 10), (5,), (9, 17), (128,)])
@pytest.mark.parametrize("out_dim", [3, 2, 1, 9])
def test_kernel_equals_modules_dense_gathered_and_scattered(hidden, out_dim):
    """Widths on and off multiples of 8, every output pixel, any subset in any order (also fewer
    rows than a micro-tile), written compactly or into the pixels' own rows."""
    g = torch.Generator().manual_seed(sum(hidden) + out_dim)
    feat = torch.randn(2, 13, 5, 7, generator=g)
    q = SubpixelQueries(feat, 3)
    torch.manual_seed(sum(hidden) * 7 + out_dim)
    mlp = MLP(17, hidden, out_dim)
    want = plain_rows(q, mlp)
    f = kernels.FusedMLP(mlp, 13)
    assert f.supported
    with torch.inference_mode():
        proj, bias = f.project(q.feat_rows), f.subpixel_bias(q.offsets)
        dense = f(proj, bias, q.rows)
        pix = torch.randperm(q.rows, generator=g)[: q.rows // 3]
        some = f(proj, bias, pix)
        three = f(proj, bias, pix[:3])
        out = torch.full((q.rows, out_dim), 7.0)
        f(proj, bias, pix, out=out)
    tol = 2e-6 * want.abs().max()
    assert (dense - want).abs().max() <= tol
    assert (some - want[pix]).abs().max() <= tol
    assert (three - want[pix[:3]]).abs().max() <= tol
    assert (out[pix] - want[pix]).abs().max() <= tol
    untouched = torch.ones(q.rows, dtype=torch.bool)
    untouched[pix] = False
    assert torch.equal(out[untouched], torch.full_like(out[untouched], 7.0))


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=needs_kernel),
                                   pytest.param(torch.bfloat16, marks=needs_bf16)])
def test_kernel_rows_do_not_depend_on_the_thread_split(dtype):
    torch.manual_seed(0)
    q = SubpixelQueries(torch.randn(1, 6, 9, 11), 4)
    f = kernels.FusedMLP(MLP(10, (20, 74), 3), 6, dtype)
    with torch.inference_mode():
        proj, bias = f.project(q.feat_rows), f.subpixel_bias(q.offsets)
        one, two, five = (f(proj, bias, q.rows, threads=t) for t in (1, 2, 5))
    assert torch.equal(one, two) and torch.equal(one, five)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=needs_kernel),
                                   pytest.param(torch.bfloat16, marks=needs_bf16)])
def test_kernel_picks_pixels_by_class_map(dtype):
    """Pixels picked by a class map: the same results, in the same rows, as the pixel indices of
    that class; on any number of threads (taken in chunks, in turn); other rows untouched."""
    g = torch.Generator().manual_seed(4)
    q = SubpixelQueries(torch.randn(2, 6, 37, 29, generator=g), 4)  # 34k pixels: several chunks
    torch.manual_seed(4)
    f = kernels.FusedMLP(MLP(10, (20, 74), 3), 6, dtype)
    classes = (torch.rand(q.rows, generator=g) * 3).to(torch.uint8)
    classes[: q.rows // 2] = 2  # a class crowded into one half, as detail crowds into part of an image
    with torch.inference_mode():
        proj, bias = f.project(q.feat_rows), f.subpixel_bias(q.offsets)
        for j in (0, 1, 2, 7):
            rows = torch.nonzero(classes == j).squeeze(1)
            want = torch.full((q.rows, 3), -5.0)
            f(proj, bias, rows, out=want)
            for threads in (1, 2, 5):
                got = torch.full((q.rows, 3), -5.0)
                f(proj, bias, (classes, j), out=got, threads=threads)
                assert torch.equal(got, want), (j, threads)
        with pytest.raises(ValueError):
            f(proj, bias, (classes, 1))  # nowhere to scatter
        with pytest.raises(IndexError):
            f(proj, bias, (classes[:-1], 1), out=torch.zeros(q.rows, 3))
        with pytest.raises(ValueError):
            f(proj, bias, (classes.long(), 1), out=torch.zeros(q.rows, 3))


@needs_kernel
def test_kernel_refuses_bad_indices_and_wide_layers():
    torch.manual_seed(0)
    q = SubpixelQueries(torch.randn(1, 4, 3, 3), 2)
    f = kernels.FusedMLP(MLP(8, (8,), 3), 4)
    with torch.inference_mode():
        proj, bias = f.project(q.feat_rows), f.subpixel_bias(q.offsets)
        with pytest.raises(IndexError):
            f(proj, bias, torch.tensor([0, q.rows]))
        with pytest.raises(IndexError):
            f(proj, bias, torch.tensor([-1]))
        with pytest.raises(IndexError):
            f(proj, bias, torch.tensor([5]), out=torch.zeros(4, 3))
        with pytest.raises(ValueError):
            f(proj, bias, torch.tensor([5]), out=torch.zeros(q.rows, 2))
        assert f(proj, bias, torch.tensor([], dtype=torch.long)).shape == (0, 3)
    assert not kernels.FusedMLP(MLP(8, (129,), 3), 4).supported
    assert not kernels.FusedMLP(MLP(8, (), 3), 4).supported  # no layer after the first


@needs_kernel
def test_heads_use_the_kernel_only_where_it_applies():
    torch.manual_seed(0)
    q = SubpixelQueries(torch.randn(1, 4, 3, 3), 2)
    mlp = MLP(8, (8,), 3)
    eng = cpu_engine()
    with torch.inference_mode():
        assert eng.fused(q, mlp) is not None
        assert (eng.fused(q, mlp, torch.bfloat16) is None) is not kernels.bf16_available()
        assert eng.fused(q, mlp, torch.float16) is None
        assert eng.fused(q, MLP(8, (200,), 3)) is None
    assert CpuEngine(tiny_pcsr(), torch.device("cpu"), "fp32", CpuTuning(use_kernels=False)).fused(q, mlp) is None


@needs_kernel
@pytest.mark.parametrize("light_share", [0.95, 0.5, 0.0])
def test_pcsr_inference_with_and_without_the_kernel(monkeypatch, light_share):
    """The same model, class map imposed and by its own routing, with the kernel and with torch's
    operations: the same image to float rounding."""
    net = tiny_pcsr(upsamplers=((4,), (8, 8)))
    lr = torch.rand(2, 3, 6, 7)
    g = torch.Generator().manual_seed(1)
    classes = (torch.rand(2, 24, 28, generator=g) >= light_share).to(torch.uint8)
    fast = infer(net, lr, routing_=Routing(), classes=classes)
    fast_own = infer(net, lr, routing_=Routing(k=0.0), return_prob=True)
    monkeypatch.setattr(kernels, "available", lambda: False)
    slow = infer(net, lr, routing_=Routing(), classes=classes)
    slow_own = infer(net, lr, routing_=Routing(k=0.0), return_prob=True)
    assert torch.equal(fast.classes, classes) and fast.counts == slow.counts
    assert (fast.sr - slow.sr).abs().max() < 1e-5
    assert (fast_own.prob - slow_own.prob).abs().max() < 1e-6
    same = (fast_own.classes == slow_own.classes).unsqueeze(1).expand_as(fast_own.sr)
    assert same.float().mean() > 0.999
    assert (fast_own.sr - slow_own.sr)[same].abs().max() < 1e-5


def emulate_bf16(q: SubpixelQueries, mlp: MLP) -> torch.Tensor:
    """What the bf16 kernel computes, in float64: the projection of bf16 features by bf16 weights
    rounded to bf16, plus the fp32 sub-pixel bias, ReLU, rounded to bf16; bf16 weights, exact sums,
    hidden outputs rounded to bf16 after the ReLU."""
    lins = [m for m in mlp.layers if isinstance(m, torch.nn.Linear)]
    w1 = lins[0].weight.detach()
    proj = (q.feat_rows.bfloat16().double() @ w1[:, :q.c].bfloat16().double().t()).bfloat16().float()
    bias = torch.addmm(lins[0].bias.detach(), q.offsets, w1[:, q.c:].t())
    h = (proj.unsqueeze(1) + bias.unsqueeze(0)).reshape(-1, proj.shape[1])
    h = torch.relu(h).bfloat16().double()
    for i, m in enumerate(lins[1:]):
        h = h @ m.weight.detach().bfloat16().double().t() + m.bias.detach().double()
        if i < len(lins) - 2:
            h = torch.relu(h).bfloat16().double()
    return h


@needs_bf16
@pytest.mark.parametrize("hidden", [(20, 20, 20), (74, 74, 74, 74), (10, 10), (5,), (9, 17), (128,), (96, 33)])
@pytest.mark.parametrize("out_dim", [3, 2, 17])
def test_bf16_kernel_equals_its_emulation(hidden, out_dim):
    """Widths on and off multiples of 16 (odd ones: a padded input of each pair), wider than one
    pass of five vectors, dense, gathered and scattered. Sums differ only in order (fp32, ~1e-7)
    and in the rare hidden value that this order moves across a bf16 rounding boundary."""
    g = torch.Generator().manual_seed(sum(hidden) + out_dim)
    q = SubpixelQueries(torch.randn(2, 13, 5, 7, generator=g), 3)
    torch.manual_seed(sum(hidden) * 5 + out_dim)
    mlp = MLP(17, hidden, out_dim)
    want = emulate_bf16(q, mlp).float()
    f = kernels.FusedMLP(mlp, 13, torch.bfloat16)
    assert f.supported and f.bf16
    with torch.inference_mode():
        proj, bias = f.project(q.feat_rows), f.subpixel_bias(q.offsets)
        dense = f(proj, bias, q.rows)
        pix = torch.randperm(q.rows, generator=g)[: q.rows // 3]
        some = f(proj, bias, pix)
        out = torch.full((q.rows, out_dim), 7.0)
        f(proj, bias, pix, out=out)
    assert dense.dtype == torch.float32 and dense.shape == want.shape
    off = (dense - want).abs() > 1e-5 * (1 + want.abs())
    assert off.float().mean() <= 0.01  # a flipped rounding: a few of each thousand outputs
    assert (dense - want).abs().max() <= 0.02 * want.abs().max()
    assert torch.equal(some, dense[pix]) and torch.equal(out[pix], dense[pix])
    untouched = torch.ones(q.rows, dtype=torch.bool)
    untouched[pix] = False
    assert torch.equal(out[untouched], torch.full_like(out[untouched], 7.0))


@needs_bf16
def test_pcsr_bf16_inference_with_and_without_the_kernel(monkeypatch):
    """A model in bf16 with its heads in the kernel and in torch's bf16 operations: the class map
    (imposed) and FLOPs equal, the image within bf16 rounding of the heads."""
    net = tiny_pcsr(upsamplers=((4,), (8, 8)))
    lr = torch.rand(2, 3, 6, 7)
    classes = (torch.rand(2, 24, 28, generator=torch.Generator().manual_seed(3)) >= 0.5).to(torch.uint8)
    fast = infer(net, lr, routing_=Routing(), classes=classes, precision="bf16")
    monkeypatch.setattr(kernels, "bf16_available", lambda: False)
    slow = infer(net, lr, routing_=Routing(), classes=classes, precision="bf16")
    ref = infer(net, lr, routing_=Routing(), classes=classes)  # fp32
    assert torch.equal(fast.classes, classes) and fast.counts == slow.counts and fast.flops == slow.flops
    assert fast.sr.dtype == torch.float32
    err_kernel, err_torch = (fast.sr - ref.sr).abs().max(), (slow.sr - ref.sr).abs().max()
    assert err_kernel < 0.02 and err_torch < 0.02


def test_torch_fallback_where_the_kernel_is_missing(monkeypatch):
    """Without the kernel (not built, another CPU) the heads run torch operations, same results."""
    torch.manual_seed(1)
    q = SubpixelQueries(torch.randn(1, 5, 4, 4), 2)
    mlp = MLP(9, (12, 12), 3)
    want = plain_rows(q, mlp)
    monkeypatch.setattr(kernels, "available", lambda: False)
    eng = cpu_engine()
    with torch.inference_mode():
        assert eng.fused(q, mlp) is None
        got = eng.mlp_rows(q, mlp)
        out = torch.zeros(q.rows, 3)
        rows, split = eng.select(q, (torch.arange(q.rows) % 2).to(torch.uint8), 1)
        eng.scatter(q, mlp, rows, split, out)
    assert (got - want).abs().max() < 1e-5
    assert (out[rows] - want[rows]).abs().max() < 1e-5
    assert torch.equal(out[torch.arange(0, q.rows, 2)], torch.zeros(q.rows // 2, 3))


@needs_kernel
@pytest.mark.parametrize("groups,cin,cout", [(4, 13, 13), (4, 16, 16), (2, 5, 9), (3, 8, 8), (2, 20, 11)])
@pytest.mark.parametrize("size", [(1, 1), (2, 9), (7, 1), (5, 8), (6, 23)])
@pytest.mark.parametrize("relu", [False, True])
def test_grouped_conv_kernel_equals_conv2d(groups, cin, cout, size, relu):
    """Borders, rows shorter than a micro-tile, every group width it takes, two images."""
    h, w = size
    g = torch.Generator().manual_seed(groups * 100 + cin + cout + h * w)
    conv = torch.nn.Conv2d(groups * cin, groups * cout, 3, padding=1, groups=groups)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    x = torch.randn(2, groups * cin, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    k = kernels.GroupedConv3x3(conv, relu)
    with torch.inference_mode():
        assert k.applies_to(x)
        want = conv(x)
        want = want.relu() if relu else want
        got = k(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@needs_kernel
def test_grouped_conv_kernel_refuses_what_it_does_not_compute():
    assert not kernels.GroupedConv3x3(torch.nn.Conv2d(8, 8, 3, padding=1), False).supported  # one group
    assert not kernels.GroupedConv3x3(torch.nn.Conv2d(8, 64, 3, padding=1, groups=2), False).supported
    assert not kernels.GroupedConv3x3(torch.nn.Conv2d(16, 16, 3, padding=1, groups=4), False).supported  # 4 out
    assert not kernels.GroupedConv3x3(torch.nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=2), False).supported
    assert not kernels.GroupedConv3x3(torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2), False).supported
    k = kernels.GroupedConv3x3(torch.nn.Conv2d(16, 32, 3, padding=1, groups=2), False)
    assert k.supported
    x = torch.randn(1, 16, 4, 5)
    assert not k.applies_to(x)  # not channels-last
    assert not k.applies_to(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert k.applies_to(x.contiguous(memory_format=torch.channels_last))


@needs_kernel
def test_fast_carn_with_and_without_the_grouped_kernel():
    """CARN-M's 13-channel groups take the kernel in fp32; the backbone's features are the same."""
    from pcsr.models.backbones import build_backbone
    torch.manual_seed(0)
    carn = build_backbone("carn", {"nf": 52, "groups": 4}, scale=None).eval()
    fast = fast_carn.inference_form(carn, torch.float32)
    convs = [c for b in fast.blocks for c in (b.conv1, b.conv2)]
    assert all(c.kernel is not None and c.kernel.supported for c in convs)
    x = torch.rand(1, 3, 11, 17).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a = fast(x)
        for c in convs:
            c.kernel_off = True
        b = fast(x)
        plain = carn(x)
    assert (a - b).abs().max() <= 1e-5 * plain.abs().max()
    assert (a - plain).abs().max() <= 1e-5 * plain.abs().max()
