"""EfficientNet-Lite0 on CPU: channels-first vs channels-last memory layout, batch 1 and 8.

Prints a table, writes JSON and the ratio against channels-first in the same run.
Run: `.venv/bin/python benchmarks/image_encoder_layout.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmfusion.encoders.image_efficientnet import EfficientNetLite0Encoder, EfficientNetParams

REPO = Path(__file__).resolve().parent.parent


def images_per_second(net: torch.nn.Module, pixels: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        net(pixels)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            net(pixels)
            done += pixels.shape[0]
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "image_encoder_layout.json"))
    args = parser.parse_args()
    net = EfficientNetLite0Encoder(EfficientNetParams()).net.eval()
    rows = []
    for batch in (1, 8):
        pixels = torch.randn(batch, 3, 224, 224)
        net.to(memory_format=torch.contiguous_format)
        channels_first = images_per_second(net, pixels, args.seconds)
        net.to(memory_format=torch.channels_last)  # what the encoder ships with
        channels_last = images_per_second(net, pixels.contiguous(memory_format=torch.channels_last), args.seconds)
        rows.append(
            {
                "batch": batch,
                "channels_first_ips": channels_first,
                "channels_last_ips": channels_last,
                "ratio": channels_last / channels_first,
            }
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'channels-first img/s':>21} {'channels-last img/s':>20} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['batch']:>5} {row['channels_first_ips']:>21.1f} {row['channels_last_ips']:>20.1f} "
            f"{row['ratio']:>6.2f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
