"""Model files: our .safetensors format, bundled model names, and import of the reference checkpoints.

Our format is one .safetensors file; its metadata holds `pcsr_format` (version), `spec` (the JSON
ModelSpec that rebuilds the network) and optional free-form `info` JSON (training figures, licence).
Nothing is ever unpickled: reference .pth files go through `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from .errors import WeightsError
from .io import atomic_write
from .models.pcsr import build_model
from .models.specs import ModelSpec

FORMAT_VERSION = "1"
BUNDLED_DIR = Path(__file__).parent / "bundled"  # the models shipped in the package, with their cards
DEFAULT_MODEL = "carn-pcsr-x4"

# The reference code normalises CARN's input by this mean and FSRCNN's not at all.
REFERENCE_MEANS = {"carn": (0.4488, 0.4371, 0.4040), "fsrcnn": (0.0, 0.0, 0.0)}


# ----------------------------------------------------------------------------- our format
def save(model: nn.Module, path: str | os.PathLike, info: dict | None = None, *, overwrite: bool = True) -> None:
    """Write atomically (temporary file, then publish) so that a crash never leaves half a file; with
    overwrite=False an existing file, even one published meanwhile by another process, is kept
    (WeightsError)."""
    path = Path(path)
    meta = {"pcsr_format": FORMAT_VERSION, "spec": json.dumps(model.spec.to_dict())}
    if info:
        meta["info"] = json.dumps(info)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save_bytes(tensors, metadata=meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"{path.parent}{os.sep}: cannot create the folder ({e.strerror or _short(e)})") from None
    atomic_write(path, lambda f: f.write(data), overwrite=overwrite, error=WeightsError)


# A safetensors file starts with an 8-byte length and that many bytes of JSON header (tensor names,
# dtypes, shapes, offsets, and our metadata). Ours take ~13 KB; a header of megabytes is not a model
# of ours, and reading one would only spend memory. JSON nesting is bounded for the same reason (and
# because Python's parser would hit its recursion limit on a deep one).
MAX_HEADER_BYTES = 4 << 20
MAX_JSON_DEPTH = 32
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def json_depth(text: str) -> int:
    """Deepest nesting of objects and arrays in a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _json(text, path, what: str):
    if not isinstance(text, str):
        raise WeightsError(f"{path}: damaged model metadata ({what} is not text)")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise WeightsError(f"{path}: damaged model metadata ({what} nested deeper than {MAX_JSON_DEPTH})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: damaged model metadata ({what}: {_short(e)})") from None


def read_header(path: str | os.PathLike) -> dict:
    """The safetensors header (tensor entries and `__metadata__`), read and checked by hand so that
    a hostile length or nesting is refused before any of it is parsed."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path}: not a readable .safetensors file (too short)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise WeightsError(f"{path}: not a pcsr model file (a {n}-byte header; "
                                   f"at most {MAX_HEADER_BYTES} are accepted)")
            if 8 + n > size:
                raise WeightsError(f"{path}: not a readable .safetensors file (truncated header)")
            raw = f.read(n)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or _short(e)})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WeightsError(f"{path}: not a readable .safetensors file (header is not text)") from None
    header = _json(text, path, "header")
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a readable .safetensors file (header is not a JSON object)")
    data_bytes = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_DTYPES
              and isinstance(entry.get("shape"), list) and all(_is_count(d) for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(_is_count(o) for o in entry["data_offsets"])
              and entry["data_offsets"][0] <= entry["data_offsets"][1] <= data_bytes)
        if not ok:
            raise WeightsError(f"{path}: not a readable .safetensors file (bad entry for {str(name)[:60]!r})")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsError(f"{path}: damaged model metadata (not a mapping of text)")
    return header


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_metadata(path: str | os.PathLike) -> dict:
    return dict(read_header(path).get("__metadata__", {}))


def _spec_from(meta: dict, path) -> ModelSpec:
    try:
        return ModelSpec.from_dict(_json(meta["spec"], path, "spec"))
    except WeightsError as e:
        msg = str(e)
        raise WeightsError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def expected_state(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor a model of this spec loads, found by building it on
    the meta device: nothing is allocated, so a spec is measured before it costs memory."""
    with torch.device("meta"):
        net = build_model(spec)
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def check_state(spec: ModelSpec, found: dict[str, tuple[tuple[int, ...], torch.dtype]], path) -> None:
    """Every expected tensor present with the module's shape, none unexpected; floating parameters
    may come in any floating dtype (loading casts them), others (BatchNorm's counter) in their own."""
    want = expected_state(spec)
    missing = [k for k in want if k not in found]
    unexpected = [k for k in found if k not in want]
    if missing or unexpected:
        raise WeightsError(f"{path}: weights do not fit the model (missing {missing[:3]}, "
                           f"unexpected {[str(k)[:60] for k in unexpected[:3]]})")
    for k, (shape, dtype) in want.items():
        got_shape, got_dtype = found[k]
        if tuple(got_shape) != shape:
            raise WeightsError(f"{path}: weights do not fit the model ({k} has shape {list(got_shape)[:8]}, "
                               f"the spec needs {list(shape)})")
        if dtype.is_floating_point != got_dtype.is_floating_point or (
                not dtype.is_floating_point and got_dtype != dtype):
            raise WeightsError(f"{path}: weights do not fit the model ({k} is {got_dtype}, needs {dtype})")


def _load_safetensors(path: Path) -> tuple[nn.Module, dict]:
    header = read_header(path)
    meta = header.get("__metadata__", {})
    if meta.get("pcsr_format") != FORMAT_VERSION or "spec" not in meta:
        raise WeightsError(f"{path}: not a pcsr model file (no pcsr_format {FORMAT_VERSION} metadata)")
    spec = _spec_from(meta, path)
    info = _json(meta.get("info", "{}"), path, "info")
    if not isinstance(info, dict):
        raise WeightsError(f"{path}: damaged model metadata (info is not a JSON object)")
    check_state(spec, {k: (tuple(e["shape"]), _SAFETENSORS_DTYPES[e["dtype"]])
                       for k, e in header.items() if k != "__metadata__"}, path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged weights ({_short(e)})") from None
    model = build_model(spec)
    _load_state(model, state, path)
    return model, info


def _load_state(model: nn.Module, state: dict, path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit the model ({_short(e)})") from None


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
        _check_reference_state(spec, state, path)
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
    raise WeightsError(f"reference backbone {str(name)[:40]!r} is not supported (carn, fsrcnn)")


def _mlp_hidden(sd: dict, prefix: str) -> tuple[int, ...]:
    ws = sorted(  # (a 1-d "weight" raises IndexError: a damaged file, reported as such)
        ((int(m[1]), v) for k, v in sd.items() if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.weight$", k))),
    )
    return tuple(int(v.shape[0]) for _, v in ws[:-1])


def read_reference(path: str | os.PathLike) -> tuple[ModelSpec, dict]:
    """The authors' `{model: {name, args, sd}}` checkpoint -> (our spec, our state dict), every part
    of it checked for its type, so that a foreign or damaged file is one WeightsError naming it."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for a damaged or foreign file
        raise WeightsError(f"{path}: cannot read checkpoint ({_short(e)})") from None
    try:
        return _reference_spec(ck)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    except KeyError as e:
        raise WeightsError(f"{path}: not a PCSR reference checkpoint (missing {_short(e)})") from None
    except (TypeError, ValueError, AttributeError, IndexError, StopIteration, RuntimeError) as e:
        raise WeightsError(f"{path}: not a PCSR reference checkpoint ({type(e).__name__}: {_short(e)})") from None


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise WeightsError(f"not a PCSR reference checkpoint ({what} is a {type(value).__name__}, not a mapping)")
    return value


def _reference_spec(ck) -> tuple[ModelSpec, dict]:
    m = _mapping(_mapping(ck, "the file")["model"], "model")
    name, args, sd = m["name"], _mapping(m["args"], "model.args"), _mapping(m["sd"], "model.sd")
    if not isinstance(name, str):
        raise WeightsError(f"not a PCSR reference checkpoint (model.name is a {type(name).__name__})")
    bad = next((k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise WeightsError(f"not a PCSR reference checkpoint (model.sd[{str(bad)[:60]!r}] is not a tensor)")
    if name.startswith("pcsr"):
        enc = _mapping(args["encoder_spec"], "encoder_spec")
        bb_name = enc["name"]
        enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        bb_args, key = _backbone_from_reference(bb_name, _mapping(enc["args"], "encoder_spec.args"), enc_sd)
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
    raise WeightsError(f"unknown reference model {name[:40]!r}")


def _check_reference_state(spec: ModelSpec, state: dict, path) -> None:
    check_state(spec, {k: (tuple(v.shape), v.dtype) for k, v in state.items()}, path)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> ModelSpec:
    """A reference checkpoint -> our format. Refuses, before reading anything, to write over its own
    input (whatever the spelling of the two paths), over an existing file unless `overwrite`, or
    into a folder that does not exist."""
    src, dst = Path(src), Path(dst)
    if dst.is_dir():
        raise WeightsError(f"{dst}: is a folder; give -o a file name such as {dst / (src.stem + '.safetensors')}")
    if dst.exists() or dst.is_symlink():
        try:
            same = os.path.samefile(src, dst)
        except OSError:
            same = os.path.realpath(src) == os.path.realpath(dst)
        if same:
            raise WeightsError(f"{dst}: is the input checkpoint itself; give -o another file")
        if not overwrite:
            raise WeightsError(f"{dst}: already exists (use --overwrite to replace it)")
    if not dst.parent.is_dir():
        what = "is not a folder" if dst.parent.exists() else "output folder does not exist"
        raise WeightsError(f"{dst.parent}{os.sep}: {what}")
    spec, state = read_reference(src)
    _check_reference_state(spec, state, src)
    model = build_model(spec)
    _load_state(model, state, src)
    save(model, dst, info={"converted_from": src.name}, overwrite=overwrite)
    return spec


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
