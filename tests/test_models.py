"""Tiny random models: the two query paths agree, FLOPs follow the paper's convention, shapes hold."""
import pytest
import torch
from conftest import infer

from pcsr import flops as fl
from pcsr.models.heads import MLP
from pcsr.models.pcsr import OriginalSR, Routing, build_model
from pcsr.models.specs import ModelSpec
from pcsr.errors import WeightsError

BACKBONES = {
    "carn": {"nf": 8, "groups": 4},
    "fsrcnn": {"d": 8, "s": 4, "m": 2},
    "msrresnet": {"nf": 8, "nb": 2},
}


def tiny_pcsr(backbone="carn", upsamplers=((4,), (8, 8)), classifier=(4,), mean=(0.1, 0.2, 0.3)):
    torch.manual_seed(0)
    spec = ModelSpec(backbone=backbone, backbone_args=BACKBONES[backbone], scale=4,
                     upsamplers=upsamplers, classifier=classifier, mean=mean)
    net = build_model(spec).eval()
    for m in net.modules():  # random BN statistics, so that eval-mode BN is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_subpixel_path_equals_query_path(backbone, scale):
    net = tiny_pcsr(backbone)
    lr = torch.rand(2, 3, 7, 9)
    a = infer(net, lr, scale=scale, routing_=Routing(k=0.0), path="subpixel", return_prob=True)
    b = infer(net, lr, scale=scale, routing_=Routing(k=0.0), path="query", return_prob=True)
    assert a.sr.shape == (2, 3, 7 * scale, 9 * scale)
    assert torch.allclose(a.prob, b.prob, atol=1e-5)
    agree = (a.classes == b.classes).float().mean()
    assert agree >= 0.999
    same = (a.classes == b.classes).unsqueeze(1).expand_as(a.sr)
    assert (a.sr - b.sr)[same].abs().max() < 1e-4


@pytest.mark.parametrize("light_share", [0.9, 0.3])
@pytest.mark.parametrize("upsamplers", [((4,), (8, 8)), ((2,), (4,), (8, 8))])
def test_dense_and_gathered_cheapest_upsampler_agree_with_query_path(light_share, upsamplers):
    """Mostly-cheap maps run the cheapest upsampler on every row (dense), others gather its rows:
    both give the query path's image for the same class map."""
    net = tiny_pcsr(upsamplers=upsamplers)
    lr = torch.rand(2, 3, 6, 7)
    g = torch.Generator().manual_seed(1)
    m = len(upsamplers)
    classes = torch.where(torch.rand(2, 24, 28, generator=g) < light_share, 0,
                          torch.randint(1, m, (2, 24, 28), generator=g)).to(torch.uint8)
    a = infer(net, lr, routing_=Routing(refine=False), classes=classes, path="subpixel")
    b = infer(net, lr, routing_=Routing(refine=False), classes=classes, path="query")
    assert torch.equal(a.classes, classes) and a.counts == b.counts
    assert (a.sr - b.sr).abs().max() < 1e-4


def test_non_integer_output_size_uses_query_path():
    net = tiny_pcsr()
    lr = torch.rand(1, 3, 6, 8)
    res = infer(net, lr, out_size=(15, 20))
    assert res.sr.shape == (1, 3, 15, 20) and res.classes.shape == (1, 15, 20)
    assert sum(res.counts[0]) == 15 * 20


def test_training_forward_matches_inference_when_all_heavy():
    net = tiny_pcsr(upsamplers=((4,), (6,)))
    lr = torch.rand(1, 3, 5, 6)
    pred, prob = net(lr, scale=4, heavy_only=True)
    assert prob is None
    res = infer(net, lr, routing_=Routing(budget=1.0, refine=False))
    assert torch.allclose(pred, res.sr, atol=1e-5)
    mix, prob = net(lr, scale=4)
    assert prob.shape == (1, 2, 20, 24) and torch.allclose(prob.sum(1), torch.ones(1, 20, 24), atol=1e-5)


def test_query_training_forward_matches_subpixel():
    net = tiny_pcsr()
    lr = torch.rand(1, 3, 5, 6)
    img, prob = net(lr, scale=2)
    from pcsr.models.heads import make_coord
    coord = make_coord(10, 12).unsqueeze(0)
    cell = torch.full_like(coord, 0.0)
    cell[..., 0], cell[..., 1] = 2 / 10, 2 / 12
    rows, prob_q = net(lr, coord, cell)
    assert torch.allclose(rows.view(1, 10, 12, 3).permute(0, 3, 1, 2), img, atol=1e-5)


def test_more_than_two_upsamplers():
    net = tiny_pcsr(upsamplers=((2,), (4,), (8, 8)))
    lr = torch.rand(1, 3, 6, 6)
    res = infer(net, lr, routing_=Routing(k=0.0), return_prob=True)
    assert res.prob.shape[1] == 3 and int(res.classes.max()) <= 2
    assert sum(res.counts[0]) == 24 * 24
    res = infer(net, lr, routing_=Routing(budget=0.25))
    assert res.counts[0][2] == round(0.25 * 24 * 24)


def test_flops_follow_the_paper_convention():
    # FSRCNN d=8 s=4 m=2 on a 5x6 LR, counted by hand
    net = tiny_pcsr("fsrcnn", upsamplers=((3,), (5, 5)), classifier=())
    h, w, d, s = 5, 6, 8, 4
    px = h * w
    bb = (2 * 25 * 3 * d * px + d * px            # head conv + PReLU
          + 2 * d * s * px + s * px               # shrink + PReLU
          + 2 * (2 * 9 * s * s * px) + s * px     # 2 mapping convs + PReLU
          + 2 * s * d * px + d * px)              # expand + PReLU
    assert net.backbone.flops(h, w) == bb
    c = d + 4
    light, heavy, cls = 2 * (c * 3 + 3 * 3), 2 * (c * 5 + 5 * 5 + 5 * 3), 2 * c * 2
    res = infer(net, torch.rand(1, 3, h, w), routing_=Routing(k=0.0))
    n_light, n_heavy = res.counts[0]
    assert n_light + n_heavy == 480
    assert res.flops[0] == bb + cls * 480 + light * n_light + heavy * n_heavy
    assert res.max_flops[0] == bb + cls * 480 + heavy * 480


def test_original_model_flops_and_shapes():
    spec = ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 1}, scale=4)
    net = build_model(spec).eval()
    assert isinstance(net, OriginalSR)
    res = infer(net, torch.rand(1, 3, 5, 6))
    assert res.sr.shape == (1, 3, 20, 24) and res.classes is None
    tail = 2 * 81 * 8 * 3 * 20 * 24  # transposed conv counted at its output positions
    assert res.flops[0] == res.max_flops[0] == net.backbone.flops(5, 6)
    assert net.backbone.flops(5, 6) - tail == build_model(
        ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 1}, upsamplers=((2,), (3,)))
    ).backbone.flops(5, 6)
    for name, args in BACKBONES.items():
        for scale in (2, 3, 4):
            net = build_model(ModelSpec(backbone=name, backbone_args=args, scale=scale)).eval()
            assert infer(net, torch.rand(1, 3, 4, 5)).sr.shape == (1, 3, 4 * scale, 5 * scale)


def test_carn_flops_count_batchnorm_and_shared_unit():
    net = build_model(ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4},
                                upsamplers=((2,), (3,))))
    nf, px = 8, 1
    unit = 2 * (2 * 9 * 2 * nf) + 2 * nf * nf          # two grouped 3x3 (8/4 = 2 in per group) + 1x1
    fuses = sum(2 * nf * (i + 2) * nf + 2 * nf for i in range(3))
    expected = 2 * 9 * 3 * nf + 3 * (3 * unit + fuses) + fuses
    assert net.backbone.flops(1, 1) == expected * px


def test_mlp_flops_per_row():
    assert MLP(10, (7, 5), 3).flops_per_row() == 2 * (10 * 7 + 7 * 5 + 5 * 3)
    assert fl.linear(4, 3, rows=10) == 240


def test_receptive_radius_covers_the_backbone():
    """Changing one LR pixel must not change features farther than receptive_radius away."""
    for name, args in BACKBONES.items():
        net = build_model(ModelSpec(backbone=name, backbone_args=args, upsamplers=((2,), (3,)))).eval()
        x = torch.rand(1, 3, 41, 41)
        y = x.clone()
        y[..., 20, 20] += 1.0
        with torch.no_grad():
            diff = (net.backbone(x) - net.backbone(y)).abs().amax(1)[0]
        r = net.backbone.receptive_radius
        changed = torch.nonzero(diff > 0)
        assert (changed - 20).abs().max() <= r


def test_spec_round_trip_and_validation():
    spec = ModelSpec(backbone="carn", backbone_args={"nf": 8}, upsamplers=[[4], [8]], classifier=[4])
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(WeightsError):
        ModelSpec.from_dict({**spec.to_dict(), "colour": 1})
    with pytest.raises(WeightsError):
        build_model(ModelSpec(backbone="vgg"))
    with pytest.raises(WeightsError):
        build_model(ModelSpec(backbone="carn", backbone_args={"width": 3}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_heads_match_the_modules_on_every_row_and_on_rows_in_any_order(dtype):
    """The fast path (grouped narrow layers in bf16, gathered rows a sub-pixel at a time, in fp32
    from gathered first-layer projections when rows are many) computes the MLP that the plain
    modules compute, for all rows and for any subset in any order, few or many."""
    from pcsr.engines.cpu import CpuEngine
    from pcsr.models.heads import SubpixelQueries
    torch.manual_seed(2)
    feat = torch.randn(2, 8, 5, 6)
    q = SubpixelQueries(feat, 4)
    eng = CpuEngine(tiny_pcsr(), torch.device("cpu"), "fp32")
    tol = 1e-5 if dtype == torch.float32 else 0.05
    for mlp in (MLP(12, (20, 20), 3), MLP(12, (10,), 2), MLP(12, (), 3)):
        with torch.inference_mode():
            want = eng.mlp_rows(q, mlp)  # the engine's fast path in fp32; compare with the modules
        with torch.enable_grad():
            plain = q.run(mlp).detach()
        assert torch.allclose(want, plain, atol=1e-5)
        with torch.inference_mode():
            dense = eng.mlp_rows(q, mlp, dtype=dtype).float()
            rows = torch.randperm(q.rows, generator=torch.Generator().manual_seed(3))[: q.rows // 3]
            some = eng.mlp_rows(q, mlp, rows, dtype=dtype).float()  # 5.3 rows per LR pixel
            few = eng.mlp_rows(q, mlp, rows[: q.rows // 10], dtype=dtype).float()  # 1.6
            picked = eng.select(q, (torch.arange(q.rows) % 3 == 0).to(torch.uint8), 1)
            selected = eng.mlp_rows(q, mlp, picked[1], dtype=dtype).float()
            picked_rows = torch.arange(0, q.rows, 3) if picked[0] is None else picked[0]  # None: left to a kernel
        assert (dense - plain).abs().max() <= tol * plain.abs().max()
        assert (some - plain[rows]).abs().max() <= tol * plain.abs().max()
        assert (few - plain[rows[: q.rows // 10]]).abs().max() <= tol * plain.abs().max()
        assert (selected - plain[picked_rows]).abs().max() <= tol * plain.abs().max()


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 5])
def test_subpixel_bilinear_rows_equal_interpolation(scale):
    """The sub-pixel path's bilinear base (one small convolution, rows in sub-pixel order) is
    torch's bilinear interpolation (align_corners=False, clamped edges) in that order."""
    from pcsr.models.heads import SubpixelQueries
    lr = torch.rand(2, 3, 6, 9)
    q = SubpixelQueries(torch.rand(2, 4, 6, 9), scale)
    want = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False)
    got = q.bilinear(lr)
    assert got.shape == (2 * 6 * 9 * scale * scale, 3)
    assert (q.to_image(got) - want).abs().max() < 1e-6
