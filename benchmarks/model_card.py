"""Write the model card (a .md next to the .safetensors) of a model trained with `pcsr train`.

    python benchmarks/model_card.py src/pcsr/bundled/carn-pcsr-x4.safetensors \
        --runs runs/carn-pcsr-x4-phase0 runs/carn-pcsr-x4-phase1 \
        --data ../shared/data/bench/Set5 ../shared/data/bench/Set14 ../shared/data/bench/B100

The figures are measured here, with the same code as `pcsr eval` (fp32, whole images, k = 0 and,
for PCSR models, all pixels on the heavy upsampler); training facts come from the runs' logs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pcsr import api
from pcsr.eval import evaluate
from pcsr.models.pcsr import Routing


def run_facts(run: Path) -> dict:
    """Iterations and wall time of a run (from its log), and the settings that shaped it."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    last = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "wall" in rec:
            last = rec
    data = cfg.get("data", {})
    return {"run": run.name, "phase": cfg.get("phase"), "iterations": last.get("it"),
            "wall_hours": round(last.get("wall", 0.0) / 3600, 2), "precision": cfg.get("precision"),
            "batch": data.get("batch_size"), "lr_patch": data.get("lr_patch"), "queries": data.get("queries"),
            "schedule": cfg.get("optim", {}).get("iterations"), "lr": cfg.get("optim", {}).get("lr"),
            "folders": data.get("folders", [])}


def photo_credits(folders: list[str], weights: Path) -> list[str]:
    """Card lines for a training folder that carries a CREDITS.tsv (file, source, licence, size):
    the licences counted, and the file itself copied beside the weights as <stem>.credits.tsv, so
    every photo's source and licence ships with the model."""
    lines = []
    for folder in folders:
        credits = Path(folder) / "CREDITS.tsv"
        if not credits.is_file():
            continue
        rows = [r.split("\t") for r in credits.read_text().splitlines()[1:] if r.strip()]
        counts: dict[str, int] = {}
        for r in rows:
            lic = r[2] if len(r) > 2 else "unknown"
            counts[lic] = counts.get(lic, 0) + 1
        target = weights.with_suffix(".credits.tsv")
        target.write_text(credits.read_text())
        lines += [f"{Path(folder).name}: {len(rows)} photographs, each credited with its source and licence in "
                  f"`{target.name}` (beside this card). Licences: "
                  + "; ".join(f"{lic} ({n})" for lic, n in sorted(counts.items(), key=lambda kv: -kv[1])) + ".", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--runs", nargs="+", default=[], help="the run folders that made it, in order")
    ap.add_argument("--data", nargs="+", required=True, help="validation folders")
    ap.add_argument("--note", default="", help="a free-text paragraph for the card")
    ap.add_argument("--machine", default="2 CPU cores (AMX), no GPU", help="where it was trained")
    args = ap.parse_args()

    path = Path(args.weights)
    model = api.load(path, device="cpu", precision="fp32")
    spec = model.net.spec
    is_pcsr = bool(getattr(spec, "upsamplers", None))
    settings = {"k = 0": Routing(k=0.0), "all heavy": Routing(budget=1.0)} if is_pcsr else {"": None}
    rows = []
    for folder in args.data:
        for label, routing in settings.items():
            r = evaluate(model, folder, routing=routing)
            rows.append((Path(folder).name, label, r))
            print(Path(folder).name, label, f"{r['psnr_rgb']:.3f} {r['psnr_y']:.3f} {r['gflops']:.3f} / "
                  f"{r.get('max_gflops') or 0:.3f}", flush=True)

    facts = [run_facts(Path(r)) for r in args.runs]
    lines = [f"# {path.stem}", ""]
    lines += [f"`pcsr.load(\"{path.stem}\")`: {spec.backbone} backbone, x{spec.scale}"
              + (f", upsamplers {list(map(list, spec.upsamplers))}, classifier {list(spec.classifier)}." if is_pcsr else "."),
              "Trained from scratch by this project with `pcsr train`; no third-party weights were used.", ""]
    if args.note:
        lines += [args.note, ""]
    if facts:
        lines += ["## Training", "", "| run | phase | iterations | wall time (h) | precision | batch | LR patch | sampled HR pixels |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in facts:
            lines.append(f"| {f['run']} | {f['phase']} | {f['iterations']} (schedule {f['schedule']}) | {f['wall_hours']} | "
                         f"{f['precision']} | {f['batch']} | {f['lr_patch']} | {f['queries'] or 'all'} |")
        lines += ["", f"Machine: {args.machine}. Adam (0.9, 0.99), cosine annealing to 1e-7.", ""]
        folders = list(dict.fromkeys(p for f in facts for p in f["folders"]))
        lines += ["## Data and licence", "",
                  "HR images: " + ", ".join(Path(p).name for p in folders) + ". "
                  "T91, BSD200 (Berkeley Segmentation Dataset: non-commercial research use) and SunHays80 carry "
                  "research-only licences; use these weights for research only.", ""]
        lines += photo_credits(folders, path)
    lines += ["## Validation (fp32, whole images, MATLAB bicubic LR, border of scale shaved)", "",
              "| set | routing | PSNR RGB | PSNR Y | GFLOPs | of all-heavy GFLOPs | heavy pixels |",
              "|---|---|---|---|---|---|---|"]
    for name, label, r in rows:
        hf = f"{r['heavy_fraction']:.3f}" if r.get("heavy_fraction") is not None else "-"
        share = f"{r['gflops'] / r['max_gflops']:.3f}" if r.get("max_gflops") else "-"
        lines.append(f"| {name} | {label or 'original'} | {r['psnr_rgb']:.2f} | {r['psnr_y']:.2f} | {r['gflops']:.2f} | "
                     f"{share} | {hf} |")
    lines += ["", f"Made by `python benchmarks/model_card.py {args.weights} ...` (see the script's docstring)."]
    card = path.with_suffix(".md")
    card.write_text("\n".join(lines) + "\n")
    print(f"wrote {card}")


if __name__ == "__main__":
    main()
