"""A local HTTP server on 127.0.0.1 that answers like Google Drive's download endpoints.

``/uc?export=download&id=ID`` serves small files directly and, for ids in ``confirm_ids``, the
virus-scan warning page whose form submits to ``/usercontent`` with ``confirm`` and ``uuid``
(as Drive does for large files); ids in ``pages`` answer 200 with an HTML page and no form
(Drive's quota and sign-in pages); an unknown id gets Drive's HTML 404 page. Plain paths serve
``files`` with HTTP Range support (``corrupt`` paths with damaged bytes, ``cut_after`` dropping
the connection once). Every request is recorded.
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
        self.pages: dict[str, str] = {}  # ids answered with an HTML page (title) instead
        self.files: dict[str, bytes] = {}  # plain paths -> content
        self.corrupt: set[str] = set()  # plain paths served with their first 16 bytes flipped
        self.cut_after: int | None = None  # close the connection after N body bytes, once
        self.requests: list = []  # what _record appends: the path here
        self.base = ""


class DriveHandler(BaseHTTPRequestHandler):
    """Drive's endpoints and plain files; subclasses may answer ``/uc`` differently."""

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

    def _record(self) -> None:
        self.state.requests.append(self.path)

    def _file(self, data: bytes) -> None:
        st = self.state
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data) and rng:
            self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            return
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if st.cut_after is not None:  # a dropped connection, once
            n, st.cut_after = st.cut_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _plain(self, path: str) -> None:
        st = self.state
        if path not in st.files:
            self._send(404, b"missing", "text/plain")
            return
        data = st.files[path]
        if path in st.corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        self._file(data)

    def do_GET(self) -> None:  # noqa: N802
        st = self.state
        self._record()
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        file_id = query.get("id", "")
        if url.path == "/uc":
            if file_id in st.pages:
                page = (f"<html><head><title>{st.pages[file_id]}</title></head><body>Too many "
                        "users have viewed or downloaded this file recently.</body></html>")
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif file_id not in st.drive:
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
        self._plain(url.path)


@contextmanager
def drive_server(monkeypatch, handler_class: type[DriveHandler] = DriveHandler,
                 state: DriveState | None = None) -> Iterator[DriveState]:
    """Start the server, point patchguard's Drive endpoints at it, stop it afterwards."""
    from patchguard.data.download import transfer

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    state = DriveState() if state is None else state
    handler = type("BoundDriveHandler", (handler_class,), {"state": state})
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
