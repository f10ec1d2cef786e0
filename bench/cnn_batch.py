"""CPU cost of the CNN per image by batch size and ONNX Runtime thread setting.

    .venv/bin/python bench/cnn_batch.py [--model efficientnet-lite0] [--images 16] [--rounds 3]

Runs the model's ONNX file on random input at the two sizes a search uses (the 448 px
localization pass and the 224 px embedding pass) and reports, per batch size and intra-op
thread count, images per second and CPU milliseconds per image (process CPU time, so
the number holds up better than wall time when other work shares the cores). The best of
`--rounds` rounds is kept. This is what micro-batching can and cannot buy the server.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from snapshop.models.backbone import resolve_model

BATCHES = (1, 2, 4, 8, 16)
SIZES = (448, 224)


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--images", type=int, default=16, help="images per measurement (a multiple of 16)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = str(resolve_model(args.model).onnx_path)
    sessions = {threads: session(path, threads) for threads in (1, 2)}
    name = sessions[1].get_inputs()[0].name
    rng = np.random.default_rng(0)
    print("| size px | ORT threads | batch | images/s | CPU ms/image |")
    print("|---:|---:|---:|---:|---:|")
    for size in SIZES:
        inputs = {batch: rng.random((batch, 3, size, size), np.float32) for batch in BATCHES}
        for run in sessions.values():
            run.run(None, {name: inputs[1]})
        best: dict[tuple[int, int], tuple[float, float]] = {}
        for _ in range(args.rounds):  # rounds interleave the settings, so other load hits them alike
            for threads, run in sessions.items():
                for batch in BATCHES:
                    cpu, wall = time.process_time(), time.perf_counter()
                    for _ in range(args.images // batch):
                        run.run(None, {name: inputs[batch]})
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    rate, cost = args.images / wall, 1000 * cpu / args.images
                    previous = best.get((threads, batch), (0.0, float("inf")))
                    best[(threads, batch)] = (max(rate, previous[0]), min(cost, previous[1]))
        for (threads, batch), (rate, cost) in sorted(best.items()):
            print(f"| {size} | {threads} | {batch} | {rate:.1f} | {cost:.1f} |")


if __name__ == "__main__":
    main()
