"""Training: tiny models on tiny images, a few iterations each."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from pcsr import weights
from pcsr.errors import PcsrError
from pcsr.cli import main
from pcsr.training.config import ConfigError, TrainConfig, from_dict, load_config
from pcsr.training.trainer import read_checkpoint, train

TINY_MODEL = {"backbone": "carn", "backbone_args": {"nf": 8, "groups": 4}, "scale": 4,
              "upsamplers": [[4], [8]], "classifier": [4], "mean": [0.45, 0.44, 0.40]}


def _image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (3 + c) + c) * np.cos(yy / (4 + c)) for c in range(3)], -1)
    img = np.clip((base * 0.4 + 0.5 + rng.normal(0, 0.05, base.shape)) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for i in range(3):
        _image(root / "train" / f"t{i}.png", 36 + 4 * i, 40, i)
    _image(root / "train" / "small.png", 12, 12, 9)  # smaller than a crop: left out
    _image(root / "val" / "v0.png", 24, 28, 10)
    return root


def tiny(data, **over) -> dict:
    cfg = {"seed": 1, "model": TINY_MODEL,
           "data": {"folders": [str(data / "train")], "batch_size": 2, "lr_patch": 4},
           "optim": {"lr": 1e-3, "iterations": 4},
           "val": {"folders": [str(data / "val")], "every": 0, "at_end": True},
           "log_every": 1, "precision": "bf16"}
    for k, v in over.items():
        node = cfg
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return cfg


def make(data, **over) -> TrainConfig:
    return load_config(raw=tiny(data, **over))


def _state(path):
    return read_checkpoint(path)


def test_config_errors_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {backbone: carn}\ndata: {folders: [x], batchsize: 4}\n")
    with pytest.raises(ConfigError, match="data.batchsize"):
        load_config(f)
    f.write_text("model: {backbone: carn}\ndata: {folders: [x]}\n")
    cfg = load_config(f, ["optim.lr=1e-3", "data.batch_size=8", "val.k=[0, 5]", "init_from=null"])
    assert cfg.optim.lr == 1e-3 and cfg.data.batch_size == 8 and cfg.val.k == [0.0, 5.0] and cfg.init_from is None
    assert cfg.name == "c"
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(f, ["data.batch_size=many"])
    with pytest.raises(ConfigError, match="nosuch"):
        load_config(f, ["optim.nosuch=1"])
    assert main(["train", "--config", str(f), "--set", "bogus=1"]) == 1


def test_phase0_then_phase1_freezes_backbone_and_heavy(data, tmp_path):
    run0 = tmp_path / "p0"
    t0 = train(make(data), run0, progress=False)
    log = [json.loads(line) for line in (run0 / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any("val" in r for r in log) and (run0 / "best.safetensors").exists()
    assert t0.sampler.skipped == 1
    before = _state(run0 / "last.pt")["model"]

    run1 = tmp_path / "p1"
    t1 = train(make(data, phase=1, init_from=str(run0)), run1, progress=False)
    after = {k: v.cpu() for k, v in t1.net.state_dict().items()}
    frozen = [k for k in before if k.startswith(("backbone.", "upsamplers.1."))]
    assert any("running_mean" in k for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    trained = [k for k in before if k.startswith(("classifier.", "upsamplers.0."))]
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    rec = [json.loads(line) for line in (run1 / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["l_avg"]) for r in rec if "loss" in r)
    val = next(r["val"] for r in rec if "val" in r)["val"]
    assert set(val) == {"k=0", "all-heavy"} and val["all-heavy"]["heavy_fraction"] == 1.0


def test_resume_is_exact(data, tmp_path):
    whole = train(make(data), tmp_path / "a", progress=False)
    with pytest.raises(Exception, match="--resume"):
        train(make(data), tmp_path / "a", progress=False)
    first = train(make(data), tmp_path / "b", stop_after=2, progress=False)
    assert first.iteration == 2 and _state(tmp_path / "b" / "last.pt")["iteration"] == 2
    resumed = train(make(data), tmp_path / "b", resume=True, progress=False)
    assert resumed.iteration == 4
    a, b = _state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert torch.equal(a["rng"]["data"][0], b["rng"]["data"][0])
    its = [json.loads(line)["it"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert its == sorted(its)
    del whole


def test_loss_kind_l2_is_the_mean_squared_error(data, tmp_path):
    from pcsr.training.trainer import Trainer
    for phase in (0, 1):
        t = Trainer(make(data, phase=phase, loss__kind="l2", precision="fp32"), tmp_path / f"l2-{phase}")
        b = t.sampler.next()
        loss, parts = t.loss(b)
        with torch.no_grad():
            if phase == 0:
                pred, _ = t.net(b.lr, scale=4, heavy_only=True)
            else:
                pred, _ = t.net(b.lr, scale=4)
        mse = float(((pred.float() - b.hr) ** 2).mean())
        assert parts["l2"] == pytest.approx(mse, rel=1e-5) and "l1" not in parts
        if phase == 0:
            assert float(loss) == pytest.approx(mse, rel=1e-5)
    with pytest.raises(ConfigError, match="loss.kind"):
        make(data, loss__kind="huber")


def test_ema_follows_its_definition():
    """The average after each update, by hand: decay d_t = min(decay, (1 + t) / (10 + t)),
    avg <- d_t * avg + (1 - d_t) * w; integer buffers are copied, not averaged."""
    from pcsr.training.ema import Ema
    net = torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema = Ema(net, decay=0.5)
    want = 2.0
    for t, w in enumerate([4.0, 0.0, 8.0], start=1):
        with torch.no_grad():
            net.weight.fill_(w)
        net.num_batches_tracked.fill_(10 * t)
        ema.update(net)
        d = min(0.5, (1 + t) / (10 + t))
        want = d * want + (1 - d) * w
        assert ema.shadow["weight"].item() == pytest.approx(want, rel=1e-6)
        assert ema.shadow["num_batches_tracked"].item() == 10 * t
    with ema.swapped_in(net):
        assert net.weight.item() == pytest.approx(want, rel=1e-6)
    assert net.weight.item() == 8.0  # the raw weights are back


def test_ema_run_resumes_exactly_and_exports_the_average(data, tmp_path):
    cfg = make(data, optim__ema=0.9, val__folders=[str(data / "val")])
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", stop_after=3, progress=False)
    train(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = _state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    for k, v in a["ema"]["weights"].items():
        assert torch.equal(v, b["ema"]["weights"][k]), k
    moved = [k for k, v in a["ema"]["weights"].items() if v.is_floating_point() and not torch.equal(v, a["model"][k])]
    assert moved  # the average lags the raw weights
    # validation reports both; exports and best.safetensors carry the average
    val = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if '"val"' in x][-1]
    assert set(val["val"]["val"]) == {"all-heavy", "all-heavy raw"}
    assert main(["export", str(tmp_path / "a"), "-o", str(tmp_path / "e.safetensors"), "--which", "last"]) == 0
    for path in (tmp_path / "e.safetensors", tmp_path / "a" / "best.safetensors"):
        sd = weights.load(path)[0].state_dict()
        assert all(torch.equal(sd[k], a["ema"]["weights"][k]) for k in moved), path
    with pytest.raises(ConfigError, match="optim.ema"):
        make(data, optim__ema=1.0)


def test_a_time_limit_stops_with_a_checkpoint_that_resumes(data, tmp_path):
    # the shortest limit ends the session after its first iteration (the clock is checked after each)
    cfg = make(data, optim__iterations=5, val__folders=[])
    t = train(cfg, tmp_path / "t", minutes=1e-9, progress=False)
    assert t.iteration == 1 and _state(tmp_path / "t" / "last.pt")["iteration"] == 1
    # a caller that decoded the pool already (tools/gpu_round.py) hands it over: same batches
    from pcsr.training.data import load_images
    images, _ = load_images(cfg.data.folders)
    again = train(cfg, tmp_path / "t2", minutes=1e-9, progress=False, images=images)
    first, second = _state(tmp_path / "t" / "last.pt"), _state(tmp_path / "t2" / "last.pt")
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert all(any(s is i for i in images) for s in again.sampler.images)
    assert train(cfg, tmp_path / "t", resume=True, minutes=60, progress=False).iteration == 5
    with pytest.raises(Exception, match="minutes"):
        train(cfg, tmp_path / "u", minutes=0, progress=False)
    assert main(["train", "--config", str(tmp_path / "t" / "config.yaml"), "--out", str(tmp_path / "v"),
                 "--minutes", "-1", "--no-progress"]) == 1


def test_original_model_and_queries(data, tmp_path):
    orig = dict(TINY_MODEL, upsamplers=[], classifier=[])
    t = train(make(data, model=orig, precision="fp32"), tmp_path / "o", progress=False)
    assert t.iteration == 4
    cfg = make(data, data__scale_range=[1.0, 3.5], data__queries=16, optim__iterations=3, val__folders=[])
    t = train(cfg, tmp_path / "q", progress=False)
    assert t.iteration == 3
    # the exported model says which scales it was trained for: `-s 2.5` then runs it natively
    assert main(["export", str(tmp_path / "q"), "-o", str(tmp_path / "q.safetensors"), "--which", "last"]) == 0
    net, _ = weights.load(tmp_path / "q.safetensors")
    assert net.spec.scale_range == (1.0, 3.5) and net.spec.native(2.5) and not net.spec.native(3.7)
    with pytest.raises(ConfigError):
        make(data, model=orig, data__queries=16)


def test_cli_train_and_export(data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(tiny(data, optim__iterations=2)))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert (run / "config.yaml").exists()
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), "-o", str(out), "--which", "last"]) == 0
    net, info = weights.load(out)
    assert info["iterations"] == 2 and "licence" in info and net.spec.upsamplers == ((4,), (8,))
    assert main(["export", str(run), "-o", str(tmp_path / "b.safetensors")]) == 0
    assert main(["train", "--resume", "--out", str(run), "--set", "optim.iterations=3", "--no-progress"]) == 0
    assert _state(run / "last.pt")["iteration"] == 3


def test_export_fold_k_sets_the_default_operating_point(data, tmp_path, capsys):
    """`pcsr export --fold-k K`: the file's default routing (k = 0) is the run's k = K, seen through the
    public API as a user runs it; an original model has no routing to fold (one-line error)."""
    import pcsr
    t = train(make(data, optim__iterations=2, val__folders=[]), tmp_path / "r", progress=False)
    assert t.iteration == 2
    plain, folded = tmp_path / "plain.safetensors", tmp_path / "folded.safetensors"
    assert main(["export", str(tmp_path / "r"), "-o", str(plain), "--which", "last"]) == 0
    assert main(["export", str(tmp_path / "r"), "-o", str(folded), "--which", "last", "--fold-k", "2"]) == 0
    assert weights.load(folded)[1]["folded_k"] == 2
    img = np.asarray(Image.open(data / "val" / "v0.png"))
    base = pcsr.load(str(plain)).upscale(img)
    want = pcsr.load(str(plain)).upscale(img, k=2)
    got = pcsr.load(str(folded)).upscale(img)
    assert base.heavy_fraction > want.heavy_fraction > 0  # k = 2 moves pixels on this model
    agree = (got.class_map == want.class_map).mean()
    assert agree > 0.999  # the bias is rounded once more than the logit shift: a rare near-tie may flip
    assert abs(got.flops - want.flops) <= 0.001 * want.max_flops

    orig = dict(TINY_MODEL, upsamplers=[], classifier=[])
    train(make(data, model=orig, precision="fp32", optim__iterations=1, val__folders=[]), tmp_path / "o",
          progress=False)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "o"), "-o", str(tmp_path / "o.safetensors"), "--fold-k", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--fold-k needs a PCSR model" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, port, cfg, run_dir, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from pcsr.training.distributed import cleanup
    t = train(from_dict(TrainConfig, cfg), run_dir, progress=False)
    torch.save({k: v.cpu() for k, v in t.net.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup(t.dist)


def test_ddp_two_processes_keep_identical_weights(data, tmp_path):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny(data, optim__iterations=3, val__folders=[])
    mp.spawn(_ddp_worker, args=(port, cfg, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = train(make(data, optim__iterations=1, val__folders=[]), tmp_path / "single", stop_after=0,
                 progress=False).net.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], init[k]) for k in a)
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["iteration"] == 3 and ck["world_size"] == 2
    assert not torch.equal(ck["rng"]["data"][0], ck["rng"]["data"][1])


def test_cosine_schedule_and_average_loss():
    from pcsr.training.losses import average_loss
    from pcsr.training.trainer import CosineSchedule
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = CosineSchedule(opt, 2e-4, 1e-7, 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    for _ in range(10):
        s.step()
    assert s.get_last_lr()[0] == pytest.approx(1e-7)
    even = torch.full((2, 2, 3, 3), 0.5)
    assert float(average_loss(even, 1)) == 0.0
    heavy = torch.stack([torch.zeros(2, 3, 3), torch.ones(2, 3, 3)], 1)
    assert float(average_loss(heavy, 1)) == pytest.approx(1.0)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_uses_bf16_only_where_it_is_native(monkeypatch, capsys, native):
    from pcsr import device
    from pcsr.training import trainer as tr
    monkeypatch.setattr(device, "fast_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert tr.training_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert tr.training_precision("fp32", cpu) == "fp32"
    assert tr.training_precision("bf16", cpu) == "bf16"  # asked for: kept, with a warning where it is emulated
    assert ("emulated" in capsys.readouterr().err) is not native


def test_run_records_the_precision_it_resolved(data, tmp_path):
    from pcsr.device import fast_bf16
    t = train(make(data, precision="auto", optim__iterations=1, val__folders=[]), tmp_path / "p", progress=False)
    want = "bf16" if fast_bf16(torch.device("cpu")) else "fp32"
    assert t.precision == want
    assert read_checkpoint(tmp_path / "p" / "last.pt")["precision"] == want


def test_a_pack_holds_detailed_crops_within_its_budget(tmp_path):
    from pcsr.training.pack import make_pack
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    # left half flat grey, right half noise: crops must come from the detailed side
    for i in range(3):
        img = np.full((80, 120, 3), 128, np.uint8)
        img[:, 60:] = rng.integers(0, 256, (80, 60, 3))
        Image.fromarray(img).save(src / f"p{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src / "tiny.png")  # below a crop: unused
    (src / "CREDITS.tsv").write_text("file\tlicence\np0.png\tCC0\np1.png\tCC-BY\np2.png\tCC0\nother.png\tx\n")
    info = make_pack([str(src)], tmp_path / "pack", budget_mb=0.05, crop=24, min_detail=20,
                     detail_tries=50, seed=1, progress=False)
    files = sorted((tmp_path / "pack" / "train").iterdir())
    assert len(files) == info["crops"] > 0
    assert sum(f.stat().st_size for f in files) == info["bytes"] <= 0.05 * 2**20
    rows = (tmp_path / "pack" / "SOURCES.tsv").read_text().splitlines()
    assert rows[0] == "crop\tsource\ty\tx" and sorted(r.split("\t")[0] for r in rows[1:]) == [f.name for f in files]
    for r in rows[1:]:
        _, source, y, x = r.split("\t")
        assert int(x) >= 60 - 23 and "tiny" not in source   # overlaps the noise side
    for f in files:
        with Image.open(f) as im:
            assert im.size == (24, 24) and im.format == "WEBP"
    credits = (tmp_path / "pack" / "CREDITS.tsv").read_text().splitlines()
    assert credits[0] == "file\tlicence" and "other.png" not in "".join(credits) and len(credits) >= 2
    again = make_pack([str(src)], tmp_path / "pack2", budget_mb=0.05, crop=24, min_detail=20,
                      detail_tries=50, seed=1, progress=False)
    assert again == info
    with pytest.raises(Exception, match="not empty"):
        make_pack([str(src)], tmp_path / "pack", budget_mb=0.05, crop=24, progress=False)


def test_freeze_holds_the_named_parts_and_their_statistics(data, tmp_path):
    orig = dict(TINY_MODEL, upsamplers=[], classifier=[])
    first = train(make(data, model=orig, precision="fp32"), tmp_path / "a", progress=False)
    before = {k: v.detach().clone() for k, v in first.net.state_dict().items()}
    cfg = make(data, model=orig, precision="fp32", init_from=str(tmp_path / "a"),
               freeze=["backbone.entry", "backbone.blocks", "backbone.fuse"])
    after = train(cfg, tmp_path / "b", progress=False).net.state_dict()
    body = [k for k in before if k.startswith(("backbone.entry", "backbone.blocks", "backbone.fuse"))]
    assert any("running_var" in k for k in body)
    assert all(torch.equal(before[k], after[k]) for k in body)
    tail = [k for k in before if k.startswith(("backbone.upsample", "backbone.exit"))]
    assert tail and all(not torch.equal(before[k], after[k]) for k in tail if k.endswith("weight"))
    with pytest.raises(PcsrError, match="freeze"):
        train(make(data, model=orig, freeze=["backbone.blockz"]), tmp_path / "c", progress=False)


def test_hold_keeps_the_named_output_channels_and_trains_the_rest(data, tmp_path):
    orig = dict(TINY_MODEL, upsamplers=[], classifier=[])
    first = train(make(data, model=orig, precision="fp32"), tmp_path / "a", progress=False)
    before = {k: v.detach().clone() for k, v in first.net.state_dict().items()}
    cfg = make(data, model=orig, precision="fp32", init_from=str(tmp_path / "a"),
               hold={"parts": ["backbone.entry", "backbone.blocks.0"], "channels": [1, 6]})
    after = train(cfg, tmp_path / "b", progress=False).net.state_dict()
    held = [k for k in before if k.startswith(("backbone.entry.", "backbone.blocks.0."))
            and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert any(k.endswith("fuse.2.0.weight") for k in held)
    for k in held:
        assert torch.equal(before[k][[1, 6]], after[k][[1, 6]]), k
    assert not torch.equal(before["backbone.entry.weight"][[0, 2]], after["backbone.entry.weight"][[0, 2]])
    assert not torch.equal(before["backbone.blocks.1.unit.body.4.weight"][[1, 6]],
                           after["backbone.blocks.1.unit.body.4.weight"][[1, 6]])
    for hold, msg in [({"parts": ["backbone.entry"], "channels": [8]}, "output channels"),
                      ({"parts": ["backbone.entyr"], "channels": [1]}, "no such part"),
                      ({"parts": ["backbone.entry"]}, "both")]:
        with pytest.raises(PcsrError, match=msg):
            train(make(data, model=orig, hold=hold), tmp_path / "c", progress=False)
