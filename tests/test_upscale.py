"""`pcsr upscale`: every image kind round-trips, every bad input gets one line and its exit status,
nothing partial or overwritten is ever left behind, and ranks split a batch exactly."""

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from pcsr import io as pio
from pcsr.cli import upscale
from pcsr.cli import main

W, H = 13, 9  # LR size; odd, so width/height mix-ups show
S = 4
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def cli(model_file, capsys):
    """Run `pcsr upscale ...` in-process: (exit status, stdout, stderr)."""
    def run(*args, model=True):
        argv = ["upscale", *map(str, args)]
        if model:
            argv += ["--model", str(model_file)]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def pixels(shape, seed=0, dtype=np.uint8):
    top = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, top + 1, shape).astype(dtype)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- image kinds
def _rgb(path):
    Image.fromarray(pixels((H, W, 3))).save(path)


def _gray(path):
    Image.fromarray(pixels((H, W))).save(path)


def _rgba(path):
    Image.fromarray(pixels((H, W, 4))).save(path)


def _la(path):
    Image.merge("LA", [Image.fromarray(pixels((H, W), 1)), Image.fromarray(pixels((H, W), 2))]).save(path)


def _palette(path):
    Image.fromarray(pixels((H, W, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)


def _palette_transparent(path):
    im = Image.fromarray(pixels((H, W, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(path, transparency=0)


def _png16(path):
    pio.write_image(path, pixels((H, W, 3), dtype=np.uint16), bits=16)


def _gray16(path):
    Image.fromarray(pixels((H, W), dtype=np.uint16)).save(path)


def _cmyk_jpeg(path):
    Image.frombytes("CMYK", (W, H), pixels((H, W, 4)).tobytes()).save(path, quality=95)


KINDS = {  # name: (file name, writer, expected output mode, expected bits)
    "rgb": ("a.png", _rgb, "RGB", 8),
    "gray": ("a.png", _gray, "L", 8),
    "rgba": ("a.png", _rgba, "RGBA", 8),
    "gray+alpha": ("a.png", _la, "LA", 8),
    "palette": ("a.png", _palette, "RGB", 8),
    "palette+transparency": ("a.png", _palette_transparent, "RGBA", 8),
    "16-bit rgb": ("a.png", _png16, "RGB", 16),
    "16-bit gray": ("a.png", _gray16, "L", 16),
    "cmyk jpeg": ("a.jpg", _cmyk_jpeg, "RGB", 8),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_image_kind_round_trips(cli, tmp_path, kind):
    name, make, mode, bits = KINDS[kind]
    src = tmp_path / name
    make(src)
    code, out, err = cli(src, "-o", tmp_path / "out", "--quiet")
    assert code == 0, err
    stem, ext = name.rsplit(".", 1)
    result = tmp_path / "out" / f"{stem}_x{S}.{ext}"
    assert out.startswith(f"{src} -> {result}  {W * S}x{H * S}  flops: ")
    pic = pio.read_image(result)
    assert pic.rgb.shape == (H * S, W * S, 3)
    assert (pic.mode, pic.bits) == (mode, bits)
    if pic.alpha is not None:
        source_alpha = pio.read_image(src).alpha
        assert abs(pic.alpha.mean() - source_alpha.mean()) < 0.05  # bicubic keeps the mean


def test_sixteen_bits_are_kept(cli, tmp_path):
    """A smooth 16-bit image keeps detail below the 8-bit step."""
    ramp = np.linspace(0, 1, W, dtype=np.float32)[None, :, None] * np.ones((H, 1, 3), np.float32) * 0.01 + 0.5
    pio.write_image(tmp_path / "a.png", ramp, bits=16)
    assert cli(tmp_path / "a.png", "--quiet")[0] == 0
    values = np.rint(pio.read_image(tmp_path / "a_x4.png").rgb * 65535).astype(int)
    assert len(np.unique(values[..., 0])) > 8  # more levels than 8 bits could give in 0.5..0.51


def test_alpha_is_upscaled_with_bicubic(cli, tmp_path):
    rgba = pixels((H, W, 4))
    rgba[..., 3] = 200
    rgba[:, : W // 2, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert cli(tmp_path / "a.png", "--quiet")[0] == 0
    alpha = np.asarray(Image.open(tmp_path / "a_x4.png"))[..., 3].astype(int)
    assert alpha[:, :8].max() == 10 and alpha[:, -8:].min() == 200  # flat parts stay exactly flat
    from pcsr.resize import imresize
    expect = imresize(torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)[None], scale=S)[0]
    assert np.abs(alpha - np.rint(expect.clamp(0, 1).numpy() * 255)).max() <= 1


def test_exif_orientation_and_icc_profile(cli, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the upright picture is H wide and W high
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels((H, W, 3))).save(tmp_path / "a.jpg", exif=exif, icc_profile=icc, quality=95)
    assert cli(tmp_path / "a.jpg", "--quiet")[0] == 0
    with Image.open(tmp_path / "a_x4.jpg") as im:
        assert im.size == (H * S, W * S)
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize("ext,fmt", [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("tif", "TIFF")])
def test_output_format_from_ext(cli, tmp_path, ext, fmt):
    _rgb(tmp_path / "a.png")
    code, out, err = cli(tmp_path / "a.png", "--ext", ext, "--suffix", "big", "--quiet")
    assert code == 0, err
    with Image.open(tmp_path / f"a_big.{ext}") as im:
        assert im.format == fmt and im.size == (W * S, H * S)


def test_gif_input_gives_png_output(cli, tmp_path):
    Image.fromarray(pixels((H, W, 3))).convert("P").save(tmp_path / "a.gif")
    assert cli(tmp_path / "a.gif", "--quiet")[0] == 0
    assert (tmp_path / "a_x4.png").exists()


def test_animated_gif_warns_that_only_the_first_frame_is_upscaled(cli, tmp_path):
    frames = [Image.fromarray(pixels((H, W, 3), seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code, _, err = cli(tmp_path / "anim.gif", "--quiet")
    assert code == 0
    assert err == f"pcsr upscale: warning: {tmp_path / 'anim.gif'}: 3 frames; only the first is upscaled\n"
    first = np.asarray(Image.open(tmp_path / "anim.gif").convert("RGB"))
    with pytest.warns(UserWarning, match="3 frames"):
        pic = pio.read_image(tmp_path / "anim.gif")
    assert np.array_equal(np.rint(pic.rgb * 255).astype(np.uint8), first)


# ----------------------------------------------------------------------------- batches and output
def test_folders_globs_and_files_in_one_call(cli, tmp_path):
    (tmp_path / "f").mkdir()
    for name in ("b.png", "a.png", ".hidden.png"):
        _rgb(tmp_path / "f" / name)
    _rgb(tmp_path / "c.png")
    _rgb(tmp_path / "d.png")
    code, out, err = cli(tmp_path / "f", tmp_path / "c.png", str(tmp_path / "d*.png"), tmp_path / "f" / "a.png",
                         "-o", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert [line.split(" -> ")[0] for line in out.splitlines()] == [
        str(tmp_path / "f" / "a.png"), str(tmp_path / "f" / "b.png"), str(tmp_path / "c.png"), str(tmp_path / "d.png")]
    assert files_in(tmp_path / "out") == ["a_x4.png", "b_x4.png", "c_x4.png", "d_x4.png"]


def test_json_lines(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    code, out, err = cli(tmp_path / "a.png", tmp_path / "missing.png", "--json", "--quiet")
    assert code == 1
    ok, bad = sorted((json.loads(line) for line in out.splitlines()), key=lambda r: r["error"] is not None)
    keys = {"input", "output", "width", "height", "flops", "max_flops", "heavy_fraction", "seconds", "error"}
    assert set(ok) == keys and set(bad) == keys
    assert ok["error"] is None and (ok["width"], ok["height"]) == (W * S, H * S)
    assert ok["output"] == str(tmp_path / "a_x4.png") and ok["input"] == str(tmp_path / "a.png")
    assert 0 < ok["flops"] <= ok["max_flops"] and 0 <= ok["heavy_fraction"] <= 1 and ok["seconds"] > 0
    assert "missing.png" in bad["error"] and bad["flops"] is None
    assert err.count("\n") == 1 and "missing.png" in err


def test_text_line_format(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    code, out, _ = cli(tmp_path / "a.png", "--quiet", "-k", "0")
    line = out.strip()
    assert code == 0 and line.count("\n") == 0
    assert line.startswith(f"{tmp_path / 'a.png'} -> {tmp_path / 'a_x4.png'}  52x36  flops: ")
    assert " | max_flops: " in line and "(100 %)" in line and line.endswith(" s")


def test_never_overwrites_without_overwrite(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    (tmp_path / "a_x4.png").write_bytes(b"precious")
    code, out, err = cli(tmp_path / "a.png", "--quiet")
    assert code == 1 and "already exists" in err and "--overwrite" in err
    assert (tmp_path / "a_x4.png").read_bytes() == b"precious"
    code, _, err = cli(tmp_path / "a.png", "--quiet", "--overwrite")
    assert code == 0, err
    assert pio.read_image(tmp_path / "a_x4.png").rgb.shape == (H * S, W * S, 3)


def test_never_overwrites_an_input(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    code, _, err = cli(tmp_path / "a.png", "--suffix", "", "--overwrite", "--quiet")
    assert code == 1 and "would replace an input" in err
    assert (tmp_path / "a.png").read_bytes() == before
    # nor one input's output over another input
    _rgb(tmp_path / "b.png")
    _rgb(tmp_path / "b_x4.png")
    code, _, err = cli(tmp_path / "b.png", tmp_path / "b_x4.png", "--overwrite", "--quiet")
    assert code == 1 and "b_x4.png would replace an input" in err


def test_two_inputs_with_one_output_name(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    Image.fromarray(pixels((H, W, 3))).save(tmp_path / "a.jpg")
    code, out, err = cli(tmp_path / "a.jpg", tmp_path / "a.png", "--ext", "png", "-o", tmp_path / "o", "--quiet",
                         "--overwrite")
    assert code == 1 and "also the output of" in err
    assert out.count("\n") == 1 and files_in(tmp_path / "o") == ["a_x4.png"]


def test_class_map(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    code, _, err = cli(tmp_path / "a.png", "--class-map", "-k", "-100", "--quiet")  # k << 0: all heavy
    assert code == 0, err
    sr = np.asarray(Image.open(tmp_path / "a_x4.png")).astype(float)
    tinted = np.asarray(Image.open(tmp_path / "a_x4_classes.png")).astype(float)
    assert tinted.shape == sr.shape
    assert np.abs(tinted - (0.35 * sr + 0.65 * np.array([255, 0, 0]))).max() <= 1


def test_class_map_colours():
    from pcsr import classmap
    assert classmap.class_colours(2).tolist() == [[144, 238, 144], [255, 0, 0]]
    five = classmap.class_colours(5)
    assert len({tuple(c) for c in five.tolist()}) == 5
    gray16 = np.full((2, 2, 1), 65535, np.uint16)
    out = classmap.tint(gray16, np.array([[0, 1], [1, 0]], np.uint8), 2)
    assert out[0, 1].tolist() == [255, round(0.35 * 255), round(0.35 * 255)]
    # a level between two classes (eval's overlapping patches) blends their colours
    rgb = np.full((1, 2, 3), 100, np.uint8)
    half = classmap.tint(rgb, np.array([[0.5, 1.0]], np.float32), 2)
    assert half[0, 0].tolist() == [round(35 + 0.65 * (144 + 255) / 2), round(35 + 0.65 * 238 / 2),
                                   round(35 + 0.65 * 144 / 2)]
    assert half[0, 1].tolist() == [round(35 + 0.65 * 255), 35, 35]


def test_tiled_cli_equals_untiled(cli, tmp_path):
    Image.fromarray(pixels((30, 37, 3))).save(tmp_path / "a.png")
    for tile, folder in (("0", "whole"), ("16", "tiled")):
        code, _, err = cli(tmp_path / "a.png", "--tile", tile, "-o", tmp_path / folder, "--quiet", "--adaptive",
                           "--class-map")
        assert code == 0, err
    for name in ("a_x4.png", "a_x4_classes.png"):
        a = np.asarray(Image.open(tmp_path / "whole" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "tiled" / name)).astype(int)
        assert np.abs(a - b).max() <= 1


def test_progress_goes_to_stderr(cli, tmp_path):
    Image.fromarray(pixels((20, 30, 3))).save(tmp_path / "a.png")
    _rgb(tmp_path / "b.png")
    code, out, err = cli(tmp_path / "a.png", tmp_path / "b.png", "--tile", "16")
    assert code == 0
    assert "tiles" in err and "upscale" in err
    assert [line.split(" -> ")[0] for line in out.splitlines()] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    code, out, err = cli(tmp_path / "a.png", tmp_path / "b.png", "--tile", "16", "-o", tmp_path / "q", "--quiet")
    assert code == 0 and err == ""


# ----------------------------------------------------------------------------- bad input
def _truncated(folder):
    buf = io.BytesIO()
    Image.fromarray(pixels((64, 64, 3))).save(buf, format="PNG")
    (folder / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return folder / "t.png"


def _empty_folder(folder):
    (folder / "empty").mkdir()
    return folder / "empty"


def _text_file(folder):
    (folder / "x.png").write_text("hello")
    return folder / "x.png"


def _zero_bytes(folder):
    (folder / "z.png").write_bytes(b"")
    return folder / "z.png"


BAD_INPUTS = {  # name: (make(folder) -> the argument to pass, what the message says)
    "missing": (lambda d: d / "nope.png", "nope.png: no such file or folder"),
    "empty folder": (_empty_folder, "empty: no images in this folder"),
    "not an image": (_text_file, "x.png: not an image file"),
    "truncated": (_truncated, "t.png: truncated or corrupt image"),
    "zero bytes": (_zero_bytes, "z.png: empty file (0 bytes)"),
    "glob without match": (lambda d: d / "*.jpeg", "*.jpeg: no file matches"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_and_others_continue(cli, tmp_path, case):
    make, message = BAD_INPUTS[case]
    (tmp_path / "in").mkdir()
    bad = make(tmp_path / "in")
    _rgb(tmp_path / "in" / "good.png")
    code, out, err = cli(bad, tmp_path / "in" / "good.png", "-o", tmp_path / "out", "--quiet")
    assert code == 1
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert err.startswith("pcsr upscale: error: ")
    assert out.count("\n") == 1 and "good.png" in out
    assert files_in(tmp_path / "out") == ["good_x4.png"]


def test_above_max_pixels(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    code, _, err = cli(tmp_path / "a.png", "--max-pixels", str(W * H - 1), "-o", tmp_path / "out", "--quiet")
    assert code == 1 and "a.png" in err and "above the limit" in err and "--max-pixels" in err
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("outdir,message", [
    ("file", "exists and is not a folder"),
    ("file/sub", "part of the path is a file"),
])
def test_unwritable_output_folder(cli, tmp_path, outdir, message):
    _rgb(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    code, out, err = cli(tmp_path / "a.png", "-o", tmp_path / outdir, "--quiet")
    assert code == 1 and message in err and err.count("\n") == 1 and out == ""


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_next_to_the_input(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    tmp_path.chmod(0o555)
    try:
        code, _, err = cli(tmp_path / "a.png", "--quiet")
    finally:
        tmp_path.chmod(0o755)
    assert code == 1 and "a.png" in err and "not writable" in err


def test_unwritable_folder_next_to_one_input(cli, tmp_path, monkeypatch):
    """Simulated (root can write anywhere): that input fails, the others go on."""
    for folder in ("locked", "open"):
        (tmp_path / folder).mkdir()
        _rgb(tmp_path / folder / "a.png")
    real = upscale.check_output_dir

    def check(path):
        if Path(path).name == "locked":
            raise pio.ImageError(f"{path}/: output folder is not writable")
        return real(path)

    monkeypatch.setattr(upscale, "check_output_dir", check)
    code, out, err = cli(tmp_path / "locked" / "a.png", tmp_path / "open" / "a.png", "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert str(tmp_path / "locked" / "a.png") in err and "output folder is not writable" in err
    assert out.count("\n") == 1 and files_in(tmp_path / "open") == ["a.png", "a_x4.png"]
    assert files_in(tmp_path / "locked") == ["a.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("args,message", [(["--device", "cuda"], "no CUDA device"),
                                          (["--precision", "fp16"], "fp16 needs a CUDA device")])
def test_device_and_precision_that_cannot_run(cli, tmp_path, args, message):
    _rgb(tmp_path / "a.png")
    code, out, err = cli(tmp_path / "a.png", "--quiet", *args)
    assert code == 1 and message in err and err.count("\n") == 1 and out == ""
    assert files_in(tmp_path) == ["a.png"]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_on_a_cpu(cli, tmp_path, monkeypatch, native):
    import warnings
    from pcsr import device
    monkeypatch.setattr(device, "fast_bf16", lambda device: native)  # where the precision choice asks
    _rgb(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = cli(tmp_path / "a.png", "--quiet", "--precision", "bf16")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned == ([] if native else [warned[0]]) and (native or "emulated" in warned[0])
    assert (native or warned[0].startswith("pcsr upscale: warning: ")), err
    assert pio.read_image(tmp_path / "a_x4.png").rgb.shape == (H * S, W * S, 3)


def test_unknown_model(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    code, out, err = cli(tmp_path / "a.png", "--model", "no-such-model", "--quiet", model=False)
    assert code == 1 and "unknown model 'no-such-model'" in err and err.count("\n") == 1
    assert files_in(tmp_path) == ["a.png"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_weights(cli, tmp_path, model_file, damage):
    _rgb(tmp_path / "a.png")
    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(model_file.read_bytes()[:500])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(300))
    code, _, err = cli(tmp_path / "a.png", "--model", bad, "--quiet", model=False)
    assert code == 1 and "bad.safetensors" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "a_x4.png").exists()


@pytest.mark.parametrize("args", [
    ["--budget", "1.5"], ["--tile", "-1"], ["--tile", "x"], ["--ext", "gif"], ["--precision", "fp8"],
    ["--device", "tpu"], ["--max-pixels", "0"], ["-k", "1", "--adaptive"], ["--tile-pad", "1"],
    ["--tile", "4"], ["-t", "15"],
    ["-s", "0"], ["-s", "x"], ["--outscale", "-2"], ["-s", "100"],
])
def test_bad_usage_exits_2(cli, tmp_path, args, capsys):
    _rgb(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exc:
        cli(tmp_path / "a.png", "--quiet", *args)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert files_in(tmp_path) == ["a.png"]


def test_interrupted_write_leaves_nothing(cli, tmp_path, monkeypatch):
    _rgb(tmp_path / "a.png")

    def half_then_interrupt(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", half_then_interrupt)
    code, out, err = cli(tmp_path / "a.png", "-o", tmp_path / "out", "--quiet")
    assert code == 130 and "interrupted" in err
    assert files_in(tmp_path / "out") == []  # neither the image nor a temporary file


# ----------------------------------------------------------------------------- ranks
def test_ranks_split_every_input_exactly_once(cli, tmp_path, monkeypatch):
    for i in range(5):
        _rgb(tmp_path / f"{i}.png")
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, out, err = cli(tmp_path, "-o", tmp_path / "out", "--json", "--quiet")
        assert code == 0, err
        seen += [json.loads(line)["input"] for line in out.splitlines()]
    assert sorted(seen) == sorted(str(tmp_path / f"{i}.png") for i in range(5)) and len(seen) == 5
    assert files_in(tmp_path / "out") == [f"{i}_x4.png" for i in range(5)]


def test_bad_input_reported_by_rank_zero_only(cli, tmp_path, monkeypatch):
    _rgb(tmp_path / "a.png")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = cli(tmp_path / "missing.png", tmp_path / "a.png", "-o", tmp_path / "out", "--quiet")
    assert (code, out, err) == (0, "", "")  # rank 1 has no image of its own: a.png is rank 0's
    monkeypatch.setenv("RANK", "0")
    code, out, err = cli(tmp_path / "missing.png", tmp_path / "a.png", "-o", tmp_path / "out", "--quiet")
    assert code == 1 and "missing.png" in err and "a.png" in out


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_bad_rank_environment(env):
    from pcsr.errors import PcsrError
    with pytest.raises(PcsrError):
        upscale.rank_and_world(env)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_smoke(tmp_path, model_file):
    for i in range(3):
        _rgb(tmp_path / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", "--master_port", "0", "-m", "pcsr", "upscale", str(tmp_path),
         "-o", str(tmp_path / "out"), "--model", str(model_file), "--json", "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n") == 3, proc.stdout
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["input"] for r in rows) == [str(tmp_path / f"{i}.png") for i in range(3)]
    assert files_in(tmp_path / "out") == [f"{i}_x4.png" for i in range(3)]


# ----------------------------------------------------------------------------- integer samples
@pytest.mark.parametrize("mode,bits,channels", [("RGB", 8, 3), ("L", 8, 1), ("RGB", 16, 3), ("L", 16, 1),
                                                ("RGBA", 8, 3), ("LA", 16, 1)])
def test_integer_samples_write_like_floats(tmp_path, mode, bits, channels):
    """The driver keeps results as uint8/uint16 (an 8K float result would be 400 MB): writing them
    must give the same file as writing the equivalent floats."""
    dtype = np.uint16 if bits == 16 else np.uint8
    top = 65535 if bits == 16 else 255
    samples = pixels((H, W, channels), 3, dtype)
    alpha = pixels((H, W), 4, dtype) if "A" in mode else None
    as_float = samples.astype(np.float32) / top
    pio.write_image(tmp_path / "i.png", samples, mode=mode, bits=bits, alpha=alpha)
    pio.write_image(tmp_path / "f.png", as_float if channels == 3 else np.repeat(as_float, 3, axis=2),
                    mode=mode, bits=bits, alpha=None if alpha is None else alpha.astype(np.float32) / top)
    a, b = pio.read_image(tmp_path / "i.png"), pio.read_image(tmp_path / "f.png")
    assert np.array_equal(a.rgb, b.rgb) and (a.mode, a.bits) == (b.mode, b.bits) == (mode, bits)
    assert np.array_equal(np.rint(a.rgb[..., :channels] * top), samples)
    if alpha is not None:
        assert np.array_equal(a.alpha, b.alpha)


def test_output_file_for_one_input(cli, tmp_path):
    """-o with an image extension names the output file when there is one input; the extension sets
    the format, and the usual rules (no overwrite, no replacing the input) still hold."""
    _rgb(tmp_path / "a.png")
    code, out, err = cli(tmp_path / "a.png", "-o", tmp_path / "sub" / "big.JPG", "--quiet")
    assert code == 0, err
    assert files_in(tmp_path / "sub") == ["big.JPG"]
    with Image.open(tmp_path / "sub" / "big.JPG") as im:
        assert im.format == "JPEG" and im.size == (W * S, H * S)
    code, _, err = cli(tmp_path / "a.png", "-o", tmp_path / "sub" / "big.JPG", "--quiet")
    assert code == 1 and "already exists" in err
    code, _, err = cli(tmp_path / "a.png", "-o", tmp_path / "a.png", "--quiet", "--overwrite")
    assert code == 1 and "would replace an input" in err
    (tmp_path / "d.png").mkdir()  # an existing folder with an image-like name stays a folder
    assert cli(tmp_path / "a.png", "-o", tmp_path / "d.png", "--quiet")[0] == 0
    assert files_in(tmp_path / "d.png") == ["a_x4.png"]


@pytest.mark.parametrize("extra,message", [
    (["two"], "names an image file, but the inputs give 2 images"),
    (["--ext", "png"], "--ext png contradicts -o"),
])
def test_output_file_misuse(cli, tmp_path, capsys, extra, message):
    _rgb(tmp_path / "a.png")
    _rgb(tmp_path / "b.png")
    inputs = [tmp_path / "a.png"] + ([tmp_path / "b.png"] if extra == ["two"] else [])
    opts = [] if extra == ["two"] else extra
    with pytest.raises(SystemExit) as e:
        cli(*inputs, "-o", tmp_path / "out.webp", *opts, "--quiet")
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.webp").exists()


# ----------------------------------------------------------------------------- Real-ESRGAN's flags
def test_dash_i_and_dash_t_as_in_real_esrgan(cli, tmp_path):
    """`-i` adds inputs beside the positional ones; `-t` is --tile: tiled output equals untiled."""
    Image.fromarray(pixels((40, 37, 3))).save(tmp_path / "a.png")  # several tiles of the smallest side
    Image.fromarray(pixels((33, 20, 3), seed=1)).save(tmp_path / "b.png")
    code, out, err = cli("-i", tmp_path / "a.png", "-i", tmp_path / "b.png", "-o", tmp_path / "t", "-t", "16",
                         "--quiet")
    assert code == 0, err
    assert out.count("\n") == 2
    code, _, err = cli(tmp_path / "a.png", "-i", tmp_path / "b.png", "-o", tmp_path / "u", "--tile", "0", "--quiet")
    assert code == 0, err
    for name in ("a_x4.png", "b_x4.png"):
        tiled = np.asarray(Image.open(tmp_path / "t" / name)).astype(int)
        untiled = np.asarray(Image.open(tmp_path / "u" / name)).astype(int)
        assert np.abs(tiled - untiled).max() <= 1


def test_no_input_at_all_is_a_usage_error(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        cli("--quiet")
    assert exc.value.code == 2 and "at least one input" in capsys.readouterr().err


@pytest.mark.parametrize("outscale, suffix", [("2", "x2"), ("2.5", "x2.5"), ("0.5", "x0.5"), ("6", "x6")])
def test_outscale_resizes_the_models_result(cli, tmp_path, outscale, suffix):
    """-s resizes the x4 result with Lanczos to round(size * s) and names it x<s>."""
    _rgb(tmp_path / "a.png")
    assert cli(tmp_path / "a.png", "-o", tmp_path / "native", "--quiet")[0] == 0
    code, out, err = cli(tmp_path / "a.png", "-s", outscale, "--class-map", "--quiet")
    assert code == 0, err
    s = float(outscale)
    size = (max(1, round(W * s)), max(1, round(H * s)))
    result = tmp_path / f"a_{suffix}.png"
    assert f"-> {result}  {size[0]}x{size[1]}  " in out
    got = Image.open(result)
    assert got.size == size
    native = Image.open(tmp_path / "native" / "a_x4.png")
    expect = np.asarray(native.resize(size, Image.Resampling.LANCZOS)).astype(int)
    assert np.array_equal(np.asarray(got).astype(int), expect)
    assert Image.open(tmp_path / f"a_{suffix}_classes.png").size == size


def test_outscale_equal_to_the_models_scale_changes_nothing(cli, tmp_path):
    _rgb(tmp_path / "a.png")
    assert cli(tmp_path / "a.png", "-o", tmp_path / "plain", "--quiet")[0] == 0
    assert cli(tmp_path / "a.png", "-o", tmp_path / "four", "-s", "4", "--quiet")[0] == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "a_x4.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "four" / "a_x4.png")), plain)


@pytest.mark.parametrize("kind", ["rgba", "16-bit rgb", "16-bit gray", "gray"])
def test_outscale_keeps_mode_bits_and_alpha(cli, tmp_path, kind):
    name, make, mode, bits = KINDS[kind]
    make(tmp_path / name)
    code, _, err = cli(tmp_path / name, "-s", "2", "--quiet")
    assert code == 0, err
    pic = pio.read_image(tmp_path / name.replace(".", "_x2."))
    assert pic.rgb.shape == (H * 2, W * 2, 3) and (pic.mode, pic.bits) == (mode, bits)
    assert (pic.alpha is None) == (kind != "rgba")


def test_resample_sixteen_bits_matches_pillow_in_float():
    """16-bit samples: each channel resized in float32 and rounded, clipped to the 16-bit range."""
    a = pixels((9, 13, 3), seed=3, dtype=np.uint16)
    got = pio.resample(a, (20, 31))
    assert got.dtype == np.uint16 and got.shape == (20, 31, 3)
    for c in range(3):
        ref = Image.fromarray(a[..., c].astype(np.float32), mode="F").resize((31, 20), Image.Resampling.LANCZOS)
        assert np.array_equal(got[..., c], np.rint(np.clip(np.asarray(ref), 0, 65535)).astype(np.uint16))
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(pio.resample(labels, (6, 8), nearest=True), labels.repeat(2, 0).repeat(2, 1))


def test_first_image_memory_is_prefaulted_once(cli, tmp_path, monkeypatch, model_file):
    """The command asks the heap for the first image's expected peak (capped), once per run; the
    API does the same, once per model (the core prepares memory for every caller)."""
    from pcsr import api, core, runtime, tiling
    calls = []
    monkeypatch.setattr(runtime, "prefault_heap", lambda n: calls.append(n) or True)
    _rgb(tmp_path / "a.png")
    Image.fromarray(pixels((2 * H, 3 * W, 3), seed=2)).save(tmp_path / "b.png")
    code, _, err = cli(tmp_path / "a.png", tmp_path / "b.png", "-t", "16", "--quiet")
    assert code == 0, err
    model = api.load(str(model_file))
    assert calls == [min(core.PREFAULT_CAP, tiling.expected_peak(model, H, W, tile=16))]
    calls.clear()
    model.upscale(tmp_path / "a.png")
    model.upscale(tmp_path / "b.png")
    assert calls == [min(core.PREFAULT_CAP, tiling.expected_peak(model, H, W))]
    monkeypatch.setattr(tiling, "TYPICAL_SHARE", 1e9)  # an estimate above the cap gets the cap
    calls.clear()
    assert cli(tmp_path / "a.png", "-o", tmp_path / "out", "--quiet")[0] == 0
    assert calls == [core.PREFAULT_CAP]
