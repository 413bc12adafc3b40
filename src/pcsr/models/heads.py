"""Per-pixel MLP heads (a simplified LIIF): the upsamplers and the classifier.

An output pixel's MLP input is the feature vector of its nearest LR pixel, its coordinate relative
to that pixel's centre and the size of an output pixel (both in LR-pixel units): C + 4 numbers.

Two ways to feed the MLPs, giving the same numbers up to float rounding:
- `PointQueries`: any set of output coordinates (any scale, any output size). The reference.
- `SubpixelQueries`: integer scale s. The coordinate part takes only s*s values, so the first layer
  splits into a 1x1 projection of the features, once per LR pixel, plus a per-sub-pixel bias.
  Rows are ordered (n, y, x, dy, dx): output pixel (y*s + dy, x*s + dx) of image n.
Both share one small interface (`Queries`). They compute with the MLP's own modules; engines
(pcsr.engines) run the same MLPs faster where they can.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .. import flops as fl


class MLP(nn.Module):
    """ReLU MLP; `layers[0]` is the first linear layer, which the sub-pixel path splits."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)

    def after_first(self, h1: torch.Tensor) -> torch.Tensor:
        """The rest of the MLP, given the first layer's pre-activation."""
        return self.layers[1:](h1)

    def flops_per_row(self) -> int:
        return sum(fl.linear(m.in_features, m.out_features) for m in self.layers if isinstance(m, nn.Linear))


def make_coord(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centres of an h x w grid in [-1, 1], as (h*w, 2) rows of (y, x).

    Computed in float32 as -1 + r + 2r*i with r = 1/n: the rounding the reference models were made
    with. Exact (float64) centres shift the heavy probability by a few 1e-7 on average, enough to
    move a dozen near-tie pixels between classes on a 2-megapixel image.
    """
    def axis(n: int) -> torch.Tensor:
        r = 1.0 / n
        return (-1.0 + r) + (2.0 * r) * torch.arange(n, device=device, dtype=torch.float32)

    grid = torch.stack(torch.meshgrid(axis(h), axis(w), indexing="ij"), dim=-1)
    return grid.reshape(-1, 2).to(dtype)


@dataclass(frozen=True)
class Window:
    """A window of the output grid of a whole image, queried over the features of an LR crop.

    The whole image is h x w LR pixels upscaled to H x W (any ratio: the scale need not be an
    integer). The crop starts at LR pixel (cy, cx) and has the features' size; the window is the
    output pixels [y0, y1) x [x0, x1) of the whole image. Output pixel Y's centre lies at LR position
    (Y + 0.5) h / H in the whole image, so a window gives each pixel exactly the MLP input it has in
    the whole image: tiles of a non-integer scale stitch without seams or drift.
    """

    h: int
    w: int
    H: int
    W: int
    cy: int
    cx: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def size(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def coords(self, hc: int, wc: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, 2) query coordinates and cells in the crop's [-1, 1] frame (crop hc x wc), raster order.

        The whole image's coordinates are made with `make_coord`'s float32 rounding, then moved to the
        crop's frame in float64, so the crop that is the whole image gets them bit for bit."""
        def axis(n_out: int, n_in: int, n_crop: int, start: int, a: int, b: int):
            r = 1.0 / n_out
            full = (-1.0 + r) + (2.0 * r) * torch.arange(a, b, dtype=torch.float32, device=device)
            return ((full.double() + 1.0) * (n_in / n_crop) - 1.0 - 2.0 * start / n_crop).float()

        ys = axis(self.H, self.h, hc, self.cy, self.y0, self.y1)
        xs = axis(self.W, self.w, wc, self.cx, self.x0, self.x1)
        coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
        cell = torch.tensor([2.0 * self.h / (self.H * hc), 2.0 * self.w / (self.W * wc)],
                            dtype=torch.float64).float().to(device).expand_as(coord)
        return coord, cell


class Queries(Protocol):
    """What the routing algorithm needs of a set of output-pixel queries over LR features."""

    @property
    def rows(self) -> int: ...

    def run(self, mlp: MLP, rows=None, dtype: torch.dtype | None = None) -> torch.Tensor: ...

    def select(self, cls_rows: torch.Tensor, j: int): ...

    def bilinear(self, lr: torch.Tensor) -> torch.Tensor: ...

    def to_image(self, rows: torch.Tensor) -> torch.Tensor: ...

    def to_rows(self, img: torch.Tensor) -> torch.Tensor: ...


class PointQueries:
    """MLP inputs for arbitrary output coordinates (N, Q, 2) and cells (N, Q, 2)."""

    def __init__(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, size=None):
        feat = feat.float()  # coordinates need fp32 even when the backbone ran in reduced precision
        n, c, h, w = feat.shape
        self.size = size  # (H, W) when the queries are a full raster grid, for to_image
        self.n, self.q = coord.shape[:2]
        self.coord = coord
        grid = coord.clamp(-1 + 1e-6, 1 - 1e-6).flip(-1).unsqueeze(1).to(feat.dtype)  # (N,1,Q,2) as (x, y)
        q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
        lr_centres = make_coord(h, w, feat.device, feat.dtype).t().reshape(1, 2, h, w).expand(n, 2, h, w)
        q_coord = F.grid_sample(lr_centres, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
        size = torch.tensor([h, w], device=feat.device, dtype=feat.dtype)
        rel_coord = (coord.to(feat.dtype) - q_coord) * size
        rel_cell = cell.to(feat.dtype) * size
        self.inputs = torch.cat([q_feat, rel_coord, rel_cell], dim=-1).reshape(self.n * self.q, -1)

    @property
    def rows(self) -> int:
        return self.n * self.q

    def run(self, mlp: MLP, rows: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        x = self.inputs if rows is None else self.inputs[rows]
        return mlp(x if dtype is None else x.to(dtype))

    def scatter(self, mlp: MLP, rows: torch.Tensor, split, out: torch.Tensor) -> None:
        out.index_copy_(0, rows, self.run(mlp, split).float())

    def select(self, cls_rows: torch.Tensor, j: int):
        rows = torch.nonzero(cls_rows == j).squeeze(1)
        return rows, rows

    def to_image(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows, C) or (rows,) in raster order of an H x W query grid -> (N, C, H, W) or (N, H, W)."""
        squeeze = rows.dim() == 1
        img = rows.reshape(self.n, self.size[0], self.size[1], -1).permute(0, 3, 1, 2)
        return img[:, 0] if squeeze else img

    def to_rows(self, img: torch.Tensor) -> torch.Tensor:
        return img.permute(0, 2, 3, 1).reshape(-1, img.shape[1])

    def bilinear(self, lr: torch.Tensor) -> torch.Tensor:
        """Bilinear sample (border padding) of the normalised LR at every query, as (N*Q, 3) rows."""
        grid = self.coord.flip(-1).unsqueeze(1).to(lr.dtype)
        out = F.grid_sample(lr, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[:, :, 0].permute(0, 2, 1).reshape(self.rows, -1)


def subpixel_offsets(s: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(s*s, 4) coordinate inputs (rel_y, rel_x, cell_y, cell_x) of the s*s sub-pixels of an LR pixel."""
    r = (torch.arange(s, device=device, dtype=torch.float64) * 2 + 1) / s - 1
    ry, rx = torch.meshgrid(r, r, indexing="ij")
    cell = torch.full_like(ry, 2.0 / s)
    return torch.stack([ry, rx, cell, cell], dim=-1).reshape(s * s, 4).to(dtype)


class SubpixelQueries:
    """MLP inputs for integer scale s over every output pixel, first layer split per LR pixel."""

    def __init__(self, feat: torch.Tensor, scale: int):
        self.n, self.c, self.h, self.w = feat.shape
        self.s = scale
        self.feat_rows = feat.permute(0, 2, 3, 1).reshape(-1, self.c)  # (N*h*w, C)
        self.offsets = subpixel_offsets(scale, feat.device)  # fp32 even for bf16 features: 1/3 is not a bf16

    @property
    def rows(self) -> int:
        return self.n * self.h * self.w * self.s * self.s

    def first_layer(self, mlp: MLP, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-LR-pixel projection (N*h*w, H1), per-sub-pixel bias (s*s, H1))."""
        lin: nn.Linear = mlp.layers[0]
        feat = self.feat_rows if dtype is None else self.feat_rows.to(dtype)
        proj = feat @ lin.weight[:, : self.c].t().to(feat.dtype)
        return proj, self.subpixel_bias(lin).to(proj.dtype)

    def subpixel_bias(self, lin: nn.Linear) -> torch.Tensor:
        """(s*s, H1): the first layer's bias plus its coordinate part, per sub-pixel."""
        return torch.addmm(lin.bias, self.offsets.to(lin.weight.dtype), lin.weight[:, self.c:].t())

    def run(self, mlp: MLP, rows=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The MLP on every output pixel (rows None) or on some: `rows` is a 1-D tensor of row
        indices or a pair (LR pixel index, sub-pixel index). Module calls: the first layer as the
        per-LR-pixel projection plus the sub-pixel bias, the rest as the MLP's own layers."""
        proj, bias = self.first_layer(mlp, dtype)
        if rows is None:
            h1 = (proj.unsqueeze(1) + bias.unsqueeze(0)).reshape(-1, proj.shape[1])
        else:
            lr_idx, sub_idx = self._split_rows(rows)
            h1 = proj[lr_idx] + bias[sub_idx]
        return mlp.after_first(h1)

    def select(self, cls_rows: torch.Tensor, j: int):
        """Rows of class j: (row indices, the same rows as (LR pixel index, sub-pixel index) pairs,
        grouped by sub-pixel, found without divisions)."""
        ss = self.s * self.s
        sub, lr = torch.nonzero(cls_rows.view(-1, ss).t() == j).t()
        sub, lr = sub.contiguous(), lr.contiguous()
        return lr * ss + sub, (lr, sub)

    def scatter(self, mlp: MLP, rows: torch.Tensor, split, out: torch.Tensor) -> None:
        out.index_copy_(0, rows, self.run(mlp, split).float())

    def _split_rows(self, rows):
        if isinstance(rows, tuple):
            return rows
        ss = self.s * self.s
        return rows // ss, rows % ss

    def bilinear(self, lr: torch.Tensor) -> torch.Tensor:
        """Bilinear upsampling (align_corners=False, edges clamped) as rows in sub-pixel order.

        Each of the s*s sub-pixels of an LR pixel is a fixed 3x3 blend of the edge-replicated LR
        around it, so the whole upsampling is one small convolution that writes every sub-pixel of
        a pixel side by side: already the rows' order, no interpolation pass over the output and no
        reordering pass (interpolate + reorder make two).
        Equal to F.interpolate(lr, scale_factor=s, mode="bilinear") to float rounding."""
        n, c = lr.shape[:2]
        with torch.autocast(lr.device.type, enabled=False):
            x = F.pad(lr.float(), (1, 1, 1, 1), mode="replicate").contiguous(memory_format=torch.channels_last)
            out = F.conv2d(x, self._bilinear_weight(c, x.device))  # (N, s*s*C, h, w), channels (dy, dx, c)
        return out.permute(0, 2, 3, 1).reshape(-1, c).to(lr.dtype)

    def _bilinear_weight(self, c: int, device) -> torch.Tensor:
        s = self.s
        taps = torch.zeros(s, 3, dtype=torch.float64)  # weights of LR rows y-1, y, y+1 for sub-row d
        for d in range(s):
            t = (d + 0.5) / s - 0.5
            if t < 0:
                taps[d, 0], taps[d, 1] = -t, 1 + t
            else:
                taps[d, 1], taps[d, 2] = 1 - t, t
        k = (taps[:, None, :, None] * taps[None, :, None, :]).reshape(s * s, 1, 1, 3, 3)  # (dy*s + dx, ...)
        w = k * torch.eye(c, dtype=torch.float64).reshape(1, c, c, 1, 1)  # each channel from itself only
        return w.reshape(s * s * c, c, 3, 3).to(device, torch.float32)

    def to_rows(self, img: torch.Tensor) -> torch.Tensor:
        """(N, C, h*s, w*s) image -> (rows, C) in sub-pixel order."""
        n, c = img.shape[:2]
        s = self.s
        return img.reshape(n, c, self.h, s, self.w, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, c)

    def to_image(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows, C) or (rows,) in sub-pixel order -> (N, C, h*s, w*s) channels_last or (N, h*s, w*s).

        Channels last: the copy moves runs of s*C values instead of single ones, and an RGB image
        is HWC already when it leaves as 8-bit."""
        s = self.s
        squeeze = rows.dim() == 1
        r = rows.reshape(self.n, self.h, self.w, s, s, -1).permute(0, 1, 3, 2, 4, 5)
        img = r.reshape(self.n, self.h * s, self.w * s, -1).permute(0, 3, 1, 2)
        return img[:, 0] if squeeze else img
