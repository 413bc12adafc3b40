"""The Python API as a user meets it: the default precision and engine, every input the command
reads, what the command writes, its checks, only pcsr's own errors, and no warnings of ours."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pcsr
from pcsr import weights
from pcsr.cli import main
from pcsr.errors import PcsrError
from pcsr.models.pcsr import build_model
from pcsr.models.specs import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
COFFEE = ROOT / "examples" / "coffee.png"
GOLDEN = Path(__file__).resolve().parent / "golden"
CROP = (slice(200, 456), slice(300, 556))  # the part of coffee's x4 result kept as golden output


def test_the_readme_example_runs_with_the_default_precision():
    """`pcsr.load().upscale(Image.open(...))`, nothing pinned: bf16 where this CPU has it natively."""
    model = pcsr.load()
    assert model.precision == ("bf16" if pcsr.device.fast_bf16(model.device) else "fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of our internals (torch's read-only array one included)
        out = model.upscale(Image.open(COFFEE))
    assert out.image.size == (1024, 684) and out.image.mode == "RGB"
    assert out.class_map.shape == (684, 1024) and 0.05 < out.heavy_fraction < 0.95
    assert out.heavy_fraction == out.counts[-1] / sum(out.counts)
    assert model.engine.fell_back is None


def test_an_avx2_only_cpu_runs_the_default_in_fp32(monkeypatch):
    """Where the CPU has no native bf16 (the engine's capability answers forced so), `auto` is fp32
    and the fast path runs without the bf16 kernel or oneDNN's bf16 fused ops."""
    from pcsr import device
    from pcsr.engines import fast_carn, kernels
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma", "f16c"}))
    monkeypatch.setattr(kernels, "bf16_available", lambda: False)
    real = fast_carn.fused_conv_works
    monkeypatch.setattr(fast_carn, "fused_conv_works", lambda dtype: dtype != torch.bfloat16 and real(dtype))
    model = pcsr.load()
    assert model.precision == "fp32"
    out = model.upscale(Image.open(COFFEE))
    golden = np.asarray(Image.open(GOLDEN / "coffee_carn-pcsr-x4_crop.png"))
    assert out.image.size == (1024, 684) and np.abs(out.pixels[CROP].astype(int) - golden).max() <= 1
    assert model.engine.fell_back is None


@pytest.mark.parametrize("name", sorted(weights.bundled_models()))  # a newly bundled model needs its golden crops
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_bundled_models_keep_their_golden_outputs(name, precision):
    """Golden crops made by the reference engine in fp32: the fast engine within 1 level in fp32; in
    the default precision (bf16 where native) within 2 levels where the class map agrees around the
    pixel (a near-tie pixel may take the other upsampler in bf16), and 99 % of the class map equal."""
    model = pcsr.load(name, precision=precision)
    out = model.upscale(Image.open(COFFEE))
    golden = np.asarray(Image.open(GOLDEN / f"coffee_{name}_crop.png")).astype(int)
    diff = np.abs(out.pixels[CROP].astype(int) - golden).max(axis=2)
    if out.class_map is None:
        assert diff.max() <= (1 if model.precision == "fp32" else 2)
        return
    want = np.asarray(Image.open(GOLDEN / f"coffee_{name}_classes_crop.png")) // 255
    same = out.class_map[CROP] == want
    assert same.mean() >= (1.0 if model.precision == "fp32" else 0.99)
    around = np.pad(same, 1, constant_values=True)
    steady = np.logical_and.reduce([around[1 + dy:around.shape[0] - 1 + dy, 1 + dx:around.shape[1] - 1 + dx]
                                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    if model.precision == "fp32":
        assert diff[steady].max() <= 1
    else:  # AMX's bf16 convolutions round differently from AVX512-BF16's: a rare pixel is 3 levels off
        assert diff[steady].max() <= 3 and (diff[steady] <= 2).mean() >= 0.999


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random models saved as files: 2 and 3 classes, and an original model."""
    out = {}
    for name, ups in (("two", ((4,), (8, 8))), ("three", ((4,), (6,), (8, 8))), ("original", ())):
        torch.manual_seed(len(ups))
        spec = ModelSpec("carn", {"nf": 8, "groups": 4}, scale=4, upsamplers=ups, classifier=(4,) if ups else (),
                         mean=(0.4, 0.4, 0.4))
        net = build_model(spec)
        if ups:
            with torch.no_grad():
                net.classifier.layers[-1].weight.mul_(30.0)
        path = tmp_path_factory.mktemp("models") / f"{name}.safetensors"
        weights.save(net, path)
        out[name] = path
    return out


def rng_image(shape, dtype=np.uint8, seed=0):
    top = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, top + 1, shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("kind", ["two", "three"])
@pytest.mark.parametrize("routing", [[], ["--budget", "0.3"], ["--adaptive"], ["-k", "1"]], ids=["k0", "budget", "adaptive", "k1"])
def test_api_and_command_agree(tiny, tmp_path, capsys, kind, routing):
    """Pixels, class map, FLOPs and heavy fraction: `Model.upscale` equals `pcsr upscale --json`."""
    src = tmp_path / "in.png"
    Image.fromarray(rng_image((23, 31, 3))).save(src)
    assert main(["upscale", str(src), "--model", str(tiny[kind]), "--json", "--class-map", "-q", "--precision",
                 "fp32", *routing]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kw = {"budget": 0.3} if "--budget" in routing else {"adaptive": True} if "--adaptive" in routing else \
        {"k": 1.0} if "-k" in routing else {}
    api = pcsr.load(tiny[kind], precision="fp32").upscale(src, **kw)
    written = np.asarray(Image.open(line["output"]))
    assert np.array_equal(api.pixels, written)
    assert (line["flops"], line["max_flops"]) == (api.flops, api.max_flops)
    assert line["heavy_fraction"] == pytest.approx(api.heavy_fraction, abs=1e-12)
    assert api.heavy_fraction == api.counts[-1] / sum(api.counts) and len(api.counts) == (2 if kind == "two" else 3)
    if "--budget" in routing:
        assert abs(api.heavy_fraction - 0.3) < 1e-3


@pytest.mark.parametrize("make,mode,bits", [
    (lambda: Image.fromarray(rng_image((9, 12), np.uint16)), "L", 16),            # PIL "I;16"
    (lambda: Image.fromarray(rng_image((9, 12, 4))), "RGBA", 8),
    (lambda: Image.fromarray(rng_image((9, 12, 2))), "LA", 8),                     # PIL "LA"
    (lambda: Image.fromarray(rng_image((9, 12, 3))).convert("P"), "RGB", 8),
    (lambda: rng_image((9, 12, 3), np.uint16), "RGB", 16),
    (lambda: rng_image((9, 12, 4), np.uint16), "RGBA", 16),
    (lambda: rng_image((9, 12)), "L", 8),
    (lambda: rng_image((9, 12, 3))[:, ::-1], "RGB", 8),                            # a negative-stride view
])
def test_every_input_kind_keeps_bit_depth_and_alpha(tiny, make, mode, bits):
    model = pcsr.load(tiny["two"], precision="fp32")
    image = make()
    out = model.upscale(image)
    assert (out.mode, out.bits) == (mode, bits)
    assert out.pixels.dtype == (np.uint16 if bits == 16 else np.uint8)
    assert out.pixels.shape == (36, 48, 1 if mode in ("L", "LA") else 3)
    assert (out.alpha is not None) == (mode in ("LA", "RGBA"))
    if bits == 16:  # not whitened: the 8-bit values times 257 give the 8-bit result times 257
        arr = np.asarray(image)
        eight = model.upscale((arr // 257).astype(np.uint8)).pixels.astype(int)
        sixteen = model.upscale((arr // 257).astype(np.uint16) * 257).pixels.astype(int)
        assert np.abs(sixteen - eight * 257).max() <= 257
    if isinstance(image, np.ndarray):
        assert out.array.shape[:2] == (36, 48) and out.array.ndim == image.ndim


def test_save_writes_what_the_command_writes(tiny, tmp_path, capsys):
    src = tmp_path / "deep.png"
    Image.fromarray(rng_image((10, 14), np.uint16)).save(src)
    assert main(["upscale", str(src), "--model", str(tiny["two"]), "-q", "--precision", "fp32"]) == 0
    capsys.readouterr()
    pcsr.load(tiny["two"], precision="fp32").upscale(src).save(tmp_path / "api.png")
    a, b = Image.open(tmp_path / "deep_x4.png"), Image.open(tmp_path / "api.png")
    assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


def test_a_path_has_its_exif_orientation_applied(tiny, tmp_path):
    img = Image.fromarray(rng_image((10, 16, 3)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    out = pcsr.load(tiny["two"], precision="fp32").upscale(tmp_path / "turned.jpg")
    assert out.pixels.shape[:2] == (64, 40)


@pytest.mark.parametrize("image,kw,message", [
    (np.zeros((8, 8, 3), np.float32), {}, "uint8 or uint16"),
    (np.zeros((8, 8, 5), np.uint8), {}, "HxW"),
    (np.zeros((0, 8, 3), np.uint8), {}, "HxW"),
    ("no/such/file.png", {}, "no such file"),
    (object(), {}, "expected a path"),
    (np.zeros((8, 8, 3), np.uint8), {"k": float("nan")}, "k must be a finite number"),
    (np.zeros((8, 8, 3), np.uint8), {"budget": 1.5}, "between 0 and 1"),
    (np.zeros((8, 8, 3), np.uint8), {"budget": 0.5, "adaptive": True}, "not both"),
    (np.zeros((8, 8, 3), np.uint8), {"scale": 0}, "scale must be above 0"),
    (np.zeros((8, 8, 3), np.uint8), {"scale": 1000}, "at most 64"),
    (np.zeros((8, 8, 3), np.uint8), {"tile": 3}, "at least 16"),
    (np.zeros((3000, 3000), np.uint8), {"scale": 64}, "GB of memory"),
    (np.broadcast_to(np.zeros(1, np.uint8), (20000, 20000)), {}, "above the limit"),
])
def test_bad_arguments_are_one_line_pcsr_errors(tiny, image, kw, message):
    model = pcsr.load(tiny["two"], precision="fp32")
    with pytest.raises(PcsrError, match=message) as err:
        model.upscale(image, **kw)
    assert "\n" not in str(err.value)


def test_an_internal_failure_is_a_pcsr_error(tiny, monkeypatch):
    model = pcsr.load(tiny["two"], precision="fp32")

    def boom(*args, **kwargs):
        raise ValueError("simulated")

    monkeypatch.setattr(model.engine, "run", boom)
    with pytest.raises(PcsrError, match="simulated"):
        model.upscale(rng_image((8, 8, 3)))


def test_original_models_and_other_scales(tiny):
    model = pcsr.load(tiny["original"], precision="fp32")
    out = model.upscale(rng_image((7, 9, 3)), scale=2.5)
    assert out.pixels.shape == (18, 22, 3) and out.class_map is None and out.heavy_fraction is None
    assert out.flops == out.max_flops > 0


@pytest.mark.parametrize("make", [
    lambda: rng_image((9, 12, 3))[:, ::-1],                        # a negative-stride view
    lambda: np.asarray(Image.fromarray(rng_image((9, 12, 3)))),    # read-only, from PIL
    lambda: rng_image((12, 9, 3)).transpose(1, 0, 2),              # a transposed view
    lambda: rng_image((1, 1, 3)),
    lambda: rng_image((1, 7, 3)),
    lambda: rng_image((7, 1)),
    lambda: rng_image((5, 6, 4), np.uint16),
], ids=["negative-stride", "read-only", "transposed", "1x1", "1xN", "Nx1-gray", "rgba16"])
def test_the_default_model_and_precision_take_odd_layouts(make):
    """`pcsr.load().upscale(x)` with nothing pinned (the bundled model, auto precision: bf16 where
    native) on the layouts and sizes users hand over: the same result as a contiguous copy, no
    warning, and the fast path did not give up."""
    model = pcsr.load()
    image = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.upscale(image)
    want = model.upscale(np.ascontiguousarray(image))
    assert out.pixels.shape[:2] == (image.shape[0] * 4, image.shape[1] * 4)
    assert np.array_equal(out.pixels, want.pixels) and out.flops == want.flops
    assert model.engine.fell_back is None
