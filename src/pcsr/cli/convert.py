"""`pcsr convert`: the authors' released checkpoints (.pth) into our .safetensors format."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("convert", help="import a reference PCSR checkpoint (.pth) into our .safetensors format",
                       description="Import the authors' released checkpoints ({model: {name, args, sd}}) "
                                   "without unpickling arbitrary objects (torch.load weights_only=True).")
    p.add_argument("src", help="reference checkpoint (.pth)")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors file (never the input)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from .. import weights
    spec = weights.convert(args.src, args.output, overwrite=args.overwrite)
    kind = "PCSR" if spec.is_pcsr else "original"
    print(f"{args.src} -> {args.output}  ({kind} {spec.backbone} x{spec.scale})")
    return 0
