"""The `pcsr` command: convert and eval on tiny models; errors are one line, never a traceback."""
import json

import numpy as np
import pytest
from PIL import Image

from pcsr import weights
from pcsr.cli import main
from test_models import tiny_pcsr


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.safetensors"
    weights.save(tiny_pcsr(), path)
    return path


@pytest.fixture
def hr_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "hr"
    folder.mkdir()
    for i, size in enumerate([(34, 27), (40, 40)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_eval_json(tiny_model, hr_folder, capsys):
    assert main(["eval", "--model", str(tiny_model), "--data", str(hr_folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"psnr_rgb", "psnr_y", "gflops", "max_gflops", "heavy_fraction", "images", "seconds"}
    assert out["images"] == 2 and 0 <= out["heavy_fraction"] <= 1 and out["gflops"] <= out["max_gflops"]


def test_eval_routing_changes_flops(tiny_model, hr_folder, capsys):
    figures = []
    for extra in (["--budget", "0"], ["--budget", "1"], ["-k", "-25"]):
        assert main(["eval", "--model", str(tiny_model), "--data", str(hr_folder), "--json", *extra]) == 0
        figures.append(json.loads(capsys.readouterr().out))
    assert figures[0]["heavy_fraction"] == 0 and figures[1]["heavy_fraction"] == 1
    assert figures[0]["gflops"] < figures[1]["gflops"] == figures[1]["max_gflops"]


def test_errors_are_one_line(tmp_path, hr_folder, capsys):
    assert main(["eval", "--model", "nope", "--data", str(hr_folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'nope'" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    model = tmp_path / "m.safetensors"
    weights.save(tiny_pcsr(), model)
    assert main(["eval", "--model", str(model), "--data", str(empty)]) == 1
    assert "no images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", str(hr_folder), "-k", "one"])  # (-k 1 --adaptive is a sweep now)
    assert e.value.code == 2


@pytest.mark.parametrize("argv, says", [
    (["bench", "-i", "a.png", "--threads", "-1"], "argument --threads: must be at least 1, got -1"),
    (["bench", "-i", "a.png", "--repeat", "0"], "argument --repeat: must be at least 1, got 0"),
    (["eval", "--data", "d", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["eval", "--data", "d", "--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (["eval", "--data", "d", "--patch", "2.5"], "argument --patch: expected a whole number, got '2.5'"),
    (["train", "--config", "c.yaml", "--stop-after", "-3"], "argument --stop-after: must be at least 1, got -3"),
    (["serve", "--port", "65536"], "argument --port: must be between 0 and 65535, got 65536"),
    (["serve", "--jobs", "0"], "argument --jobs: must be at least 1, got 0"),
    (["upscale", "a.png", "--tile", "-1"], "argument -t/--tile: must be 0 or more, got -1"),
])
def test_bad_whole_numbers_are_usage_errors_naming_the_flag(argv, says, capsys):
    """Every subcommand checks its integer flags the same way, before any work (bench --threads -1
    used to end in a traceback from torch.set_num_threads, train --stop-after -3 in an empty run)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.splitlines()[-1] == f"pcsr {argv[0]}: error: {says}"


def test_convert_reference(official, tmp_path, capsys):
    dst = tmp_path / "carn-pcsr.safetensors"
    assert main(["convert", str(official / "carn-pcsr-phase1.pth"), "-o", str(dst)]) == 0
    net, info = weights.load(dst)
    assert net.spec.upsamplers == ((20, 20, 20), (74, 74, 74, 74)) and net.spec.classifier == (10, 10)
    assert net.spec.backbone_args == {"nf": 52, "groups": 4} and net.spec.mean[0] == 0.4488


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["upscale", "--help"], ["upscale"],
                                  ["upscale", "no-such-image.png"], ["upscale", "a.png", "--budget", "5"],
                                  ["eval", "--help"], ["bench", "--help"], ["train", "--help"]])
def test_help_and_usage_errors_need_no_torch(argv):
    """They answer before torch's import (seconds): nothing on their way imports it (an input
    that does not exist included: no model is loaded for nothing)."""
    import subprocess
    import sys
    code = ("import sys\nfrom pcsr.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
