"""The HTTP application: ``POST /predict`` and ``GET /health`` around one loaded detector.

``POST /predict`` takes one or more images, as multipart form fields named ``file`` (or
``files``, ``image``, ``images``; repeat the field for several) or as a raw body with an
``image/*`` content type. Query parameters: ``threshold`` (a finite number; default the
checkpoint's) and ``heatmap`` (``1``/``json``: a base64 PNG per image in the JSON; ``png``: the
heatmap itself as ``image/png`` for a single image, its score and decision in ``X-PatchGuard-*``
headers). The JSON holds per image its name, score, decision and threshold, and the model's
identity (backbone, data set, class, weights fingerprint, version).

The model is loaded once; concurrent requests share forward passes through
:class:`.batcher.MicroBatcher`. A bad request gets a 4xx with ``{"error": message}`` and the
server goes on serving.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (Request)
# at definition time, and they are imported inside create_app so that FastAPI stays optional.
import asyncio
import base64
import io
import logging
import math
import time
from typing import Any

import numpy as np

from ..inference.detector import Detector
from ..models.postprocess import PostProcessor
from ..utils.checkpoint import model_fingerprint
from ..version import __version__
from .batcher import MicroBatcher, QueueFull
from .uploads import DEFAULT_MAX_PIXELS, UploadError, decode_image, prepare

logger = logging.getLogger(__name__)

FILE_FIELDS = ("file", "files", "image", "images")
QUERY_PARAMS = ("threshold", "heatmap")
HEATMAP_MODES = {"0": None, "false": None, "no": None, "": None,
                 "1": "json", "true": "json", "yes": "json", "json": "json", "png": "png"}


def require_serve_extra() -> None:
    """ImportError naming the pip extra when FastAPI, uvicorn or python-multipart is missing."""
    missing = []
    for module in ("fastapi", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            if module == "python_multipart":
                try:  # releases before 0.0.13 only had the old module name
                    __import__("multipart.multipart")
                    continue
                except ImportError:
                    pass
            missing.append(module.replace("_", "-"))
    if missing:
        raise ImportError(f"patchguard serve needs {', '.join(missing)}: "
                          "pip install 'patchguard[serve]'")


def model_identity(detector: Detector, checkpoint: str | None = None) -> dict[str, Any]:
    """What model answers: backbone, data set, class, weights fingerprint, versions."""
    info = detector.info
    config = info.get("config") or {}
    summary = info.get("train_summary") or {}
    return {
        "checkpoint": checkpoint,
        "backbone": config.get("backbone"),
        "image_size": detector.image_size,
        "dataset": summary.get("dataset") or config.get("dataset"),
        "class_name": summary.get("class_name") or config.get("class_name"),
        "weights_fingerprint": model_fingerprint(detector.model.state_dict()),
        "epoch": info.get("epoch"),
        "imported_from": info.get("imported_from"),
        "checkpoint_version": info.get("patchguard_version"),
        "patchguard_version": __version__,
        "threshold": detector.threshold,
        "pixel_threshold": detector.pixel_threshold,
    }


def heatmap_png(image: np.ndarray, anomaly_map: np.ndarray, post: PostProcessor) -> bytes:
    """The heatmap of ``patchguard predict`` (the model's post-processing: its colour scale
    centred on the pixel threshold, over the resized input), as PNG bytes."""
    from PIL import Image

    overlay = post.heatmap(np.round(image * 255).astype(np.uint8), anomaly_map)
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="PNG")
    return buffer.getvalue()


def _predict_fn(detector: Detector):
    import torch

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(detector.device)
        with torch.inference_mode():
            scores, maps = detector.model.predict(batch)
        return scores.float().cpu().numpy(), maps.float().cpu().numpy()

    return predict


def create_app(
    detector: Detector,
    *,
    checkpoint: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_upload_bytes: int = 20 << 20,
    max_images: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    request_timeout_s: float = 120.0,
):
    """A FastAPI app serving ``detector`` (see the module docstring for the protocol).

    ``max_upload_bytes`` bounds one request's body (413 beyond), ``max_images`` the images in
    one request, ``max_pixels`` one image's pixel count as its header states it.
    """
    require_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    batcher = MicroBatcher(_predict_fn(detector), max_batch=max_batch,
                           max_wait_s=max_wait_ms / 1000.0)
    identity = model_identity(detector, checkpoint)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    app = FastAPI(title="patchguard", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.identity = identity

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return refuse(500, f"{type(error).__name__}: {error}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = batcher.stats
        return {"status": "ok", "model": identity, "uptime_s": round(time.time() - started, 1),
                "stats": {"requests": stats.requests, "images": stats.images,
                          "batches": stats.batches, "largest_batch": stats.largest_batch,
                          "failed_batches": stats.failed_batches},
                "limits": {"max_upload_bytes": max_upload_bytes, "max_images": max_images,
                           "max_pixels": max_pixels, "max_batch": max_batch,
                           "max_wait_ms": max_wait_ms}}

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes:
            raise UploadError(413, f"the request body is larger than the server's limit of "
                              f"{max_upload_bytes} bytes (it has {int(length)})")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise UploadError(413, f"the request body is larger than the server's limit "
                                  f"of {max_upload_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        """(name, bytes) of every uploaded image, or UploadError."""
        body = await read_body(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            return [("image", body)]
        if not ctype.startswith("multipart/form-data"):
            if not body:
                raise UploadError(400, "no image: send it as multipart field 'file' (curl -F "
                                  "file=@part.png ...) or as the body with an image/* type")
            raise UploadError(415, f"content type {ctype or 'none'!r} is not an upload: send "
                              "multipart/form-data with field 'file', or an image/* body")
        from starlette.requests import Request as PlainRequest

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await PlainRequest(request.scope, replay).form(
                max_files=max_images + 1, max_fields=max_images + 16)
        except Exception as error:  # malformed multipart: the parser's own words
            detail = getattr(error, "detail", None) or str(error) or type(error).__name__
            raise UploadError(400, f"malformed multipart body ({detail})") from None
        found: list[tuple[str, bytes]] = []
        try:
            for key, value in form.multi_items():
                is_file = hasattr(value, "read") and hasattr(value, "filename")
                if key not in FILE_FIELDS:
                    kind = "a file" if is_file else "a text value"
                    raise UploadError(400, f"unknown form field {key!r} ({kind}): send images "
                                      f"as field 'file' (one or more), options as query "
                                      f"parameters ({', '.join(QUERY_PARAMS)})")
                if not is_file:
                    raise UploadError(400, f"form field {key!r} holds text, not a file: "
                                      f"upload the image file itself (curl -F {key}=@part.png)")
                found.append((value.filename or f"image {len(found)}", await value.read()))
        finally:
            await form.close()
        if not found:
            raise UploadError(400, "no image in the request: send one or more files as "
                              "multipart field 'file'")
        return found

    def options(request: Request) -> tuple[float | None, str | None]:
        unknown = sorted(set(request.query_params) - set(QUERY_PARAMS))
        if unknown:
            raise UploadError(400, f"unknown query parameter(s) {unknown}; known: "
                              f"{', '.join(QUERY_PARAMS)}")
        threshold = None
        text = request.query_params.get("threshold")
        if text is not None:
            try:
                threshold = float(text)
            except ValueError:
                threshold = math.nan
            if not math.isfinite(threshold):
                raise UploadError(400, f"threshold = {text!r}: must be a finite number")
        mode = request.query_params.get("heatmap", "").strip().lower()
        if mode not in HEATMAP_MODES:
            raise UploadError(400, f"heatmap = {mode!r}: use 1 (base64 PNG in the JSON) or png "
                              "(the image itself, for one upload)")
        return threshold, HEATMAP_MODES[mode]

    @app.post("/predict")
    async def predict(request: Request):
        try:
            threshold, heatmap = options(request)
            files = await uploads(request)
            if len(files) > max_images:
                raise UploadError(413, f"{len(files)} images in one request; the server takes "
                                  f"at most {max_images}")
            if heatmap == "png" and len(files) != 1:
                raise UploadError(400, f"heatmap=png returns one PNG, but {len(files)} images "
                                  "were sent; use heatmap=1 for a base64 PNG per image")
            size = detector.image_size
            images = await run_in_threadpool(
                lambda: np.stack([prepare(decode_image(data, name, max_pixels), size)
                                  for name, data in files]))
        except UploadError as error:
            return refuse(error.status, str(error))
        try:
            future = batcher.submit(images)
        except QueueFull as error:
            return refuse(503, f"server busy: {error}")
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), request_timeout_s)
        except asyncio.TimeoutError:
            return refuse(503, f"no answer from the model within {request_timeout_s:g} s")
        except Exception as error:  # the forward pass failed (e.g. out of memory)
            logger.error("forward pass failed: %s", error)
            return refuse(500, f"the model failed on this batch ({type(error).__name__}: "
                          f"{error}); the server goes on")
        post = detector.post.overridden(threshold)
        used = post.image_threshold
        source = "query" if threshold is not None else "checkpoint" if used is not None else None
        results = []
        for i, (name, _) in enumerate(files):
            score = float(result.scores[i])
            results.append({"name": name, "score": score, "decision": post.label(score),
                            "threshold": used})
        if heatmap is not None:
            pngs = await run_in_threadpool(lambda: [
                heatmap_png(images[i], result.maps[i], post) for i in range(len(files))])
            if heatmap == "png":
                row = results[0]
                return Response(pngs[0], media_type="image/png", headers={
                    "X-PatchGuard-Score": repr(row["score"]),
                    "X-PatchGuard-Decision": row["decision"] or "none",
                    "X-PatchGuard-Threshold": "none" if used is None else repr(used),
                    "X-PatchGuard-Weights": identity["weights_fingerprint"]})
            for row, png in zip(results, pngs):
                row["heatmap_png"] = base64.b64encode(png).decode("ascii")
        return {"results": results, "threshold": used, "threshold_source": source,
                "batch_images": result.batch_images, "model": identity}

    return app
