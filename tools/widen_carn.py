"""Start the original CARN (nf = 64) from a CARN-PCSR run's backbone (nf = 52), function-preserving.

Our CARN-PCSR backbone has had far more training than our original CARN (issue #18: all-heavy it is
0.85 dB ahead on Set5), and the two share the backbone's layers but not its width. This widens the
narrow backbone to 64 channels the Net2Net way: each of the 4 channel groups keeps its 13 trained
channels at the head of its 16 and gains 3 new ones, whose weights into the old channels are zero
(so the old channels compute exactly what they did) and whose own incoming weights are the fresh
model's, scaled down (so they can learn once the body is unfrozen). The sub-pixel tail stays as
freshly initialised: train it first with `freeze: [backbone.entry, backbone.blocks, backbone.fuse]`,
then the whole network (configs/carn-x4-widened*.yaml, docs/TRAINING.md "Session 18").

    python tools/widen_carn.py checkpoints/carn-pcsr-x4-photos-l2p48-phase0.pt -o runs/carn-x4-widened-init.safetensors

The check at the end runs both backbones on a random image and compares the kept channels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pcsr import weights as weights_io  # noqa: E402
from pcsr.models.pcsr import build_model  # noqa: E402
from pcsr.models.specs import ModelSpec  # noqa: E402
from pcsr.training.trainer import read_checkpoint  # noqa: E402
from pcsr.training.ema import inference_state  # noqa: E402

NEW_SCALE = 0.1  # incoming weights of the new channels, relative to a fresh initialisation


def channel_map(old: int, new: int, groups: int) -> torch.Tensor:
    """Where each old channel goes: group g's j-th channel to g * (new / groups) + j."""
    go, gn = old // groups, new // groups
    return torch.tensor([(c // go) * gn + c % go for c in range(old)])


def widen(src: dict, dst: dict, old: int, new: int, groups: int) -> dict:
    m = channel_map(old, new, groups)
    fresh = torch.ones(new, dtype=torch.bool)
    fresh[m] = False
    out = {}
    for k, w in dst.items():
        if not k.startswith("backbone.") or k not in src or k.startswith(("backbone.upsample", "backbone.exit")):
            out[k] = w.clone()
            continue
        v = src[k]
        w = w.clone()
        if k.endswith("num_batches_tracked"):
            out[k] = v.clone()
            continue
        if w.dim() == 1:  # bias or batch-norm vector: the new channels keep the fresh values
            w[m] = v
            out[k] = w
            continue
        w[fresh] *= NEW_SCALE
        if v.shape[1] % old:  # grouped convolution (in-group index j -> j) or the 3-channel entry
            rows = torch.zeros_like(w[m])
            rows[:, : v.shape[1]] = v
        else:  # 1x1 over a concatenation of nf-wide segments
            segs = v.shape[1] // old
            cols = torch.cat([s * new + m for s in range(segs)])
            rows = torch.zeros_like(w[m])
            rows[:, cols] = v
        w[m] = rows
        out[k] = w
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a CARN-PCSR training checkpoint (.pt)")
    ap.add_argument("-o", "--out", required=True, help="the original CARN's starting weights (.safetensors)")
    ap.add_argument("--nf", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ck = read_checkpoint(a.src)
    old_spec = ModelSpec.from_dict(ck["spec"])
    old_net = build_model(old_spec)
    old_net.load_state_dict(inference_state(ck))
    args = dict(old_spec.backbone_args)
    old_nf, groups = args["nf"], args["groups"]
    spec = ModelSpec.from_dict({"backbone": "carn", "backbone_args": {**args, "nf": a.nf}, "scale": old_spec.scale,
                                "mean": list(old_spec.mean)})
    torch.manual_seed(a.seed)
    net = build_model(spec)
    net.load_state_dict(widen(old_net.state_dict(), net.state_dict(), old_nf, a.nf, groups))

    # the kept channels of the widened body must reproduce the narrow one's features
    old_net.eval(), net.eval()
    feats = {}
    net.backbone.fuse[-1].register_forward_hook(lambda mod, i, o: feats.update(f=o))
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        net(x)
        ref = old_net.backbone(x - old_net.mean)
    err = (feats["f"][:, channel_map(old_nf, a.nf, groups)] - ref).abs().max().item()
    print(f"kept channels: max |difference| {err:.2e} (features up to {ref.abs().max().item():.2f})")
    if err > 1e-4:
        sys.exit("widen_carn: the widened body does not reproduce the narrow one")
    info = {"trained_by": "tools/widen_carn.py", "widened_from": str(a.src),
            "iterations_of_source": int(ck["iteration"]), "data": ck["config"]["data"]["folders"]}
    weights_io.save(net, a.out, info=info)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
