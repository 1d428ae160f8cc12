"""A local HTTP server on 127.0.0.1 that answers like Google Drive's download endpoints.

``/uc?export=download&id=ID`` serves small files directly and, for ids in ``confirm_ids``, the
virus-scan warning page whose form submits to ``/usercontent`` with ``confirm`` and ``uuid``
(as Drive does for large files); an unknown id gets Drive's HTML error page. Plain paths serve
``files`` with HTTP Range support. Every request is recorded.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DriveState:
    """What the server serves and what it was asked."""

    def __init__(self) -> None:
        self.drive: dict[str, bytes] = {}  # Drive file id -> content
        self.confirm_ids: set[str] = set()  # ids answered with the virus-scan warning first
        self.files: dict[str, bytes] = {}  # plain paths -> content
        self.requests: list[str] = []
        self.base = ""


class _Handler(BaseHTTPRequestHandler):
    state: DriveState

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, data: bytes) -> None:
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data) and rng:
            self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            return
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[start:])

    def do_GET(self) -> None:  # noqa: N802
        st = self.state
        st.requests.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        file_id = query.get("id", "")
        if url.path == "/uc":
            if file_id not in st.drive:
                page = (b"<html><head><title>Google Drive - 404</title></head><body>Sorry, the "
                        b"file you have requested does not exist.</body></html>")
                self._send(404, page, "text/html; charset=utf-8")
            elif file_id in st.confirm_ids:
                page = (
                    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning"
                    "</title></head><body><p>Google Drive can't scan this file for viruses.</p>"
                    f'<form id="download-form" action="{st.base}/usercontent" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{file_id}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="u-77"></form></body></html>'
                ).encode()
                self._send(200, page, "text/html; charset=utf-8")
            else:
                self._file(st.drive[file_id])
            return
        if url.path == "/usercontent":
            if query.get("confirm") == "t" and query.get("uuid") == "u-77" and \
                    file_id in st.drive:
                self._file(st.drive[file_id])
            else:
                self._send(403, b"bad confirm", "text/plain")
            return
        if url.path in st.files:
            self._file(st.files[url.path])
        else:
            self._send(404, b"missing", "text/plain")


@contextmanager
def drive_server(monkeypatch) -> Iterator[DriveState]:
    """Start the server, point patchguard's Drive endpoints at it, stop it afterwards."""
    from patchguard.data.download import transfer

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    state = DriveState()
    handler = type("DriveHandler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setattr(transfer, "DRIVE_URL", state.base + "/uc")
    monkeypatch.setattr(transfer, "DRIVE_USERCONTENT_URL", state.base + "/usercontent")
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
