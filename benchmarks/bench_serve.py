"""Latency and throughput of ``patchguard serve`` over real HTTP on 127.0.0.1 (printed only).

Runs the server in this process (uvicorn in a thread) with micro-batching on and off, and
sends a bounded number of requests of one image each from C client threads:

    python benchmarks/bench_serve.py                      # tiny random ViT, 64 px
    python benchmarks/bench_serve.py --model vits14       # ViT-S/14 at 224 px, random weights
    python benchmarks/bench_serve.py --checkpoint runs/bottle/last.pt --requests 200
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
import urllib.request
import uuid

import numpy as np
import torch
from PIL import Image


def build_detector(args):
    from patchguard.config import TrainConfig
    from patchguard.inference.detector import Detector, load
    from patchguard.models.patchguard import PatchGuard

    if args.checkpoint:
        return load(args.checkpoint, args.device)
    torch.manual_seed(0)
    if args.model == "vits14":
        config = TrainConfig(pretrained=False)  # the paper's model: ViT-S/14, 224 px
    else:
        config = TrainConfig(backbone="test_vit", image_size=64, feature_layers=[3],
                             reg_layers=[2, 3], reg_coefficients=[0.01, 0.05], dsc_hidden=64,
                             pretrained=False)
    model = PatchGuard.from_config(config).eval()
    return Detector(model, {"config": config.to_dict()}, args.device)


def png(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def post(base: str, data: bytes) -> float:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"'
            f"\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(base + "/predict", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def run(detector, args, max_batch: int) -> dict:
    import uvicorn

    from patchguard.serving.app import create_app

    app = create_app(detector, max_batch=max_batch, max_wait_ms=args.max_wait_ms)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    images = [png(i, args.upload_size) for i in range(8)]
    for data in images[:2]:
        post(base, data)  # warm-up
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = args.requests // args.concurrency

    def client(k: int) -> None:
        for i in range(per_client):
            seconds = post(base, images[(k + i) % len(images)])
            with lock:
                latencies.append(seconds)

    started = time.perf_counter()
    clients = [threading.Thread(target=client, args=(k,)) for k in range(args.concurrency)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wall = time.perf_counter() - started
    stats = app.state.batcher.stats
    server.should_exit = True
    thread.join(30)
    latencies.sort()
    return {"requests": len(latencies), "throughput": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
            "mean_batch": stats.images / max(stats.batches, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model", choices=["tiny", "vits14"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--upload-size", type=int, default=256, help="uploaded image side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = build_detector(args)
    print(f"model: {args.checkpoint or args.model}, {detector.image_size} px, device "
          f"{args.device}, {args.requests} requests of one {args.upload_size} px PNG from "
          f"{args.concurrency} clients, torch threads {torch.get_num_threads()}")
    results: dict[str, list[dict]] = {"batched": [], "unbatched": []}
    for _ in range(args.rounds):  # alternate A and B; medians below
        results["batched"].append(run(detector, args, args.max_batch))
        results["unbatched"].append(run(detector, args, 1))
    for name, rows in results.items():
        med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(f"{name:<10} max_batch {args.max_batch if name == 'batched' else 1:>3}: "
              f"{med['throughput']:7.1f} req/s, latency p50 {med['p50_ms']:7.1f} ms, p95 "
              f"{med['p95_ms']:7.1f} ms, mean batch {med['mean_batch']:.1f} images")
    ratio = (statistics.median(r["throughput"] for r in results["batched"])
             / statistics.median(r["throughput"] for r in results["unbatched"]))
    print(f"throughput ratio batched / unbatched: {ratio:.2f}")


if __name__ == "__main__":
    main()
