"""Write the golden output crops of bundled models (tests/golden/), made by the reference engine in
fp32, which tests/test_api.py compares the fast engine and the default precision against. Run it
only when a bundled model's weights change, and say so in the commit:

    python benchmarks/golden.py carn-pcsr-x4 carn-x4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_api import COFFEE, CROP, GOLDEN  # noqa: E402  (one definition of the crop and paths)

import pcsr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="bundled model names")
    args = ap.parse_args()
    for name in args.names:
        model = pcsr.load(name, device="cpu", precision="fp32", engine="reference")
        out = model.upscale(Image.open(COFFEE))
        Image.fromarray(np.ascontiguousarray(out.pixels[CROP])).save(GOLDEN / f"coffee_{name}_crop.png")
        if out.class_map is not None:
            classes = (np.asarray(out.class_map[CROP]) * 255).astype(np.uint8)
            Image.fromarray(classes).save(GOLDEN / f"coffee_{name}_classes_crop.png")
        print(name, "->", GOLDEN)


if __name__ == "__main__":
    main()
