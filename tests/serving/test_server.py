"""``patchguard serve``: real HTTP requests to uvicorn on 127.0.0.1 (bounded in count and time).

The served scores are compared with the detector's own predictions on the same files (the
plain inference path), concurrent requests must share forward passes and get their own
answers, and every kind of bad upload gets a 4xx while the next request still works.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchguard.inference.detector import Detector
from patchguard.utils.checkpoint import model_fingerprint, save_checkpoint

from helpers.models import tiny_model

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from patchguard.serving.app import create_app  # noqa: E402
from patchguard.serving.batcher import MicroBatcher  # noqa: E402

TIMEOUT_S = 20.0
THRESHOLD = 0.25


def _checkpoint_dict(model) -> dict:
    from patchguard.config import TrainConfig

    config = TrainConfig(backbone="test_vit", image_size=64, feature_layers=[3], reg_layers=[2, 3],
                         reg_coefficients=[0.01, 0.05], dsc_hidden=32, pretrained=False,
                         dataset="mvtec", class_name="widget")
    return {"model": model.state_dict(), "config": config.to_dict(), "epoch": 3,
            "thresholds": {"image": THRESHOLD, "pixel": 0.0},
            "train_summary": {"dataset": "mvtec", "class_name": "widget"}}


@pytest.fixture(scope="module")
def detector() -> Detector:
    model = tiny_model(dsc_hidden=32).eval()
    return Detector(model, _checkpoint_dict(model), "cpu")


class Server:
    """uvicorn serving an app in a background thread on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="error", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def server(detector):
    app = create_app(detector, checkpoint="widget.pt", max_batch=8, max_wait_ms=100,
                     max_upload_bytes=200_000, max_images=4, max_pixels=300 * 300)
    with Server(app) as running:
        yield running


def _png(seed: int, size: int = 72) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _multipart(files: list[tuple[str, str, bytes]], texts: dict | None = None
               ) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for field, name, data in files:
        parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                      f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                      ).encode() + data + b"\r\n")
    for key, value in (texts or {}).items():
        parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                      f"{value}\r\n").encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _post(base: str, body: bytes, ctype: str | None, query: str = "") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"{base}/predict{query}", data=body, method="POST")
    if ctype:
        request.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _post_chunked(base: str, chunks: list[bytes], ctype: str) -> tuple[int, dict, bytes]:
    """POST with chunked transfer encoding, reading the answer even when the server answers
    (and closes) before the body is sent, as a 413 for an endless stream must."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT_S)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", ctype)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        try:
            for chunk in chunks:
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is already on the way
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


def _predict(base: str, files, query: str = "", texts=None) -> tuple[int, dict]:
    status, _, body = _post(base, *_multipart(files, texts), query)
    return status, json.loads(body)


def _reference(detector: Detector, pngs: list[bytes], tmp_path: Path) -> np.ndarray:
    """The detector's own scores on the same files (the path of 'patchguard predict')."""
    paths = []
    for i, data in enumerate(pngs):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    return detector.predict(paths).scores


def test_health_names_the_model(server, detector):
    with urllib.request.urlopen(server.base + "/health", timeout=TIMEOUT_S) as response:
        health = json.loads(response.read())
    model = health["model"]
    assert health["status"] == "ok"
    assert (model["backbone"], model["dataset"], model["class_name"]) == (
        "test_vit", "mvtec", "widget")
    assert model["weights_fingerprint"] == model_fingerprint(detector.model.state_dict())
    assert model["threshold"] == THRESHOLD


def test_predict_matches_the_detector(server, detector, tmp_path):
    pngs = [_png(1), _png(2), _png(3)]
    status, answer = _predict(server.base, [("file", f"part{i}.png", data)
                                            for i, data in enumerate(pngs)])
    assert status == 200
    expected = _reference(detector, pngs, tmp_path)
    scores = [row["score"] for row in answer["results"]]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert [row["name"] for row in answer["results"]] == ["part0.png", "part1.png", "part2.png"]
    for row, score in zip(answer["results"], expected):
        assert row["decision"] == ("anomalous" if score >= THRESHOLD else "normal")
    assert answer["threshold_source"] == "checkpoint" and answer["model"]["epoch"] == 3
    # ?threshold= decides per request; a raw image/png body works too.
    low = float(min(expected)) - 1.0
    status, _, body = _post(server.base, pngs[0], "image/png", f"?threshold={low}")
    raw = json.loads(body)
    assert status == 200 and raw["results"][0]["decision"] == "anomalous"
    assert raw["threshold"] == low and raw["threshold_source"] == "query"


def test_heatmaps_as_json_and_as_png(server):
    status, answer = _predict(server.base, [("file", "a.png", _png(4)),
                                            ("files", "b.png", _png(5))], "?heatmap=1")
    assert status == 200
    for row in answer["results"]:
        image = Image.open(io.BytesIO(base64.b64decode(row["heatmap_png"])))
        assert image.format == "PNG" and image.size == (64, 64)
    status, headers, body = _post(server.base, *_multipart([("file", "a.png", _png(4))]),
                                  "?heatmap=png")
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (64, 64)
    assert float(headers["x-patchguard-score"]) == pytest.approx(
        answer["results"][0]["score"], abs=1e-6)


def test_concurrent_requests_share_forward_passes(server, detector, tmp_path):
    pngs = [_png(10 + i) for i in range(6)]
    expected = _reference(detector, pngs, tmp_path)
    answers: dict[int, tuple[int, dict]] = {}
    start = threading.Barrier(len(pngs))

    def client(i: int) -> None:
        start.wait(TIMEOUT_S)
        answers[i] = _predict(server.base, [("file", f"{i}.png", pngs[i])])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(pngs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert sorted(answers) == list(range(len(pngs)))
    for i, (status, answer) in answers.items():
        assert status == 200
        assert answer["results"][0]["name"] == f"{i}.png"  # each gets its own answer
        assert answer["results"][0]["score"] == pytest.approx(float(expected[i]), abs=1e-5)
    # Six requests arriving together within the 100 ms window: fewer forward passes.
    assert max(answer["batch_images"] for _, answer in answers.values()) > 1


def _bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG of a huge all-black grey image (compresses to a few hundred bytes)."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(height)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind, expected_status, message", [
    ("corrupt", 400, "corrupt or truncated"),
    ("not an image", 415, "not an image"),
    ("empty file", 400, "the upload is empty"),
    ("bomb", 413, "more than the server's limit"),
    ("too large", 413, "larger than the server's limit"),
    ("too many", 413, "at most 4"),
    ("no file", 400, "no image"),
    ("wrong field", 400, "unknown form field 'upload'"),
    ("text field", 400, "holds text, not a file"),
    ("bad threshold", 400, "must be a finite number"),
    ("unknown option", 400, "unknown query parameter"),
    ("png of two", 400, "heatmap=png returns one PNG"),
    ("json body", 415, "is not an upload"),
    ("chunked, too large", 413, "larger than the server's limit"),
])
def test_bad_uploads_get_a_4xx_and_the_server_survives(server, kind, expected_status, message):
    good = _png(7)
    query, texts = "", None
    files = [("file", "x.png", good)]
    ctype = None
    if kind == "corrupt":
        files = [("file", "x.png", good[: len(good) // 2])]  # truncated in the pixel data
    elif kind == "not an image":
        files = [("file", "notes.txt", b"this is not an image at all")]
    elif kind == "empty file":
        files = [("file", "x.png", b"")]
    elif kind == "bomb":
        files = [("file", "bomb.png", _bomb_png(4000, 4000))]  # 16 M pixels, limit 90 000
    elif kind == "too large":
        files = [("file", "big.png", good + b"\0" * 250_000)]
    elif kind == "too many":
        files = [("file", f"{i}.png", good) for i in range(5)]
    elif kind == "no file":
        files = []
    elif kind == "wrong field":
        files = [("upload", "x.png", good)]
    elif kind == "text field":
        files, texts = [], {"file": "x.png"}
    elif kind == "bad threshold":
        query = "?threshold=nan"
    elif kind == "unknown option":
        query = "?heatmpa=1"
    elif kind == "png of two":
        files, query = [("file", "a.png", good), ("file", "b.png", good)], "?heatmap=png"
    if kind == "json body":
        status, _, body = _post(server.base, b'{"image": "x"}', "application/json")
    elif kind.startswith("chunked"):  # no Content-Length: the limit holds while streaming
        chunks = [good] + [b"\0" * 50_000] * 5
        status, _, body = _post_chunked(server.base, chunks, "image/png")
    else:
        body, ctype = _multipart(files, texts)
        status, _, body = _post(server.base, body, ctype, query)
    answer = json.loads(body)
    assert status == expected_status, answer
    assert message in answer["error"]
    if kind == "bomb":
        assert len(_bomb_png(4000, 4000)) < 100_000
    # The server is still up and answers the next request.
    status, answer = _predict(server.base, [("file", "ok.png", good)])
    assert status == 200 and len(answer["results"]) == 1


def test_a_failing_forward_pass_fails_only_its_batch():
    calls = []

    def predict(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return images.mean(axis=(1, 2, 3)), images[..., 0]

    batcher = MicroBatcher(predict, max_batch=4, max_wait_s=0.0).start()
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.submit(np.zeros((1, 2, 2, 3))).result(TIMEOUT_S)
        images = np.random.default_rng(0).random((3, 2, 2, 3))
        result = batcher.submit(images).result(TIMEOUT_S)
        np.testing.assert_allclose(result.scores, images.mean(axis=(1, 2, 3)), rtol=1e-6)
        assert batcher.stats.failed_batches == 1 and batcher.stats.batches == 1
    finally:
        batcher.close()


def test_batcher_splits_batches_and_keeps_order():
    gate = threading.Event()
    sizes = []

    def predict(images):
        gate.wait(TIMEOUT_S)  # hold the first batch so the others queue up
        sizes.append(len(images))
        return images[:, 0, 0, 0], images[..., 0]

    batcher = MicroBatcher(predict, max_batch=4, max_wait_s=0.05).start()
    try:
        requests = [np.full((n, 1, 1, 3), float(i)) for i, n in enumerate([1, 3, 2, 2, 5])]
        futures = [batcher.submit(images) for images in requests]
        gate.set()
        for i, (future, images) in enumerate(zip(futures, requests)):
            result = future.result(TIMEOUT_S)
            assert result.scores.tolist() == [float(i)] * len(images)
        assert sum(sizes) == 13 and max(sizes) == 5  # a request above max_batch runs whole
        assert all(size <= 4 for size in sizes if size != 5)
    finally:
        batcher.close()


@pytest.mark.slow
def test_serve_command_end_to_end(tmp_path, detector):
    """The CLI in its own process: starts, answers /health and /predict, stops on SIGINT."""
    import socket

    checkpoint = tmp_path / "widget.pt"
    save_checkpoint(checkpoint, _checkpoint_dict(detector.model))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "patchguard", "serve", "--checkpoint", str(checkpoint),
         "--port", str(port), "--device", "cpu"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    assert json.loads(response.read())["model"]["class_name"] == "widget"
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the server did not come up in 60 s"
                time.sleep(0.2)
        status, answer = _predict(base, [("file", "a.png", _png(1))])
        assert status == 200 and answer["results"][0]["threshold"] == THRESHOLD
    finally:
        process.send_signal(2)  # SIGINT: uvicorn's graceful shutdown
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert f"on http://127.0.0.1:{port}" in output
