"""What reduced precision costs: PSNR and FLOPs against fp32 on a benchmark set (default B100, k = 0).

    python benchmarks/precision.py --data ../shared/data/bench/B100 MODEL [MODEL ...] [--write]

Prints, per model and precision, the PSNR change (RGB and Y) and the FLOPs ratio against fp32. With
--write (our .safetensors files only), records in the file's info which reduced precisions stay
within 0.01 dB and 1 % FLOPs, which `--precision auto` then uses.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pcsr import api, weights
from pcsr.eval import evaluate
from pcsr.models.pcsr import Routing

MAX_DB, MAX_FLOPS = 0.01, 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="../shared/data/bench/B100")
    ap.add_argument("--write", action="store_true", help="record the verdict in each .safetensors file")
    args = ap.parse_args()
    device = api.pick_device("auto")
    precisions = ["bf16"] + (["fp16"] if device.type == "cuda" else [])
    for name in args.models:
        ref = evaluate(api.load(name, device=str(device), precision="fp32"), args.data, routing=Routing(k=0.0))
        ok = []
        for prec in precisions:
            res = evaluate(api.load(name, device=str(device), precision=prec), args.data, routing=Routing(k=0.0))
            d_rgb, d_y = res["psnr_rgb"] - ref["psnr_rgb"], res["psnr_y"] - ref["psnr_y"]
            ratio = res["gflops"] / ref["gflops"]
            good = max(-d_rgb, -d_y) <= MAX_DB and abs(ratio - 1) <= MAX_FLOPS
            ok += [prec] if good else []
            print(json.dumps({"model": name, "precision": prec, "device": str(device), "data": args.data,
                              "psnr_y_fp32": ref["psnr_y"], "d_psnr_rgb": d_rgb, "d_psnr_y": d_y,
                              "flops_ratio": ratio, "within_limits": good}), flush=True)
        if args.write and Path(name).suffix == ".safetensors":
            net, info = weights.load(name)
            weights.save(net, name, info={**info, "reduced_precision_ok": ok})


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
