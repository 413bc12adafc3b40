"""A training pack: detailed HR crops of a training pool, cut once and stored as WebP in a folder
small enough to travel with the working tree to a lent GPU machine (which cannot see ../shared).

The crops follow the pool's own sampling: each image gives crops in proportion to its area (as
`PatchSampler` picks images), and a crop flatter than `min_detail` (`data.detail`) is redrawn, so
the pack holds what the CPU runs train on, without the flat sky and blur they redraw anyway.
`SOURCES.tsv` says where each crop came from; the licence rows of the sources' `CREDITS.tsv`
files travel with the crops they were cut from.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import PcsrError
from ..io import list_images, read_image
from .data import detail


def _encode(crop: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="WEBP", quality=quality, method=6)
    return buf.getvalue()


def _uint8(path: Path) -> np.ndarray:
    return np.ascontiguousarray(np.round(read_image(path).rgb * 255.0).astype(np.uint8))


def make_pack(folders: list[str], out: str | Path, budget_mb: float = 36.0, crop: int = 192,
              min_detail: float = 3.0, detail_tries: int = 8, quality: int = 95, seed: int = 0,
              progress: bool = True) -> dict:
    """Write `out/train/NNNNN.webp` crops (crop x crop) of the images in `folders`, at most
    `budget_mb` MiB of them in all, with `out/SOURCES.tsv` and `out/CREDITS.tsv`."""
    out = Path(out)
    if (out / "train").exists() and any((out / "train").iterdir()):
        raise PcsrError(f"{out / 'train'} is not empty: choose another folder")
    if crop < 8 or budget_mb <= 0 or not 1 <= quality <= 100:
        raise PcsrError("crop must be at least 8, budget_mb positive and quality 1-100")
    paths = list_images(folders)
    sizes = []
    for p in paths:
        with Image.open(p) as im:
            sizes.append(im.size)
    usable = [(p, w, h) for p, (w, h) in zip(paths, sizes) if min(w, h) >= crop]
    if not usable:
        raise PcsrError(f"no image in {', '.join(folders)} is at least {crop} pixels on its short side")
    rng = np.random.default_rng(seed)
    area = np.array([w * h for _, w, h in usable], dtype=np.float64)

    def cut(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        for _ in range(max(1, detail_tries)):
            y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
            c = img[y:y + crop, x:x + crop]
            if min_detail <= 0 or detail(torch.from_numpy(c).permute(2, 0, 1)) >= min_detail:
                break
        return c, y, x

    # how many crops fit: the encoded size of a sample of crops from images drawn by area
    sample = rng.choice(len(usable), size=min(24, len(usable)), replace=False, p=area / area.sum())
    per_crop = np.mean([len(_encode(cut(_uint8(usable[i][0]))[0], quality)) for i in sample])
    n_total = max(1, int(budget_mb * 2**20 / per_crop))
    counts = np.floor(area / area.sum() * n_total + rng.random(len(usable))).astype(int)

    (out / "train").mkdir(parents=True, exist_ok=True)
    rows, used, total = [], set(), 0
    order = range(len(usable))
    if progress:
        from tqdm import tqdm
        order = tqdm(order, desc="pack", unit="image", mininterval=2)
    for i in order:
        if counts[i] == 0:
            continue
        p = usable[i][0]
        img = _uint8(p)
        for _ in range(counts[i]):
            c, y, x = cut(img)
            data = _encode(c, quality)
            name = f"{len(rows):05d}.webp"
            (out / "train" / name).write_bytes(data)
            rows.append((name, str(p), y, x, len(data)))
            total += len(data)
            used.add(p)
    # the estimate can be off either way: drop random crops until the pack is within its budget
    budget = budget_mb * 2**20
    for j in rng.permutation(len(rows)):
        if total <= budget:
            break
        (out / "train" / rows[j][0]).unlink()
        total -= rows[j][4]
        rows[j] = None
    rows = [r for r in rows if r is not None]
    with open(out / "SOURCES.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["crop", "source", "y", "x"])
        w.writerows(r[:4] for r in rows)
    credits = _credits(sorted({Path(r[1]) for r in rows}))
    with open(out / "CREDITS.tsv", "w", newline="") as f:
        f.write("".join(credits))
    mp = len(rows) * crop * crop / 1e6
    return {"crops": len(rows), "bytes": total, "megapixels": round(mp, 2), "sources": len(used),
            "bits_per_pixel": round(8 * total / max(1, len(rows) * crop * crop), 3)}


def _credits(sources: list[Path]) -> list[str]:
    """The lines of the sources' CREDITS.tsv files (first column: file name) for the files used,
    under each file's header line."""
    lines, by_folder = [], {}
    for s in sources:
        by_folder.setdefault(s.parent, set()).add(s.name)
    for folder, names in sorted(by_folder.items()):
        f = folder / "CREDITS.tsv"
        if not f.exists():
            continue
        text = f.read_text().splitlines(keepends=True)
        if not lines and text:
            lines.append(text[0])
        lines += [t for t in text[1:] if t.split("\t", 1)[0] in names]
    return lines

