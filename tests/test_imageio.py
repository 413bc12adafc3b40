"""Image file input/output: every kind of image reads and writes back faithfully, and
every bad input becomes a one-line ImageError naming the file."""

import io
import os
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from pcsr.errors import ImageError
from pcsr.io import (
    IMAGE_EXTENSIONS,
    check_output_dir,
    list_images,
    read_image,
    write_image,
)

W, H = 17, 23  # odd sizes catch width/height mix-ups


def rng(seed=0):
    return np.random.default_rng(seed)


def u8(shape, seed=0):
    return rng(seed).integers(0, 256, shape, dtype=np.uint8)


def u16(shape, seed=0):
    return rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def as8(values):
    return np.rint(np.asarray(values) * 255).astype(np.int64)


def as16(values):
    return np.rint(np.asarray(values) * 65535).astype(np.int64)


def save(path, array, **options):
    Image.fromarray(array).save(path, **options)
    return path


def write_back(path, pic, **overrides):
    options = dict(alpha=pic.alpha, mode=pic.mode, bits=pic.bits, icc_profile=pic.icc_profile)
    options.update(overrides)
    write_image(path, pic.rgb, **options)


# A PNG written independently of the module under test, so a bug in its encoder
# cannot hide a matching bug in its decoder.
def png_bytes(pixels, *, interlaced=False):
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    big = pixels.astype(">u2")

    def rows(image):
        return b"".join(b"\x00" + row.tobytes() for row in image)

    if interlaced:  # Adam7 passes, each a sub-image with unfiltered rows
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b""
        for x0, y0, dx, dy in passes:
            sub = big[y0::dy, x0::dx]
            if sub.size:
                raw += rows(sub)
    else:
        raw = rows(big)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, int(interlaced))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tiff16_bytes(pixels, order="<", compress=False):
    """Minimal one-strip 16-bit RGB(A) TIFF: Pillow cannot write these itself."""
    height, width, channels = pixels.shape
    data = pixels.astype(order + "u2").tobytes()
    if compress:
        data = zlib.compress(data)
    bits = struct.pack(order + "4H", *([16] * channels + [0] * (4 - channels)))
    data_at = 8 + len(bits)
    ifd_at = data_at + len(data) + len(data) % 2
    tags = [(256, 4, width), (257, 4, height), (258, 3, None), (259, 3, 8 if compress else 1), (262, 3, 2),
            (273, 4, data_at), (277, 3, channels), (278, 4, height), (279, 4, len(data)), (284, 3, 1)]
    if channels == 4:
        tags.append((338, 3, 2))
    ifd = struct.pack(order + "H", len(tags))
    for tag, kind, value in tags:
        if tag == 258:
            ifd += struct.pack(order + "HHII", tag, kind, channels, 8)
        elif kind == 3:
            ifd += struct.pack(order + "HHIHH", tag, kind, 1, value, 0)
        else:
            ifd += struct.pack(order + "HHII", tag, kind, 1, value)
    ifd += struct.pack(order + "I", 0)
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    return magic + struct.pack(order + "I", ifd_at) + bits + data + b"\x00" * (len(data) % 2) + ifd


# ----------------------------------------------------------------------------- round trips


def test_rgb8_round_trip(tmp_path):
    src = u8((H, W, 3))
    pic = read_image(save(tmp_path / "in.png", src))
    assert (pic.mode, pic.bits, pic.format, pic.alpha) == ("RGB", 8, "PNG", None)
    assert pic.rgb.dtype == np.float32 and pic.rgb.shape == (H, W, 3)
    assert np.array_equal(as8(pic.rgb), src)
    write_back(tmp_path / "out.png", pic)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), src)


def test_gray8_is_replicated_and_written_back_as_gray(tmp_path):
    src = u8((H, W), seed=1)
    pic = read_image(save(tmp_path / "in.png", src))
    assert (pic.mode, pic.bits) == ("L", 8)
    for channel in range(3):
        assert np.array_equal(as8(pic.rgb[..., channel]), src)
    write_back(tmp_path / "out.png", pic)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "L"
        assert np.array_equal(np.asarray(im), src)


@pytest.mark.parametrize("mode, channels", [("RGBA", 4), ("LA", 2)])
def test_alpha_is_preserved(tmp_path, mode, channels):
    src = u8((H, W, channels), seed=2)
    pic = read_image(save(tmp_path / "in.png", src))
    assert pic.mode == mode
    assert np.array_equal(as8(pic.alpha), src[..., -1])
    write_back(tmp_path / "out.png", pic)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == mode
        assert np.array_equal(np.asarray(im), src)


def test_bilevel_reads_as_gray(tmp_path):
    bits = u8((H, W), seed=3) > 127
    Image.fromarray(bits).convert("1").save(tmp_path / "in.png")
    pic = read_image(tmp_path / "in.png")
    assert (pic.mode, pic.bits) == ("L", 8)
    assert np.array_equal(pic.rgb[..., 0] == 1.0, bits)


def palette_image(seed):
    indices = rng(seed).integers(0, 16, (H, W), dtype=np.uint8)
    palette = u8((16, 3), seed=seed + 100)
    im = Image.frombytes("P", (W, H), indices.tobytes())
    im.putpalette(palette.flatten().tolist())
    return im, indices, palette


def test_palette_without_transparency_reads_as_rgb(tmp_path):
    im, indices, palette = palette_image(4)
    im.save(tmp_path / "in.png")
    pic = read_image(tmp_path / "in.png")
    assert (pic.mode, pic.alpha) == ("RGB", None)
    assert np.array_equal(as8(pic.rgb), palette[indices])


def test_palette_with_transparency_reads_as_rgba(tmp_path):
    im, indices, palette = palette_image(5)
    im.save(tmp_path / "in.png", transparency=3)
    pic = read_image(tmp_path / "in.png")
    assert pic.mode == "RGBA"
    assert np.array_equal(as8(pic.rgb), palette[indices])
    assert np.array_equal(as8(pic.alpha), np.where(indices == 3, 0, 255))
    write_back(tmp_path / "out.png", pic)
    assert np.array_equal(as8(read_image(tmp_path / "out.png").alpha), np.where(indices == 3, 0, 255))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_gray16_is_exact_through_read_write_read(tmp_path, ext):
    src = u16((H, W), seed=6)
    pic = read_image(save(tmp_path / f"in{ext}", src))
    assert (pic.mode, pic.bits) == ("L", 16)
    assert np.array_equal(as16(pic.rgb[..., 1]), src)
    write_back(tmp_path / f"out{ext}", pic)
    with Image.open(tmp_path / f"out{ext}") as im:
        assert im.mode.startswith("I;16")
    again = read_image(tmp_path / f"out{ext}")
    assert (again.mode, again.bits) == ("L", 16)
    assert np.array_equal(as16(again.rgb[..., 0]), src)


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (4, "RGBA"), (2, "LA")])
@pytest.mark.parametrize("interlaced", [False, True])
def test_png16_colour_is_read_at_full_depth(tmp_path, channels, mode, interlaced):
    src = u16((H, W, channels), seed=7)
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(src, interlaced=interlaced))
    pic = read_image(path)
    assert (pic.mode, pic.bits) == (mode, 16)
    color = src[..., :3] if channels >= 3 else np.repeat(src[..., :1], 3, axis=2)
    assert np.array_equal(as16(pic.rgb), color)
    if channels in (2, 4):
        assert np.array_equal(as16(pic.alpha), src[..., -1])
    write_back(tmp_path / "out.png", pic)
    again = read_image(tmp_path / "out.png")
    assert (again.mode, again.bits) == (mode, 16)
    assert np.array_equal(as16(again.rgb), color)
    if channels in (2, 4):
        assert np.array_equal(as16(again.alpha), src[..., -1])


@pytest.mark.parametrize("order, compress", [("<", False), (">", False), ("<", True)])
@pytest.mark.parametrize("channels", [3, 4])
def test_tiff16_colour_is_read_at_full_depth(tmp_path, order, compress, channels):
    src = u16((H, W, channels), seed=8)
    path = tmp_path / "in.tif"
    path.write_bytes(tiff16_bytes(src, order, compress))
    pic = read_image(path)
    assert (pic.mode, pic.bits, pic.format) == ("RGBA" if channels == 4 else "RGB", 16, "TIFF")
    assert np.array_equal(as16(pic.rgb), src[..., :3])
    write_back(tmp_path / "out.tif", pic)
    again = read_image(tmp_path / "out.tif")
    assert np.array_equal(as16(again.rgb), src[..., :3])
    if channels == 4:
        assert np.array_equal(as16(again.alpha), src[..., 3])


def test_gray_alpha16_tiff_is_written_as_rgba(tmp_path):
    gray, alpha = u16((H, W), seed=9), u16((H, W), seed=10)
    rgb = np.repeat(gray[..., None], 3, axis=2) / 65535
    write_image(tmp_path / "out.tif", rgb, alpha=alpha / 65535, mode="LA", bits=16)
    pic = read_image(tmp_path / "out.tif")
    assert (pic.mode, pic.bits) == ("RGBA", 16)
    assert np.array_equal(as16(pic.rgb[..., 2]), gray)
    assert np.array_equal(as16(pic.alpha), alpha)


def test_float_and_int32_images_read_as_gray(tmp_path):
    values = rng(11).random((H, W), dtype=np.float32)
    pic = read_image(save(tmp_path / "f.tif", values))
    assert (pic.mode, pic.bits) == ("L", 16)
    assert np.array_equal(pic.rgb[..., 0], values)
    wide = rng(12).integers(0, 65536, (H, W)).astype(np.int32)
    pic = read_image(save(tmp_path / "i.tif", wide))
    assert (pic.mode, pic.bits) == ("L", 16)
    assert np.array_equal(as16(pic.rgb[..., 0]), wide)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    cmyk = Image.frombytes("CMYK", (W, H), u8((H, W, 4), seed=13).tobytes())
    cmyk.save(tmp_path / "in.jpg", quality=95)
    pic = read_image(tmp_path / "in.jpg")
    assert (pic.mode, pic.bits, pic.format, pic.rgb.shape) == ("RGB", 8, "JPEG", (H, W, 3))
    with Image.open(tmp_path / "in.jpg") as im:
        assert im.mode == "CMYK"
        assert np.array_equal(as8(pic.rgb), np.asarray(im.convert("RGB")))


ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    src = u8((H, W, 3), seed=14)
    im = Image.fromarray(src)
    exif = im.getexif()
    exif[0x0112] = orientation
    exif[0x010F] = "pcsr-test"  # Make: must survive the trip
    im.save(tmp_path / "in.png", exif=exif.tobytes())
    pic = read_image(tmp_path / "in.png")
    expected = ORIENTED[orientation](src)
    assert np.array_equal(as8(pic.rgb), expected)
    carried = Image.Exif()
    carried.load(pic.exif)
    assert carried[0x0112] == 1 and carried[0x010F] == "pcsr-test"


def test_exif_orientation_applies_to_16bit_colour(tmp_path):
    src = u16((H, W, 3), seed=15)
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(tmp_path / "in.png", src / 65535, bits=16, exif=exif.tobytes())
    pic = read_image(tmp_path / "in.png")
    assert pic.rgb.shape == (W, H, 3)
    assert np.array_equal(as16(pic.rgb), np.rot90(src, -1))


def test_multiframe_gif_gives_the_first_frame(tmp_path):
    frames = [Image.fromarray(u8((H, W), seed=s)).convert("P") for s in (16, 17)]
    frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match=r"in\.gif: 2 frames; only the first is upscaled"):
        pic = read_image(tmp_path / "in.gif")
    assert np.array_equal(as8(pic.rgb), np.asarray(frames[0].convert("RGB")))


@pytest.fixture
def srgb_profile():
    ImageCms = pytest.importorskip("PIL.ImageCms")
    try:
        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except Exception as err:  # littlecms missing from this Pillow build
        pytest.skip(f"cannot make an ICC profile: {err}")


def test_icc_profile_is_read(tmp_path, srgb_profile):
    pic = read_image(save(tmp_path / "in.png", u8((H, W, 3)), icc_profile=srgb_profile))
    assert pic.icc_profile == srgb_profile


@pytest.mark.parametrize("ext, bits", [(".png", 8), (".png", 16), (".jpg", 8), (".webp", 8), (".tif", 8), (".tif", 16)])
def test_icc_profile_is_written(tmp_path, srgb_profile, ext, bits):
    write_image(tmp_path / f"out{ext}", u8((H, W, 3)) / 255, bits=bits, icc_profile=srgb_profile)
    assert read_image(tmp_path / f"out{ext}").icc_profile == srgb_profile


def test_rgb_icc_profile_is_not_put_on_gray_output(tmp_path, srgb_profile):
    write_image(tmp_path / "out.png", u8((H, W, 3)) / 255, mode="L", icc_profile=srgb_profile)
    with Image.open(tmp_path / "out.png") as im:
        assert "icc_profile" not in im.info


LOSSLESS = (".png", ".bmp", ".tif", ".tiff")


def written_mode(ext, mode):
    if ext in (".jpg", ".jpeg", ".bmp"):
        return mode.rstrip("A")
    if ext == ".webp":
        return "RGBA" if mode.endswith("A") else "RGB"
    return mode


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_every_extension_writes_and_reads_back(tmp_path, ext, mode):
    src = u8((H, W, 4), seed=18)
    color = src[..., :3] if mode.startswith("RGB") else np.repeat(src[..., :1], 3, axis=2)
    alpha = src[..., 3] / 255 if mode.endswith("A") else None
    write_image(tmp_path / f"out{ext}", color / 255, alpha=alpha, mode=mode)
    pic = read_image(tmp_path / f"out{ext}")
    assert pic.rgb.shape == (H, W, 3)
    assert (pic.mode, pic.bits) == (written_mode(ext, mode), 8)
    if ext in LOSSLESS:
        assert np.array_equal(as8(pic.rgb), color)
        if pic.alpha is not None:
            assert np.array_equal(as8(pic.alpha), src[..., 3])


def test_sixteen_bits_fall_back_to_eight_where_the_format_cannot_hold_them(tmp_path):
    write_image(tmp_path / "out.bmp", u16((H, W, 3)) / 65535, bits=16)
    assert read_image(tmp_path / "out.bmp").bits == 8


def test_gray_output_uses_luma(tmp_path):
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[..., 0] = 1.0
    write_image(tmp_path / "out.png", rgb, mode="L")
    with Image.open(tmp_path / "out.png") as im:
        assert np.all(np.asarray(im) == round(0.299 * 255))


def test_values_are_clipped_and_rounded(tmp_path):
    rgb = np.array([[[-0.5, 0.5, 2.0], [np.nan, 1 / 255 * 0.49, 1 / 255 * 0.51]]], np.float32)
    write_image(tmp_path / "out.png", rgb)
    with Image.open(tmp_path / "out.png") as im:
        assert np.asarray(im).tolist() == [[[0, 128, 255], [0, 0, 1]]]


# ----------------------------------------------------------------------------- bad input


def raises_naming(path, *words):
    return pytest.raises(ImageError, match=".*".join([re.escape(str(path)), *words]))


def test_missing_file(tmp_path):
    with raises_naming(tmp_path / "missing.png", "no such file"):
        read_image(tmp_path / "missing.png")


def test_folder_is_not_an_image(tmp_path):
    with raises_naming(tmp_path, "folder"):
        read_image(tmp_path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("hello, this is not a JPEG\n")
    with raises_naming(path, "not an image file"):
        read_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with raises_naming(path, "empty file"):
        read_image(path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.02])
def test_truncated_png(tmp_path, keep):
    buffer = io.BytesIO()
    Image.fromarray(u8((H, W, 3), seed=19)).save(buffer, "PNG")
    data = buffer.getvalue()
    path = tmp_path / "x.png"
    path.write_bytes(data[: max(9, int(len(data) * keep))])
    with raises_naming(path, "truncated or corrupt"):
        read_image(path)


def test_too_many_pixels(tmp_path):
    path = save(tmp_path / "big.png", u8((H, W, 3)))
    with raises_naming(path, f"{W}x{H} pixels is above the limit of 100"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=W * H).rgb.shape == (H, W, 3)


def test_pillow_bomb_limit_neither_overrides_nor_leaks(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", u8((H, W, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow would refuse above 100
    assert read_image(path, max_pixels=1000).rgb.shape == (H, W, 3)
    assert Image.MAX_IMAGE_PIXELS == 50
    with raises_naming(path, "above the limit of 100"):
        read_image(path, max_pixels=100)
    with raises_naming(path, f"({W}x{H}|{W * H}) pixels is above the limit of 150"):
        read_image(path, max_pixels=150)
    assert Image.MAX_IMAGE_PIXELS == 50
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # between the warning and the error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file cannot hold other files")
    with raises_naming(blocker, "output folder"):
        check_output_dir(blocker / "out")
    with raises_naming(blocker, "not a folder"):
        check_output_dir(blocker)
    with raises_naming(blocker, "not a folder"):
        write_image(blocker / "x.png", np.zeros((2, 2, 3)))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        with raises_naming(folder, "not writable"):
            check_output_dir(folder)
        with raises_naming(folder, "not writable"):
            write_image(folder / "x.png", np.zeros((2, 2, 3)))
    finally:
        folder.chmod(0o700)


def test_check_output_dir_creates_parents(tmp_path):
    check_output_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert os.listdir(tmp_path / "a" / "b") == []


def test_unknown_output_extension(tmp_path):
    with raises_naming(tmp_path / "out.gif", "cannot write"):
        write_image(tmp_path / "out.gif", np.zeros((2, 2, 3)))


def test_missing_output_folder(tmp_path):
    with raises_naming(tmp_path / "nope", "does not exist"):
        write_image(tmp_path / "nope" / "x.png", np.zeros((2, 2, 3)))


# ----------------------------------------------------------------------------- atomic writes


def interrupted_save(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG partial")
    raise KeyboardInterrupt


def test_successful_write_leaves_only_the_final_file(tmp_path):
    write_image(tmp_path / "out.png", np.zeros((H, W, 3)))
    write_image(tmp_path / "out16.png", np.zeros((H, W, 3)), bits=16)
    assert sorted(os.listdir(tmp_path)) == ["out.png", "out16.png"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", np.zeros((H, W, 3)))
    assert os.listdir(tmp_path) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    src = u8((H, W, 3), seed=20)
    write_image(tmp_path / "out.png", src / 255)
    before = (tmp_path / "out.png").read_bytes()
    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", np.zeros((H, W, 3)))
    assert os.listdir(tmp_path) == ["out.png"]
    assert (tmp_path / "out.png").read_bytes() == before


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_interrupted_16bit_write_leaves_nothing(tmp_path, monkeypatch, ext):
    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / f"out{ext}", np.zeros((H, W, 3)), bits=16)
    assert os.listdir(tmp_path) == []


def test_write_error_becomes_image_error_and_cleans_up(tmp_path, monkeypatch):
    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with raises_naming(tmp_path / "out.jpg", "No space left"):
        write_image(tmp_path / "out.jpg", np.zeros((H, W, 3)))
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- list_images


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("b.png", "a.JPG", "c.tiff", "notes.txt", ".hidden.png"):
        (root / name).write_bytes(b"x")
    (root / "sub").mkdir()
    (root / "sub" / "d.png").write_bytes(b"x")
    return root


def test_folder_gives_its_images_sorted(folder):
    assert [p.name for p in list_images([str(folder)])] == ["a.JPG", "b.png", "c.tiff"]


def test_glob_gives_matches_sorted(folder):
    assert [p.name for p in list_images([str(folder / "[ab].*")])] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images([str(folder / "*")])] == ["a.JPG", "b.png", "c.tiff"]


def test_duplicates_are_removed_keeping_order(folder):
    found = list_images([str(folder / "c.tiff"), str(folder), str(folder / "*.png"), str(folder / "c.tiff")])
    assert [p.name for p in found] == ["c.tiff", "a.JPG", "b.png"]


def test_named_files_are_kept_whatever_their_extension(folder):
    assert list_images([str(folder / "notes.txt")]) == [folder / "notes.txt"]


def test_list_images_errors(tmp_path, folder):
    with raises_naming(tmp_path / "missing", "no such file or folder"):
        list_images([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with raises_naming(tmp_path / "empty", "no images in this folder"):
        list_images([str(tmp_path / "empty")])
    with raises_naming(folder / "*.gif", "no file matches"):
        list_images([str(folder / "*.gif")])
    with raises_naming(folder / "*.txt", "no image file matches"):
        list_images([str(folder / "*.txt")])
