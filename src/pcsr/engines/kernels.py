"""The compiled kernels (csrc/: whole per-pixel MLPs, grouped 3x3 convolutions), loaded with ctypes.

Optional by design: the package builds them at install where a C compiler is found, and every caller
falls back to torch operations where they are missing, refused (no AVX2/FMA, another architecture;
for the bf16 MLP no AVX512-BF16) or the tensors are not what they take (not fp32 / bf16 on the CPU,
layers wider than supported).
PCSR_KERNEL=0 in the environment turns them off.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("PCSR_KERNEL", "1") == "0":  # the switch for A/B timings and for bug reports
        return None
    here = Path(__file__).parent.parent  # the extension is pcsr._kernels
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_kernels{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                return None
            lib.pcsr_cpu_supported.restype = ctypes.c_int
            lib.pcsr_max_width.restype = ctypes.c_int
            lib.pcsr_mlp_f32.restype = ctypes.c_int
            lib.pcsr_mlp_f32.argtypes = [  # proj, w0, sub_bias, ss, rows, classes, want, scatter, n,
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,  # n_layers, dims, wt,
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]  # b, out, threads
            lib.pcsr_bf16_supported.restype = ctypes.c_int
            lib.pcsr_mlp_bf16.restype = ctypes.c_int
            lib.pcsr_mlp_bf16.argtypes = lib.pcsr_mlp_f32.argtypes
            lib.pcsr_gconv3x3_f32.restype = ctypes.c_int
            lib.pcsr_gconv3x3_f32.argtypes = [
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32]
            lib.pcsr_refine_f32.restype = ctypes.c_int
            lib.pcsr_refine_f32.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 4 + [
                ctypes.c_void_p, ctypes.c_int32]
            lib.pcsr_set_openmp.argtypes = [ctypes.c_void_p] * 3
            lib.pcsr_set_openmp(*_openmp_entry_points())
            return lib if lib.pcsr_cpu_supported() else None
    return None


def _openmp_entry_points() -> tuple[int | None, int | None, int | None]:
    """GOMP_parallel, omp_get_thread_num, omp_get_num_threads of the OpenMP runtime torch loaded
    (global symbols of the process), so that the kernels run on torch's own threads."""
    try:
        proc = ctypes.CDLL(None)
        return tuple(ctypes.cast(getattr(proc, name), ctypes.c_void_p).value
                     for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"))
    except (AttributeError, OSError, TypeError):
        return None, None, None


def built() -> bool:
    """Whether the extension was compiled at install (whatever this CPU can run of it)."""
    here = Path(__file__).parent.parent
    return any((here / f"_kernels{suffix}").is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def available() -> bool:
    """The fp32 kernels (x86 with AVX2 and FMA)."""
    return _library() is not None


def bf16_available() -> bool:
    """The bf16 MLP kernel (x86 with AVX512-BF16)."""
    lib = _library()
    return lib is not None and bool(lib.pcsr_bf16_supported())


def mlp_kernel_runs(precision: str, device) -> bool:
    """Whether the per-pixel MLPs of a model at `precision` ("fp32", "bf16", ...) on `device` run
    in a compiled kernel."""
    if torch.device(device).type != "cpu":
        return False
    return {"fp32": available, "bf16": bf16_available}.get(precision, lambda: False)()


def refine(sr: torch.Tensor, classes: torch.Tensor) -> torch.Tensor | None:
    """routing.refine in one pass (csrc/refine.c), for an fp32 (N, C, H, W) image whose pixels lie
    channels-last and a uint8 (N, H, W) class map on the CPU; None where it does not apply."""
    if not (available() and sr.dtype == torch.float32 and sr.device.type == "cpu" and sr.dim() == 4
            and classes.dtype == torch.uint8 and classes.shape == (sr.shape[0], *sr.shape[2:])
            and sr.permute(0, 2, 3, 1).is_contiguous()):
        return None
    out = torch.empty_like(sr)  # keeps the layout
    try:
        torch.ops.pcsr.refine(sr, classes.contiguous(), out, torch.get_num_threads())
    except RuntimeError:
        return None
    return out


# ----------------------------------------------------------------------------- the custom ops
# Each kernel is a torch operator with a schema (torch checks argument kinds, devices and which
# tensor is written), so that it dispatches, profiles and traces like torch's own; behind the
# schema, the C entry point takes raw pointers and sizes that the callers above have checked.
def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


@torch.library.custom_op("pcsr::mlp", mutates_args=("out",), device_types="cpu")
def _mlp_op(proj: torch.Tensor, sub_bias: torch.Tensor, pix: Optional[torch.Tensor], classes: Optional[torch.Tensor],
            want: int, n: int, scatter: bool, dims: List[int], wt: List[torch.Tensor], b: List[torch.Tensor],
            out: torch.Tensor, threads: int) -> None:
    lib = _library()
    run = lib.pcsr_mlp_bf16 if proj.dtype == torch.bfloat16 else lib.pcsr_mlp_f32
    code = run(proj.data_ptr(), proj.shape[-1], sub_bias.data_ptr(), sub_bias.shape[0],
               None if pix is None else pix.data_ptr(), None if classes is None else classes.data_ptr(),
               want, int(scatter), n, len(wt), (ctypes.c_int32 * len(dims))(*dims), _pointers(wt), _pointers(b),
               out.data_ptr(), threads)
    if code:
        raise RuntimeError("the MLP kernel refused its arguments")


@torch.library.custom_op("pcsr::gconv3x3", mutates_args=("out",), device_types="cpu")
def _gconv_op(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor, groups: int, cin: int, cout: int, relu: bool,
              out: torch.Tensor, threads: int) -> None:
    n, _, h, w = x.shape
    if _library().pcsr_gconv3x3_f32(x.data_ptr(), n, h, w, groups, cin, cout, wt.data_ptr(), bias.data_ptr(),
                                    int(relu), out.data_ptr(), threads):
        raise RuntimeError("the grouped convolution kernel refused its arguments")


@torch.library.custom_op("pcsr::refine", mutates_args=("out",), device_types="cpu")
def _refine_op(sr: torch.Tensor, classes: torch.Tensor, out: torch.Tensor, threads: int) -> None:
    n, c, h, w = sr.shape
    if _library().pcsr_refine_f32(sr.data_ptr(), classes.data_ptr(), n, h, w, c, out.data_ptr(), threads):
        raise RuntimeError("the refinement kernel refused its arguments")


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class FusedMLP:
    """An MLP (heads.MLP) laid out for a kernel: the first layer's feature part padded, to make
    the per-LR-pixel projection; every later layer transposed, its outputs zero-padded to the vector
    length. fp32 (mlp.c): 8 columns. bf16 (mlp_bf16.c): 16 columns, the weights rounded to bf16 and
    their inputs interleaved in pairs, the operand layout of vdpbf16ps; the projection in bf16 (a
    bf16 GEMM is much faster than an fp32 one on these narrow shapes)."""

    def __init__(self, mlp: nn.Module, feat_channels: int, dtype: torch.dtype = torch.float32):
        lins = [m for m in mlp.layers if isinstance(m, nn.Linear)]
        first = lins[0]
        self.bf16 = dtype == torch.bfloat16
        lanes = 16 if self.bf16 else 8
        self.width = first.out_features
        self.w0 = _pad(self.width, lanes)
        w1 = torch.zeros(self.w0, first.in_features)
        w1[: self.width] = first.weight.detach().float()
        self.proj_weight = w1[:, :feat_channels].t().contiguous().to(dtype)   # (C, w0)
        self.coord_weight = w1[:, feat_channels:].t().contiguous()  # (4, w0)
        self.bias0 = torch.zeros(self.w0)
        self.bias0[: self.width] = first.bias.detach().float()
        self.dims = [self.width] + [m.out_features for m in lins[1:]]
        self.wt, self.b = [], []
        for m in lins[1:]:
            n, k = _pad(m.out_features, lanes), m.in_features
            wt = torch.zeros(_pad(k, 2) if self.bf16 else k, n)
            wt[:k, : m.out_features] = m.weight.detach().float().t()
            if self.bf16:  # (k/2, n, 2): inputs 2i and 2i+1 of each output column side by side
                wt = wt.view(-1, 2, n).transpose(1, 2).contiguous().to(torch.bfloat16)
            b = torch.zeros(n)
            b[: m.out_features] = m.bias.detach().float()
            self.wt.append(wt)
            self.b.append(b)
        self.out_dim = self.dims[-1]
        lib = _library()
        self.supported = (lib is not None and len(lins) >= 2 and (not self.bf16 or bool(lib.pcsr_bf16_supported()))
                          and max(_pad(d, lanes) for d in self.dims) <= lib.pcsr_max_width())

    def project(self, feat_rows: torch.Tensor) -> torch.Tensor:
        """(n_lr, C) features -> (n_lr, w0) first-layer projections in the kernel's dtype (padding
        columns 0)."""
        with torch.autocast(feat_rows.device.type, enabled=False):
            return feat_rows.to(self.proj_weight.dtype) @ self.proj_weight

    def subpixel_bias(self, offsets: torch.Tensor) -> torch.Tensor:
        """(ss, 4) coordinate inputs -> (ss, w0) fp32 first-layer bias per sub-pixel."""
        with torch.autocast(offsets.device.type, enabled=False):
            return torch.addmm(self.bias0, offsets.float(), self.coord_weight).contiguous()

    def __call__(self, proj: torch.Tensor, sub_bias: torch.Tensor, rows, out: torch.Tensor | None = None,
                 threads: int | None = None) -> torch.Tensor:
        """The MLP on output pixels in sub-pixel order (pixel g: LR pixel g // ss, sub-pixel g % ss).

        rows: a count n (pixels 0 .. n-1), a 1-D tensor of pixel indices, or a pair (class map, j):
        every pixel g whose class map entry is j (the map: one uint8 per pixel, as many as out's rows).
        Returns (n, out_dim), or with `out` (every pixel's row, contiguous float32) writes each
        pixel's result into its own row of out and returns out; a class map needs `out`."""
        proj, sub_bias = proj.contiguous(), sub_bias.contiguous()
        pix = classes = None
        want = 0
        if isinstance(rows, tuple):
            classes, want = rows[0].contiguous(), int(rows[1])
            n = classes.numel()
        elif isinstance(rows, torch.Tensor):
            pix = rows.to(torch.int64).contiguous()
            n = pix.numel()
        else:
            n = int(rows)
        scatter = int(out is not None)
        if out is None:
            if classes is not None:
                raise ValueError("pixels picked by a class map need an output to scatter into")
            out = torch.empty(n, self.out_dim)
        elif (pix is None and classes is None) or out.dtype != torch.float32 or not out.is_contiguous() \
                or out.shape[-1] != self.out_dim:
            raise ValueError("scattering needs pixel indices and a contiguous float32 output")
        if n == 0:
            return out
        if classes is not None:  # the kernel trusts its sizes: check them here
            if classes.dtype != torch.uint8 or classes.dim() != 1 or not 0 <= want < 256:
                raise ValueError("a class map is a 1-D uint8 tensor and a class 0-255")
            if n != out.shape[0] or n > proj.shape[0] * sub_bias.shape[0]:
                raise IndexError("the class map must have one entry per row of out, within the projections")
        else:
            top = int(pix.max()) if pix is not None else n - 1
            if (pix is not None and int(pix.min()) < 0) or top >= proj.shape[0] * sub_bias.shape[0] or (
                    scatter and top >= out.shape[0]):
                raise IndexError("pixel index out of range")
        if (proj.shape[-1] != self.w0 or sub_bias.shape[-1] != self.w0 or proj.dtype != self.proj_weight.dtype
                or sub_bias.dtype != torch.float32 or proj.device.type != "cpu"):
            raise ValueError("projections must come from this MLP's project() and subpixel_bias()")
        torch.ops.pcsr.mlp(proj, sub_bias, pix, classes, want, n, bool(scatter), self.dims, self.wt, self.b, out,
                           threads or torch.get_num_threads())
        return out


class GroupedConv3x3:
    """A grouped 3x3 convolution (stride 1, padding 1), optionally with a ReLU, for the kernel in
    csrc/gconv.c: groups of 8 to 16 output channels, fp32 channels-last on the CPU."""

    def __init__(self, conv: nn.Conv2d, relu: bool):
        w = conv.weight.detach().float()
        self.groups = conv.groups
        cout_all, self.cin = w.shape[:2]
        self.cout = cout_all // self.groups
        self.relu = relu
        self.supported = (available() and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
                          and tuple(conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1)
                          and conv.padding_mode == "zeros" and 8 <= self.cout <= 16 and self.groups > 1)
        if not self.supported:
            return
        wt = torch.zeros(self.groups, 9, self.cin, 16)  # (group, tap, input channel, output channel)
        wt[..., : self.cout] = w.view(self.groups, self.cout, self.cin, 9).permute(0, 3, 2, 1)
        self.wt = wt.contiguous()
        self.bias = torch.zeros(self.groups, 16)
        if conv.bias is not None:
            self.bias[:, : self.cout] = conv.bias.detach().float().view(self.groups, self.cout)

    def applies_to(self, x: torch.Tensor) -> bool:
        return (self.supported and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
                and x.shape[1] == self.groups * self.cin and x.is_contiguous(memory_format=torch.channels_last)
                and not (torch.is_grad_enabled() and x.requires_grad))

    def __call__(self, x: torch.Tensor, relu: bool | None = None) -> torch.Tensor:
        """`relu` overrides the constructor's choice (None: keep it)."""
        relu = self.relu if relu is None else relu
        n, _, h, w = x.shape
        out = torch.empty(n, self.groups * self.cout, h, w, memory_format=torch.channels_last)
        torch.ops.pcsr.gconv3x3(x, self.wt, self.bias, self.groups, self.cin, self.cout, bool(relu), out,
                                torch.get_num_threads())
        return out
