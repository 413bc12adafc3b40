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
import torch.nn.functional as F

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


# (slot, input channel, sign): the LR image's positive and negative parts, carried through the body
# on new channels of groups 0 and 1 (slots 13-15 of each group of 16)
BASE_SLOTS = ((13, 0, 1.0), (14, 0, -1.0), (15, 1, 1.0), (29, 1, -1.0), (30, 2, 1.0), (31, 2, -1.0))
BILINEAR_X2 = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.75, 0.25]])  # 3 taps for sub-position 0, 1


def carry_base(state: dict, nf: int, groups: int, eps: float) -> dict:
    """Give the widened CARN the image itself, as the PCSR heads have it (their output is added to a
    bilinear upsampling of the input, so the narrow body never had to carry it): the entry copies
    the input's positive and negative parts onto new channels, every layer of the body passes them
    through unchanged, the sub-pixel tail upsamples them twice by bilinear x2 and the exit sums them
    back, with every other exit weight zero. The network starts as a bilinear-like upsampler whose
    body already holds the detail features; training the tail adds the detail."""
    out = {k: v.clone() for k, v in state.items()}
    gsize = nf // groups
    for s, c, sign in BASE_SLOTS:
        out["backbone.entry.weight"][s] = 0
        out["backbone.entry.weight"][s, c, 1, 1] = sign
        out["backbone.entry.bias"][s] = 0
        for k, v in out.items():
            if not k.startswith(("backbone.blocks", "backbone.fuse")):
                continue
            if ".unit.body." in k:  # the residual branch adds nothing: the unit's ReLU keeps relu(x)
                v[s] = 0
            elif k.endswith(".0.weight"):  # a fusion's 1x1: pick the slot from the newest segment
                v[s] = 0
                v[s, v.shape[1] - nf + s] = 1
            elif k.endswith(".1.weight"):  # its batch norm: the identity in eval mode
                v[s] = (1 + eps) ** 0.5
            elif k.endswith((".1.bias", ".1.running_mean")):
                v[s] = 0
            elif k.endswith(".1.running_var"):
                v[s] = 1
        for conv in ("backbone.upsample.0", "backbone.upsample.3"):  # conv, act, shuffle: x2 each
            w, b = out[conv + ".weight"], out[conv + ".bias"]
            for i in range(2):
                for j in range(2):
                    row = 4 * s + 2 * i + j
                    w[row], b[row] = 0, 0
                    w[row, s % gsize] = torch.outer(BILINEAR_X2[i], BILINEAR_X2[j])
    exit_w = out["backbone.exit.weight"]
    exit_w.zero_()
    out["backbone.exit.bias"].zero_()
    for s, c, sign in BASE_SLOTS:
        exit_w[c, s, 1, 1] = sign
    return out


def widened(old_net, nf: int = 64, seed: int = 0):
    """The original CARN (x scale of `old_net`) that `old_net`'s backbone becomes."""
    old_spec = old_net.spec
    args = dict(old_spec.backbone_args)
    if (nf, args["groups"]) != (64, 4) or args["nf"] % 4 or args["nf"] > 61:
        raise ValueError("the base slots are laid out for 4 groups of 16 channels with 3 or more new in each")
    spec = ModelSpec.from_dict({"backbone": "carn", "backbone_args": {**args, "nf": nf}, "scale": old_spec.scale,
                                "mean": list(old_spec.mean)})
    torch.manual_seed(seed)
    net = build_model(spec)
    state = widen(old_net.state_dict(), net.state_dict(), args["nf"], nf, args["groups"])
    net.load_state_dict(carry_base(state, nf, args["groups"], net.backbone.fuse[0][1].eps))
    return net


def check(old_net, net, x: torch.Tensor) -> dict[str, float]:
    """Largest differences (eval mode) of the kept channels from the narrow body's features, of the
    base channels from the image's parts, and of the output from two bilinear x2 upsamplings of
    the input away from the border (where the tail's zero padding differs)."""
    old_net.eval(), net.eval()
    feats = {}
    hook = net.backbone.fuse[-1].register_forward_hook(lambda mod, i, o: feats.update(f=o))
    with torch.no_grad():
        up = net(x)
        xm = x - old_net.mean
        ref = old_net.backbone(xm)
    hook.remove()
    bb = old_net.spec.backbone_args
    f = feats["f"]
    kept = (f[:, channel_map(bb["nf"], f.shape[1], bb["groups"])] - ref).abs().max().item()
    base = max((f[:, s] - (sign * xm[:, c]).clamp(min=0)).abs().max().item() for s, c, sign in BASE_SLOTS)
    two = F.interpolate(F.interpolate(xm, scale_factor=2, mode="bilinear"), scale_factor=2, mode="bilinear")
    inner = (up - two - old_net.mean)[..., 8:-8, 8:-8].abs().max().item()
    return {"kept": kept, "base": base, "bilinear": inner, "features": ref.abs().max().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a CARN-PCSR training checkpoint (.pt)")
    ap.add_argument("-o", "--out", required=True, help="the original CARN's starting weights (.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ck = read_checkpoint(a.src)
    old_net = build_model(ModelSpec.from_dict(ck["spec"]))
    old_net.load_state_dict(inference_state(ck))
    net = widened(old_net, seed=a.seed)
    err = check(old_net, net, torch.rand(1, 3, 24, 20))
    print(f"max |difference|: kept channels {err['kept']:.2e} (features up to {err['features']:.2f}), "
          f"base channels {err['base']:.2e}, output from bilinear x2 twice {err['bilinear']:.2e}")
    if max(err["kept"], err["base"], err["bilinear"]) > 1e-4:
        sys.exit("widen_carn: the widened network does not start where it should")
    info = {"trained_by": "tools/widen_carn.py", "widened_from": str(a.src),
            "iterations_of_source": int(ck["iteration"]), "data": ck["config"]["data"]["folders"]}
    weights_io.save(net, a.out, info=info)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
