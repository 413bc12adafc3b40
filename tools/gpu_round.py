"""One training round on a lent GPU machine (issue #18): phase 0 then phase 1 of a PCSR model, each
for a fixed number of minutes, from a pack of crops that travels with the working tree.

A lent machine cannot see ../shared and is held for minutes, so:
  here, once:  python tools/gpu_round.py pack            (writes gpu-pack/, ~30 MiB of WebP crops)
  there:       PYTHONPATH=src python3 tools/gpu_round.py train --pack gpu-pack --out $OUT
               (device tool: carry ["gpu-pack"]; about 8 minutes; see docs/TRAINING.md "GPU rounds")
  here, after: cp the returned checkpoints into checkpoints/, evaluate, bundle if better.

Each phase first runs a short calibration (its own throw-away run) to measure iterations per
second, then a run whose cosine schedule is fitted to the minutes it has, so the learning rate has
decayed when the time is up; `--minutes` of the trainer stops it on time whatever the estimate.
The round starts from the newest phase-0 state (a previous round's, else the CPU runs') and writes
`<model>-gpu-phase0.pt`, `<model>-gpu-phase1.pt` (resumable states), `<model>-gpu.safetensors` and
the two logs to --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOL = ["../shared/data/train/T91", "../shared/data/train/BSD200", "../shared/data/train/SunHays80",
        "../shared/data/train/Photos"]
# model -> (phase-0 config, phase-1 config, phase-0 state of the CPU runs). Phase 0 continues the CPU
# runs' latest recipe (the warm restarts: L2 loss) from the state the bundle's phase 1 was trained on.
MODELS = {
    "carn-pcsr-x4": ("configs/carn-pcsr-x4-photos-restart.yaml", "configs/carn-pcsr-x4-photos-phase1-l2.yaml",
                     "checkpoints/carn-pcsr-x4-photos-restart4-phase0.pt"),
    "fsrcnn-pcsr-x4": ("configs/fsrcnn-pcsr-x4-photos-restart.yaml", "configs/fsrcnn-pcsr-x4-photos-phase1-l2.yaml",
                       "checkpoints/fsrcnn-pcsr-x4-photos-restart3-phase0.pt"),
}


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def rate(run_dir: Path) -> float:
    """Iterations per second over the last logged windows of a calibration run (the first window
    holds the warm-up: cuDNN's algorithm search, the allocator growing)."""
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    speeds = [r["it_per_s"] for r in recs if "it_per_s" in r][1:]
    if not speeds:
        raise SystemExit(f"{run_dir}: the calibration logged no speed")
    return sorted(speeds)[len(speeds) // 2]


def phase(config: str, overrides: list[str], minutes: float, run_dir: Path, calib_its: int, images) -> Path:
    from pcsr.training.config import load_config
    from pcsr.training.trainer import train
    t0 = time.perf_counter()
    calib = Path(tempfile.mkdtemp(prefix="calib-"))
    cfg = load_config(ROOT / config, overrides + ["optim.iterations=100000000", f"log_every={max(1, calib_its // 6)}"])
    train(cfg, calib, stop_after=calib_its, progress=False, images=images)
    speed = rate(calib)
    shutil.rmtree(calib, ignore_errors=True)
    left = minutes * 60 - (time.perf_counter() - t0)
    its = max(100, int(speed * left * 0.95))
    say(config=config, it_per_s=round(speed, 1), iterations=its, calibration_s=round(time.perf_counter() - t0, 1))
    cfg = load_config(ROOT / config, overrides + [f"optim.iterations={its}"])
    t = train(cfg, run_dir, progress=False, minutes=max(0.2, left / 60 * 1.05), images=images)
    say(config=config, done=t.iteration, of=its, wall_s=round(t.wall, 1))
    return run_dir / "last.pt"


def keep_log(run_dir: Path, dest: Path) -> None:
    if (run_dir / "log.jsonl").exists():
        shutil.copy(run_dir / "log.jsonl", dest)


def cmd_train(a) -> int:
    import torch
    from pcsr.training.data import load_images
    from pcsr.training.export import export
    torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN pick its fastest kernels
    cfg0, cfg1, cpu_state = MODELS[a.model]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    init = a.init or next(p for p in (f"checkpoints/{a.model}-gpu-phase0.pt", cpu_state) if (ROOT / p).exists())
    folder = str(Path(a.pack).resolve() / "train")
    common = [f"data.folders=[{folder}]", "data.min_detail=0", "val.folders=[]", "data.queries=0",
              f"data.batch_size={a.batch}", f"data.lr_patch={a.lr_patch}", f"device={a.device}",
              "checkpoint_minutes=1", "log_every=50",
              # a lease can end before the fitted cosine has decayed: the average keeps such a stop
              # as good as a finished run (docs/TRAINING.md, session 14)
              "optim.ema=0.999"]
    say(model=a.model, init=init, device=str(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
        torch=torch.__version__)
    runs = Path(tempfile.mkdtemp(prefix="round-"))
    t0 = time.perf_counter()
    images, _ = load_images([folder])
    say(pack_images=len(images), decode_s=round(time.perf_counter() - t0, 1))
    p0 = phase(cfg0, common + [f"init_from={ROOT / init}", f"optim.lr={a.lr}"], a.minutes0, runs / "p0", a.calib, images)
    shutil.copy(p0, out / f"{a.model}-gpu-phase0.pt")
    keep_log(runs / "p0", out / f"{a.model}-gpu-phase0.log.jsonl")
    p1 = phase(cfg1, common + [f"init_from={p0}"], a.minutes1, runs / "p1", a.calib, images)
    shutil.copy(p1, out / f"{a.model}-gpu-phase1.pt")
    keep_log(runs / "p1", out / f"{a.model}-gpu-phase1.log.jsonl")
    info = export(runs / "p1", out / f"{a.model}-gpu.safetensors", which="last")
    say(exported=f"{a.model}-gpu.safetensors", iterations=info["iterations"])
    return 0


def cmd_pack(a) -> int:
    from pcsr.training.pack import make_pack
    say(**make_pack(a.folders, a.out, budget_mb=a.budget_mb, crop=a.crop, quality=a.quality, seed=a.seed))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="cut the pool's detailed crops into a folder that travels (run here)")
    p.add_argument("--folders", nargs="+", default=POOL)
    p.add_argument("--out", default="gpu-pack")
    p.add_argument("--budget-mb", type=float, default=36.0, help="MiB of crops (the tree travels with <= 64 MiB)")
    p.add_argument("--crop", type=int, default=192, help="crop side in HR pixels (= lr_patch x scale)")
    p.add_argument("--quality", type=int, default=95, help="WebP quality")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pack)
    t = sub.add_parser("train", help="phase 0 then phase 1 for fixed minutes (run on the GPU machine)")
    t.add_argument("--pack", default="gpu-pack")
    t.add_argument("--out", required=True, help="where the states, logs and weights go ($OUT there)")
    t.add_argument("--model", choices=sorted(MODELS), default="carn-pcsr-x4")
    t.add_argument("--init", default=None, help="phase-0 state to start from (default: the newest committed)")
    t.add_argument("--minutes0", type=float, default=5.5)
    t.add_argument("--minutes1", type=float, default=1.5)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr-patch", type=int, default=48, help="LR patch side (the pack's crops are 192 = 48 x 4)")
    t.add_argument("--lr", type=float, default=2e-4, help="phase 0's peak learning rate (cosine to 1e-7)")
    t.add_argument("--calib", type=int, default=300, help="calibration iterations per phase")
    t.add_argument("--device", default="auto")
    t.set_defaults(func=cmd_train)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
