"""Routing rules against hand-computed values."""
import pytest
import torch

from pcsr import routing
from pcsr.engines import kernels
from pcsr.models.pcsr import Routing, build_model
from pcsr.models.specs import ModelSpec


def test_cost_rule_follows_its_definition():
    """route_rows on logits gives argmax_j p_j / c_j^k with costs normalised to sum 1 (k = 0: argmax,
    larger k: cheaper), for 2 and 3 classes."""
    for widths in (((4,), (8,)), ((4,), (6,), (8, 8))):
        spec = ModelSpec("fsrcnn", {"d": 8, "s": 4, "m": 1}, scale=2, upsamplers=widths, classifier=(4,))
        net = build_model(spec)
        m = len(widths)
        prob = torch.softmax(torch.randn(500, m) * 2, -1)
        costs = net.costs(5, 5, 10, 10).double()
        c = costs / costs.sum()
        for k in (-1.0, 0.0, 0.5, 1.0, 3.0):
            want = torch.argmax(prob.double() / c.pow(k), dim=-1)
            got = net.route_rows(prob.log(), Routing(k=k), 5, 5, 5, 10, 10).long()
            assert (got == want).float().mean() > 0.99  # float rounding may flip an exact near-tie
        k0 = net.route_rows(prob.log(), Routing(k=0.0), 5, 5, 5, 10, 10)
        cheap = net.route_rows(prob.log(), Routing(k=5.0), 5, 5, 5, 10, 10)
        assert (cheap <= k0).all() and cheap.float().mean() < k0.float().mean()


def test_folding_the_cost_rule_routes_as_k():
    """A model whose classifier bias absorbed the cost rule at k routes with k = 0 exactly as the
    original does with k, for 2 and 3 classes, at every image size of its scale."""
    torch.manual_seed(3)
    for widths, scale in ((((4,), (8,)), 4), (((4,), (6,), (8, 8)), 2)):
        spec = ModelSpec("fsrcnn", {"d": 8, "s": 4, "m": 1}, scale=scale, upsamplers=widths, classifier=(4,))
        net = build_model(spec).double()
        feats = torch.randn(2000, net.classifier.layers[0].in_features, dtype=torch.float64) * 3
        for k in (0.7, -0.4):
            folded = build_model(spec).double()
            folded.load_state_dict(net.state_dict())
            folded.fold_cost_rule(k, scale)
            for h, w in ((5, 4), (31, 17)):
                size = (h, w, h * scale, w * scale)
                want = net.route_rows(net.classifier(feats), Routing(k=k), 1, 40, 50, 40, 50, image=size)
                got = folded.route_rows(folded.classifier(feats), Routing(k=0.0), 1, 40, 50, 40, 50, image=size)
                assert torch.equal(got, want)
                plain = net.route_rows(net.classifier(feats), Routing(k=0.0), 1, 40, 50, 40, 50, image=size)
                assert (plain != want).sum() > 20  # k moved pixels, so the fold had something to do
    with pytest.raises(ValueError):
        net.fold_cost_rule(float("nan"), 2)


def test_kmeans_splits_two_groups():
    x = torch.cat([torch.full((50,), 0.1), torch.full((10,), 0.9), torch.tensor([0.0, 1.0])])
    high = routing.kmeans_1d(x)
    assert high[50:60].all() and not high[:50].any() and high[-1] and not high[-2]


def test_adaptive_is_scale_invariant_and_handles_constants():
    p = torch.rand(30, 40)
    a = routing.adaptive(p)
    b = routing.adaptive(p * 0.5 + 0.2)
    assert torch.equal(a, b)
    assert not routing.adaptive(torch.full((4, 4), 0.3)).any()
    # every heavy pixel has a higher probability than every light one
    assert p[a].min() > p[~a].max()


def test_budget_hits_the_share_within_one_pixel():
    score = torch.rand(37, 41)
    for frac in (0.0, 0.1, 0.333, 0.5, 1.0):
        mask = routing.budget(score, frac)
        assert abs(int(mask.sum()) - frac * score.numel()) <= 1
        if 0 < mask.sum() < mask.numel():
            assert score[mask].min() >= score[~mask].max()


def test_refine_averages_light_pixels_next_to_heavy_ones():
    sr = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5) ** 2
    classes = torch.zeros(1, 5, 5, dtype=torch.long)
    classes[0, 2, 2] = 1
    out = routing.refine(sr, classes)
    expected = sr.clone()
    for y in (1, 2, 3):
        for x in (1, 2, 3):
            if (y, x) != (2, 2):
                expected[0, 0, y, x] = sr[0, 0, y - 1:y + 2, x - 1:x + 2].mean()
    assert torch.allclose(out, expected)


def test_refine_leaves_the_outer_border_alone():
    sr = torch.rand(1, 3, 4, 4)
    classes = torch.zeros(1, 4, 4, dtype=torch.long)
    classes[0, 0, 0] = 1  # heavy in the corner: only (1, 1) is an interior light neighbour
    out = routing.refine(sr, classes)
    changed = (out != sr).any(1)[0]
    assert changed.nonzero().tolist() == [[1, 1]]


def _refine_by_definition(sr, classes):
    """Per pixel, from the definition: interior light pixels with a costlier neighbour take the 3x3 mean."""
    out = sr.clone()
    n, _, h, w = sr.shape
    for i in range(n):
        for y in range(1, h - 1):
            for x in range(1, w - 1):
                if classes[i, y - 1:y + 2, x - 1:x + 2].max() > classes[i, y, x]:
                    out[i, :, y, x] = sr[i, :, y - 1:y + 2, x - 1:x + 2].mean((1, 2))
    return out


@pytest.mark.parametrize("heavy_share", [0.01, 0.5])  # ~8 % targets: sparse (gathering); ~50 %: dense (banded box filter)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])  # the models make channels_last
def test_refine_matches_its_definition_across_bands(monkeypatch, heavy_share, layout):
    monkeypatch.setattr(routing, "BAND_ELEMENTS", 3 * 23 * 5)  # bands of 8 rows: several, the last one short
    g = torch.Generator().manual_seed(3)
    sr = torch.rand(2, 3, 29, 23, generator=g).contiguous(memory_format=layout)
    classes = (torch.rand(2, 29, 23, generator=g) < heavy_share).to(torch.uint8)
    out = routing.refine(sr, classes)
    assert torch.allclose(out, _refine_by_definition(sr, classes), atol=1e-6)
    assert not torch.equal(out, sr)


@pytest.mark.skipif(not kernels.available(), reason="the C kernels are not built or not for this CPU")
@pytest.mark.parametrize("c,h,w", [(3, 29, 23), (1, 5, 9), (4, 3, 3), (3, 3, 40), (2, 17, 3)])
def test_refine_kernel_matches_the_definition(c, h, w):
    """The one-pass C refinement (channels-last fp32, uint8 classes), three classes, sizes down to
    a single interior pixel; the torch path (with the kernel refused) agrees too."""
    g = torch.Generator().manual_seed(c * 100 + h + w)
    sr = torch.rand(2, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    classes = (torch.rand(2, h, w, generator=g) * 3).to(torch.uint8)
    done = kernels.refine(sr, classes)
    assert done is not None and done.is_contiguous(memory_format=torch.channels_last)
    want = _refine_by_definition(sr, classes)
    assert torch.allclose(done, want, atol=1e-6)
    assert torch.allclose(routing.refine(sr.contiguous(), classes), done, atol=1e-6)  # NCHW: torch's path
    assert kernels.refine(sr.double(), classes) is None and kernels.refine(sr, classes.long()) is None
