"""`pcsr bench`: wall time of models in one process, after a warm-up, on one image.

Times the same `Model.run` path that `pcsr upscale` and `pcsr eval` use. The timed runs are
interleaved: round r runs every setting once, so that a machine whose speed drifts (shared
or throttled cores: 10-20 % within minutes on the 2-core machines we measure on) slows all
settings alike, and the speed of each against the first is the median of the per-round ratios.
With --profile, a breakdown by stage (backbone, classifier, routing, each upsampler, assembly)
from the `record_function` labels inside the models.
"""
from __future__ import annotations

import json
import statistics
import time

from .args import whole


def add_parser(sub):
    p = sub.add_parser("bench", help="median wall time, megapixels/s and FLOPs of models on one image",
                       description="Runs each model on one image (after a warm-up) and reports the median "
                                   "wall time, output megapixels per second, FLOPs and heavy fraction. "
                                   "Timed runs are interleaved (each round runs every setting once); the "
                                   "'speed' column is each setting's speed against the first one, the "
                                   "median of the per-round ratios: put the baseline first.")
    p.add_argument("--model", action="append", required=True,
                   help="model name or path (repeatable; the first is the baseline of 'speed')")
    p.add_argument("-i", "--input", required=True, help="input image (taken as the LR input)")
    p.add_argument("--from-hr", action="store_true",
                   help="treat the image as HR: bench on its MATLAB-bicubic downscale by the model's scale")
    p.add_argument("--precision", action="append", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision (repeatable; default fp32)")
    p.add_argument("-k", "--k", type=float, default=0.0, help="cost-rule k (default 0)")
    p.add_argument("--reference", action="store_true", help="also time the query-based path (PCSR models)")
    p.add_argument("--repeat", type=whole(1), default=5, help="timed runs per setting (default 5)")
    p.add_argument("--threads", type=whole(1), default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", action="store_true", help="print where the time goes, per stage")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.set_defaults(func=run)


def _lr(path: str, scale: int, from_hr: bool) -> "torch.Tensor":  # noqa: F821
    from ..eval import hr_tensor, make_lr
    img = hr_tensor(path)
    return (make_lr(img, scale)[1] if from_hr else img).unsqueeze(0)


def _call(model, lr, routing, path: str):
    kwargs = {"path": path} if model.is_pcsr else {}
    t0 = time.perf_counter()
    res = model.run(lr, routing, **kwargs)
    if model.device.type == "cuda":
        import torch
        torch.cuda.synchronize()
    return time.perf_counter() - t0, res


def time_settings(settings, routing, repeat: int):
    """Per setting (model, lr, path): (seconds of each timed run, last result). One warm-up run of
    each, then `repeat` rounds that run every setting once, in order."""
    results = [_call(model, lr, routing, path)[1] for model, lr, path in settings]
    times: list[list[float]] = [[] for _ in settings]
    for _ in range(repeat):
        for i, (model, lr, path) in enumerate(settings):
            sec, results[i] = _call(model, lr, routing, path)
            times[i].append(sec)
    return times, results


def stage_profile(model, lr, routing, path: str = "auto") -> dict[str, float]:
    """Seconds per labelled stage of one run."""
    from torch.profiler import ProfilerActivity, profile
    kwargs = {"path": path} if model.is_pcsr else {}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        model.run(lr, routing, **kwargs)
        total = time.perf_counter() - t0
    stages = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()
              if e.key in ("backbone", "classifier", "routing", "assemble") or e.key.startswith("upsampler")}
    stages["total"] = total
    return stages


def machine() -> dict:
    """What the figures were measured on: CPU model, torch's SIMD level, threads, torch version."""
    import platform

    import torch
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def run(args) -> int:
    import torch

    from .. import api
    from ..engines import kernels
    from ..models.pcsr import Routing
    if args.threads:
        torch.set_num_threads(args.threads)
    routing = Routing(k=args.k)
    settings, names = [], []
    for name in args.model:
        for prec in args.precision or ["fp32"]:
            model = api.load(name, device=args.device, precision=prec)
            lr = _lr(args.input, model.scale, args.from_hr)
            for path in ["auto"] + (["query"] if args.reference and model.is_pcsr else []):
                settings.append((model, lr, path))
                names.append(name)
    times, results = time_settings(settings, routing, args.repeat)
    where = machine()
    rows = []
    for name, (model, lr, path), t, res in zip(names, settings, times, results):
        out_px = res.sr.shape[-2] * res.sr.shape[-1]
        sec = statistics.median(t)
        heavy = None if res.counts is None else res.counts[0][-1] / sum(res.counts[0])
        row = {"model": name, "precision": model.precision, "path": "query" if path == "query" else "fast",
               "input": f"{lr.shape[-1]}x{lr.shape[-2]}", "output": f"{res.sr.shape[-1]}x{res.sr.shape[-2]}",
               "seconds": sec, "mpix_per_s": out_px / sec / 1e6,
               "speed_vs_first": statistics.median(a / b for a, b in zip(times[0], t)),
               "times": t, "gflops": res.flops[0] / 1e9, "max_gflops": res.max_flops[0] / 1e9,
               "heavy_fraction": heavy, "threads": torch.get_num_threads(), "device": str(model.device),
               "mlp_kernel": (model.is_pcsr and path != "query"  # the query path runs torch's operations
                              and kernels.mlp_kernel_runs(model.precision, model.device)),
               "machine": where}
        if args.profile:
            row["stages"] = stage_profile(model, lr, routing, path)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(f"{'model':34s} {'prec':5s} {'path':5s} {'output':>10s} {'median s':>9s} {'MP/s':>6s} "
              f"{'speed':>6s} {'GFLOPs':>8s} {'heavy':>6s}")
        for r in rows:
            hf = "" if r["heavy_fraction"] is None else f"{r['heavy_fraction'] * 100:5.1f}%"
            print(f"{r['model'][-34:]:34s} {r['precision']:5s} {r['path']:5s} {r['output']:>10s} "
                  f"{r['seconds']:9.3f} {r['mpix_per_s']:6.2f} {r['speed_vs_first']:5.2f}x {r['gflops']:8.2f} {hf:>6s}")
            if "stages" in r:
                print("    " + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in r["stages"].items()))
        yes = {True: "compiled kernel", False: "torch operations"}
        print(f"MLP heads on the CPU: fp32 {yes[kernels.available()]}, bf16 {yes[kernels.bf16_available()]}"
              + ("" if kernels.available() and kernels.bf16_available() else
                 " (a kernel is not built, not for this CPU (fp32: AVX2+FMA, bf16: AVX512-BF16), or PCSR_KERNEL=0)"))
        print(f"machine: {where['cpu']}, {where['isa']}, {where['threads']} threads, torch {where['torch']}")
    return 0
