"""Model files: our .safetensors format, bundled model names, and import of the reference checkpoints.

Our format is one .safetensors file; its metadata holds `pcsr_format` (version), `spec` (the JSON
ModelSpec that rebuilds the network) and optional free-form `info` JSON (training figures, licence).
Nothing is ever unpickled: reference .pth files go through `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .errors import WeightsError
from .models.pcsr import build_model
from .models.specs import ModelSpec

FORMAT_VERSION = "1"
BUNDLED_DIR = Path(__file__).parent / "bundled"  # the models shipped in the package, with their cards
DEFAULT_MODEL = "carn-pcsr-x4"

# The reference code normalises CARN's input by this mean and FSRCNN's not at all.
REFERENCE_MEANS = {"carn": (0.4488, 0.4371, 0.4040), "fsrcnn": (0.0, 0.0, 0.0)}


# ----------------------------------------------------------------------------- our format
def save(model: nn.Module, path: str | os.PathLike, info: dict | None = None) -> None:
    """Write atomically (temporary file, then rename) so that a crash never leaves half a file."""
    path = Path(path)
    meta = {"pcsr_format": FORMAT_VERSION, "spec": json.dumps(model.spec.to_dict())}
    if info:
        meta["info"] = json.dumps(info)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a model file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(path: str | os.PathLike) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable .safetensors file ({_short(e)})") from None


def _load_safetensors(path: Path) -> tuple[nn.Module, dict]:
    meta = read_metadata(path)
    if meta.get("pcsr_format") != FORMAT_VERSION or "spec" not in meta:
        raise WeightsError(f"{path}: not a pcsr model file (no pcsr_format {FORMAT_VERSION} metadata)")
    try:
        spec = ModelSpec.from_dict(json.loads(meta["spec"]))
        info = json.loads(meta.get("info", "{}"))
    except (json.JSONDecodeError, TypeError) as e:
        raise WeightsError(f"{path}: damaged model metadata ({_short(e)})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged weights ({_short(e)})") from None
    model = build_model(spec)
    _load_state(model, state, path)
    return model, info


def _load_state(model: nn.Module, state: dict, path) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit the model ({_short(e)})") from None
    if missing or unexpected:
        raise WeightsError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


# ----------------------------------------------------------------------------- names and paths
def bundled_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.safetensors"))}


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """A bundled model name, or a path to a .safetensors / reference .pth file."""
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    bundled = bundled_models()
    if name in bundled:
        return bundled[name]
    p = Path(name)
    if p.is_file():
        return p
    if p.suffix in (".safetensors", ".pth", ".pt") or os.sep in name:
        raise WeightsError(f"{name}: no such model file")
    if not bundled and name_or_path is None:
        raise WeightsError("no model is bundled with this version yet: give --model PATH "
                           "(a .safetensors file from `pcsr export` or `pcsr convert`)")
    known = ", ".join(bundled) or "none bundled"
    raise WeightsError(f"unknown model {name!r} (bundled: {known}; or give a path to a .safetensors file)")


def load(name_or_path: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """(network in eval mode, info dict) from a bundled name, our format, or a reference .pth."""
    path = resolve(name_or_path)
    if path.suffix in (".pth", ".pt"):
        spec, state = read_reference(path)
        model, info = build_model(spec), {"source": str(path)}
        _load_state(model, state, path)
    else:
        model, info = _load_safetensors(path)
    return model.eval(), info


# ----------------------------------------------------------------------------- reference import
def _carn_key(k: str) -> str:
    k = re.sub(r"^b(\d)\.b1\.", lambda m: f"blocks.{int(m[1]) - 1}.unit.", k)
    k = re.sub(r"^b(\d)\.c(\d)\.", lambda m: f"blocks.{int(m[1]) - 1}.fuse.{int(m[2]) - 1}.", k)
    k = re.sub(r"^c(\d)\.", lambda m: f"fuse.{int(m[1]) - 1}.", k)
    return k.replace("upsample.up.body.", "upsample.")


def _fsrcnn_key(k: str, m: int) -> str:
    k = k.replace("head_conv.", "head.").replace("tail_conv.", "tail.")
    hit = re.match(r"^body_conv\.(\d+)\.(.*)$", k)
    if not hit:
        return k
    i, rest = int(hit[1]), hit[2]
    if i == 0:
        return f"shrink.{rest}"
    if i <= m + 1:  # m convolutions, then their shared PReLU
        return f"mapping.{i - 1}.{rest}"
    return f"expand.{rest}"


def _backbone_from_reference(name: str, args: dict, sd: dict) -> tuple[dict, callable]:
    if name == "carn":
        nf = int(args.get("nf", 64))
        return {"nf": nf, "groups": 4}, _carn_key
    if name == "fsrcnn":
        m = sum(1 for k in sd if re.match(r"^(encoder\.)?body_conv\.\d+\.weight$", k) and sd[k].dim() == 4)
        s = next(v.shape[0] for k, v in sd.items() if k.endswith("body_conv.0.0.weight"))
        d = int(args.get("d", 56))
        return {"d": d, "s": int(s), "m": int(m)}, lambda k: _fsrcnn_key(k, m)
    raise WeightsError(f"reference backbone {name!r} is not supported (carn, fsrcnn)")


def _mlp_hidden(sd: dict, prefix: str) -> tuple[int, ...]:
    ws = sorted(
        ((int(m[1]), v) for k, v in sd.items() if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.weight$", k))),
    )
    return tuple(int(v.shape[0]) for _, v in ws[:-1])


def read_reference(path: str | os.PathLike) -> tuple[ModelSpec, dict]:
    """The authors' `{model: {name, args, sd}}` checkpoint -> (our spec, our state dict)."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
        m = ck["model"]
        name, args, sd = m["name"], m["args"], m["sd"]
    except (KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not a PCSR reference checkpoint (missing {_short(e)})") from None
    except Exception as e:  # torch raises several kinds for a damaged or foreign file
        raise WeightsError(f"{path}: cannot read checkpoint ({_short(e)})") from None
    if name.startswith("pcsr"):
        enc = args["encoder_spec"]
        bb_name = enc["name"]
        enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        bb_args, key = _backbone_from_reference(bb_name, enc["args"], enc_sd)
        state = {"backbone." + key(k): v for k, v in enc_sd.items()}
        for src, dst in (("light_sampler.imnet.", "upsamplers.0."), ("heavy_sampler.imnet.", "upsamplers.1."),
                         ("classifier.imnet.", "classifier.")):
            state.update({dst + k[len(src):]: v for k, v in sd.items() if k.startswith(src)})
        spec = ModelSpec(
            backbone=bb_name, backbone_args=bb_args, scale=4,
            upsamplers=(_mlp_hidden(sd, "light_sampler.imnet."), _mlp_hidden(sd, "heavy_sampler.imnet.")),
            classifier=_mlp_hidden(sd, "classifier.imnet."), mean=REFERENCE_MEANS[bb_name],
        )
        return spec, state
    if name in ("carn", "fsrcnn"):
        scale = int(args.get("scale", args.get("upscale", 4)))
        bb_args, key = _backbone_from_reference(name, args, sd)
        spec = ModelSpec(backbone=name, backbone_args=bb_args, scale=scale, mean=REFERENCE_MEANS[name])
        return spec, {"backbone." + key(k): v for k, v in sd.items()}
    raise WeightsError(f"{path}: unknown reference model {name!r}")


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> ModelSpec:
    spec, state = read_reference(src)
    model = build_model(spec)
    _load_state(model, state, src)
    save(model, dst, info={"converted_from": Path(src).name})
    return spec


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
