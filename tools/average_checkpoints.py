"""Average the inference weights of several training checkpoints of one model (issue #18, session 23).

The ends of successive warm restarts of phase 0 sit in one basin; their mean is a cheap candidate
(stochastic weight averaging over cycles) to start phase 1 from. Each checkpoint contributes what
it stands for (its moving average where it kept one, `training.ema.inference_state`); floating
tensors are averaged in float64, integer buffers come from the last. The batch norms' running
statistics of a mean of weights are not the statistics of the mean network (phase 0 trains with
batch statistics), so `--bn-batches N` recomputes them on N training batches of the last run's data
(its config; train-mode statistics, cumulative mean). What it gave is in docs/TRAINING.md, session 23.
The output is a copy of the last checkpoint with both its raw and its averaged weights replaced, so
`pcsr export DIR --which last` and `init_from` read it like any run's state:

    python tools/average_checkpoints.py -o runs/carn-pcsr-avg12/last.pt \
        checkpoints/carn-pcsr-x4-photos-restart-phase0.pt checkpoints/carn-pcsr-x4-photos-restart2-phase0.pt \
        --bn-batches 400
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pcsr.errors import PcsrError  # noqa: E402
from pcsr.models.pcsr import build_model  # noqa: E402
from pcsr.training.config import TrainConfig, from_dict  # noqa: E402
from pcsr.training.data import PatchSampler, load_images  # noqa: E402
from pcsr.training.ema import inference_state  # noqa: E402
from pcsr.training.trainer import atomic_torch_save, read_checkpoint  # noqa: E402


def recalibrate_bn(state: dict, config: dict, batches: int, seed: int) -> dict:
    """`state` with every batch norm's running mean and variance measured afresh on training patches."""
    cfg = from_dict(TrainConfig, config)
    net = build_model(cfg.spec())
    net.load_state_dict(state)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative mean over the batches
    images, _ = load_images(list(cfg.data.folders))
    sampler = PatchSampler(images, cfg.data, cfg.spec().scale, torch.Generator().manual_seed(seed), "cpu")
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net.backbone(sampler.next().lr - net.mean)  # only the backbone has batch norms
    return {k: v.detach().clone() for k, v in net.eval().state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="training checkpoints (.pt) of one model")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the averaged checkpoint (.pt)")
    ap.add_argument("--bn-batches", type=int, default=0,
                    help="recompute the batch norms' statistics on this many training batches (0: average them)")
    ap.add_argument("--seed", type=int, default=5, help="patch sampling seed for --bn-batches")
    args = ap.parse_args()
    if len(args.checkpoints) < 2:
        sys.exit("average_checkpoints: give at least two checkpoints")
    cks = [read_checkpoint(p) for p in args.checkpoints]
    states = [inference_state(c) for c in cks]
    keys = set(states[-1])
    for p, s in zip(args.checkpoints, states):
        if set(s) != keys or any(s[k].shape != states[-1][k].shape for k in keys):
            sys.exit(f"average_checkpoints: {p} is not the same model as {args.checkpoints[-1]}")
    avg = {}
    for k, v in states[-1].items():
        if v.is_floating_point():
            avg[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            avg[k] = v.clone()
    if args.bn_batches > 0:
        avg = recalibrate_bn(avg, cks[-1]["config"], args.bn_batches, args.seed)
    out = cks[-1]
    out["model"] = {k: v.clone() for k, v in avg.items()}
    if out.get("ema"):
        out["ema"]["weights"] = avg
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out, args.out)
    print(f"wrote {args.out} (mean of {len(cks)})")


if __name__ == "__main__":
    try:
        main()
    except PcsrError as e:  # a missing or damaged checkpoint: one line, no traceback
        sys.exit(f"average_checkpoints: {e}")
