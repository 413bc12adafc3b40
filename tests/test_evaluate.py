"""`pcsr eval` grown up: metrics through the eval path, the patch protocol's fold, sweeps, patch-level
routing, several models and folders, and the table / CSV / JSON / plot outputs. Tiny random models."""
import csv
import io
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pcsr import weights
from pcsr.api import Model
from pcsr.cli import main
from pcsr.errors import PcsrError
from pcsr.eval import (ORIGINAL, Reference, Runner, Setting, Units, csv_text, evaluate, make_settings,
                       markdown_table, plot_curves, sweep)
from pcsr.eval.protocol import fold_patches, patch_level_classes, patch_starts, tile_means, unfold_patches
from pcsr.metrics import psnr, ssim
from pcsr.models.pcsr import Routing
from test_models import tiny_pcsr

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _folder(root, name, sizes, seed):
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir()
    for i, size in enumerate(sizes):
        base = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size[::-1], Image.BICUBIC)  # some structure, not pure noise
        arr = np.clip(np.asarray(img).astype(int) + rng.integers(-20, 21, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is many times faster than two fighting a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sets(tmp_path):
    return [_folder(tmp_path, "setA", [(48, 44), (40, 56)], 1), _folder(tmp_path, "setB", [(44, 44)], 2)]


@pytest.fixture
def model():
    return Model(tiny_pcsr(), device="cpu", name="tiny.safetensors")


@pytest.fixture
def model_files(tmp_path):
    paths = []
    for name, backbone in (("tinycarn", "carn"), ("tinyfsrcnn", "fsrcnn")):
        p = tmp_path / f"{name}.safetensors"
        weights.save(tiny_pcsr(backbone), p)
        paths.append(str(p))
    return paths


# ----------------------------------------------------------------------------- metrics through the eval path
def test_scores_by_hand_on_constant_images():
    """Gray a vs gray b: PSNR 20 log10(255 / |a - b|) on RGB; on Y the rounded 16 + 219 v / 255;
    SSIM of two constants is (2ab + C1) / (a^2 + b^2 + C1) (no variance, no covariance)."""
    a, b = 100, 110
    hr = torch.full((3, 24, 24), a, dtype=torch.uint8)
    sr = torch.full((3, 24, 24), b, dtype=torch.uint8)
    m = Reference(hr, shave=4, ssim=True).score(sr)
    assert m["psnr_rgb"] == pytest.approx(20 * math.log10(255 / 10), abs=1e-12)
    ya, yb = round(16 + 219 * a / 255), round(16 + 219 * b / 255)
    assert m["psnr_y"] == pytest.approx(20 * math.log10(255 / abs(ya - yb)), abs=1e-12)
    assert m["ssim_rgb"] == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), abs=1e-12)
    assert m["ssim_y"] == pytest.approx((2 * ya * yb + C1) / (ya * ya + yb * yb + C1), abs=1e-12)


def test_scores_match_metrics_module():
    g = torch.Generator().manual_seed(3)
    hr = torch.randint(0, 256, (3, 37, 300), generator=g, dtype=torch.uint8)  # > one 256-column block
    sr = (hr.int() + torch.randint(-30, 31, hr.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    m = Reference(hr, shave=4, ssim=True).score(sr)
    assert m["psnr_rgb"] == pytest.approx(psnr(sr, hr, shave=4), abs=1e-10)
    assert m["psnr_y"] == pytest.approx(psnr(sr, hr, shave=4, y_channel=True), abs=1e-10)
    assert m["ssim_rgb"] == pytest.approx(ssim(sr, hr, shave=4), abs=1e-10)
    assert m["ssim_y"] == pytest.approx(ssim(sr, hr, shave=4, y_channel=True), abs=1e-10)
    assert Reference(hr, shave=4).score(hr)["psnr_y"] == float("inf")


def test_sweep_psnr_is_the_metrics_psnr_of_the_output(model, sets):
    """Through the whole eval path: the figures are those of metrics.psnr / ssim on the 8-bit output."""
    from pcsr.eval import hr_tensor, make_lr, to_uint8
    row = sweep(model, [sets[1]], [Setting("k", 0.0)], ssim=True, per_image=True)[0]
    hr, lr = make_lr(hr_tensor(sets[1] / "im0.png"), 4)
    sr = to_uint8(model.run(lr.unsqueeze(0), Setting("k", 0.0).to_routing()).sr[0])
    ref = to_uint8(hr)
    assert row["psnr_rgb"] == pytest.approx(psnr(sr, ref, shave=4), abs=1e-9)
    assert row["psnr_y"] == pytest.approx(psnr(sr, ref, shave=4, y_channel=True), abs=1e-9)
    assert row["ssim_y"] == pytest.approx(ssim(sr, ref, shave=4, y_channel=True), abs=1e-9)


def test_evaluate_is_the_single_setting_sweep_with_public_keys(model, sets):
    """evaluate() (the trainer's validation, the benchmark scripts) gives the historical keys and
    the figures of a one-setting sweep of that routing."""
    r = Routing(k=1.0, refine=False)
    res = evaluate(model, sets[0], routing=r)
    row = sweep(model, [sets[0]], [Setting.from_routing(r)], per_image=True)[0]
    assert set(res) == {"psnr_rgb", "psnr_y", "gflops", "max_gflops", "heavy_fraction", "images", "seconds",
                        "per_image"}
    assert res["images"] == 2 and [im["name"] for im in res["per_image"]] == ["im0.png", "im1.png"]
    for key in ("psnr_rgb", "psnr_y", "gflops", "max_gflops", "heavy_fraction"):
        assert res[key] == row[key]
    assert res["per_image"][0]["flops"] == row["per_image"][0]["flops"]


# ----------------------------------------------------------------------------- patch protocol
def test_patch_starts_cover_and_end_on_the_edge():
    assert patch_starts(120, 32, 28) == [0, 28, 56, 84, 88]
    assert patch_starts(60, 32, 28) == [0, 28]
    assert patch_starts(20, 32, 28) == [0]
    for n in range(1, 130):
        s = patch_starts(n, min(32, n), 28)
        assert s[-1] + min(32, n) == n and all(b - a <= 28 for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("size", [(13, 17), (8, 8), (5, 23)])
def test_fold_of_an_identity_model_reproduces_the_image(size):
    """Each patch upscaled by nearest neighbour, folded back with overlaps averaged = the whole image upscaled."""
    lr = torch.rand(3, *size)
    patches, boxes = unfold_patches(lr, 8, 6)
    out = fold_patches(F.interpolate(patches, scale_factor=4, mode="nearest"), boxes, (size[0] * 4, size[1] * 4), 4)
    want = F.interpolate(lr[None], scale_factor=4, mode="nearest")[0]
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.equal((out * 255).round(), (want * 255).round())
    units = Units.of(lr, 4, "patch", 8, 6)
    assert torch.allclose(units.fold(F.interpolate(units.lr, scale_factor=4, mode="nearest")), want, atol=1e-6)


def test_fold_averages_overlaps():
    patches = torch.stack([torch.zeros(1, 2, 3), torch.ones(1, 2, 3)])
    out = fold_patches(patches, [(0, 0), (0, 2)], (2, 5))
    assert out[0, 0].tolist() == [0, 0, 0.5, 1, 1]


def test_patch_protocol_counts_flops_per_patch(model, sets):
    net = model.net
    row = sweep(model, [sets[1]], [Setting("budget", 1.0)], protocol="patch", patch=8, step=6, per_image=True)[0]
    lr_side = 44 // 4  # 11 -> starts 0, 3 -> 2 x 2 patches of 8 x 8
    assert row["patches"] == 4 and row["heavy_fraction"] == 1.0
    per_patch = net.count_flops(8, 8, [0, 32 * 32])
    assert row["per_image"][0]["flops"] == 4 * per_patch
    assert row["patch_gflops"] == pytest.approx(per_patch / 1e9)
    assert lr_side == 11 and row["gflops"] == pytest.approx(4 * per_patch / 1e9)


# ----------------------------------------------------------------------------- sweeps
def test_sweep_heavy_fraction_does_not_increase_with_k(model, sets):
    ks = [-3, -1, -0.5, 0, 0.5, 1, 2, 5]
    rows = sweep(model, sets[0], make_settings(ks))
    heavy = [r["heavy_fraction"] for r in rows]
    flops = [r["gflops"] for r in rows]
    assert [r["setting"] for r in rows] == [f"k={k:g}" for k in ks]
    assert all(a >= b for a, b in zip(heavy, heavy[1:])) and heavy[0] > heavy[-1]
    assert all(a >= b for a, b in zip(flops, flops[1:]))


@pytest.mark.parametrize("protocol", ["image", "patch"])
def test_shared_passes_equal_separate_runs(model, sets, protocol):
    """The shared sweep (one set of network passes, class maps composed) = the model run per setting."""
    settings = make_settings([0, 1], adaptive=True, budgets=[0.3], thresholds=[0.5], routings=["pixel", "patch"])
    kw = dict(protocol=protocol, patch=8, step=6, per_image=True)
    fast = sweep(model, sets[0], settings, **kw)
    slow = sweep(model, sets[0], settings, exact=True, **kw)
    for a, b in zip(fast, slow):
        assert a["setting"] == b["setting"]
        assert a["psnr_rgb"] == pytest.approx(b["psnr_rgb"], abs=0.01)
        assert a["heavy_fraction"] == pytest.approx(b["heavy_fraction"], abs=1e-3)
        assert a["gflops"] == pytest.approx(b["gflops"], rel=1e-3)


def test_shared_sweep_matches_model_run_without_refinement(model, sets):
    """No refinement, k = 0: the composed output is the model's to float rounding, pixel by pixel."""
    from pcsr.eval import hr_tensor, make_lr
    _, lr = make_lr(hr_tensor(sets[0] / "im0.png"), 4)
    s = Setting("k", 0.0, refine=False)
    runner = Runner(model, 4)
    units = Units.of(lr, 4, "image", 32, 28)
    out = runner.output(units, s, runner.prepare(units))
    res = model.run(lr[None], s.to_routing())
    assert torch.equal(out.classes, res.classes)
    assert torch.allclose(out.sr, res.sr, atol=1e-5)
    assert out.flops == res.flops[0]


def test_patch_routing_flops_between_all_light_and_all_heavy(model, sets):
    settings = [Setting("budget", 0.0), Setting("budget", 1.0)] + make_settings(
        thresholds=[-1, 0.2, 0.4, 0.5, 0.6, 0.8, 2], adaptive=True, routings=["patch"])
    for protocol in ("image", "patch"):
        rows = sweep(model, sets, settings, protocol=protocol, patch=4, step=3)
        for data in ("setA", "setB"):
            mine = [r for r in rows if r["data"] == data]
            lo, hi = mine[0]["gflops"], mine[1]["gflops"]
            patch_rows = mine[2:]
            assert [r["routing"] for r in patch_rows] == ["patch"] * 8
            assert all(lo - 1e-12 <= r["gflops"] <= hi + 1e-12 for r in patch_rows)
            assert patch_rows[0]["gflops"] == pytest.approx(hi) and patch_rows[0]["heavy_fraction"] == 1
            assert patch_rows[6]["gflops"] == pytest.approx(lo) and patch_rows[6]["heavy_fraction"] == 0
            heavy = [r["heavy_fraction"] for r in patch_rows[:7]]
            assert all(a >= b for a, b in zip(heavy, heavy[1:]))


def test_patch_level_classes_are_constant_per_tile():
    p = torch.zeros(1, 6, 5)
    p[0, :4, :4] = 0.9  # tile (0, 0) heavy; the edge tiles are smaller
    p[0, 4:, 4:] = 0.7
    assert torch.allclose(tile_means(p, 4)[0], torch.tensor([[0.9, 0.0], [0.0, 0.7]], dtype=torch.float64))
    cls = patch_level_classes(p, 4, 0.8)
    assert cls.dtype == torch.uint8 and cls[0, :4, :4].eq(1).all() and cls.sum() == 16
    assert patch_level_classes(p, 4, 0.5).sum() == 16 + 2  # the 2 x 1 corner tile


def test_original_model_gets_one_row(sets):
    from test_models import BACKBONES
    from pcsr.models.pcsr import build_model
    from pcsr.models.specs import ModelSpec
    torch.manual_seed(0)
    net = build_model(ModelSpec(backbone="fsrcnn", backbone_args=BACKBONES["fsrcnn"], scale=4)).eval()
    rows = sweep(Model(net, device="cpu", name="orig"), sets, make_settings([0, 1], adaptive=True))
    assert [(r["data"], r["setting"], r["heavy_fraction"]) for r in rows] == [("setA", "original", None),
                                                                            ("setB", "original", None)]
    assert rows[0]["gflops"] == rows[0]["max_gflops"] > 0


def test_make_settings():
    assert [s.label for s in make_settings()] == ["k=0"]
    assert [s.label for s in make_settings([0, 1, 0], adaptive=True, budgets=[1])] == \
        ["k=0", "k=1", "adaptive", "budget=1"]
    assert [s.label for s in make_settings(routings=["patch"], adaptive=True, refine=False)] == \
        ["patch adaptive no-refine"]
    assert ORIGINAL.label == "original"


# ----------------------------------------------------------------------------- the command
def test_cli_several_models_and_folders_make_one_row_each(model_files, sets, capsys):
    args = ["eval", "--model", *model_files, "--data", *map(str, sets), "-k", "0", "1", "--adaptive"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| model | data | setting | PSNR RGB | PSNR Y |") and len(lines) == 2 + 2 * 2 * 3
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(c[0], c[1], c[2]) for c in cells[:3]] == [("tinycarn", "setA", "k=0"), ("tinycarn", "setA", "k=1"),
                                                     ("tinycarn", "setA", "adaptive")]
    assert {c[0] for c in cells} == {"tinycarn", "tinyfsrcnn"} and {c[1] for c in cells} == {"setA", "setB"}

    assert main([*args[:-4], "-k", "0,1", "--adaptive", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == 12
    assert {"model", "data", "setting", "psnr_rgb", "psnr_y", "gflops", "max_gflops", "heavy_fraction", "images",
            "seconds"} <= set(out[0])


def test_cli_single_result_json_keeps_its_keys(model_files, sets, capsys):
    assert main(["eval", "--model", model_files[0], "--data", str(sets[1]), "--json", "--ssim"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y", "gflops", "max_gflops", "heavy_fraction",
                        "images", "seconds"}
    assert 0 < out["ssim_y"] <= 1


def test_cli_csv_and_per_image(model_files, sets, tmp_path, capsys):
    dest = tmp_path / "out.csv"
    assert main(["eval", "--model", model_files[0], "--data", *map(str, sets), "-k", "0", "--budget", "1",
                 "--csv", str(dest), "--per-image", "--ssim"]) == 0
    out = capsys.readouterr().out
    assert "| im0.png |" in out
    rows = list(csv.DictReader(io.StringIO(dest.read_text())))
    summary = [r for r in rows if not r["image"]]
    assert len(summary) == 4 and len(rows) == 4 + 2 * (2 + 1)
    assert [(r["data"], r["setting"]) for r in summary] == [("setA", "k=0"), ("setA", "budget=1"),
                                                            ("setB", "k=0"), ("setB", "budget=1")]
    assert float(summary[1]["heavy_fraction"]) == 1.0 and float(summary[0]["ssim_y"]) > 0
    assert summary[0]["gflops"] and summary[0]["psnr_y"]


def test_cli_patch_protocol_and_routing(model_files, sets, capsys):
    assert main(["eval", "--model", model_files[0], "--data", str(sets[1]), "--protocol", "patch", "--patch", "4",
                 "--step", "3", "--routing", "pixel", "patch", "-k", "0", "--threshold", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["setting"], r["routing"], r["protocol"]) for r in out] == [("k=0", "pixel", "patch"),
                                                                          ("patch t=0.5", "patch", "patch")]
    assert out[0]["patches"] == 16 and out[0]["patch_gflops"] > 0
    assert main(["eval", "--model", model_files[0], "--data", str(sets[1]), "--threshold", "0.5", "-k", "1",
                 "--routing", "patch"]) == 1
    assert "pixel-level" in capsys.readouterr().err
    assert main(["eval", "--model", model_files[0], "--data", str(sets[1]), "--protocol", "patch",
                 "--step", "40"]) == 1


def test_cli_save_images(model_files, sets, tmp_path, capsys):
    dest = tmp_path / "saved"
    assert main(["eval", "--model", model_files[0], "--data", str(sets[1]), "--budget", "0", "1",
                 "--save-images", str(dest)]) == 0
    light = np.asarray(Image.open(dest / "tinycarn" / "setB" / "budget_0" / "im0_classes.png"))
    heavy = np.asarray(Image.open(dest / "tinycarn" / "setB" / "budget_1" / "im0_classes.png"))
    sr = np.asarray(Image.open(dest / "tinycarn" / "setB" / "budget_1" / "im0.png"))
    assert sr.shape == light.shape == (44, 44, 3)
    sr0 = np.asarray(Image.open(dest / "tinycarn" / "setB" / "budget_0" / "im0.png")).astype(float)
    assert np.abs(light - (0.35 * sr0 + 0.65 * np.array([144, 238, 144]))).max() <= 1  # all light green
    assert np.abs(heavy - (0.35 * sr + 0.65 * np.array([255, 0, 0]))).max() <= 1  # all red


def test_markdown_and_csv_of_rows():
    rows = [{"model": "m", "data": "d", "setting": "k=0", "routing": "pixel", "protocol": "image",
             "psnr_rgb": 30.0, "psnr_y": 31.5, "gflops": 2.0, "max_gflops": 4.0, "heavy_fraction": 0.25,
             "images": 2, "seconds": 1.0}]
    table = markdown_table(rows)
    assert table.splitlines()[2] == "| m | d | k=0 | 30.000 | 31.500 | 2.000 | 50.0 | 25.0 | 2 | 0.50 |"
    lines = csv_text(rows).splitlines()
    assert lines[0].startswith("model,data,protocol,routing,setting,image,psnr_rgb") and len(lines) == 2


def test_plot(model, sets, tmp_path, monkeypatch):
    rows = sweep(model, sets, make_settings([0, 1], adaptive=True, thresholds=[0.3, 0.6], routings=["pixel", "patch"]))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PcsrError, match="pip install 'pcsr\\[plot\\]'"):
        plot_curves(rows, tmp_path / "x.png")
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    plot_curves(rows, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").size[0] > 400


def test_cli_k_lists():
    from pcsr.cli import build_parser
    from pcsr.cli.evaluate import eval_settings
    parse = (lambda *a: eval_settings(build_parser().parse_args(["eval", "--data", "x", *a])))
    assert [s.label for s in parse("-k", "0", "1", "2")] == ["k=0", "k=1", "k=2"]
    assert [s.label for s in parse("-k", "0,1,2", "--adaptive")] == ["k=0", "k=1", "k=2", "adaptive"]
    assert [s.label for s in parse("-k", "-1", "0.5", "--budget", "1")] == ["k=-1", "k=0.5", "budget=1"]
    assert [s.label for s in parse("-k=-1,0")] == ["k=-1", "k=0"]
    assert [s.label for s in parse("--threshold", "0.2,0.4")] == ["patch t=0.2", "patch t=0.4"]
    assert [s.label for s in parse("--routing", "pixel", "patch", "--adaptive")] == ["adaptive", "patch adaptive"]
    with pytest.raises(PcsrError, match="between 0 and 1"):
        parse("--budget", "2")
