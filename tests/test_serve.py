"""`pcsr serve` in-process: the app under Starlette's test client, on a tiny random model.

Upload, routing, the figures against `pcsr upscale --json`, the result against the command's file
pixel for pixel, errors with the command's messages, limits, the queue (a second job waits and
both finish), progress events, and the command itself on a real socket."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'pcsr[serve]')")
pytest.importorskip("python_multipart", reason="the serve extra is not installed (pip install 'pcsr[serve]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (pip install 'pcsr[test]')")
import warnings  # noqa: E402

with warnings.catch_warnings():  # Starlette >= 1.x would rather have httpx2; httpx works the same here
    warnings.simplefilter("ignore")  # StarletteDeprecationWarning is no DeprecationWarning
    from starlette.testclient import TestClient  # noqa: E402

import pcsr  # noqa: E402
from pcsr.cli import main  # noqa: E402
from pcsr.serve.app import Limits, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(model_file):
    return pcsr.load(model_file, device="cpu")


def picture(path: Path, h: int = 40, w: int = 52, mode: str = "RGB", seed: int = 0) -> Path:
    """A smooth picture with some edges, so that both classes get pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 5) % 256, (y * 7) % 256, ((x + y) * 3) % 256], -1).astype(np.float64)
    base += rng.normal(0, 20, base.shape)
    arr = np.clip(base, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        arr = np.dstack([arr, (x * 4 % 256).astype(np.uint8)])
    Image.fromarray(arr, mode).save(path)
    return path


def client(model, **limits) -> TestClient:
    return TestClient(create_app({"tiny": model}, Limits(**limits)))


def upload(c: TestClient, path: Path, name: str | None = None):
    return c.post("/api/images", files={"image": (name or path.name, path.read_bytes(), "image/png")})


def cli_json(capsys, model_file, image: Path, out: Path, *flags) -> dict:
    capsys.readouterr()
    code = main(["upscale", str(image), "-o", str(out), "--json", "-q", "--model", str(model_file), *flags])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and len(lines) == 1, lines
    return lines[0]


FIGURES = ("width", "height", "flops", "max_flops", "heavy_fraction")


# ----------------------------------------------------------------------------- the page and its files
def test_page_static_files_and_headers(model):
    with client(model) as c:
        page = c.get("/")
        assert page.status_code == 200 and 'id="k"' in page.text and "/static/app.js" in page.text
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name in ("app.js", "style.css"):
            assert c.get(f"/static/{name}").status_code == 200
        assert c.get("/static/../app.py").status_code == 404
        info = c.get("/api/models").json()
        assert info["default"] == "tiny" and info["models"][0]["classes"] == 2
        assert info["limits"]["max_pixels"] == Limits().max_pixels


# ----------------------------------------------------------------------------- upload and routing
def test_figures_and_result_equal_the_command(model, model_file, tmp_path, capsys):
    image = picture(tmp_path / "pic.png")
    with client(model) as c:
        up = upload(c, image).json()
        assert (up["width"], up["height"], up["mode"], up["bits"]) == (52, 40, "RGB", 8)
        assert upload(c, image, "again.png").json()["id"] == up["id"]  # same bytes: same id, caches kept
        for k in (0.0, 1.5):
            cli = cli_json(capsys, model_file, image, tmp_path / f"cli_{k}.png", "-k", str(k))
            preview = c.post("/api/jobs", json={"image": up["id"], "k": k, "wait": 10}).json()
            assert preview["state"] == "done" and preview["result"]["kind"] == "preview"
            exact = c.post("/api/jobs", json={"image": up["id"], "k": k, "exact": True, "wait": 10}).json()
            assert exact["result"]["kind"] == "exact"
            for fig in FIGURES:  # the live figures and the full run's both equal the command's
                assert preview["result"][fig] == cli[fig] == exact["result"][fig], fig
            file = c.get(exact["result"]["file"] + "?download")
            assert file.headers["content-type"] == "image/png"
            assert 'filename="pic_x4.png"' in file.headers["content-disposition"]
            got = np.asarray(Image.open(io.BytesIO(file.content)))
            assert np.array_equal(got, np.asarray(Image.open(tmp_path / f"cli_{k}.png")))
            view = np.asarray(Image.open(io.BytesIO(c.get(preview["result"]["view"]).content)))
            assert view.shape == got.shape and np.abs(view.astype(int) - got.astype(int)).max() <= 1


def test_k_moves_the_figures_and_reuses_the_cache(model, tmp_path):
    image = picture(tmp_path / "pic.png", 48, 48, seed=3)
    with client(model) as c:
        iid = upload(c, image).json()["id"]
        server = c.app.state.server
        shares, flops = [], []
        for k in (0.0, 5.0, 10.0, 40.0):  # this tiny model's costs differ by little: k moves far
            r = c.post("/api/jobs", json={"image": iid, "k": k, "wait": 10}).json()["result"]
            shares.append(r["heavy_fraction"])
            flops.append(r["flops"])
            assert r["counts"][0] + r["counts"][1] == r["width"] * r["height"]
            assert r["flops"] == model.net.count_flops(48, 48, r["counts"])
        assert len(server.prepared) == 1  # one backbone run for every k
        assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
        assert flops == sorted(flops, reverse=True) and flops[0] > flops[-1]
        budget = c.post("/api/jobs", json={"image": iid, "budget": 0.25, "wait": 10}).json()["result"]
        assert budget["counts"][1] == round(0.25 * 192 * 192)
        adaptive = c.post("/api/jobs", json={"image": iid, "adaptive": True, "refine": False, "wait": 10}).json()
        assert adaptive["state"] == "done" and adaptive["result"]["refine"] is False
        overlay = Image.open(io.BytesIO(c.get(budget["overlay"]).content))
        assert overlay.mode == "P" and overlay.size == (192, 192)


def test_api_upscale_for_scripts(model, model_file, tmp_path, capsys):
    image = picture(tmp_path / "alpha.png", 30, 36, mode="RGBA", seed=5)
    cli = cli_json(capsys, model_file, image, tmp_path / "cli.png", "--budget", "0.3", "--class-map")
    with client(model) as c:
        r = c.post("/api/upscale", files={"image": ("alpha.png", image.read_bytes(), "image/png")},
                   data={"budget": "0.3"})
        assert r.status_code == 200
        body = r.json()
        for fig in FIGURES:
            assert body[fig] == cli[fig], fig
        got = Image.open(io.BytesIO(__import__("base64").b64decode(body["image"])))
        want = Image.open(tmp_path / "cli.png")
        assert got.mode == want.mode == "RGBA" and np.array_equal(np.asarray(got), np.asarray(want))
        cmap = Image.open(io.BytesIO(__import__("base64").b64decode(body["class_map"])))
        assert np.array_equal(np.asarray(cmap), np.asarray(Image.open(tmp_path / "cli_classes.png")))
        raw = c.post("/api/upscale?budget=0.3&format=png&name=alpha.png", content=image.read_bytes(),
                     headers={"Content-Type": "image/png"})
        assert raw.headers["content-type"] == "image/png"
        assert json.loads(raw.headers["x-pcsr-figures"])["flops"] == cli["flops"]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), np.asarray(want))


def test_sixteen_bit_gray_keeps_its_depth(model, model_file, tmp_path, capsys):
    arr = (np.arange(24 * 30, dtype=np.uint32).reshape(24, 30) * 91 % 65536).astype(np.uint16)
    image = tmp_path / "gray16.png"
    Image.fromarray(arr).save(image)
    cli_json(capsys, model_file, image, tmp_path / "cli.png")
    with client(model) as c:
        r = c.post("/api/upscale?format=png", content=image.read_bytes(), headers={"Content-Type": "image/png"})
        got = Image.open(io.BytesIO(r.content))
        want = Image.open(tmp_path / "cli.png")
        assert got.mode == want.mode and np.array_equal(np.asarray(got), np.asarray(want))


# ----------------------------------------------------------------------------- errors and limits
def cli_error(capsys, model_file, path: Path, *flags) -> str:
    capsys.readouterr()
    assert main(["upscale", str(path), "-o", str(path.parent / "out.png"), "-q", "--model", str(model_file),
                 *flags]) == 1
    line = capsys.readouterr().err.strip()
    return line.removeprefix("pcsr upscale: error: ").replace(str(path), path.name)


@pytest.mark.parametrize("data", [b"hello, not a picture", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b""],
                         ids=["not-an-image", "corrupt", "empty"])
def test_bad_uploads_say_what_the_command_says(model, model_file, tmp_path, capsys, data):
    bad = tmp_path / "bad.png"
    bad.write_bytes(data)
    expected = cli_error(capsys, model_file, bad)
    with client(model) as c:
        r = c.post("/api/images", files={"image": ("bad.png", data, "image/png")})
        assert r.status_code == 400 and r.json() == {"error": expected}
        assert "\n" not in expected and os.listdir(c.app.state.server.folder) == []  # nothing left behind


def test_limits(model, model_file, tmp_path, capsys):
    image = picture(tmp_path / "big.png", 40, 50)
    expected = cli_error(capsys, model_file, image, "--max-pixels", "1000")
    with client(model, max_pixels=1000, max_upload_bytes=20_000) as c:
        r = upload(c, image)
        assert r.status_code == 400 and r.json()["error"] == expected
        big = c.post("/api/images", files={"image": ("x.png", b"\0" * 30_000, "image/png")})
        assert big.status_code == 413 and "limit of" in big.json()["error"]
        # a body sent without a length is counted while it is read
        chunked = c.post("/api/images", content=iter([b"\0" * 50_000, b"\0" * 50_000]))
        assert chunked.status_code == 413


def test_bad_requests_are_one_line(model, tmp_path):
    image = picture(tmp_path / "pic.png")
    with client(model) as c:
        iid = upload(c, image).json()["id"]
        cases = [({"image": iid, "k": "x"}, 400, "k must be a number"),
                 ({"image": iid, "adaptive": True, "budget": 0.5}, 400, "give one routing rule"),
                 ({"image": iid, "budget": 2}, 400, "budget must be"),
                 ({"image": iid, "refine": "maybe"}, 400, "refine must be"),
                 ({"image": iid, "model": "../../etc/passwd"}, 400, "unknown model"),
                 ({"image": "nope"}, 404, "upload it again")]
        for spec, status, text in cases:
            r = c.post("/api/jobs", json=spec)
            assert r.status_code == status and text in r.json()["error"], (spec, r.text)
        assert c.post("/api/jobs", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        assert c.get("/api/results/nope/file.png").status_code == 404
        assert c.get("/api/jobs/nope").status_code == 404
        r = c.post("/api/upscale", files={"other": ("a.png", b"x", "image/png")})
        assert r.status_code == 400 and r.json()["error"] == 'the form has no file field "image"'


def test_private_folder_is_removed_and_hosts_are_checked(model, tmp_path):
    app = create_app({"tiny": model}, allowed_hosts=["127.0.0.1"])
    folder = app.state.server.folder
    assert folder.is_dir() and (folder.stat().st_mode & 0o077) == 0
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/api/models").status_code == 200
        assert c.get("/api/models", headers={"Host": "evil.example"}).status_code == 400
    assert not folder.exists()


# ----------------------------------------------------------------------------- the queue
def test_second_job_waits_and_both_finish(model, tmp_path, monkeypatch):
    image = picture(tmp_path / "pic.png")
    gate, active, most = threading.Event(), [0], [0]
    real = type(model).upscale_array

    def held(self, *a, **kw):
        active[0] += 1
        most[0] = max(most[0], active[0])
        try:
            gate.wait(10)
            return real(self, *a, **kw)
        finally:
            active[0] -= 1

    monkeypatch.setattr(type(model), "upscale_array", held)
    with client(model, max_queued=1) as c:
        iid = upload(c, image).json()["id"]
        first = c.post("/api/jobs", json={"image": iid, "k": 0, "exact": True}).json()
        second = c.post("/api/jobs", json={"image": iid, "k": 1, "exact": True}).json()
        assert second["state"] == "queued" and second["position"] == 0
        third = c.post("/api/jobs", json={"image": iid, "k": 2, "exact": True})
        assert third.status_code == 503 and "busy" in third.json()["error"]
        deadline = time.monotonic() + 5
        while c.get(f"/api/jobs/{first['id']}").json()["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get(f"/api/jobs/{second['id']}").json()["state"] == "queued"
        gate.set()
        for job in (first, second):
            events = [json.loads(line[5:]) for line in c.get(f"/api/jobs/{job['id']}/events").text.splitlines()
                      if line.startswith("data:")]
            assert events[-1]["state"] == "done" and events[-1]["result"]["kind"] == "exact"
    assert most[0] == 1


def test_progress_events_count_tiles(model, tmp_path, monkeypatch):
    from pcsr import tiling
    monkeypatch.setattr(tiling, "auto_tile", lambda *args, **kw: tiling.MIN_TILE)
    image = picture(tmp_path / "pic.png", 3 * tiling.MIN_TILE, 2 * tiling.MIN_TILE)
    with client(model) as c:
        iid = upload(c, image).json()["id"]
        job = c.post("/api/jobs", json={"image": iid, "exact": True}).json()
        events = [json.loads(line[5:]) for line in c.get(f"/api/jobs/{job['id']}/events").text.splitlines()
                  if line.startswith("data:")]
    assert events[-1]["state"] == "done", events[-1].get("error")
    assert max(e["total"] for e in events) == 6 and any(0 < e["done"] < 6 for e in events)


# ----------------------------------------------------------------------------- the command
def test_command_serves_on_loopback(model_file):
    proc = subprocess.Popen([sys.executable, "-m", "pcsr", "serve", "--port", "0", "--model", str(model_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pcsr serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[2]
        info = json.load(urllib.request.urlopen(url + "api/models", timeout=20))
        assert info["models"][0]["name"] == Path(model_file).stem  # a file by its stem, never its path
    finally:
        proc.terminate()
        proc.wait(20)


def test_missing_extra_is_one_line(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "pcsr[serve]"' in err


def test_model_keys_hide_paths():
    from pcsr.cli.serve import model_keys
    assert model_keys(["carn-pcsr-x4", "/data/a/net.safetensors", "/data/b/net.safetensors"]) == \
        ["carn-pcsr-x4", "net", "net-2"]


# ----------------------------------------------------------------------------- fall-backs and bounds
def test_preview_falls_back_to_the_core_and_failures_are_one_line(model, tmp_path, monkeypatch):
    from pcsr.serve import work

    def refuse(*args, **kw):
        raise RuntimeError("no fast form for this")

    monkeypatch.setattr(work, "Prepared", refuse)
    image = picture(tmp_path / "pic.png")
    with client(model) as c:
        iid = upload(c, image).json()["id"]
        r = c.post("/api/jobs", json={"image": iid, "k": 0, "wait": 10}).json()
        assert r["state"] == "done" and r["result"]["kind"] == "exact"  # the core ran instead

        def broken(self, *a, **kw):
            raise ValueError("boom\nsecond line")

        monkeypatch.setattr(type(model), "upscale_array", broken)
        r = c.post("/api/jobs", json={"image": iid, "k": 2, "wait": 10}).json()
        assert r["state"] == "failed" and r["error"] == "pic.png: ValueError: boom second line"


def test_store_is_bounded_and_keeps_the_newest():
    from pcsr.serve.store import Store
    s = Store(10, len)
    s.put("a", b"1234")
    s.put("b", b"1234")
    assert s.get("a") == b"1234"  # now the most recently used
    s.put("c", b"1234")           # over 10 bytes: the least recently used goes
    assert "b" not in s and "a" in s and "c" in s and s.nbytes == 8
    s.put("huge", b"x" * 100)     # alone over the budget, still kept: a result must stay fetchable
    assert list(map(s.get, ["a", "c"])) == [None, None] and s.get("huge") is not None
