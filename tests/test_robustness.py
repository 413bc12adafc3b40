"""Bad input never costs other work: one line per bad image or file, the rest of a batch goes on,
hostile model files are refused before anything is allocated, outputs are never clobbered and
temporaries never left behind."""
import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcsr import io as pio
from pcsr import weights
from pcsr.cli import upscale
from pcsr.cli import main
from pcsr.errors import ImageError, WeightsError
from pcsr.models.pcsr import build_model
from pcsr.models.specs import ModelSpec

SPEC = ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}, scale=4, upsamplers=((4,), (8,)),
                 classifier=(4,))


@pytest.fixture
def cli(model_file, capsys):
    """`pcsr upscale ...` in-process: (exit status, stdout, stderr)."""
    def run(*args):
        code = main(["upscale", *map(str, args), "--model", str(model_file), "--quiet"])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def image(path: Path, h: int = 9, w: int = 13, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- case 1: any failure, one line
FAILURES = {  # input name: the exception upscale_file raises for it
    "b.png": RuntimeError("Calculated padded input size per channel: (1 x 1).\nKernel size: (3 x 3)"),
    "c.png": ValueError("something odd"),
    "d.png": OSError(errno.EIO, "Input/output error"),
}


@pytest.fixture
def failing(monkeypatch):
    real = upscale.upscale_file

    def fake(model, job, *args, **kwargs):
        if job.input.name in FAILURES:
            raise FAILURES[job.input.name]
        return real(model, job, *args, **kwargs)

    monkeypatch.setattr(upscale, "upscale_file", fake)


@pytest.mark.parametrize("as_json", [False, True])
def test_any_exception_is_one_line_and_the_batch_goes_on(cli, tmp_path, failing, as_json):
    for i, name in enumerate(["a.png", "b.png", "c.png", "d.png", "e.png"]):
        image(tmp_path / name, seed=i)
    code, out, err = cli(tmp_path, "-o", tmp_path / "out", *(["--json"] if as_json else []))
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    for line, (name, reason) in zip(lines, [("b.png", "RuntimeError: Calculated padded input size"),
                                            ("c.png", "ValueError: something odd"),
                                            ("d.png", "Input/output error")]):
        assert line.startswith(f"pcsr upscale: error: {tmp_path / name}: ") and reason in line
    assert names(tmp_path / "out") == ["a_x4.png", "e_x4.png"]
    if as_json:
        rows = [json.loads(line) for line in out.splitlines()]
        assert [Path(r["input"]).name for r in rows] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
        assert [r["error"] is None for r in rows] == [True, False, False, False, True]
        assert "ValueError: something odd" in rows[2]["error"] and rows[2]["width"] is None
    else:
        assert [line.split(" -> ")[0] for line in out.splitlines()] == [str(tmp_path / "a.png"),
                                                                         str(tmp_path / "e.png")]


def test_keyboard_interrupt_still_stops_the_run(cli, tmp_path, monkeypatch):
    calls = []

    def interrupted(model, job, *args, **kwargs):
        calls.append(job.input.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(upscale, "upscale_file", interrupted)
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    code, out, err = cli(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out")
    assert code == 130 and "interrupted" in err and calls == ["a.png"] and out == ""
    assert names(tmp_path / "out") == []


@pytest.mark.parametrize("h,w", [(1, 1), (1, 7), (7, 1)])
def test_one_pixel_wide_images_upscale(cli, tmp_path, h, w):
    image(tmp_path / "a.png", h, w)
    code, out, err = cli(tmp_path / "a.png", "--precision", "fp32")
    assert code == 0, err
    assert Image.open(tmp_path / "a_x4.png").size == (4 * w, 4 * h)


def test_tiny_images_never_stop_a_batch_in_any_precision(cli, tmp_path):
    """Whatever a precision does with a 1x1 image, the other images of the batch are written."""
    for precision in ("auto", "bf16"):
        folder = tmp_path / precision
        folder.mkdir()
        image(folder / "a.png", 1, 1)
        image(folder / "b.png")
        code, out, err = cli(folder, "--precision", precision)
        assert "Traceback" not in err and (folder / "b_x4.png").exists()
        assert code == (1 if err.count("error:") else 0)
        assert err.count("\n") <= 1 + err.count("warning:")


# ----------------------------------------------------------------------------- case 3: model files are data
GOOD = SPEC.to_dict()

BAD_SPECS = {  # name: (changes to a good spec, words the message must hold)
    "not a mapping": (None, "expected a JSON object"),
    "unknown key": ({"colour": 1}, "unknown keys"),
    "unknown backbone": ({"backbone": "vgg"}, "unknown backbone"),
    "backbone not text": ({"backbone": 5}, "backbone must be a name"),
    "args not a mapping": ({"backbone_args": [8, 4]}, "backbone_args must be a mapping"),
    "unknown option": ({"backbone_args": {"width": 3}}, "unknown options"),
    "width as text": ({"backbone_args": {"nf": "8", "groups": 4}}, "backbone_args.nf must be a whole number"),
    "width as bool": ({"backbone_args": {"nf": True, "groups": 1}}, "backbone_args.nf must be a whole number"),
    "width as float": ({"backbone_args": {"nf": 8.0, "groups": 4}}, "backbone_args.nf must be a whole number"),
    "width zero": ({"backbone_args": {"nf": 0, "groups": 4}}, "backbone_args.nf must be between 1 and 1024"),
    "4 TB layer": ({"backbone_args": {"nf": 1 << 20, "groups": 4}}, "backbone_args.nf must be between 1 and 1024"),
    "groups not dividing": ({"backbone_args": {"nf": 8, "groups": 3}}, "not divisible"),
    "groups not dividing the default": ({"backbone_args": {"groups": 5}}, "not divisible"),
    "too deep": ({"backbone": "msrresnet", "backbone_args": {"nb": 100000}}, "backbone_args.nb must be between"),
    "fsrcnn m zero": ({"backbone": "fsrcnn", "backbone_args": {"m": 0}}, "backbone_args.m must be between"),
    "scale float": ({"scale": 4.0}, "scale must be a whole number"),
    "scale text": ({"scale": "4"}, "scale must be a whole number"),
    "scale zero": ({"scale": 0}, "scale must be between 1 and 16"),
    "scale huge": ({"scale": 1000}, "scale must be between 1 and 16"),
    "one upsampler": ({"upsamplers": [[4]]}, "at least 2 upsamplers"),
    "upsamplers not a list": ({"upsamplers": 4}, "upsamplers must be a list"),
    "too many upsamplers": ({"upsamplers": [[4]] * 17}, "at most 16"),
    "upsampler width text": ({"upsamplers": [[4], ["8"]]}, "upsamplers[1][0] must be a whole number"),
    "upsampler width zero": ({"upsamplers": [[4], [0]]}, "upsamplers[1][0] must be between 1 and 4096"),
    "upsampler width huge": ({"upsamplers": [[4], [1 << 30]]}, "upsamplers[1][0] must be between 1 and 4096"),
    "upsampler too many layers": ({"upsamplers": [[4], [8] * 17]}, "17 hidden layers"),
    "classifier not a list": ({"classifier": "abc"}, "classifier must be a list"),
    "classifier width negative": ({"classifier": [-4]}, "classifier[0] must be between"),
    "mean of two": ({"mean": [0.1, 0.2]}, "mean needs 3 values"),
    "mean nan": ({"mean": [0.1, float("nan"), 0.2]}, "mean needs 3 finite numbers"),
    "mean inf": ({"mean": [0.1, float("inf"), 0.2]}, "mean needs 3 finite numbers"),
    "mean text": ({"mean": ["a", "b", "c"]}, "mean needs 3 finite numbers"),
    "no backbone": ({"backbone": None}, "backbone"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_every_spec_field_is_checked(case):
    change, words = BAD_SPECS[case]
    d = None if change is None else {**GOOD, **change}
    if d is not None and d.get("backbone", 1) is None:
        del d["backbone"]
    with pytest.raises(WeightsError, match="^[^\n]*$") as e:
        ModelSpec.from_dict(d)
    assert words in str(e.value)


def test_specs_in_bounds_are_accepted():
    spec = ModelSpec.from_dict({**GOOD, "backbone_args": {"nf": 1024, "groups": 1024}, "scale": 16,
                                "upsamplers": [[4096] * 16, [1]] + [[2]] * 14, "mean": [0, 1, -2.5]})
    assert spec.backbone_args == {"nf": 1024, "groups": 1024} and spec.mean == (0.0, 1.0, -2.5)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_backbone_bounds_cover_every_backbone_option():
    """A registration's bounds name exactly its config's fields, and the defaults lie within them."""
    from pcsr.models.backbones import REGISTRY, Registration
    from pcsr.models.backbones.carn import CARN, CARNConfig
    for reg in REGISTRY.values():
        assert all(lo <= reg.defaults()[k] <= hi for k, (lo, hi) in reg.bounds.items())
    with pytest.raises(ValueError, match="exactly the config fields"):
        Registration("bad", CARNConfig, CARN, {"nf": (1, 8)}, tiny={})


def write_model(path: Path, tensors: dict, spec, info: str | None = None, fmt: str = "1") -> Path:
    from safetensors.torch import save_file
    meta = {"pcsr_format": fmt, "spec": spec if isinstance(spec, str) else json.dumps(spec)}
    if info is not None:
        meta["info"] = info
    save_file(tensors, str(path), metadata=meta)
    return path


def good_tensors() -> dict:
    return {k: v.clone() for k, v in build_model(SPEC).state_dict().items()}


def raw_safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.fixture
def never_built(monkeypatch):
    """Fails the test if a network is built anywhere but on the meta device (nothing allocated)."""
    real = weights.build_model

    def build(spec):
        assert torch.get_default_device().type == "meta", f"a model was allocated for {spec}"
        return real(spec)

    monkeypatch.setattr(weights, "build_model", build)


def _too_big_header(p):
    return raw_safetensors(p, b"{" + b" " * (5 << 20) + b"}")


def _length_beyond_the_file(p):
    return raw_safetensors(p, b"{}")  # then the length is patched below


BAD_FILES = {  # name: (make(path) -> path, words the message must hold)
    "header of 5 MB": (_too_big_header, "header"),
    "length of an exabyte": (lambda p: (p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}"), p)[1], "header"),
    "length past the end": (lambda p: (p.write_bytes(struct.pack("<Q", 1000) + b"{}"), p)[1], "truncated header"),
    "header not JSON": (lambda p: raw_safetensors(p, b"\xff\xfe{"), "not a readable"),
    "header a list": (lambda p: raw_safetensors(p, b"[1, 2]"), "not a JSON object"),
    "header deeply nested": (lambda p: raw_safetensors(p, b'{"__metadata__": ' + b"[" * 100000 + b"]" * 100000
                                                        + b"}"), "nested deeper"),
    "spec deeply nested": (lambda p: write_model(p, good_tensors(), "[" * 100000 + "]" * 100000), "nested deeper"),
    "info deeply nested": (lambda p: write_model(p, good_tensors(), GOOD, info="{\"a\":" * 5000 + "1" + "}" * 5000),
                           "nested deeper"),
    "spec not JSON": (lambda p: write_model(p, good_tensors(), "{backbone: carn"), "damaged model metadata"),
    "spec a list": (lambda p: write_model(p, good_tensors(), [1, 2]), "expected a JSON object"),
    "4 TB layer": (lambda p: write_model(p, good_tensors(), {**GOOD, "backbone_args": {"nf": 1 << 22, "groups": 4}}),
                   "between 1 and 1024"),
    "in bounds but far larger than its tensors": (
        lambda p: write_model(p, good_tensors(), {**GOOD, "backbone": "msrresnet",
                                                  "backbone_args": {"nf": 1024, "nb": 256}}), "do not fit"),
    "missing tensor": (lambda p: write_model(p, {k: v for k, v in list(good_tensors().items())[1:]}, GOOD),
                       "missing ['backbone.entry.weight']"),
    "unexpected tensor": (lambda p: write_model(p, {**good_tensors(), "evil": torch.zeros(3)}, GOOD),
                          "unexpected ['evil']"),
    "wrong shape": (lambda p: write_model(p, {**good_tensors(), "backbone.entry.weight": torch.zeros(8, 3, 5, 5)},
                                          GOOD), "backbone.entry.weight has shape [8, 3, 5, 5]"),
    "integer weights": (lambda p: write_model(p, {**good_tensors(), "backbone.entry.bias": torch.zeros(8,
                                                                                             dtype=torch.int32)},
                                              GOOD), "backbone.entry.bias is torch.int32"),
    "bad tensor entry": (lambda p: raw_safetensors(
        p, json.dumps({"__metadata__": {"pcsr_format": "1", "spec": json.dumps(GOOD)},
                       "w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}).encode()),
        "bad entry for 'w'"),
    "metadata not text": (lambda p: raw_safetensors(p, json.dumps({"__metadata__": {"spec": {"a": 1}}}).encode()),
                          "not a mapping of text"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_hostile_model_files_are_one_line_and_never_allocated(tmp_path, never_built, case):
    make, words = BAD_FILES[case]
    path = make(tmp_path / "m.safetensors")
    with pytest.raises(WeightsError) as e:
        weights.load(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path)) and words in message, message
    assert len(message) < 400


def test_half_precision_weights_are_accepted(tmp_path):
    """Floating parameters may be stored in any float dtype: loading casts them."""
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in good_tensors().items()}
    net, _ = weights.load(write_model(tmp_path / "m.safetensors", tensors, GOOD))
    assert net.backbone.entry.weight.dtype == torch.float32


def test_json_depth_ignores_brackets_in_strings():
    assert weights.json_depth('{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert weights.json_depth('"\\"[[["') == 0
    assert weights.json_depth("[" * 50 + "]" * 50) == 50


def _reference(tmp_path: Path, obj, name="ref.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _carn_reference(**changes):
    sd = {"entry.weight": torch.zeros(8, 3, 3, 3)}
    model = {"name": "carn", "args": {"nf": 8, "scale": 4}, "sd": sd, **changes}
    return {"model": model}


BAD_REFERENCES = {  # name: (checkpoint object or raw bytes, words the message must hold)
    "garbage bytes": (b"\x80\x04garbage that is no pickle", "cannot read checkpoint"),
    "zip garbage": (b"PK\x03\x04" + bytes(200), "cannot read checkpoint"),
    "not a dict": ([torch.zeros(2)], "not a mapping"),
    "no model": ({"state_dict": {}}, "missing 'model'"),
    "model a tensor": ({"model": torch.zeros(2)}, "model is a Tensor"),
    "no sd": ({"model": {"name": "carn", "args": {}}}, "missing 'sd'"),
    "name not text": (_carn_reference(name=3), "model.name is a int"),
    "args a list": (_carn_reference(args=[1]), "model.args is a list"),
    "sd of numbers": (_carn_reference(sd={"entry.weight": 3}), "is not a tensor"),
    "width as text": (_carn_reference(args={"nf": "many"}), "ValueError"),
    "width huge": (_carn_reference(args={"nf": 1 << 30}), "between 1 and 1024"),
    "scale huge": (_carn_reference(args={"nf": 8, "scale": 1 << 20}), "between 1 and 16"),
    "unknown model": (_carn_reference(name="edsr"), "unknown reference model 'edsr'"),
    "pcsr without encoder": ({"model": {"name": "pcsr", "args": {}, "sd": {}}}, "missing 'encoder_spec'"),
    "pcsr foreign backbone": ({"model": {"name": "pcsr", "args": {"encoder_spec": {"name": "vgg", "args": {}}},
                                         "sd": {}}}, "'vgg' is not supported"),
    "tensors of the wrong shape": (_carn_reference(), "do not fit"),
}


@pytest.mark.parametrize("case", list(BAD_REFERENCES))
def test_malformed_reference_checkpoints(tmp_path, never_built, case):
    obj, words = BAD_REFERENCES[case]
    if isinstance(obj, bytes):
        path = tmp_path / "ref.pth"
        path.write_bytes(obj)
    else:
        path = _reference(tmp_path, obj)
    with pytest.raises(WeightsError) as e:
        weights.load(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path)) and words in message, message


def test_reference_checkpoints_never_unpickle_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path, _use_new_zipfile_serialization=True)
    with pytest.raises(WeightsError, match="evil.pth: cannot read checkpoint"):
        weights.load(path)


# ----------------------------------------------------------------------------- case 5: signals, stale temporaries, exclusive publish


SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(cli, tmp_path, monkeypatch, signame):
    sig = getattr(signal, signame)
    previous = signal.signal(sig, signal.SIG_DFL)  # as in a plain shell, whatever pytest set
    try:
        def signalled_mid_write(self, fp, *args, **kwargs):
            fp.write(b"\x89PNG\r\n\x1a\n partial")
            os.kill(os.getpid(), sig)  # the handler runs right here, in this (the main) thread
            fp.write(b"never reached")

        image(tmp_path / "a.png")
        image(tmp_path / "b.png")
        monkeypatch.setattr(Image.Image, "save", signalled_mid_write)
        code, out, err = cli(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out")
        assert code == 128 + sig and f"terminated ({signame})" in err and out == ""
        assert names(tmp_path / "out") == []  # no partial image, no temporary, b.png not started
        assert signal.getsignal(sig) is signal.SIG_DFL  # the command's handler is gone again
    finally:
        signal.signal(sig, previous)


def test_an_ignored_sighup_stays_ignored(tmp_path):
    """Under nohup SIGHUP is ignored: the command must not take that back."""
    from pcsr.cli import signals_interrupt
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


HANGING_WRITER = """
import sys, time
from pcsr import io as pio
def writer(f):
    f.write(b"partial")
    f.flush()
    print("ready", flush=True)
    time.sleep(60)
pio.atomic_write(sys.argv[1], writer)
"""


def _killed_mid_write(target: Path) -> Path:
    """Run a writer into target's folder and kill -9 it mid-write: the temporary it leaves."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait(10)
    left = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.pcsr-{proc.pid}-")]
    assert len(left) == 1 and left[0].read_bytes() == b"partial"
    return left[0]


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next_write(tmp_path):
    killed = _killed_mid_write(tmp_path / "a_x4.png")
    fresh_killed = _killed_mid_write(tmp_path / "b_x4.png")  # dead too, but only just: could be in flight elsewhere
    _age(killed, 120)
    live = tmp_path / f".c_x4.png.pcsr-{os.getpid()}-0123abcd.tmp"  # a running writer's (ours)
    live.write_bytes(b"x")
    _age(live, 3600)
    decoys = [tmp_path / ".a_x4.png.tmp", tmp_path / "a_x4.png.pcsr-1-0123abcd.tmp",
              tmp_path / f".d.png.pcsr-{_dead_pid()}-0123abcd.tmp.bak", tmp_path / ".e.pcsr-1-XYZ.tmp"]
    for d in decoys:
        d.write_bytes(b"user data")
        _age(d, 3600)
    folder_link = tmp_path / f".f.png.pcsr-{_dead_pid()}-0123abcd.tmp"
    folder_link.mkdir()  # our name, but a folder: never ours to remove
    _age(folder_link, 3600)
    pio.write_image(tmp_path / "new.png", np.zeros((2, 2, 3)))
    left = set(p.name for p in tmp_path.iterdir())
    assert killed.name not in left
    assert {fresh_killed.name, live.name, folder_link.name, "new.png"} | {d.name for d in decoys} == left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_exclusive_write_never_replaces_a_file_published_meanwhile(tmp_path):
    target = tmp_path / "a.png"

    def other_run_publishes_first(f):
        target.write_bytes(b"the other run's image")
        f.write(b"ours")

    with pytest.raises(ImageError, match="a.png: already exists"):
        pio.atomic_write(target, other_run_publishes_first, overwrite=False)
    assert target.read_bytes() == b"the other run's image" and names(tmp_path) == ["a.png"]
    pio.atomic_write(target, other_run_publishes_first, overwrite=True)
    assert target.read_bytes() == b"ours" and names(tmp_path) == ["a.png"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_exclusive_write_without_hard_links(tmp_path, monkeypatch, code):
    def no_links(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    pio.atomic_write(tmp_path / "a.png", lambda f: f.write(b"first"), overwrite=False)
    assert (tmp_path / "a.png").read_bytes() == b"first" and names(tmp_path) == ["a.png"]
    with pytest.raises(ImageError, match="already exists"):
        pio.atomic_write(tmp_path / "a.png", lambda f: f.write(b"second"), overwrite=False)
    assert (tmp_path / "a.png").read_bytes() == b"first" and names(tmp_path) == ["a.png"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_upscale_runs_racing_for_one_output(cli, tmp_path, monkeypatch, overwrite):
    """Another run publishes our output while we upscale: without --overwrite its file is kept and
    this image fails in one line; with --overwrite ours replaces it."""
    real = upscale.upscale_file

    def racing(model, job, *args, **kwargs):
        job.output.write_bytes(b"the other run's image")
        return real(model, job, *args, **kwargs)

    monkeypatch.setattr(upscale, "upscale_file", racing)
    image(tmp_path / "a.png")
    code, out, err = cli(tmp_path / "a.png", "-o", tmp_path / "out", *(["--overwrite"] if overwrite else []))
    result = tmp_path / "out" / "a_x4.png"
    assert names(tmp_path / "out") == ["a_x4.png"]
    if overwrite:
        assert code == 0 and Image.open(result).size == (52, 36)
    else:
        assert code == 1 and err.count("\n") == 1 and "already exists" in err
        assert err.startswith(f"pcsr upscale: error: {tmp_path / 'a.png'}: ")
        assert result.read_bytes() == b"the other run's image"


def test_model_files_are_published_exclusively(tmp_path):
    net = build_model(SPEC)
    weights.save(net, tmp_path / "m.safetensors")
    before = (tmp_path / "m.safetensors").read_bytes()
    with pytest.raises(WeightsError, match="m.safetensors: already exists"):
        weights.save(net, tmp_path / "m.safetensors", overwrite=False)
    assert (tmp_path / "m.safetensors").read_bytes() == before and names(tmp_path) == ["m.safetensors"]


# ----------------------------------------------------------------------------- case 4: convert keeps its input


def _reference_key(ours: str) -> str:
    """Our CARN state key -> the reference code's (the inverse of weights._carn_key)."""
    k = re.sub(r"^blocks\.(\d)\.unit\.", lambda m: f"b{int(m[1]) + 1}.b1.", ours)
    k = re.sub(r"^blocks\.(\d)\.fuse\.(\d)\.", lambda m: f"b{int(m[1]) + 1}.c{int(m[2]) + 1}.", k)
    k = re.sub(r"^fuse\.(\d)\.", lambda m: f"c{int(m[1]) + 1}.", k)
    return k.replace("upsample.", "upsample.up.body.")


@pytest.fixture
def reference(tmp_path) -> Path:
    """A reference-format checkpoint of a tiny original CARN, as the authors' code saves one."""
    torch.manual_seed(1)
    net = build_model(ModelSpec(backbone="carn", backbone_args={"nf": 8, "groups": 4}, scale=4))
    sd = {_reference_key(k[len("backbone."):]): v for k, v in net.state_dict().items()}
    path = tmp_path / "carn.pth"
    torch.save({"model": {"name": "carn", "args": {"nf": 8, "scale": 4}, "sd": sd}}, path)
    return path


def convert(*args):
    return main(["convert", *map(str, args)])


def test_convert_round_trips(reference, tmp_path, capsys):
    assert convert(reference, "-o", tmp_path / "c.safetensors") == 0, capsys.readouterr().err
    net, info = weights.load(tmp_path / "c.safetensors")
    assert net.spec.backbone_args == {"nf": 8, "groups": 4} and info == {"converted_from": "carn.pth"}
    original, _ = weights.load(reference)
    for k, v in original.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hard link"])
def test_convert_never_writes_over_its_input(reference, tmp_path, capsys, spelling):
    before = reference.read_bytes()
    out = {"same": reference, "dotted": tmp_path / "x" / ".." / "carn.pth", "symlink": tmp_path / "link.pth",
           "hard link": tmp_path / "hard.pth"}[spelling]
    if spelling == "dotted":
        (tmp_path / "x").mkdir()
    elif spelling == "symlink":
        out.symlink_to(reference)
    elif spelling == "hard link":
        os.link(reference, out)
    assert convert(reference, "-o", out, "--overwrite") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input checkpoint itself" in err
    assert reference.read_bytes() == before


def test_convert_needs_overwrite_to_replace_an_output(reference, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    out.write_bytes(b"precious")
    assert convert(reference, "-o", out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert convert(reference, "-o", out, "--overwrite") == 0
    assert weights.load(out)[0].spec.scale == 4 and names(tmp_path) == ["c.safetensors", "carn.pth"]


@pytest.mark.parametrize("where,words", [("missing/c.safetensors", "output folder does not exist"),
                                         ("file/c.safetensors", "is not a folder"),
                                         ("folder", "is a folder")])
def test_convert_write_errors_are_one_line(reference, tmp_path, capsys, where, words):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    assert convert(reference, "-o", tmp_path / where) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and err.startswith("pcsr convert: error: ")
    assert "Traceback" not in err


def test_convert_into_an_unwritable_folder(reference, tmp_path, capsys, monkeypatch):
    """Simulated, since root may write anywhere: creating the temporary is refused."""
    real = os.open

    def refuse_temporaries(path, *args, **kwargs):
        if ".pcsr-" in os.fspath(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_temporaries)
    (tmp_path / "ro").mkdir()
    assert convert(reference, "-o", tmp_path / "ro" / "c.safetensors") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not writable" in err and names(tmp_path / "ro") == []


# ----------------------------------------------------------------------------- case 2: odd folder entries
def test_folder_with_a_link_loop_a_fifo_and_a_dangling_link(cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image(folder / "a.png")
    image(folder / "z.png", seed=1)
    (folder / "loop.png").symlink_to("loop.png")
    os.mkfifo(folder / "pipe.png")  # opened for reading, it would block until a writer comes
    (folder / "gone.png").symlink_to(folder / "nothing.png")
    os.mkfifo(folder / "pipe-without-image-name")  # not an image name: ignored like any such file
    start = time.monotonic()
    code, out, err = cli(folder, "-o", tmp_path / "out")
    assert time.monotonic() - start < 30
    assert code == 1
    lines = sorted(err.splitlines())
    assert len(lines) == 3 and "Traceback" not in err
    assert lines[0].startswith(f"pcsr upscale: error: {folder / 'gone.png'}: no such file")
    assert lines[1].startswith(f"pcsr upscale: error: {folder / 'loop.png'}: ") and "loop" in lines[1]
    assert lines[2] == f"pcsr upscale: error: {folder / 'pipe.png'}: not a regular file (a named pipe)"
    assert names(tmp_path / "out") == ["a_x4.png", "z_x4.png"]


def test_a_fifo_named_as_input_is_never_opened(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    with pytest.raises(ImageError, match=r"p.png: not a regular file \(a named pipe\)"):
        pio.read_image(tmp_path / "p.png")
    assert pio.list_images([tmp_path / "p.png"]) == [tmp_path / "p.png"]


def test_training_listings_still_skip_what_is_not_a_file(tmp_path):
    """Without unreadable=True (training, eval), odd entries are left out as before."""
    image(tmp_path / "a.png")
    os.mkfifo(tmp_path / "p.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    assert pio.list_images([tmp_path]) == [tmp_path / "a.png"]
    assert pio.list_images([str(tmp_path / "*.png")]) == [tmp_path / "a.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_a_file_without_read_permission(cli, tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    (tmp_path / "a.png").chmod(0)
    try:
        code, out, err = cli(tmp_path, "-o", tmp_path / "out")
    finally:
        (tmp_path / "a.png").chmod(0o644)
    assert code == 1 and err.count("\n") == 1 and "a.png: cannot read (permission denied)" in err
    assert names(tmp_path / "out") == ["b_x4.png"]


def test_a_file_without_read_permission_simulated(cli, tmp_path, monkeypatch):
    """As root reads anything, the refusal the kernel gives anyone else is simulated."""
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    real = Image.open

    def refuse(fp, *args, **kwargs):
        if Path(fp).name == "a.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    code, out, err = cli(tmp_path, "-o", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "a.png: cannot read (permission denied)" in err
    assert names(tmp_path / "out") == ["b_x4.png"]


# ----------------------------------------------------------------------------- case 6: tiles, earlier outputs
@pytest.mark.parametrize("tile", ["1", "15"])
def test_a_tile_below_the_minimum_is_a_usage_error_naming_it(cli, tmp_path, capsys, tile):
    from pcsr.tiling import MIN_TILE
    image(tmp_path / "a.png")
    with pytest.raises(SystemExit) as e:
        cli(tmp_path / "a.png", "-t", tile)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"at least {MIN_TILE}" in err and "0 (never tile)" in err
    assert names(tmp_path) == ["a.png"]


@pytest.mark.parametrize("tile", ["0", "16"])
def test_zero_and_the_minimum_tile_are_accepted(cli, tmp_path, tile):
    image(tmp_path / "a.png", 20, 35)
    code, _, err = cli(tmp_path / "a.png", "-t", tile)
    assert code == 0, err


def test_a_folder_run_skips_its_own_earlier_outputs(cli, tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.jpg", seed=1)
    code, _, err = cli(tmp_path, "--class-map")
    assert code == 0, err
    first = names(tmp_path)
    assert first == ["a.png", "a_x4.png", "a_x4_classes.png", "b.jpg", "b_x4.jpg", "b_x4_classes.png"]
    image(tmp_path / "c_x4.png", seed=2)  # no c.* beside it: an input like any other
    code, out, err = cli(tmp_path, "--overwrite")
    assert code == 0, err
    assert [Path(line.split(" -> ")[0]).name for line in out.splitlines()] == ["a.png", "b.jpg", "c_x4.png"]
    assert err == "pcsr upscale: note: skipped 4 earlier output(s) of pcsr upscale in the input folders; " \
                  "name them as inputs to upscale them again\n"
    assert "a_x4_x4.png" not in names(tmp_path) and "c_x4_x4.png" in names(tmp_path)


def test_earlier_outputs_named_one_by_one_are_upscaled(cli, tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "a_x4.png", seed=1)
    code, out, err = cli(tmp_path / "a_x4.png", str(tmp_path / "a_*.png"))
    assert code == 0 and err == "" and (tmp_path / "a_x4_x4.png").exists()


def test_earlier_outputs_follow_the_suffix(cli, tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "a_big.png", seed=1)
    image(tmp_path / "a_x4.png", seed=2)
    code, out, err = cli(tmp_path, "--suffix", "big", "-o", tmp_path / "out")
    assert code == 0, err
    assert names(tmp_path / "out") == ["a_big.png", "a_x4_big.png"] and "skipped 1 earlier" in err


# ----------------------------------------------------------------------------- case 8: no import cycle
def test_upscale_does_not_import_the_cli():
    """The upscale command imports the shared argument helpers (pcsr.cli.args), not the other
    subcommands, and no torch at import."""
    code = ("import sys\nimport pcsr.cli.upscale\nprint('pcsr.cli.evaluate' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}).stdout
    assert out.split() == ["False", "False"]


def test_a_broken_subcommand_module_fails_loudly(monkeypatch):
    """A subcommand whose module cannot be imported must not vanish from `pcsr --help`."""
    from pcsr import cli as cli_module
    monkeypatch.setitem(sys.modules, "pcsr.cli.bench", None)  # import pcsr.cli.bench now raises ImportError
    monkeypatch.delattr(cli_module, "bench", raising=False)
    with pytest.raises(ImportError):
        cli_module.build_parser()


def test_every_subcommand_is_registered():
    from pcsr.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"convert", "eval", "upscale", "train", "bench"} <= set(sub.choices)


# ----------------------------------------------------------------------------- case 7: eval refuses before it works
@pytest.fixture
def eval_data(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(2):
        image(folder / f"{i}.png", 24, 28, seed=i)
    return folder


@pytest.fixture
def no_sweep(monkeypatch):
    """Fails the test if any image is evaluated."""
    import pcsr.eval

    def sweep(*args, **kwargs):
        raise AssertionError("an image was processed before the refusal")

    monkeypatch.setattr(pcsr.eval, "sweep", sweep)


def test_eval_scale_on_an_original_model_of_another_scale(tmp_path, eval_data, capsys, no_sweep):
    original = tmp_path / "orig.safetensors"
    weights.save(build_model(ModelSpec(backbone="fsrcnn", backbone_args={"d": 8, "s": 4, "m": 1}, scale=4)),
                 original)
    assert main(["eval", "--model", str(original), "--data", str(eval_data), "--scale", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(original) in err and "x4 only" in err and "--scale 2" in err


def test_eval_plot_without_matplotlib(model_file, eval_data, tmp_path, capsys, monkeypatch, no_sweep):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code = main(["eval", "--model", str(model_file), "--data", str(eval_data), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "needs matplotlib" in err and "pcsr[plot]" in err
    assert not (tmp_path / "p.png").exists()
