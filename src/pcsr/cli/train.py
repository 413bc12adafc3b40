"""`pcsr train` and `pcsr export`."""
from __future__ import annotations

from pathlib import Path

from ..errors import PcsrError
from .args import whole


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a PCSR or original SR model from a YAML config",
        description="Train from a YAML config (see configs/). PCSR models train in two phases: phase 0 "
                    "(backbone + heavy upsampler, L1), then phase 1 (classifier + lighter upsamplers on the "
                    "frozen phase-0 model; set init_from). Checkpoints go to RUNDIR/last.pt every "
                    "checkpoint_minutes; --resume continues exactly where the run stopped. Multi-process: "
                    "torchrun --nproc_per_node N -m pcsr train ...")
    p.add_argument("--config", default=None, help="YAML config file (with --resume: default RUNDIR/config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 --set data.batch_size=8 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUNDIR from its last checkpoint")
    p.add_argument("--out", default=None, metavar="RUNDIR", help="run folder (default runs/<name>)")
    p.add_argument("--stop-after", type=whole(1), default=None, metavar="N",
                   help="stop (with a checkpoint) after N iterations of this session")
    p.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="stop (with a checkpoint) after M minutes of this session, e.g. on a GPU lent for a while")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    e = sub.add_parser("export", help="write a training run's weights as a model file",
                       description="Write inference weights (.safetensors with the model spec and training "
                                   "figures) from a run folder: its best validated model, or its last checkpoint.")
    e.add_argument("rundir", help="run folder (holding last.pt / best.safetensors)")
    e.add_argument("-o", "--output", required=True, help="destination .safetensors file")
    e.add_argument("--which", choices=["best", "last"], default="best",
                   help="best validated weights (default; falls back to last) or the last checkpoint")
    e.add_argument("--fold-k", type=float, default=None, metavar="K",
                   help="PCSR models: fold the cost rule at K into the classifier, so that the file's default "
                        "k = 0 routes as k = K does on the run's weights (e.g. to meet a FLOPs budget)")
    e.set_defaults(func=_export)


def _train(args) -> int:
    from ..training.config import load_config
    from ..training.trainer import train
    config = args.config
    if config is None:
        if not (args.resume and args.out):
            raise PcsrError("give --config FILE.yaml (or --resume --out RUNDIR to continue a run)")
        config = Path(args.out) / "config.yaml"
        if not config.exists():
            raise PcsrError(f"{config}: no such file")
    cfg = load_config(config, args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    t = train(cfg, run_dir, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress,
              minutes=args.minutes)
    if t.dist.main:
        print(f"{run_dir}: {t.iteration} iterations; checkpoint {run_dir / 'last.pt'}")
    from ..training.distributed import cleanup
    cleanup(t.dist)
    return 0


def _export(args) -> int:
    from ..training.export import export
    info = export(args.rundir, args.output, which=args.which, fold_k=args.fold_k)
    print(f"{args.rundir} -> {args.output}  ({info.get('iterations')} iterations)")
    return 0
