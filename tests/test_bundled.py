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


def test_fast_option_is_bundled_with_its_card_and_credits():
    """fsrcnn-pcsr-x4: the authors' FSRCNN-PCSR geometry, trained by us on the photo pool, so its
    card names every photo's licence in a credits file that ships beside it."""
    bundled = weights.bundled_models()
    assert "fsrcnn-pcsr-x4" in bundled and bundled["fsrcnn-pcsr-x4"].stat().st_size < 500_000
    path = bundled["fsrcnn-pcsr-x4"]
    card = path.with_suffix(".md").read_text()
    assert "research" in card and "Photos" in card and "| B100 | k = 0 |" in card
    credits = path.with_suffix(".credits.tsv").read_text().splitlines()
    assert credits[0].split("\t")[:3] == ["file", "source", "licence"] and len(credits) > 200
    model = pcsr.load("fsrcnn-pcsr-x4")
    assert model.is_pcsr and model.info.get("trained_by") == "pcsr train"
    assert model.spec.backbone == "fsrcnn" and model.spec.backbone_args == {"d": 48, "s": 12, "m": 4}
    assert [list(u) for u in model.spec.upsamplers] == [[10, 10, 10], [58, 58, 58, 58]]
    out = model.upscale(np.random.default_rng(2).integers(0, 256, (7, 5, 3), dtype=np.uint8))
    assert out.image.size == (20, 28) and out.class_map.shape == (28, 20)
    assert 0 < out.flops <= out.max_flops
