"""The bundled default model: present, loadable by name and by default, documented, and used by
`pcsr upscale` when no --model is given."""
import json

import numpy as np
from PIL import Image

import pcsr
from pcsr import weights
from pcsr.cli import main


def test_default_model_is_bundled_with_its_card():
    bundled = weights.bundled_models()
    assert weights.DEFAULT_MODEL == "carn-pcsr-x4"
    assert weights.DEFAULT_MODEL in bundled
    path = bundled[weights.DEFAULT_MODEL]
    assert path.stat().st_size < 2_000_000
    card = path.with_suffix(".md").read_text()
    assert "research" in card and "T91" in card and "| B100 |" in card


def test_default_model_loads_by_name_and_by_default():
    by_default = pcsr.load(device="cpu", precision="fp32")
    by_name = pcsr.load("carn-pcsr-x4", device="cpu", precision="fp32")
    spec = by_default.spec
    assert spec == by_name.spec
    assert spec.backbone == "carn" and spec.backbone_args == {"nf": 52, "groups": 4}
    assert [list(u) for u in spec.upsamplers] == [[20, 20, 20], [74, 74, 74, 74]]
    assert list(spec.classifier) == [10, 10]
    assert by_default.info.get("trained_by") == "pcsr train"


def test_default_model_upscales_without_being_named(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    assert main(["upscale", str(tmp_path / "tiny.png"), "--json"]) == 0
    out = Image.open(tmp_path / "tiny_x4.png")
    assert out.size == (56, 40)
    report = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert report and 0 < report[-1]["flops"] <= report[-1]["max_flops"]


def test_baseline_carn_is_bundled_with_its_card():
    bundled = weights.bundled_models()
    assert "carn-x4" in bundled and bundled["carn-x4"].stat().st_size < 2_000_000
    card = bundled["carn-x4"].with_suffix(".md").read_text()
    assert "research" in card and "T91" in card and "| B100 |" in card
    model = pcsr.load("carn-x4", device="cpu", precision="fp32")
    assert not model.is_pcsr and model.info.get("trained_by") == "pcsr train"
    assert model.spec.backbone == "carn" and model.spec.backbone_args == {"nf": 64, "groups": 4}
    out = model.upscale(np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8))
    assert out.image.size == (36, 24) and out.class_map is None and out.flops == out.max_flops > 0
