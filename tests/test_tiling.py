"""Tiling: the stitched result equals the untiled one (pixels, class maps, FLOPs) for every routing
rule, with tile sizes that do not divide the image, and survives running out of memory."""

import numpy as np
import pytest
import torch

from pcsr import tiling
from pcsr.api import Model
from pcsr.errors import PcsrError
from pcsr.models.pcsr import Routing, build_model
from pcsr.models.specs import ModelSpec
from pcsr.resize import imresize

CARN = ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}, scale=4, upsamplers=((4,), (8,)),
                 classifier=(4,))
# FSRCNN's small receptive radius gives tiles whose context is much smaller than the image.
FSRCNN3 = ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 2}, scale=4,
                    upsamplers=((4,), (6,), (8,)), classifier=(4,))
ORIGINAL = ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 2}, scale=3)
H, W = 37, 29  # LR size; tiles of 7, 10 and 16 divide neither side


def lr_image(seed=1, h=H, w=W):
    """Noise over gradients: flat and busy parts, so the classifier has something to separate."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w)
    ramp = torch.cat([y.expand(1, h, w), x.expand(1, h, w), (x * y).expand(1, h, w)])
    busy = (torch.arange(w) > w // 2).float().view(1, 1, w)
    return (ramp * 0.7 + busy * 0.3 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def mixed_model(spec: ModelSpec, seed: int = 0) -> Model:
    """A random model whose classifier sends about half the pixels to the costliest class at k = 0
    (a freshly initialised classifier sends nearly all of them to one class)."""
    torch.manual_seed(seed)
    model = Model(build_model(spec), device="cpu")
    if not spec.is_pcsr:
        return model
    last = model.net.classifier.layers[-1]
    lr = lr_image(seed + 7).unsqueeze(0)

    def margin():
        p = model.class_prob(lr, scale=model.scale)[0]
        return torch.log(p[-1]) - torch.log(p[:-1].max(0).values)

    with torch.no_grad():
        d = margin()
        last.weight.mul_(8 / d.std())
        last.bias.mul_(8 / d.std())
        last.bias[-1] -= margin().median()
    return model


def untiled(model: Model, lr: torch.Tensor, routing: Routing):
    """The reference: one model.run on the whole image, quantized as the tiler does."""
    res = model.run(lr.unsqueeze(0), routing, scale=model.scale)
    sr = np.rint(res.sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    classes = None if res.classes is None else res.classes[0].to(torch.uint8).numpy()
    return sr, classes, int(res.flops[0]), int(res.max_flops[0])


ROUTINGS = {
    "k0": Routing(k=0.0),
    "k1": Routing(k=1.0),
    "k-rule no refine": Routing(k=0.0, refine=False),
    "adaptive": Routing(adaptive=True),
    "budget": Routing(budget=0.3),
}


@pytest.fixture(scope="module")
def models():
    return {"carn": mixed_model(CARN), "fsrcnn3": mixed_model(FSRCNN3), "original": mixed_model(ORIGINAL)}


# CARN's context (21) spans this whole image from any tile, so smaller tiles would only cost time.
CASES = [("carn", 12), ("carn", 16), ("fsrcnn3", 7), ("fsrcnn3", 10), ("fsrcnn3", 16), ("original", 7), ("original", 16)]


@pytest.mark.parametrize("name,tile", CASES)
@pytest.mark.parametrize("rule", list(ROUTINGS))
def test_tiled_equals_untiled(models, name, rule, tile):
    model, routing, lr = models[name], ROUTINGS[rule], lr_image()
    ref_sr, ref_cls, ref_flops, ref_max = untiled(model, lr, routing)
    out = tiling.upscale(model, lr, routing, tile=tile)
    assert out.tiles > 1
    assert out.pixels.shape == ref_sr.shape == (H * model.scale, W * model.scale, 3)
    assert np.abs(out.pixels.astype(int) - ref_sr).max() <= 1
    if ref_cls is None:
        assert out.classes is None
    else:
        assert (out.classes == ref_cls).mean() >= 0.9999
        assert 0.05 < (ref_cls > 0).mean() < 0.95  # a class map worth comparing
        assert out.counts == np.bincount(ref_cls.ravel(), minlength=model.net.num_classes).tolist()
    assert out.flops == ref_flops
    assert out.max_flops == ref_max


def test_refinement_crosses_tile_borders(models):
    """With refinement the seams between classes are smoothed the same way on both sides of a tile border."""
    model, lr = models["fsrcnn3"], lr_image()
    on = tiling.upscale(model, lr, Routing(), tile=8).pixels.astype(int)
    off = tiling.upscale(model, lr, Routing(refine=False), tile=8).pixels.astype(int)
    ref_on, *_ = untiled(model, lr, Routing())
    assert (on != off).any()
    assert np.abs(on - ref_on).max() <= 1


def test_one_tile_is_the_plain_run(models):
    model, lr = models["carn"], lr_image()
    for routing in ROUTINGS.values():
        ref_sr, ref_cls, ref_flops, _ = untiled(model, lr, routing)
        out = tiling.upscale(model, lr, routing, tile=0)
        assert out.tiles == 1 and out.tile == 0
        assert np.array_equal(out.pixels, ref_sr) and np.array_equal(out.classes, ref_cls)
        assert out.flops == ref_flops


def test_gray_16bit_and_alpha(models):
    model, lr = models["fsrcnn3"], lr_image()
    alpha = torch.rand(H, W, generator=torch.Generator().manual_seed(3))
    whole = tiling.upscale(model, lr, Routing(), tile=0, bits=16, gray=True, alpha=alpha)
    tiled = tiling.upscale(model, lr, Routing(), tile=9, bits=16, gray=True, alpha=alpha)
    assert whole.pixels.dtype == np.uint16 and whole.pixels.shape == (H * 4, W * 4, 1)
    assert np.abs(whole.pixels.astype(int) - tiled.pixels).max() <= 1
    expect = np.rint(imresize(alpha[None], scale=4)[0].clamp(0, 1).numpy() * 65535)
    assert np.abs(tiled.alpha.astype(int) - expect).max() <= 1
    assert np.abs(whole.alpha.astype(int) - expect).max() <= 1


def test_context_below_the_receptive_radius_is_refused(models):
    model = models["carn"]
    need = model.net.backbone.receptive_radius + 2
    assert tiling.required_context(model) == need
    with pytest.raises(PcsrError, match="too small"):
        tiling.upscale(model, lr_image(), tile=8, context=need - 1)
    tiling.upscale(model, lr_image(), tile=8, context=need + 3)  # more context is fine


@pytest.mark.parametrize("h,w,tile,context", [(37, 29, 10, 4), (5, 300, 64, 21), (1, 1, 16, 3), (64, 64, 64, 0)])
def test_plan_covers_every_pixel_once(h, w, tile, context):
    seen = np.zeros((h, w), dtype=int)
    for t in tiling.plan_tiles(h, w, tile, context):
        seen[t.y0:t.y1, t.x0:t.x1] += 1
        assert t.size <= tile
        assert (t.py0, t.px0) == (max(0, t.y0 - context), max(0, t.x0 - context))
        assert (t.py1, t.px1) == (min(h, t.y1 + context), min(w, t.x1 + context))
    assert (seen == 1).all()


class OOMOnce:
    """Runs out of memory whenever a tile is larger than `limit` LR pixels a side."""

    def __init__(self, model, limit, error):
        self.model, self.limit, self.error, self.calls = model, limit, error, 0
        self.run = model.run

    def __call__(self, lr, *args, **kwargs):
        self.calls += 1
        if max(lr.shape[-2:]) > self.limit:
            raise self.error
        return self.run(lr, *args, **kwargs)


OOM_ERRORS = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9999999 bytes"),
    MemoryError(),
]


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["torch", "cpu-allocator", "python"])
def test_out_of_memory_halves_the_tile(models, monkeypatch, error):
    model, lr = models["fsrcnn3"], lr_image()
    ref_sr, ref_cls, ref_flops, _ = untiled(model, lr, Routing())
    fake = OOMOnce(model, limit=32, error=error)  # 37 fails; 18 + 2 * 6 of context fits
    monkeypatch.setattr(model, "run", fake)
    out = tiling.upscale(model, lr, Routing(), tile=0)
    assert 0 < out.tile < max(H, W) and out.tiles > 1
    assert np.abs(out.pixels.astype(int) - ref_sr).max() <= 1
    assert (out.classes == ref_cls).mean() >= 0.9999 and out.flops == ref_flops


def test_out_of_memory_on_a_whole_image_decision_switches_to_two_passes(models, monkeypatch):
    model, lr = models["fsrcnn3"], lr_image()
    routing = Routing(adaptive=True)
    ref_sr, ref_cls, ref_flops, _ = untiled(model, lr, routing)
    monkeypatch.setattr(model, "run", OOMOnce(model, limit=32, error=OOM_ERRORS[0]))
    out = tiling.upscale(model, lr, routing, tile=0)
    assert out.tiles > 1
    assert (out.classes == ref_cls).mean() >= 0.9999
    assert np.abs(out.pixels.astype(int) - ref_sr).max() <= 1 and out.flops == ref_flops


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(models, monkeypatch):
    model = models["fsrcnn3"]
    monkeypatch.setattr(model, "run", OOMOnce(model, limit=0, error=MemoryError()))
    with pytest.raises(PcsrError, match="out of memory even with tiles of"):
        tiling.upscale(model, lr_image(), Routing(), tile=0)


def test_other_errors_are_not_retried(models, monkeypatch):
    model = models["fsrcnn3"]
    monkeypatch.setattr(model, "run", OOMOnce(model, limit=0, error=RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiling.upscale(model, lr_image(), Routing(), tile=0)


def test_automatic_tile_size_follows_free_memory(models, monkeypatch):
    model = models["carn"]
    context = tiling.required_context(model)
    per_px = tiling.bytes_per_lr_pixel(model)
    monkeypatch.setattr(tiling, "available_memory", lambda device: 4 * 400 ** 2 * per_px)
    assert tiling.auto_tile(model, context) == 400 - 2 * context  # a quarter of free memory on a CPU
    monkeypatch.setattr(tiling, "available_memory", lambda device: 1 << 50)
    big = tiling.auto_tile(model, context)
    assert big == int((tiling.CPU_BUDGET_CAP / per_px) ** 0.5) - 2 * context  # capped
    monkeypatch.setattr(tiling, "available_memory", lambda device: 1000)
    assert tiling.auto_tile(model, context) == tiling.MIN_TILE
    monkeypatch.setattr(tiling, "available_memory", lambda device: None)
    assert tiling.auto_tile(model, context) == int((tiling.DEFAULT_BUDGET / per_px) ** 0.5) - 2 * context


def test_free_memory_is_read_without_psutil():
    free = tiling.available_memory(torch.device("cpu"))
    assert free is None or free > 0


@pytest.mark.parametrize("spec,measured", [
    (ModelSpec(backbone="carn", backbone_args={"nf": 52, "groups": 4}, scale=4,
               upsamplers=((20, 20, 20), (74, 74, 74, 74)), classifier=(10, 10)), 4100),
    (ModelSpec(backbone="carn", backbone_args={"nf": 64, "groups": 4}, scale=4), 9950),
    (ModelSpec(backbone="fsrcnn", backbone_args={"d": 48, "s": 12, "m": 4}, scale=4,
               upsamplers=((10, 10, 10), (58, 58, 58, 58)), classifier=()), 2050),
    (ModelSpec(backbone="fsrcnn", backbone_args={"d": 56, "s": 12, "m": 4}, scale=4), 770),
], ids=["carn-pcsr", "carn", "fsrcnn-pcsr", "fsrcnn"])
def test_memory_estimate_is_above_the_measured_figure(spec, measured):
    """Peak RSS growth per LR pixel of one whole-tile run on a CPU (PCSR all heavy), measured with
    the reference checkpoints' architectures; the estimate must not be below it."""
    estimate = tiling.bytes_per_lr_pixel(Model(build_model(spec), device="cpu"))
    assert measured < estimate < 5 * measured


def test_expected_peak_is_the_largest_tile_with_its_context(models):
    model = models["carn"]
    per_px = tiling.TYPICAL_SHARE * tiling.bytes_per_lr_pixel(model)
    ctx = tiling.required_context(model)
    assert tiling.expected_peak(model, 300, 500, tile=0) == int(per_px * 300 * 500)
    assert tiling.expected_peak(model, 300, 500, tile=500) == int(per_px * 300 * 500)
    # 300 x 500 in tiles of at most 100: 3 x 5 tiles of exactly 100, the middle ones with context all round
    assert tiling.expected_peak(model, 300, 500, tile=100) == int(per_px * (100 + 2 * ctx) ** 2)
    # 1080 x 1920 in tiles of at most 962: four 540 x 960 tiles, each with context on two sides (as at 8K)
    assert tiling.expected_peak(model, 1080, 1920, tile=962) == int(per_px * (540 + ctx) * (960 + ctx))
    assert tiling.expected_peak(model, 30, 500, tile=100, context=30) == int(per_px * 30 * 160)


@pytest.mark.parametrize("name,rule", [("carn", "k0"), ("fsrcnn3", "budget"), ("original", "k0")])
def test_api_upscale_tiles_large_images_like_the_command(models, name, rule):
    """Model.upscale runs an image wider than `tile` in tiles: the same 8-bit result, class map and
    FLOPs as untiled (within one level where float rounding crosses a .5)."""
    model = models[name]
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    kwargs = {"budget": 0.3} if rule == "budget" else {"k": 0.0}
    whole = model.upscale(img, tile=0, **kwargs)
    tiled = model.upscale(img, tile=16, **kwargs)  # the smallest tile the API takes: 3 x 2 tiles here
    a, b = np.asarray(whole.image).astype(int), np.asarray(tiled.image).astype(int)
    assert a.shape == b.shape == (H * model.scale, W * model.scale, 3)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3
    assert np.array_equal(tiled.pixels, np.asarray(tiled.image))
    with pytest.raises(PcsrError, match="at least 16"):
        model.upscale(img, tile=10, **kwargs)
    if whole.class_map is None:
        assert tiled.class_map is None
    else:
        assert np.array_equal(whole.class_map, tiled.class_map)
    assert (tiled.flops, tiled.max_flops) == (whole.flops, whole.max_flops)
    untiled_by_default = model.upscale(img, **kwargs)  # the automatic side is far above this image's
    assert np.array_equal(untiled_by_default.pixels, whole.pixels)
