"""Our .safetensors format round-trips; damaged or foreign files give WeightsError, not tracebacks."""
import json

import pytest
import torch
from conftest import infer

from pcsr import weights
from pcsr.errors import WeightsError
from test_models import tiny_pcsr


def test_save_load_round_trip(tmp_path):
    net = tiny_pcsr()
    path = tmp_path / "m.safetensors"
    weights.save(net, path, info={"iterations": 3})
    loaded, info = weights.load(path)
    assert info == {"iterations": 3}
    assert loaded.spec == net.spec
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    lr = torch.rand(1, 3, 6, 7)
    assert torch.equal(infer(net, lr).sr, infer(loaded, lr).sr)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_damaged_and_foreign_files(tmp_path):
    good = tmp_path / "m.safetensors"
    weights.save(tiny_pcsr(), good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    for p in (cut, junk):
        with pytest.raises(WeightsError, match=p.name):
            weights.load(p)
    with pytest.raises(WeightsError, match="no such model file"):
        weights.load(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="unknown model"):
        weights.load("no-such-model-name")
    bad_pth = tmp_path / "x.pth"
    torch.save({"something": torch.zeros(1)}, bad_pth)
    with pytest.raises(WeightsError, match="not a PCSR reference checkpoint"):
        weights.load(bad_pth)


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="not a pcsr model file"):
        weights.load(p)
    p2 = tmp_path / "mismatch.safetensors"
    spec = tiny_pcsr().spec.to_dict()
    save_file({"w": torch.zeros(2)}, str(p2), metadata={"pcsr_format": "1", "spec": json.dumps(spec)})
    with pytest.raises(WeightsError, match="do not fit"):
        weights.load(p2)
