"""Download, verify and safely extract the data sets PatchGuard is evaluated on.

Everything here uses the standard library (``urllib``) plus ``tqdm`` for the progress bar:

* :func:`download_file` resumes an interrupted transfer with an HTTP ``Range`` request into
  ``dest.part``, verifies a known checksum and renames atomically; an existing complete file is
  not fetched again.
* :func:`drive_download` performs Google Drive's virus-scan confirmation for large files (the
  old ``download_warning_*`` cookie token and the newer ``drive.usercontent.google.com`` form).
  Drive *folders* cannot be fetched without an API key; they raise :class:`ManualDownloadError`
  with instructions to download them as a zip and pass the archive instead.
* :func:`safe_extract` refuses absolute paths, ``..`` components and links that leave the
  target, and extracts into a temporary directory first.
* :func:`download_dataset` ties it together for every entry of :data:`DATASETS`, checks the
  layout and writes a marker so a second run does nothing.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import http.cookiejar
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "DATASETS",
    "DRIVE_URL",
    "DRIVE_USERCONTENT_URL",
    "MARKER_NAME",
    "Archive",
    "ChecksumError",
    "DatasetSource",
    "DownloadError",
    "LayoutError",
    "ManualDownloadError",
    "UnsafeArchiveError",
    "check_layout",
    "download_dataset",
    "download_file",
    "download_foreground",
    "drive_download",
    "drive_file_id",
    "file_digest",
    "safe_extract",
]

log = logging.getLogger(__name__)

#: Google Drive's direct-download endpoint (module constant so tests can point it elsewhere).
DRIVE_URL = "https://drive.google.com/uc"
#: Where Drive's virus-scan warning form submits to for large files.
DRIVE_USERCONTENT_URL = "https://drive.usercontent.google.com/download"
#: Written into a data set's root once download, extraction and layout check succeeded.
MARKER_NAME = ".patchguard-download.json"
USER_AGENT = "patchguard-downloader/1.0"
TIMEOUT_S = 60.0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class DownloadError(RuntimeError):
    """A transfer failed (HTTP error, truncated body, unexpected Drive answer)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum (the file is deleted)."""


class ManualDownloadError(DownloadError):
    """The data set (or its masks) must be fetched by hand; the message says how."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written, or would link, outside the extraction target."""


class LayoutError(RuntimeError):
    """An extracted data set does not have the expected folders."""


@dataclass(frozen=True)
class Archive:
    """One downloadable file: a URL (or ``gdrive:ID`` / a Drive link) and how to check it."""

    url: str
    filename: str
    checksum: str | None = None  # hex digest: 64 characters = sha256, 32 = md5
    format: str = "auto"  # "zip", "tar", "tar.gz", "tar.xz" or "auto" (sniffed)


@dataclass(frozen=True)
class DatasetSource:
    """Where a data set and its published foreground masks come from, and how it looks."""

    name: str
    dirname: str
    classes: tuple[str, ...]
    required: tuple[str, ...]  # paths relative to the data set root; "{cls}" expands per class
    archives: tuple[Archive, ...] = ()
    foreground: tuple[Archive, ...] = ()
    foreground_dir: str = "{cls}/train/foreground_mask"
    license: str = ""
    manual: str = ""  # non-empty: no public direct archive, these are the instructions
    homepage: str = ""
    foreground_page: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def expected_paths(self) -> list[str]:
        """Relative paths the layout check requires, expanded over the class list."""
        out: list[str] = []
        for template in self.required:
            if "{cls}" in template:
                out += [template.format(cls=c) for c in self.classes]
            else:
                out.append(template)
        return out


_MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
    "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
_VISA_CLASSES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
    "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
_MPDD_CLASSES = (
    "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes",
)  # fmt: skip
_DTD_CLASSES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)  # fmt: skip
_WFDD_CLASSES = ("grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth")
_MVTEC_LIKE = ("{cls}/train/good", "{cls}/test/good")


def _drive_folder(folder_id: str) -> str:
    return f"https://drive.google.com/drive/folders/{folder_id}"


def _manual_text(name: str, where: str, layout: str) -> str:
    return (
        f"{name} has no public direct-download archive. {where} Then either arrange it as "
        f"{layout} under the data set root yourself, or pack that tree into a zip/tar and run "
        f"`patchguard data download --dataset {name.lower()} --archive PATH`."
    )


#: Every data set of the paper: public archives, published foreground masks and layout.
DATASETS: dict[str, DatasetSource] = {
    "mvtec": DatasetSource(
        name="mvtec",
        dirname="mvtec",
        classes=_MVTEC_CLASSES,
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        archives=(
            Archive(
                "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
                "mvtec_anomaly_detection.tar.xz",
                "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
                "tar.xz",
            ),
        ),
        foreground=(Archive(_drive_folder("1VHYcJUDja7o2xbYlh7YKYK_6EleizdoU"), "mvtec_fg.zip"),),
        license="CC BY-NC-SA 4.0 (non-commercial use only), MVTec Software GmbH.",
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad/",
    ),
    "visa": DatasetSource(
        name="visa",
        dirname="visa",
        classes=_VISA_CLASSES,
        required=(
            "{cls}/Data/Images/Normal",
            "{cls}/Data/Images/Anomaly",
            "{cls}/Data/Masks/Anomaly",
            "split_csv/1cls.csv",
        ),
        archives=(
            Archive(
                "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                "VisA_20220922.tar",
                "ef908989b6dc701fc218f643c127a4de",
                "tar",
            ),
        ),
        foreground=(Archive(_drive_folder("1IdLOXyMpi8dzhyeUV6cLOeW5LK4rIOfC"), "visa_fg.zip"),),
        foreground_dir="{cls}/Data/Images/foreground_mask",
        license="CC BY 4.0, Amazon (registry.opendata.aws/visa).",
        homepage="https://github.com/amazon-science/spot-diff",
    ),
    "mpdd": DatasetSource(
        name="mpdd",
        dirname="mpdd",
        classes=_MPDD_CLASSES,
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        foreground=(Archive(_drive_folder("10JHKrilH8lBwqnM5HRfkt_LytankNJ_S"), "mpdd_fg.zip"),),
        license="See https://github.com/stepanje/MPDD (academic use; cite the ICUMT 2021 paper).",
        manual=_manual_text(
            "MPDD",
            "It is shared as a SharePoint folder linked from https://github.com/stepanje/MPDD "
            "(open the 'Download link' there and download the whole folder as a zip).",
            "<root>/mpdd/<class>/{train/good, test/<defect>, ground_truth/<defect>}",
        ),
        homepage="https://github.com/stepanje/MPDD",
    ),
    "btad": DatasetSource(
        name="btad",
        dirname="btad",
        classes=("01", "02", "03"),
        required=("{cls}/train/ok", "{cls}/test/ok", "{cls}/test/ko", "{cls}/ground_truth/ko"),
        archives=(
            Archive(
                "https://avires.dimi.uniud.it/papers/btad/btad.zip",
                "btad.zip",
                "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
                "zip",
            ),
        ),
        foreground=(Archive(_drive_folder("1LGtlVeFbgcC31cQeJnTWX-j2cTpLdsuf"), "btad_fg.zip"),),
        license="CC BY-SA 4.0 (BTAD / beanTech), see the VT-ADL repository.",
        homepage="https://github.com/pankajmishra000/VT-ADL",
    ),
    "dtd": DatasetSource(
        name="dtd",
        dirname="dtd",
        classes=_DTD_CLASSES,
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        license="Research use; DTD-Synthetic (Aota et al., WACV 2023) built on DTD.",
        manual=_manual_text(
            "DTD-Synthetic",
            "It is shared as a Google Drive folder ("
            + _drive_folder("10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1")
            + "); open it and use 'Download' to get it as a zip.",
            "<root>/dtd/<class>/{train/good, test/<defect>, ground_truth/<defect>}",
        ),
        homepage="https://openaccess.thecvf.com/content/WACV2023/html/Aota_Zero-Shot_Versus_"
        "Many-Shot_Unsupervised_Texture_Anomaly_Detection_WACV_2023_paper.html",
        extra={"note": "Texture data set: the whole image is foreground, no masks published."},
    ),
    "wfdd": DatasetSource(
        name="wfdd",
        dirname="wfdd",
        classes=_WFDD_CLASSES,
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        archives=(
            Archive(
                "https://drive.google.com/file/d/1P8yfNnfoFsb0Lv-HRzkPQ2nD9qsL--Vk/view",
                "WFDD.zip",
            ),
        ),
        license="MIT (GLASS repository, cqylunlun/GLASS).",
        homepage="https://github.com/cqylunlun/GLASS#dataset-release",
        extra={"note": "Texture data set: the whole image is foreground, no masks published."},
    ),
    "brats2021": DatasetSource(
        name="brats2021",
        dirname="brats2021",
        classes=(),
        required=("train/normal", "test", "ground_truth"),
        foreground=(
            Archive(
                "https://drive.google.com/file/d/1viMafEbTR2HvMmWWxsrqd7yE9N3VR7FU/view",
                "brats2021_fg.zip",
            ),
        ),
        foreground_dir="train/foreground_mask",
        license="BraTS 2021 data use agreement (Synapse / RSNA-ASNR-MICCAI); registration needed.",
        manual=_manual_text(
            "BraTS2021",
            "Register and download it from http://braintumorsegmentation.org/ (Synapse) or the "
            "Kaggle mirror (login needed), then cut the 3D volumes into 2D slices.",
            "<root>/brats2021/{train/normal, test/<type>, ground_truth/<name with flair->seg>}",
        ),
        homepage="http://braintumorsegmentation.org/",
    ),
    "headct": DatasetSource(
        name="headct",
        dirname="headct",
        classes=(),
        required=("train/good", "test/good"),
        foreground=(
            Archive(
                "https://drive.google.com/file/d/1XdUgdMYrfAFydROTWRdj5S14UQbnu725/view",
                "headct_fg.zip",
            ),
        ),
        foreground_dir="train/foreground_mask",
        license="See the Kaggle page (felipekitamura/head-ct-hemorrhage).",
        manual=_manual_text(
            "HeadCT",
            "Download it from https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage "
            "(Kaggle needs a login) and split it into normal training and test images.",
            "<root>/headct/{train/good, test/good, test/<type>}",
        ),
        homepage="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
    ),
}


# --------------------------------------------------------------------------------------------
# checksums and plain HTTP downloads


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
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
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
            if attempt == retries:
                raise DownloadError(
                    f"{exc} (gave up after {retries + 1} attempts; the partial file {part} is "
                    "kept and the next run resumes from it)"
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


def _is_drive_folder(link: str) -> bool:
    return bool(_DRIVE_FOLDER_RE.search(link))


def _is_drive(link: str) -> bool:
    return link.startswith("gdrive:") or "drive.google.com" in link or _is_drive_folder(link)


def _folder_error(link: str, what: str, flag: str = "--archive") -> ManualDownloadError:
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
    if _is_drive_folder(file_id):
        raise _folder_error(file_id, "This link")
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


def _fetch(archive: Archive, dest: Path, progress: bool, what: str) -> Path:
    if _is_drive_folder(archive.url):
        raise _folder_error(archive.url, what)
    checksum = archive.checksum
    kw = {"md5": checksum} if checksum and _algorithm(checksum) == "md5" else {"sha256": checksum}
    if _is_drive(archive.url):
        file_id = drive_file_id(archive.url)
        if not file_id:
            raise DownloadError(f"cannot find a Drive file id in {archive.url}")
        return drive_download(file_id, dest, progress=progress, **kw)
    return download_file(archive.url, dest, progress=progress, **kw)


# --------------------------------------------------------------------------------------------
# extraction


def _member_parts(name: str) -> list[str]:
    """Validate an archive member name and return its path components."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..' (path traversal)")
    return parts


def _link_escapes(member_parts: list[str], linkname: str, relative_to_member: bool) -> bool:
    norm = linkname.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return True
    base = member_parts[:-1] if relative_to_member else []
    joined = posixpath.normpath(posixpath.join("/".join(base) or ".", norm))
    return joined == ".." or joined.startswith("../")


def _check_tar(tar: tarfile.TarFile) -> None:
    links: set[str] = set()
    for member in tar.getmembers():
        parts = _member_parts(member.name)
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is written through the link "
                    f"{'/'.join(parts[:i])!r}"
                )
        if member.issym() or member.islnk():
            if _link_escapes(parts, member.linkname, relative_to_member=member.issym()):
                kind = "symlink" if member.issym() else "hardlink"
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is a {kind} to {member.linkname!r}, "
                    "outside the extraction target"
                )
            links.add("/".join(parts))
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"archive member {member.name!r} is a device or FIFO; refusing to extract it"
            )


def _check_zip(zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _member_parts(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"archive member {info.filename!r} is a symlink (refused)")


def _archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise ValueError(f"{path} is neither a zip nor a (compressed) tar archive")


def _move_into(src: Path, dest: Path) -> None:
    """Move the contents of ``src`` into ``dest``, merging directories, replacing files."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _move_into(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def safe_extract(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Extract a zip or tar(.gz/.xz/.bz2) into ``target``, refusing anything that escapes it."""
    archive, target = Path(archive), Path(target)
    kind = _archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf)
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tar:
                _check_tar(tar)
                try:
                    tar.extractall(tmp, filter="data")
                except tarfile.FilterError as exc:  # defence in depth; our checks ran first
                    raise UnsafeArchiveError(f"refused by tarfile's data filter: {exc}") from exc
                except TypeError:  # Python without extraction filters
                    tar.extractall(tmp)  # noqa: S202 - every member was checked above
        if target.exists():
            _move_into(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# layout, foreground masks and the whole data set


def check_layout(source: DatasetSource, root: str | os.PathLike[str]) -> list[str]:
    """Expected paths missing under ``root`` (empty when the layout is complete)."""
    root = Path(root)
    return [p for p in source.expected_paths() if not (root / p).exists()]


def _find_layout_root(tree: Path, source: DatasetSource, depth: int = 3) -> Path:
    """The directory inside an extracted tree that holds the data set (class folders)."""
    probes = source.expected_paths()
    frontier = [tree]
    for _ in range(depth + 1):
        for d in frontier:
            if probes and all((d / p).exists() for p in probes):
                return d
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir()]
    # Fallback: descend through single-directory wrappers (e.g. "BTech_Dataset_transformed/").
    d = tree
    while True:
        subdirs = [c for c in d.iterdir() if c.is_dir()]
        files = [c for c in d.iterdir() if not c.is_dir()]
        if len(subdirs) == 1 and not files:
            d = subdirs[0]
        else:
            return d


def _image_dirs(tree: Path) -> list[tuple[Path, int]]:
    out = []
    for dirpath, _, filenames in os.walk(tree):
        n = sum(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in filenames)
        if n:
            out.append((Path(dirpath), n))
    return out


def _best_mask_dir(tree: Path) -> Path | None:
    dirs = _image_dirs(tree)
    if not dirs:
        return None
    named = [d for d in dirs if "foreground" in d[0].name.lower()]
    return max(named or dirs, key=lambda d: d[1])[0]


def _place_foreground(tree: Path, source: DatasetSource, ds_root: Path) -> list[str]:
    """Move mask images from an extracted archive into the layout; return classes served."""
    placed: list[str] = []
    classes = source.classes or ("",)
    for cls in classes:
        if cls:
            candidates = [
                Path(p) / d
                for p, dirs, _ in os.walk(tree)
                for d in dirs
                if d.lower() == cls.lower()
            ]
            src = None
            for cand in candidates:
                src = _best_mask_dir(cand)
                if src is not None:
                    break
        else:
            src = _best_mask_dir(tree)
        if src is None:
            continue
        dest = ds_root / source.foreground_dir.format(cls=cls)
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                os.replace(f, dest / f.name)
        placed.append(cls or source.name)
    return placed


def _extract_to_temp(archive: Path, parent: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=parent))
    safe_extract(archive, tmp / "x")
    return tmp


def download_foreground(
    name: str,
    root: str | os.PathLike[str],
    progress: bool = True,
    archive: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Fetch (or take from ``archive``) the published foreground masks; return classes served."""
    source = _source(name)
    root = Path(root)
    ds_root = root / source.dirname
    if not source.foreground and archive is None:
        raise ManualDownloadError(
            f"No foreground masks are published for {name}; generate them with "
            f"`patchguard data foreground --dataset {name}` (textures: the whole image)."
        )
    downloads = root / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        files = [Path(archive)]
    else:
        files = []
        for item in source.foreground:
            if _is_drive_folder(item.url):
                raise _folder_error(
                    item.url, f"The {name} foreground-mask release", "--foreground-archive"
                )
            files.append(_fetch(item, downloads / item.filename, progress, f"{name} masks"))
    placed: list[str] = []
    for f in files:
        tmp = _extract_to_temp(f, root)
        try:
            placed += _place_foreground(tmp / "x", source, ds_root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not placed:
        raise LayoutError(
            f"the foreground-mask archive(s) {[str(f) for f in files]} held no mask images for "
            f"any class of {name} ({', '.join(source.classes) or 'single class'})"
        )
    return placed


def _source(name: str) -> DatasetSource:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"mvtecad": "mvtec", "dtdsynthetic": "dtd", "brats": "brats2021"}
    key = aliases.get(key, key)
    if key not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    progress: bool = True,
    archive: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    *,
    foreground: bool = True,
    foreground_archive: str | os.PathLike[str] | None = None,
    keep_archives: bool = False,
) -> Path:
    """Download (or take ``archive``), extract, check and mark a data set; return its root."""
    source = _source(name)
    root = Path(root)
    ds_root = root / source.dirname
    marker = ds_root / MARKER_NAME
    info = _read_marker(marker)
    if info is not None and info.get("dataset") == source.name:
        if foreground and foreground_archive is not None:
            info["foreground_classes"] = download_foreground(
                name, root, progress, foreground_archive
            )
            info["foreground_note"] = ""
            marker.write_text(json.dumps(info, indent=2))
        log.info("%s already prepared at %s (remove %s to redo)", source.name, ds_root, marker)
        return ds_root
    root.mkdir(parents=True, exist_ok=True)
    downloads = root / ".downloads"
    if archive is not None:
        items = [archive] if isinstance(archive, (str, os.PathLike)) else list(archive)
        files = [Path(a) for a in items]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"archive {f} does not exist")
    elif source.manual:
        raise ManualDownloadError(source.manual)
    else:
        files = [
            _fetch(item, downloads / item.filename, progress, f"The {source.name} archive")
            for item in source.archives
        ]
    for f in files:
        tmp = _extract_to_temp(f, root)
        try:
            _move_into(_find_layout_root(tmp / "x", source), ds_root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    missing = check_layout(source, ds_root)
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        )
        raise LayoutError(
            f"{source.name} at {ds_root} is incomplete after extraction; missing: {shown}"
        )
    fg_classes: list[str] = []
    fg_note = ""
    if foreground and (source.foreground or foreground_archive is not None):
        try:
            fg_classes = download_foreground(name, root, progress, foreground_archive)
        except ManualDownloadError as exc:
            fg_note = str(exc)
            warnings.warn(
                f"{source.name} is ready but its foreground masks were not fetched: {exc} "
                "Without them training generates masks automatically.",
                stacklevel=2,
            )
    marker.write_text(
        json.dumps(
            {
                "dataset": source.name,
                "archives": [f.name for f in files],
                "foreground_classes": fg_classes,
                "foreground_note": fg_note,
                "license": source.license,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
    )
    if not keep_archives and archive is None:
        for f in files:
            f.unlink(missing_ok=True)
    return ds_root
