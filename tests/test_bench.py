"""`pcsr bench` on tiny models: rows and figures, interleaved rounds, the speed column."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pcsr import api, weights
from pcsr.cli import bench
from pcsr.cli import main
from pcsr.engines import kernels
from pcsr.models.pcsr import OriginalSR
from pcsr.models.specs import ModelSpec
from test_models import tiny_pcsr


def _files(tmp_path):
    pcsr_path, orig_path = tmp_path / "p.safetensors", tmp_path / "o.safetensors"
    weights.save(tiny_pcsr(), pcsr_path)
    weights.save(OriginalSR(ModelSpec("fsrcnn", {"d": 8, "s": 4, "m": 1}, 4)).eval(), orig_path)
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(img)
    return pcsr_path, orig_path, img


def test_bench_json_rows(tmp_path, capsys):
    p, o, img = _files(tmp_path)
    assert main(["bench", "--model", str(o), "--model", str(p), "-i", str(img), "--reference",
                 "--repeat", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["path"]) for r in rows] == [(str(o), "fast"), (str(p), "fast"), (str(p), "query")]
    for r in rows:
        assert r["output"] == "52x36" and len(r["times"]) == 3
        assert r["seconds"] == sorted(r["times"])[1]
        assert abs(r["mpix_per_s"] - 52 * 36 / r["seconds"] / 1e6) < 1e-9
    assert rows[0]["speed_vs_first"] == 1.0 and rows[0]["heavy_fraction"] is None
    ratios = sorted(a / b for a, b in zip(rows[0]["times"], rows[1]["times"]))
    assert rows[1]["speed_vs_first"] == ratios[1]
    assert 0 <= rows[1]["heavy_fraction"] <= 1 and rows[1]["gflops"] <= rows[1]["max_gflops"]
    assert [r["mlp_kernel"] for r in rows] == [False, kernels.available(), False]  # fp32: only PCSR's fast path
    import torch
    assert all(r["machine"]["isa"] == torch.backends.cpu.get_cpu_capability()
               and r["machine"]["threads"] == torch.get_num_threads() and r["machine"]["cpu"] for r in rows)


def test_timed_runs_are_interleaved(tmp_path, monkeypatch):
    calls = []
    real = bench._call

    def spy(model, lr, routing, path):
        calls.append((id(model), path))
        return real(model, lr, routing, path)

    monkeypatch.setattr(bench, "_call", spy)
    p, o, _ = _files(tmp_path)
    a, b = api.load(p), api.load(o)
    lr = torch.rand(1, 3, 6, 7)
    settings = [(a, lr, "auto"), (a, lr, "query"), (b, lr, "auto")]
    times, results = bench.time_settings(settings, None, repeat=2)
    order = [(id(a), "auto"), (id(a), "query"), (id(b), "auto")]
    assert calls == order * 3  # the warm-up round, then two timed rounds in the same order
    assert [len(t) for t in times] == [2, 2, 2] and len(results) == 3


def test_bench_table_and_errors(tmp_path, capsys):
    p, _, img = _files(tmp_path)
    assert main(["bench", "--model", str(p), "-i", str(img), "--repeat", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "prec", "path"] and "speed" in out[0]
    assert "1.00x" in out[1]
    assert out[-2].startswith("MLP heads on the CPU: ")
    assert ("fp32 compiled kernel" in out[-2]) is kernels.available()
    assert ("bf16 compiled kernel" in out[-2]) is kernels.bf16_available()
    m = bench.machine()
    assert out[-1] == f"machine: {m['cpu']}, {m['isa']}, {m['threads']} threads, torch {m['torch']}"
    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", str(p), "-i", str(img), "--repeat", "0"])
    assert e.value.code == 2 and "argument --repeat: must be at least 1, got 0" in capsys.readouterr().err
