"""`pcsr serve`: how long a slider move takes once the picture is cached.

What the page does for one move of `k`: POST /api/jobs (the cached re-route: the model's routing
rule, the choice among the cached upsampler outputs, the seam refinement, the figures) and GET the
view it links to. Measured in-process through Starlette's test client (the ASGI app, the queue and
the encoding, without a network), on a picture whose output is about 1 MP, after one untimed
request that runs the network and fills the cache. Prints the first (uncached) request's time and
the re-route times per k.

    python benchmarks/serve_reroute.py --size 256 --moves 20
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from pathlib import Path

from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # StarletteDeprecationWarning is no DeprecationWarning
    from starlette.testclient import TestClient

import pcsr
from pcsr.serve.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "examples" / "coffee.png"))
    ap.add_argument("--size", type=int, default=256, help="LR side the picture is resized to (256: 1 MP at x4)")
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    buf = io.BytesIO()
    Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC).save(buf, "PNG")
    model = pcsr.load(args.model)
    with TestClient(create_app({"m": model})) as c:
        iid = c.post("/api/images", files={"image": ("bench.png", buf.getvalue(), "image/png")}).json()["id"]

        def move(k: float) -> tuple[float, dict]:
            t0 = time.perf_counter()
            r = c.post("/api/jobs", json={"image": iid, "k": k, "wait": 30}).json()["result"]
            view = c.get(r["view"])
            assert view.status_code == 200
            return time.perf_counter() - t0, r

        first, r = move(0.0)
        times, inside = [], []
        for i in range(args.moves):
            t, r = move(round(0.05 * (i + 1), 2))
            times.append(t)
            inside.append(r["seconds"])
        print(f"model {model.name} ({model.precision}, engine {model.engine.name}), output {r['width']}x{r['height']}")
        print(f"first request (network run, cache filled): {first * 1000:.0f} ms")
        print(f"re-route + view, {args.moves} moves of k: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; the re-route itself "
              f"(route, select, refine, figures) median {statistics.median(inside) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
