"""ResNet inference cost: median of 5 forward passes on one input, parameters, weight file size.

    python benchmarks/resnet_inference.py [--threads 2] [--depths 34] [--widths 12 16 20 24]

The participant benchmark allows ResNet34 ≤ 1 s on 2 cores; bundled weights must be ≤ 30 MB.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depths", type=int, nargs="+", default=[34])
    parser.add_argument("--widths", type=int, nargs="+", default=[12, 16, 20, 24])
    parser.add_argument("--downsample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    from bids_brainage.models import resnet3d

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'depth':>5} {'width':>5} {'input':>12} {'params':>10} {'file MB':>8} {'seconds':>8}")
    rng = np.random.default_rng(0)
    for depth in args.depths:
        for width in args.widths:
            net = resnet3d.build_resnet(depth, width).eval()
            with tempfile.TemporaryDirectory() as tmp:
                size = resnet3d.save_resnet(net, Path(tmp) / "w.pt").stat().st_size / 1e6
            for factor in args.downsample:
                spec = resnet3d.image_spec(downsample=factor)
                card = resnet3d.resnet_card("bench", depth, width, spec, 50.0, 15.0)
                x = rng.uniform(0, 1.2, resnet3d.input_shape(spec)).astype(np.float32)
                resnet3d.predict_volume(net, x, threads=args.threads, card=card)  # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    resnet3d.predict_volume(net, x, threads=args.threads, card=card)
                    times.append(time.perf_counter() - start)
                shape = "x".join(map(str, x.shape))
                print(f"{depth:>5} {width:>5} {shape:>12} {resnet3d.count_parameters(net):>10,} "
                      f"{size:>8.1f} {statistics.median(times):>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
