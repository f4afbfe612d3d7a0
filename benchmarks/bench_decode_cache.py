"""Decode/resize cache: loading N JPEGs from the cache vs decoding them again.

Writes N photo-like JPEGs (480x360, like the Flowers/Pets photos) to a temporary folder,
then measures, side by side in one run, (a) decoding + resizing every file (the first run)
and (b) reading the decoded uint8 arrays back from the cache (every later run and epoch).
Prints the median of several rounds and the ratio.

    python benchmarks/bench_decode_cache.py [--n 200] [--size 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness.train.data import decode_cached


def make_jpegs(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:360, 0:480]
    for i in range(n):
        base = (np.sin(xx / (20 + i % 7)) + np.cos(yy / (15 + i % 5))) * 60 + 128
        img = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (360, 480, 3))
        p = folder / f"image_{i:04d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp, a.n)
        decode_s, cached_s = [], []
        for r in range(a.rounds):  # interleaved: a fresh cache folder each round
            cache = tmp / f"cache{r}"
            t0 = time.perf_counter()
            x1, _, _ = decode_cached(paths, a.size, cache)  # miss: decode, resize, write
            decode_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            x2, _, _ = decode_cached(paths, a.size, cache)  # hit: read the npz
            cached_s.append(time.perf_counter() - t0)
            assert (x1 == x2).all()
        d, c = statistics.median(decode_s), statistics.median(cached_s)
        print(f"{a.n} JPEGs 480x360 -> {a.size}px, median of {a.rounds} rounds")
        print(f"  decode + resize (first run): {d * 1000:8.1f} ms  ({d / a.n * 1000:.2f} ms/image)")
        print(f"  from the cache (later runs): {c * 1000:8.1f} ms  ({c / a.n * 1000:.3f} ms/image)")
        print(f"  speed-up: {d / c:.1f}x")


if __name__ == "__main__":
    main()
