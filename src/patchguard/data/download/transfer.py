"""Resumable, checksummed HTTP downloads and Google Drive's confirm step, with urllib only."""

from __future__ import annotations

import hashlib
import html
import http.client
import http.cookiejar
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

from .errors import ChecksumError, DownloadError, ManualDownloadError
from .sources import Archive

log = logging.getLogger(__name__)

#: Google Drive's direct-download endpoint (module constant so tests can point it elsewhere).
DRIVE_URL = "https://drive.google.com/uc"
#: Where Drive's virus-scan warning form submits to for large files.
DRIVE_USERCONTENT_URL = "https://drive.usercontent.google.com/download"
USER_AGENT = "patchguard-downloader/1.0"
TIMEOUT_S = 60.0

def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _algorithm(checksum: str) -> str:
    checksum = checksum.strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", checksum):
        return "sha256"
    if re.fullmatch(r"[0-9a-f]{32}", checksum):
        return "md5"
    raise ValueError(f"unrecognised checksum {checksum!r}: expected a sha256 or md5 hex digest")


def _verify(path: Path, checksum: str | None, url: str) -> None:
    """Raise ChecksumError (after deleting ``path``) when the digest differs."""
    if not checksum:
        return
    algorithm = _algorithm(checksum)
    actual = file_digest(path, algorithm)
    if actual != checksum.strip().lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{algorithm} mismatch for {url}: expected {checksum.strip().lower()}, got {actual}; "
            f"the corrupted file {path} was deleted, run the download again"
        )


def _default_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener()


def _request(
    opener: urllib.request.OpenerDirector, url: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return opener.open(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # Range not satisfiable: the caller decides
            return exc  # type: ignore[return-value]
        error = DownloadError(f"HTTP {exc.code} {exc.reason} for {url}")
        # A missing or forbidden file stays so: retrying only delays the message.
        error.permanent = 400 <= exc.code < 500 and exc.code not in (408, 425, 429)
        raise error from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"could not reach {url}: {exc}") from exc


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _transfer_once(
    url: str,
    part: Path,
    progress: bool,
    chunk: int,
    opener: urllib.request.OpenerDirector,
    desc: str,
) -> None:
    """One HTTP request that appends to (206) or rewrites (200) ``part``; raises if short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    resp = _request(opener, url, headers)
    with resp:
        status = resp.status
        if status == 416:
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total is not None and total == offset:
                return  # the part file already holds everything
            part.unlink(missing_ok=True)  # stale or oversized: start again
            offset = 0
            _transfer_once(url, part, progress, chunk, opener, desc)
            return
        if status == 206 and offset:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(
                    f"{url} answered Range bytes={offset}- with Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; delete {part} and retry"
                )
            mode = "ab"
        elif status in (200, 203):
            mode, offset = "wb", 0  # server ignored the Range header: restart
        else:
            raise DownloadError(f"unexpected HTTP {status} for {url}")
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        total = offset + expected if expected is not None else None
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    block = resp.read(chunk)
                except (http.client.HTTPException, OSError) as exc:
                    raise DownloadError(f"transfer of {url} interrupted: {exc}") from exc
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
        if expected is not None and received < expected:
            raise DownloadError(
                f"transfer of {url} interrupted after {offset + received} of {total} bytes"
            )


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: bool = True,
    chunk: int = 1 << 20,
    *,
    md5: str | None = None,
    retries: int = 3,
    opener: urllib.request.OpenerDirector | None = None,
) -> Path:
    """Download ``url`` to ``dest`` resumably (``dest.part`` + HTTP Range), verify, rename."""
    dest = Path(dest)
    checksum = sha256 or md5
    if dest.exists():
        if not checksum:
            return dest  # only complete files are ever renamed to dest
        if file_digest(dest, _algorithm(checksum)) == checksum.lower():
            return dest
        log.warning("%s does not match its checksum; downloading it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = opener or _default_opener()
    for attempt in range(retries + 1):
        try:
            _transfer_once(url, part, progress, chunk, opener, dest.name)
            break
        except ChecksumError:
            raise
        except DownloadError as exc:
            if getattr(exc, "permanent", False):
                raise
            if attempt == retries:
                kept = (f"; the partial file {part} is kept and the next run resumes from it"
                        if part.exists() else "")
                raise DownloadError(
                    f"{exc} (gave up after {retries + 1} attempts{kept})"
                ) from exc
            log.warning("%s; resuming (attempt %d of %d)", exc, attempt + 2, retries + 1)
            time.sleep(min(2.0**attempt, 10.0) * 0.1)
    _verify(part, checksum, url)
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Google Drive


_DRIVE_FILE_RE = re.compile(r"(?:/file/d/|[?&]id=|^gdrive:)([A-Za-z0-9_-]{10,})")
_DRIVE_FOLDER_RE = re.compile(r"/drive/(?:u/\d+/)?folders/([A-Za-z0-9_-]{10,})")


def drive_file_id(link: str) -> str | None:
    """The file id in a Drive file link (``/file/d/ID``, ``?id=ID``, ``gdrive:ID``), else None."""
    match = _DRIVE_FILE_RE.search(link)
    return match.group(1) if match else None


def is_drive_folder(link: str) -> bool:
    """True for a Google Drive folder link (plain HTTP cannot fetch those)."""
    return bool(_DRIVE_FOLDER_RE.search(link))


def _is_drive(link: str) -> bool:
    return link.startswith("gdrive:") or "drive.google.com" in link or is_drive_folder(link)


def folder_error(link: str, what: str, flag: str = "--archive") -> ManualDownloadError:
    """The error that tells how to download a Drive folder by hand and pass it with ``flag``."""
    return ManualDownloadError(
        f"{what} is a Google Drive folder ({link}); Drive folders cannot be downloaded over plain "
        f"HTTP without an API key. Open the link in a browser, choose 'Download' (Drive zips the "
        f"folder), then pass the zip with `{flag} PATH`."
    )


class _DriveFormParser(HTMLParser):
    """Collects forms (action + hidden inputs) and links from Drive's warning page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.hrefs: list[str] = []
        self._current: tuple[str, dict[str, str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = (a.get("action", ""), {})
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current[1][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _allowed_drive_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).netloc
    return host in {urllib.parse.urlsplit(u).netloc for u in (DRIVE_URL, DRIVE_USERCONTENT_URL)}


def _drive_confirm_url(
    page: str, page_url: str, file_id: str, cookies: http.cookiejar.CookieJar
) -> str | None:
    """The URL that confirms the virus-scan warning, from the form, a link or a cookie."""
    parser = _DriveFormParser()
    parser.feed(page)
    for action, fields in parser.forms:
        if "confirm" in fields or "uuid" in fields:
            target = urllib.parse.urljoin(page_url, html.unescape(action)) or DRIVE_USERCONTENT_URL
            if not _allowed_drive_url(target):
                raise DownloadError(f"Drive warning form points to an unexpected host: {target}")
            fields.setdefault("id", file_id)
            return target + "?" + urllib.parse.urlencode(fields)
    for href in parser.hrefs:
        href = html.unescape(href)
        if "confirm=" in href:
            target = urllib.parse.urljoin(page_url, href)
            if _allowed_drive_url(target):
                return target
    for cookie in cookies:
        if cookie.name.startswith("download_warning"):
            query = {"export": "download", "id": file_id, "confirm": cookie.value}
            return DRIVE_URL + "?" + urllib.parse.urlencode(query)
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        query = {"export": "download", "id": file_id, "confirm": match.group(1)}
        return DRIVE_URL + "?" + urllib.parse.urlencode(query)
    return None


def drive_download(
    file_id: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: bool = True,
    *,
    md5: str | None = None,
    retries: int = 3,
) -> Path:
    """Download one Google Drive file by id (or link), answering the virus-scan warning."""
    if is_drive_folder(file_id):
        raise folder_error(file_id, "This link")
    file_id = drive_file_id(file_id) or file_id
    dest = Path(dest)
    checksum = sha256 or md5
    if dest.exists() and (
        not checksum or file_digest(dest, _algorithm(checksum)) == checksum.lower()
    ):
        return dest
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    url = DRIVE_URL + "?" + urllib.parse.urlencode({"export": "download", "id": file_id})
    probe = _request(opener, url)
    with probe:
        content_type = probe.headers.get("Content-Type", "")
        final_url = probe.geturl()
        if "text/html" in content_type:
            page = probe.read(2 << 20).decode("utf-8", "replace")
            confirmed = _drive_confirm_url(page, final_url, file_id, cookies)
            if confirmed is None:
                title = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
                raise DownloadError(
                    f"Google Drive returned a page instead of file {file_id}"
                    f" ({title.group(1).strip() if title else 'no title'}): the file may be "
                    "private, removed, or over its download quota; open "
                    f"https://drive.google.com/file/d/{file_id}/view in a browser, download it "
                    "there and pass it with --archive"
                )
            final_url = confirmed
    return download_file(
        final_url, dest, sha256=sha256, md5=md5, progress=progress, retries=retries, opener=opener
    )


def fetch_archive(archive: Archive, dest: Path, progress: bool, what: str) -> Path:
    """Download one archive of a source (HTTP or Drive file) to ``dest``, checking its digest."""
    if is_drive_folder(archive.url):
        raise folder_error(archive.url, what)
    checksum = archive.checksum
    kw = {"md5": checksum} if checksum and _algorithm(checksum) == "md5" else {"sha256": checksum}
    if _is_drive(archive.url):
        file_id = drive_file_id(archive.url)
        if not file_id:
            raise DownloadError(f"cannot find a Drive file id in {archive.url}")
        return drive_download(file_id, dest, progress=progress, **kw)
    return download_file(archive.url, dest, progress=progress, **kw)
