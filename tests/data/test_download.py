"""Downloads against a local HTTP server on 127.0.0.1: resume, checksums, Drive, extraction."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.parse
import zipfile

import pytest

from patchguard.data import download as dl
from patchguard.data.download import transfer

from helpers.drive_server import DriveHandler, DriveState, drive_server


class _State(DriveState):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.drive_mode = "form"  # "form" or "cookie"


class _Handler(DriveHandler):
    """Drive as the data downloads meet it: every id confirms, then serves /drive-file."""

    state: _State

    def _record(self) -> None:
        self.state.requests.append((self.path, dict(self.headers)))

    def do_GET(self) -> None:  # noqa: N802
        st = self.state
        self._record()
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/uc":
            self._drive(query)
            return
        if url.path == "/usercontent":
            if query.get("confirm") == "t" and query.get("uuid") == "u-123":
                self._file(st.files["/drive-file"])
            else:
                self._send(403, b"bad confirm", "text/plain")
            return
        self._plain(url.path)

    def _drive(self, query: dict[str, str]) -> None:
        st = self.state
        if st.drive_mode == "cookie":
            if query.get("confirm") == "TOKEN42":
                self._file(st.files["/drive-file"])
            else:
                page = b"<html><title>Google Drive - Virus scan warning</title>too large</html>"
                self._send(
                    200,
                    page,
                    "text/html; charset=utf-8",
                    {"Set-Cookie": "download_warning_13058_abc=TOKEN42; Path=/"},
                )
            return
        page = (
            "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
            "<body><p>Google Drive can't scan this file for viruses.</p>"
            f'<form id="download-form" action="{st.base}/usercontent" method="get">'
            '<input type="submit" value="Download anyway"/>'
            f'<input type="hidden" name="id" value="{query.get("id", "")}">'
            '<input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="u-123"></form></body></html>'
        ).encode()
        self._send(200, page, "text/html; charset=utf-8")


@pytest.fixture
def server(monkeypatch):
    with drive_server(monkeypatch, _Handler, _State()) as state:
        yield state


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919 + i // 251) % 256 for i in range(n))


def test_full_download_with_checksum(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    out = dl.download_file(server.base + "/a.bin", tmp_path / "a.bin", _sha(data), progress=False)
    assert out.read_bytes() == data
    assert not (tmp_path / "a.bin.part").exists()
    md5 = hashlib.md5(data).hexdigest()
    out2 = dl.download_file(server.base + "/a.bin", tmp_path / "b.bin", md5=md5, progress=False)
    assert out2.read_bytes() == data


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    data = _payload()
    server.files["/big.bin"] = data
    server.cut_after = 100_000
    out = dl.download_file(
        server.base + "/big.bin", tmp_path / "big.bin", _sha(data), progress=False, chunk=4096
    )
    assert out.read_bytes() == data
    ranges = [h.get("Range") for p, h in server.requests if p == "/big.bin"]
    assert ranges == [None, "bytes=100000-"]


def test_interrupted_transfer_resumes_on_next_call(server, tmp_path):
    data = _payload()
    server.files["/big.bin"] = data
    server.cut_after = 12_345
    dest = tmp_path / "big.bin"
    with pytest.raises(dl.DownloadError, match="interrupted"):
        dl.download_file(server.base + "/big.bin", dest, _sha(data), progress=False, retries=0)
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 12_345 and not dest.exists()
    dl.download_file(server.base + "/big.bin", dest, _sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-1][1].get("Range") == "bytes=12345-"


def test_corrupted_archive_rejected_by_checksum(server, tmp_path):
    data = _payload(50_000)
    server.files["/c.zip"] = data
    server.corrupt.add("/c.zip")
    url = server.base + "/c.zip"
    with pytest.raises(dl.ChecksumError) as info:
        dl.download_file(url, tmp_path / "c.zip", _sha(data), progress=False)
    msg = str(info.value)
    assert url in msg and _sha(data) in msg
    assert not (tmp_path / "c.zip").exists() and not (tmp_path / "c.zip.part").exists()


def test_idempotent_no_second_request(server, tmp_path):
    data = _payload(10_000)
    server.files["/d.bin"] = data
    dest = tmp_path / "d.bin"
    dl.download_file(server.base + "/d.bin", dest, _sha(data), progress=False)
    n = len(server.requests)
    dl.download_file(server.base + "/d.bin", dest, _sha(data), progress=False)
    dl.download_file(server.base + "/d.bin", dest, progress=False)
    assert len(server.requests) == n


@pytest.mark.parametrize("mode", ["form", "cookie"])
def test_drive_confirm_token_dance(server, tmp_path, mode):
    data = _payload(70_000)
    server.files["/drive-file"] = data
    server.drive_mode = mode
    out = dl.drive_download("FILEID_1234567", tmp_path / "f.zip", _sha(data), progress=False)
    assert out.read_bytes() == data
    paths = [p for p, _ in server.requests]
    assert paths[0].startswith("/uc?") and "id=FILEID_1234567" in paths[0]
    if mode == "form":
        assert paths[-1].startswith("/usercontent?") and "uuid=u-123" in paths[-1]
    else:
        assert "confirm=TOKEN42" in paths[-1]
    n = len(server.requests)
    dl.drive_download("FILEID_1234567", tmp_path / "f.zip", _sha(data), progress=False)
    assert len(server.requests) == n


def test_drive_folder_link_needs_manual_download(tmp_path):
    link = "https://drive.google.com/drive/folders/1VHYcJUDja7o2xbYlh7YKYK_6EleizdoU"
    with pytest.raises(dl.ManualDownloadError, match="--archive"):
        dl.drive_download(link, tmp_path / "x.zip")
    assert dl.drive_file_id("https://drive.google.com/file/d/1P8yfNnfoFsb0Lv/view") == (
        "1P8yfNnfoFsb0Lv"
    )


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_zip_with_parent_member_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"ok.txt": b"fine", "../evil": b"pwned"}))
    with pytest.raises(dl.UnsafeArchiveError, match=r"\.\./evil"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "out").exists()


def test_tar_with_absolute_member_refused(tmp_path):
    archive = tmp_path / "abs.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("/tmp/abs-evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(dl.UnsafeArchiveError, match="absolute"):
        dl.safe_extract(archive, tmp_path / "out")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_with_link_outside_refused(tmp_path, kind):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/passwd")
        info.type = kind
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(dl.UnsafeArchiveError, match="data/passwd"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_symlink_inside_is_fine_and_write_through_link_refused(tmp_path):
    good = tmp_path / "good.tar.xz"
    with tarfile.open(good, "w:xz") as tar:
        f = tarfile.TarInfo("a/file.txt")
        f.size = 2
        tar.addfile(f, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("a/alias.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "file.txt"
        tar.addfile(link)
    out = dl.safe_extract(good, tmp_path / "out")
    assert (out / "a/alias.txt").read_text() == "hi"
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        link = tarfile.TarInfo("d")
        link.type = tarfile.SYMTYPE
        link.linkname = "."
        tar.addfile(link)
        f = tarfile.TarInfo("d/x")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    with pytest.raises(dl.UnsafeArchiveError, match="through the link"):
        dl.safe_extract(bad, tmp_path / "out2")


def _mvtec_like_zip(classes: tuple[str, ...], wrapper: str = "") -> bytes:
    members = {}
    for c in classes:
        for sub in ("train/good/000.png", "test/good/000.png", "ground_truth/x/000_mask.png"):
            members[f"{wrapper}{c}/{sub}"] = b"png"
    members[f"{wrapper}license.txt"] = b"licence"
    return _zip_bytes(members)


def test_download_dataset_end_to_end(server, tmp_path, monkeypatch):
    classes = ("alpha", "beta")
    payload = _mvtec_like_zip(classes, wrapper="Wrapped_Release/")
    fg = _zip_bytes({"masks/alpha/foreground_mask/000.png": b"fg", "masks/readme.txt": b"r"})
    server.files["/data.zip"] = payload
    server.files["/drive-file"] = fg
    source = dl.DatasetSource(
        name="toy",
        dirname="toy",
        classes=classes,
        required=("{cls}/train/good", "{cls}/test/good", "{cls}/ground_truth"),
        archives=(dl.Archive(server.base + "/data.zip", "data.zip", _sha(payload), "zip"),),
        foreground=(dl.Archive("gdrive:FGFILE_123456", "fg.zip"),),
    )
    monkeypatch.setitem(dl.DATASETS, "toy", source)
    root = dl.download_dataset("toy", tmp_path / "data", progress=False)
    assert root == tmp_path / "data" / "toy"
    assert (root / "alpha/train/good/000.png").read_bytes() == b"png"
    assert (root / "alpha/train/foreground_mask/000.png").read_bytes() == b"fg"
    assert not (root / "beta/train/foreground_mask").exists()
    marker = json.loads((root / dl.MARKER_NAME).read_text())
    assert marker["dataset"] == "toy" and marker["foreground_classes"] == ["alpha"]
    assert not (tmp_path / "data/.downloads/data.zip").exists()  # archives removed on success
    n = len(server.requests)
    assert dl.download_dataset("toy", tmp_path / "data", progress=False) == root
    assert len(server.requests) == n


def test_download_dataset_layout_check_and_manual(tmp_path, monkeypatch):
    # An archive of some complete classes (one per class, as mirrors ship MVTec AD) prepares
    # those classes; the data set is not marked complete.
    archive = tmp_path / "partial.zip"
    archive.write_bytes(_mvtec_like_zip(("bottle",)))
    root = dl.download_dataset("mvtec", tmp_path / "d", progress=False, archive=archive)
    assert (root / "bottle/train/good/000.png").is_file()
    assert not (tmp_path / "d/mvtec" / dl.MARKER_NAME).exists()
    # A class whose own layout is incomplete is still refused, and nothing of it moved in.
    broken = tmp_path / "broken.zip"
    broken.write_bytes(_zip_bytes({"cable/train/good/000.png": b"png",
                                   "cable/ground_truth/x/000_mask.png": b"png"}))
    with pytest.raises(dl.LayoutError, match="cable/test/good"):
        dl.download_dataset("mvtec", tmp_path / "d", progress=False, archive=broken)
    assert not (root / "cable").exists()
    with pytest.raises(dl.ManualDownloadError, match="kaggle"):
        dl.download_dataset("headct", tmp_path / "d", progress=False)
    with pytest.raises(dl.ManualDownloadError, match="--archive"):
        dl.download_dataset("dtd", tmp_path / "d", progress=False)


def test_manual_archive_with_folder_masks_warns(tmp_path):
    archive = tmp_path / "btad.zip"
    members = {}
    for c in ("01", "02", "03"):
        for sub in ("train/ok/0.bmp", "test/ok/0.bmp", "test/ko/0.bmp", "ground_truth/ko/0.png"):
            members[f"BTech_Dataset_transformed/{c}/{sub}"] = b"img"
    archive.write_bytes(_zip_bytes(members))
    with pytest.warns(UserWarning, match="Google Drive folder"):
        root = dl.download_dataset("btad", tmp_path / "d", progress=False, archive=archive)
    assert (root / "02/test/ko/0.bmp").exists()
    assert archive.exists()  # a user's own archive is never deleted
    fg = tmp_path / "fg.zip"
    fg.write_bytes(_zip_bytes({"BTAD_fg/01/000.png": b"m", "BTAD_fg/03/001.png": b"m"}))
    dl.download_dataset("btad", tmp_path / "d", progress=False, foreground_archive=fg)
    assert (root / "01/train/foreground_mask/000.png").exists()
    assert (root / "03/train/foreground_mask/001.png").exists()


def test_registry_entries_are_consistent():
    for key, src in dl.DATASETS.items():
        assert src.name == key and src.required
        assert src.manual or src.archives, key
        for a in (*src.archives, *src.foreground):
            if a.checksum:
                transfer._algorithm(a.checksum)
    assert dl.DATASETS["mvtec"].archives[0].checksum.startswith("cf4313b1")
    assert dl.DATASETS["brats2021"].manual and dl.DATASETS["headct"].manual


# ------------------------------------------------------- the authors' mask zips by file id

MVTEC_FG_ID = "18Ml7zpIw47wWhlV9OLYl3pWPeQTK1QiI"  # the authors' download_data.py
VISA_FG_ID = "1c4oLDSiuhmejGspI17TtgaggLSlNL-Pi"


@pytest.fixture
def real_drive(monkeypatch):
    """The local Drive answering only under real ids (Drive's 404 page for any other)."""
    with drive_server(monkeypatch) as state:
        yield state


def _toy_mvtec(monkeypatch, server, classes=("bottle", "cable")) -> bytes:
    """A two-class MVTec AD on the server, and the registry's real mask entry kept."""
    data = _mvtec_like_zip(classes, wrapper="mvtec_anomaly_detection/")
    server.files["/mvtec.zip"] = data
    real = dl.DATASETS["mvtec"]
    toy = dl.DatasetSource(
        name="mvtec", dirname="mvtec", classes=classes, required=real.required,
        archives=(dl.Archive(server.base + "/mvtec.zip", "mvtec.zip", _sha(data)),),
        foreground=real.foreground, foreground_dir=real.foreground_dir,
        foreground_layout=real.foreground_layout)
    monkeypatch.setitem(dl.DATASETS, "mvtec", toy)
    return data


def test_registry_fetches_the_authors_mask_zips_by_file_id():
    for name, file_id in (("mvtec", MVTEC_FG_ID), ("visa", VISA_FG_ID)):
        (archive,) = dl.DATASETS[name].foreground
        assert dl.drive_file_id(archive.url) == file_id
        assert dl.DATASETS[name].foreground_layout == "class_folders"
    assert dl.DATASETS["visa"].foreground_dir == "{cls}/Data/Images/foreground_mask"


def test_data_download_places_the_authors_mask_folders(real_drive, tmp_path, monkeypatch,
                                                      capsys):
    from patchguard.cli import main

    _toy_mvtec(monkeypatch, real_drive)
    # The authors' structure: one top-level folder per class, the masks inside.
    real_drive.drive[MVTEC_FG_ID] = _zip_bytes({"bottle/000.png": b"m0", "bottle/001.png": b"m1",
                                                "cable/000.png": b"c0"})
    real_drive.confirm_ids.add(MVTEC_FG_ID)
    assert main(["data", "download", "--dataset", "mvtec", "--root", str(tmp_path)]) == 0
    root = tmp_path / "mvtec"
    assert (root / "bottle/train/foreground_mask/001.png").read_bytes() == b"m1"
    assert (root / "cable/train/foreground_mask/000.png").read_bytes() == b"c0"
    assert (root / "bottle/train/good/000.png").read_bytes() == b"png"
    marker = json.loads((root / dl.MARKER_NAME).read_text())
    assert marker["foreground_classes"] == ["bottle", "cable"]
    assert any(f"id={MVTEC_FG_ID}" in p for p in real_drive.requests)
    n = len(real_drive.requests)
    assert main(["data", "download", "--dataset", "mvtec", "--root", str(tmp_path)]) == 0
    assert len(real_drive.requests) == n  # done: nothing fetched again


def test_visa_masks_go_under_data_images(real_drive, tmp_path, monkeypatch):
    real = dl.DATASETS["visa"]
    (tmp_path / "visa/candle/Data/Images/Normal").mkdir(parents=True)
    toy = dl.DatasetSource(name="visa", dirname="visa", classes=("candle", "pcb1"),
                           required=real.required, foreground=real.foreground,
                           foreground_dir=real.foreground_dir,
                           foreground_layout=real.foreground_layout)
    monkeypatch.setitem(dl.DATASETS, "visa", toy)
    real_drive.drive[VISA_FG_ID] = _zip_bytes({"candle/0000.png": b"v", "pcb1/0000.png": b"p"})
    assert dl.download_foreground("visa", tmp_path, progress=False) == ["candle"]
    assert (tmp_path / "visa/candle/Data/Images/foreground_mask/0000.png").read_bytes() == b"v"
    assert not (tmp_path / "visa/pcb1").exists()  # not in this (partial) data set: skipped


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case, message", [
    ("foreign_class", "that are not mvtec classes"),
    ("truncated", "truncated"),
    ("html_page", "returned a page instead of file"),
])
def test_bad_mask_downloads_end_in_a_message_and_leave_nothing(real_drive, tmp_path,
                                                               monkeypatch, capsys, case,
                                                               message):
    """The data set is prepared first (its masks cannot be fetched yet); a rerun fetches the
    masks and refuses what is wrong without touching the data set."""
    from patchguard.cli import main

    _toy_mvtec(monkeypatch, real_drive)
    with pytest.warns(UserWarning, match="foreground masks were not fetched"):
        dl.download_dataset("mvtec", tmp_path, progress=False)  # the id answers 404 here
    before = _snapshot(tmp_path)
    assert ".downloads" not in {p.split("/")[0] for p in before}
    good = _zip_bytes({"bottle/000.png": b"m", "cable/000.png": b"c"})
    if case == "foreign_class":
        real_drive.drive[MVTEC_FG_ID] = _zip_bytes({"bottle/0.png": b"m", "zebra/0.png": b"z"})
    elif case == "truncated":
        real_drive.drive[MVTEC_FG_ID] = good[: len(good) // 2]
    else:
        real_drive.pages[MVTEC_FG_ID] = "Google Drive - Quota exceeded"
    capsys.readouterr()
    assert main(["data", "download", "--dataset", "mvtec", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before  # nothing placed, nothing downloaded left behind
    # Once the id serves the right zip, the same command places the masks.
    real_drive.pages.clear()
    real_drive.drive[MVTEC_FG_ID] = good
    assert main(["data", "download", "--dataset", "mvtec", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "mvtec/cable/train/foreground_mask/000.png").read_bytes() == b"c"


def test_masks_only_for_a_data_set_extracted_by_hand(real_drive, tmp_path, capsys):
    """The real MVTec AD entry: masks into a data set that has no download marker."""
    from patchguard.cli import main

    (tmp_path / "mvtec/bottle/train/good").mkdir(parents=True)
    (tmp_path / "mvtec/bottle/train/foreground_mask").mkdir()
    (tmp_path / "mvtec/bottle/train/foreground_mask/001.png").write_bytes(b"mine")
    real_drive.drive[MVTEC_FG_ID] = _zip_bytes({"bottle/000.png": b"m0", "bottle/001.png": b"m1",
                                                "cable/000.png": b"c0"})
    assert main(["data", "download", "--dataset", "mvtec", "--root", str(tmp_path),
                 "--masks-only"]) == 0
    assert "placed for 1 class(es): bottle" in capsys.readouterr().out
    masks = tmp_path / "mvtec/bottle/train/foreground_mask"
    assert (masks / "000.png").read_bytes() == b"m0"
    assert (masks / "001.png").read_bytes() == b"mine"  # kept without --overwrite
    assert not (tmp_path / "mvtec/cable").exists()  # not in this data set: not created
