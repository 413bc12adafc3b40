"""Native non-integer scales: a PCSR model whose spec says it was trained for a range of scales runs
there through its point queries, tiled on the output grid; any other model keeps resizing its own
result with Lanczos. Expectations come from the training forward (an independent path through the
same heads) and from the untiled run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pcsr import tiling, weights
from pcsr.cli import main
from pcsr.errors import WeightsError
from pcsr.models.heads import Window, make_coord
from pcsr.models.pcsr import Routing, build_model
from pcsr.models.specs import ModelSpec
from pcsr.resize import imresize
from test_tiling import ROUTINGS, lr_image, mixed_model

TRAINED = ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}, scale=4, upsamplers=((4,), (8,)),
                    classifier=(4,), scale_range=(1.0, 6.0))
TRAINED3 = ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 2}, scale=4,
                     upsamplers=((4,), (6,), (8,)), classifier=(4,), scale_range=(2.0, 4.0))
H, W = 37, 29


@pytest.fixture(scope="module")
def models():
    return {"carn": mixed_model(TRAINED), "fsrcnn3": mixed_model(TRAINED3)}


def quantize(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def untiled(model, lr, routing, size):
    res = model.run(lr.unsqueeze(0), routing, out_size=size)
    return quantize(res.sr[0]), res.classes[0].numpy(), int(res.flops[0]), int(res.max_flops[0])


def out_hw(scale, h=H, w=W):
    return round(h * scale), round(w * scale)


def test_the_whole_image_as_a_window_is_the_plain_point_query_run(models):
    """Bit for bit: the window's coordinates are make_coord's for the crop that is the whole image."""
    model, lr = models["carn"], lr_image().unsqueeze(0)
    for size in [out_hw(2.5), out_hw(4), (50, 41)]:
        whole = Window(H, W, *size, 0, 0, 0, size[0], 0, size[1])
        a = model.run(lr, Routing(), window=whole)
        b = model.run(lr, Routing(), out_size=size, path="query")
        assert torch.equal(a.sr, b.sr) and torch.equal(a.classes, b.classes) and a.flops == b.flops
        coord, cell = whole.coords(H, W)
        assert torch.equal(coord, make_coord(*size))
        assert torch.equal(cell[0], torch.tensor([2.0 / size[0], 2.0 / size[1]]))


# Every routing rule on the small-context FSRCNN; CARN (its context spans the image
# from any tile) and a downscale-like 1.7 for the cost rule only: each case runs point queries.
CASES = [("fsrcnn3", 10, rule, 2.5) for rule in ROUTINGS] + [
    ("fsrcnn3", 7, "k1", 3.3), ("fsrcnn3", 7, "adaptive", 3.3), ("fsrcnn3", 16, "k0", 1.7),
    ("carn", 12, "k0", 2.5), ("carn", 12, "k1", 3.3), ("carn", 12, "budget", 2.5)]


def _settled(same: np.ndarray) -> np.ndarray:
    """Pixels whose class and whose 8 neighbours' classes agree (refinement looks at the neighbours)."""
    pad = np.pad(same, 1, constant_values=True)
    h, w = same.shape
    return np.logical_and.reduce([pad[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])


@pytest.mark.parametrize("name,tile,rule,scale", CASES)
def test_tiled_on_the_output_grid_equals_untiled(models, name, tile, rule, scale):
    model, routing, lr = models[name], ROUTINGS[rule], lr_image()
    size = out_hw(scale)
    ref_sr, ref_cls, ref_flops, ref_max = untiled(model, lr, routing, size)
    out = tiling.upscale(model, lr, routing, tile=tile, out_size=size)
    assert out.tiles > 1
    assert out.pixels.shape == ref_sr.shape == (*size, 3)
    same = out.classes == ref_cls
    assert same.mean() >= 0.999  # crop-frame coordinates round differently: a rare near-tie may flip
    assert 0.05 < (ref_cls > 0).mean() < 0.95
    assert np.abs(out.pixels.astype(int) - ref_sr)[_settled(same)].max() <= 1
    assert out.max_flops == ref_max
    if same.all():
        assert out.flops == ref_flops
        assert out.counts == np.bincount(ref_cls.ravel(), minlength=model.net.num_classes).tolist()


@pytest.mark.parametrize("scale", [2.5, 1.3])
@pytest.mark.parametrize("tile", [0, 9])
def test_all_heavy_equals_the_training_forward(models, scale, tile):
    """Every pixel on the costliest upsampler (a budget of 1) has no seams to refine, so the result is
    the training forward's heavy upsampler at the whole image's coordinates: a wrong window offset
    or cell in any tile would show."""
    model, lr = models["carn"], lr_image(seed=4)
    size = out_hw(scale)
    coord = make_coord(*size).unsqueeze(0)
    cell = torch.tensor([2.0 / size[0], 2.0 / size[1]]).expand_as(coord)
    with torch.no_grad():
        pred, _ = model.net(lr.unsqueeze(0), coord, cell, heavy_only=True)
    expect = quantize(pred[0].t().reshape(3, *size))
    out = tiling.upscale(model, lr, Routing(budget=1.0), tile=tile, out_size=size)
    assert (out.classes == model.net.num_classes - 1).all()
    assert np.abs(out.pixels.astype(int) - expect).max() <= 1


def test_alpha_and_gray_at_a_non_integer_scale(models):
    model, lr = models["fsrcnn3"], lr_image()
    alpha = torch.rand(H, W, generator=torch.Generator().manual_seed(3))
    size = out_hw(2.6)
    out = tiling.upscale(model, lr, Routing(), tile=9, bits=16, gray=True, alpha=alpha, out_size=size)
    assert out.pixels.shape == (*size, 1) and out.pixels.dtype == np.uint16
    expect = np.rint(imresize(alpha[None], size=size)[0].clamp(0, 1).numpy() * 65535)
    assert np.abs(out.alpha.astype(int) - expect).max() <= 1


def test_the_core_runs_trained_scales_natively_and_others_by_lanczos(models):
    from pcsr.io import resample
    model = models["carn"]
    rgb = lr_image().permute(1, 2, 0).numpy().copy()
    native = model.upscale_array(rgb, Routing(), scale=2.5, tile=0)
    direct = tiling.upscale(model, torch.from_numpy(rgb).permute(2, 0, 1), Routing(), tile=0, out_size=out_hw(2.5))
    assert model.native(2.5) and not model.native(7.0)
    assert np.array_equal(native.pixels, direct.pixels) and native.flops == direct.flops
    beyond = model.upscale_array(rgb, Routing(), scale=7.0, tile=0)  # outside its range: x4, then Lanczos
    x4 = model.upscale_array(rgb, Routing(), tile=0)
    assert np.array_equal(beyond.pixels, resample(x4.pixels, out_hw(7.0)))


@pytest.mark.parametrize("bad, message", [
    ((2.0,), "2 finite numbers"), ((1.0, float("inf")), "2 finite numbers"), ("1-4", "must be a list"),
    ((3.0, 2.0), "lo <= hi"), ((0.5, 4.0), "1 <= lo"), ((1.0, 40.0), "hi <= 16"), ((True, 4.0), "2 finite numbers"),
])
def test_scale_range_is_validated(bad, message):
    with pytest.raises(WeightsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}, scale=4, upsamplers=((4,), (8,)),
                  classifier=(4,), scale_range=bad)


def test_an_original_model_has_no_scale_range():
    with pytest.raises(WeightsError, match="needs a PCSR model"):
        ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 2}, scale=4, scale_range=(2.0, 4.0))


def test_scale_range_round_trips_and_is_absent_when_unset(tmp_path):
    assert "scale_range" not in ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}).to_dict()
    torch.manual_seed(0)
    weights.save(build_model(TRAINED), tmp_path / "m.safetensors")
    net, _ = weights.load(tmp_path / "m.safetensors")
    assert net.spec.scale_range == (1.0, 6.0) and net.spec.native(2.5) and not net.spec.native(6.5)


def test_the_command_runs_a_trained_scale_natively(tmp_path, capsys, model_file):
    torch.manual_seed(0)
    weights.save(build_model(TRAINED), tmp_path / "ranged.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-s", "2.5", "--json", "-q", "--model",
                 str(tmp_path / "ranged.safetensors"), "-o", str(tmp_path / "n")])
    out, err = capsys.readouterr()
    assert code == 0 and "Lanczos" not in err
    line = json.loads(out.strip())
    assert (line["width"], line["height"]) == (round(17 * 2.5), round(21 * 2.5))
    api = __import__("pcsr").load(tmp_path / "ranged.safetensors").upscale(tmp_path / "a.png", scale=2.5)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "n" / "a_x2.5.png")), api.pixels)
    assert line["flops"] == api.flops
    code = main(["upscale", str(tmp_path / "a.png"), "-s", "2.5", "-q", "--model", str(model_file),
                 "-o", str(tmp_path / "l")])
    err = capsys.readouterr().err
    assert code == 0 and "trained for x4 only; -s 2.5 resizes its result with Lanczos" in err
