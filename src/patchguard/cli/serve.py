"""The ``serve`` verb: a checkpoint behind ``POST /predict`` and ``GET /health`` (FastAPI and
uvicorn, the optional ``serve`` extra)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..utils.checks import arg, integer, number
from .args import DEVICE_ARG, FINITE_ARG, POSITIVE, flag

PORT_ARG = arg(lambda name, value: integer(name, value, 1, 65535), int)
WAIT_ARG = arg(lambda name, value: number(name, value, 0.0, 1000.0))
MEGABYTES_ARG = arg(lambda name, value: number(name, value, 0.0, 4096.0, min_open=True))


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``patchguard`` parser."""
    serve = verbs.add_parser("serve", help="serve a checkpoint over HTTP (POST /predict)")
    flag(serve, "--checkpoint", required=True)
    flag(serve, "--host", default="127.0.0.1",
         help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    flag(serve, "--port", type=PORT_ARG, default=8000, help="default 8000")
    flag(serve, "--device", type=DEVICE_ARG, default=None,
         help="auto (default), cpu, cuda, cuda:1, ...")
    flag(serve, "--threshold", type=FINITE_ARG, default=None,
         help="image threshold (default: the checkpoint's; ?threshold= overrides per request)")
    flag(serve, "--max-batch", type=POSITIVE, default=16,
         help="images per forward pass (default 16)")
    flag(serve, "--max-wait-ms", type=WAIT_ARG, default=5.0,
         help="how long a request waits for others to share its forward pass (default 5)")
    flag(serve, "--max-upload-mb", type=MEGABYTES_ARG, default=20.0,
         help="largest request body in MB (default 20)")
    flag(serve, "--max-images", type=POSITIVE, default=32,
         help="images in one request (default 32)")
    flag(serve, "--max-pixels", type=POSITIVE, default=40_000_000,
         help="pixels of one image as its header states (default 40 million)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the checkpoint once and serve it until Ctrl-C."""
    from ..serving.app import require_serve_extra

    require_serve_extra()  # before the model is loaded
    import uvicorn

    from ..inference.detector import load
    from ..serving.app import create_app
    from ..utils.device import resolve_device

    detector = load(args.checkpoint, resolve_device(args.device or "auto"))
    if args.threshold is not None:
        detector.threshold = args.threshold
    app = create_app(detector, checkpoint=str(args.checkpoint), max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms,
                     max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                     max_images=args.max_images, max_pixels=args.max_pixels)
    identity = app.state.identity
    print(f"serving {args.checkpoint} ({identity['backbone']}, {identity['dataset']}/"
          f"{identity['class_name']}, weights {identity['weights_fingerprint']}) on "
          f"http://{args.host}:{args.port}  (POST /predict, GET /health; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"serve": cmd_serve}
