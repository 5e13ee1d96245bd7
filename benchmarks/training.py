"""Does NHWC (channels_last) speed up LW-IRSTNet training on the CPU, as edge_irst.models.train assumes?

One training step = forward, SoftIoU loss, backward, AdamW step on a batch of 8 random 3x256x256 frames with a
sparse random mask (what `edge-irst train` does per iteration, without data loading). Both memory formats run in
this one process, interleaved over rounds (order alternated), per thread count; reported: median images/s over
the rounds and the ratio channels_last / contiguous.

    .venv/bin/python benchmarks/training.py [--threads 1,2] [--rounds 5] [--steps 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from edge_irst import benchmarking as bench
from edge_irst.models import create_model
from edge_irst.models.train import soft_iou_loss

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "training.json"
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def images_per_second(memory_format, steps: int, batch: int = 8) -> float:
    torch.manual_seed(0)
    model = create_model("lw_irstnet").train().to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 256, 256).contiguous(memory_format=memory_format)
    y = (torch.rand(batch, 1, 256, 256) > 0.995).float()

    def step():
        loss = soft_iou_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: first-call allocations and kernel selection
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and format")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        samples = {name: [] for name in FORMATS}
        for r in range(args.rounds):
            for name in (list(FORMATS) if r % 2 == 0 else list(FORMATS)[::-1]):
                samples[name].append(images_per_second(FORMATS[name], args.steps))
        medians = {name: statistics.median(v) for name, v in samples.items()}
        rows.append({"threads": threads, "images_per_s": medians, "rounds": samples,
                     "channels_last_vs_contiguous": medians["channels_last"] / medians["contiguous"]})
        print(f"threads {threads}: contiguous {medians['contiguous']:.1f} img/s, channels_last "
              f"{medians['channels_last']:.1f} img/s = {rows[-1]['channels_last_vs_contiguous']:.2f}x")
    doc = {"benchmark": "training", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": bench.script_command("benchmarks/training.py", argv), "machine": bench.machine_info(),
           "torch": torch.__version__, "method": {"batch": 8, "input": [3, 256, 256], "rounds": args.rounds,
                                                   "steps_per_round": args.steps, "optimizer": "AdamW"},
           "rows": rows, "load_average_at_end": bench.load_average()}
    bench.write_json(doc, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
