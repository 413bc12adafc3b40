"""`pcsr export`: a run's inference weights as a model file (.safetensors with the spec and training facts)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import weights as weights_io
from ..errors import PcsrError
from ..models.pcsr import PCSR, build_model
from .config import TrainConfig, from_dict
from .ema import inference_state
from .trainer import LICENCE_NOTE, read_checkpoint


def export(run_dir: str | Path, out: str | Path, which: str = "best", fold_k: float | None = None) -> dict:
    """Inference weights of a run: its best validated model, or the state of its last checkpoint.

    `fold_k` moves the routing's operating point into the classifier (PCSR.fold_cost_rule): the file's
    k = 0 routes as the run's k = fold_k. The class balance a run learns is set only coarsely by the
    loss's w_avg; folding sets it to a measured FLOPs budget without retraining, and k = 0 stays what
    every caller gets by default."""
    run_dir = Path(run_dir)
    best = run_dir / "best.safetensors"
    if which == "best" and best.exists():
        net, info = weights_io.load(best)
    else:
        ck = read_checkpoint(run_dir / "last.pt")
        cfg = from_dict(TrainConfig, ck["config"])
        net = build_model(cfg.spec())
        net.load_state_dict(inference_state(ck))  # what the run validated
        info = {
            "trained_by": "pcsr train", "run": cfg.name, "phase": cfg.phase if cfg.model.upsamplers else None,
            "iterations": int(ck["iteration"]), "wall_time_hours": round(float(ck["wall_time"]) / 3600, 3),
            "precision": ck.get("precision", cfg.precision),
            "batch_size": cfg.data.batch_size * int(ck.get("world_size", 1)),
            "lr_patch": cfg.data.lr_patch, "validation": json.loads(ck["last_val"]) if ck.get("last_val") else None,
            "best": ck.get("best") or None, "data": list(cfg.data.folders), "licence": LICENCE_NOTE,
        }
    if fold_k is not None and fold_k != 0:
        if not isinstance(net, PCSR):
            raise PcsrError(f"{run_dir}: --fold-k needs a PCSR model; this run trains one without routing")
        net.fold_cost_rule(fold_k, net.spec.scale)
        # the run's validation was measured at the unfolded operating point
        info = {**info, "folded_k": fold_k, "validation": None, "best": None}
    weights_io.save(net.eval(), out, info=info)
    return info
