"""The authors' per-class checkpoints fetched from a local server that answers like Google Drive
(confirm page included), imported, and used by ``test``; ``--download`` for train and test.

The served files are in the authors' format: the tiny reference model's state dict as their
``save_model`` writes it, and a state dict with every key and shape of their default ViT-S/14
model (tests/fixtures/reference/).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import pytest
import torch

from patchguard.authors.index import (
    DRIVE_FOLDERS,
    INDEX_ENV,
    KNOWN_FILES,
    read_index,
    resolve_weights,
)
from patchguard.cli import main
from patchguard.data import download as dl
from patchguard.models.factory import load_model
from patchguard.utils.checks import InputError

from helpers.data import REFERENCE_DIR, make_mvtec_class
from helpers.drive_server import drive_server

TINY_ID = "TINYFILE_0001"
TINY_IMPORT = ["--backbone", "test_vit", "--image-size", "64", "--feature-layers", "6",
               "--reg-layers", "2", "4", "6"]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE_DIR / "original-tiny-reference.pt", weights_only=True)


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture
def drive(monkeypatch, reference):
    with drive_server(monkeypatch) as state:
        state.drive[TINY_ID] = _saved(reference["state_dict"])
        state.confirm_ids.add(TINY_ID)  # large files go through the virus-scan page
        yield state


def _download(tmp_path, *extra: str) -> int:
    return main(["weights", "download", "--dataset", "mvtec", "--class-name", "bottle",
                 "--output-dir", str(tmp_path / "w"), "--quiet", *TINY_IMPORT, *extra])


def test_download_through_the_confirm_page_reproduces_the_authors_outputs(
        drive, tmp_path, reference, capsys):
    assert _download(tmp_path, "--drive-id", TINY_ID) == 0
    folder = tmp_path / "w" / "bottle"
    assert (folder / "patchguard_mvtec_bottle.pth").read_bytes() == drive.drive[TINY_ID]
    paths = [p.split("?")[0] for p in drive.requests]
    assert paths == ["/uc", "/usercontent"]  # the warning page, then its form
    model, state = load_model(folder / "last.pt")
    assert state["imported_from"] == "original PatchGuard checkpoint patchguard_mvtec_bottle.pth"
    assert (state["config"]["dataset"], state["config"]["class_name"]) == ("mvtec", "bottle")
    with torch.no_grad():
        logits = model(reference["images"], with_attention=False).logits
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-5)
    scores, maps = model.predict(reference["images"])
    torch.testing.assert_close(scores, reference["image_scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(maps, reference["maps"], rtol=0, atol=1e-5)
    assert f"checkpoint: {folder / 'last.pt'}" in capsys.readouterr().out

    # A second run fetches nothing and keeps the checkpoint.
    stamp = (folder / "last.pt").stat().st_mtime_ns
    assert _download(tmp_path, "--drive-id", TINY_ID) == 0
    assert len(drive.requests) == 2 and (folder / "last.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_test_takes_the_downloaded_checkpoint_directly(drive, tmp_path, tiny_data):
    assert _download(tmp_path, "--drive-id", TINY_ID) == 0
    checkpoint = tmp_path / "w" / "bottle" / "last.pt"
    assert main(["test", "--checkpoint", str(checkpoint), "--dataset-dir", str(tiny_data),
                 "--class-name", "widget", "--epsilon-test", "0", "2", "--steps-test", "1",
                 "--device", "cpu", "--quiet"]) == 0
    rows = json.loads((checkpoint.parent / "results.json").read_text())
    assert [row["epsilon"] for row in rows] == [0.0, 2.0]
    assert all(0.0 <= row["image_auroc"] <= 1.0 for row in rows)


def test_index_file_and_environment_variable(drive, tmp_path, monkeypatch):
    sha = hashlib.sha256(drive.drive[TINY_ID]).hexdigest()
    index = tmp_path / "ids.json"
    index.write_text(json.dumps({"mvtec": {"bottle": {"id": TINY_ID, "sha256": sha}},
                                 "visa": {"pcb1": "https://drive.google.com/file/d/"
                                          "PCB1FILE_9999/view?usp=drive_link"}}))
    monkeypatch.setenv(INDEX_ENV, str(index))
    assert _download(tmp_path) == 0
    entry = resolve_weights("visa", "pcb1")
    assert (entry.drive_id, entry.source) == ("PCB1FILE_9999", f"index {index}")
    flat = tmp_path / "flat.yaml"
    flat.write_text("bottle: https://example.invalid/bottle.pth\n")
    assert read_index(flat, "mvtec")["bottle"].url == "https://example.invalid/bottle.pth"
    # A flag wins over the index.
    assert resolve_weights("mvtec", "bottle", drive_id="OTHERFILE_123").drive_id == \
        "OTHERFILE_123"


def test_plain_url_and_checksum_mismatch(drive, tmp_path, capsys):
    drive.files["/bottle.pth"] = drive.drive[TINY_ID]
    wrong = "0" * 64
    assert _download(tmp_path, "--url", drive.base + "/bottle.pth", "--sha256", wrong) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "w" / "bottle" / "patchguard_mvtec_bottle.pth").exists()
    right = hashlib.sha256(drive.files["/bottle.pth"]).hexdigest()
    assert _download(tmp_path, "--url", drive.base + "/bottle.pth", "--sha256", right) == 0


BOTTLE_ID = "1vAV5zzVxx6SqLlirkP0kibEileHxKflz"  # the authors' download_weight.py
PCB1_ID = "1nuBmi4J2mNHvYoVO1AFuzTt-nymDEKCq"


def test_registry_holds_the_authors_ids(monkeypatch):
    monkeypatch.delenv(INDEX_ENV, raising=False)
    ids = {key: entry.drive_id for key, entry in KNOWN_FILES.items()}
    assert ids[("mvtec", "bottle")] == BOTTLE_ID and ids[("visa", "pcb1")] == PCB1_ID
    published = {key for key, file_id in ids.items() if file_id}
    assert len([k for k in published if k[0] == "mvtec"]) == 14
    assert len([k for k in published if k[0] == "visa"]) == 12
    assert ids[("mvtec", "zipper")] is None  # the authors never published it
    assert len(set(ids.values()) - {None}) == 26  # no id serves two classes
    assert all(re.fullmatch(r"1[A-Za-z0-9_-]{32}", i) for i in set(ids.values()) - {None})


@pytest.fixture
def real_ids(monkeypatch, reference):
    """The local Drive answering only under the authors' real ids (404 for any other)."""
    monkeypatch.delenv(INDEX_ENV, raising=False)
    with drive_server(monkeypatch) as state:
        state.drive[BOTTLE_ID] = _saved(reference["state_dict"])
        state.confirm_ids.add(BOTTLE_ID)
        state.drive[PCB1_ID] = _saved(reference["state_dict"])
        yield state


def test_download_by_the_shipped_id_records_the_digest_on_first_use(
        real_ids, tmp_path, reference, capsys):
    assert _download(tmp_path) == 0  # no --drive-id
    assert [p.split("?")[0] for p in real_ids.requests] == ["/uc", "/usercontent"]
    assert f"id={BOTTLE_ID}" in real_ids.requests[0]
    folder = tmp_path / "w" / "bottle"
    model, state = load_model(folder / "last.pt")
    digest = hashlib.sha256(real_ids.drive[BOTTLE_ID]).hexdigest()
    summary = state["train_summary"]
    assert summary["original_sha256"] == digest
    assert "trust on first use" in summary["original_sha256_note"]
    assert BOTTLE_ID in summary["original_location"]
    from patchguard.inference.card import model_card

    assert digest in model_card(state)
    with torch.no_grad():
        logits = model(reference["images"], with_attention=False).logits
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-5)
    # VisA too, by its own id (a plain answer, no confirm page).
    assert main(["weights", "download", "--dataset", "visa", "--class-name", "pcb1",
                 "--output-dir", str(tmp_path / "v"), "--quiet", *TINY_IMPORT]) == 0
    assert f"id={PCB1_ID}" in real_ids.requests[-1]

    # Trust on first use: the .pth is fetched again only if it is the file imported first.
    (folder / "patchguard_mvtec_bottle.pth").unlink()
    stamp = (folder / "last.pt").stat().st_mtime_ns
    real_ids.drive[BOTTLE_ID] = _saved({k: v + 1 for k, v in reference["state_dict"].items()})
    capsys.readouterr()
    assert _download(tmp_path) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert (folder / "last.pt").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mvtec", "--class-name", "zipper"],
     "the authors publish no checkpoint for mvtec zipper"),
    (["--dataset", "mpdd", "--class-name", "tubes"],
     "the authors publish no checkpoints for --dataset mpdd"),
    (["--dataset", "mvtec", "--class-name", "bottel"], "is not a mvtec class"),
])
def test_unpublished_and_unknown_classes_say_so(real_ids, tmp_path, capsys, argv, message):
    assert main(["weights", "download", *argv, "--output-dir", str(tmp_path / "w"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert real_ids.requests == [] and not (tmp_path / "w").exists()


def test_an_html_page_or_a_truncated_file_leaves_nothing(real_ids, tmp_path, capsys):
    real_ids.pages[BOTTLE_ID] = "Google Drive - Quota exceeded"
    assert _download(tmp_path) == 2
    err = capsys.readouterr().err
    assert "returned a page instead of file" in err and "Quota exceeded" in err
    assert not (tmp_path / "w").exists()
    del real_ids.pages[BOTTLE_ID]
    real_ids.drive[BOTTLE_ID] = real_ids.drive[BOTTLE_ID][:5000]  # cut short
    assert _download(tmp_path) == 2
    assert "is not a PatchGuard checkpoint and was deleted" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("extra, message", [
    (["--drive-id", "https://drive.google.com/drive/folders/1Wn_1cE700ORpRmSfDzOfOpYyhAjxsyHr"],
     "is a Google Drive folder, not a file"),
    (["--drive-id", "short"], "is not a Google Drive file id"),
    (["--drive-id", TINY_ID, "--url", "http://127.0.0.1/x"], "cannot be combined"),
    (["--sha256", "abc", "--drive-id", TINY_ID], "sha256 hex digest"),
])
def test_bad_locations_are_refused_before_any_request(drive, tmp_path, capsys, extra, message):
    assert _download(tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert drive.requests == []


def test_bad_class_index_and_answers(drive, tmp_path, capsys):
    assert main(["weights", "download", "--dataset", "mvtec", "--class-name", "pcb1",
                 "--drive-id", TINY_ID]) == 2
    assert "is not a mvtec class" in capsys.readouterr().err
    bad_index = tmp_path / "bad.json"
    bad_index.write_text(json.dumps({"mvtec": {"bottel": TINY_ID}}))
    assert _download(tmp_path, "--index", str(bad_index)) == 2
    assert "bottel" in capsys.readouterr().err
    # A missing id (Drive's 404 page) and a file that is not a checkpoint.
    assert _download(tmp_path, "--drive-id", "MISSINGFILE_1") == 2
    assert "HTTP 404" in capsys.readouterr().err
    drive.drive["NOTAPTHFILE_1"] = b"<not a checkpoint>" * 100
    assert _download(tmp_path, "--drive-id", "NOTAPTHFILE_1") == 2
    assert "is not a PatchGuard checkpoint and was deleted" in capsys.readouterr().err
    assert not (tmp_path / "w" / "bottle" / "patchguard_mvtec_bottle.pth").exists()


def test_an_unrelated_checkpoint_is_not_replaced(drive, tmp_path, capsys):
    target = tmp_path / "w" / "bottle" / "last.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone's training run")
    assert _download(tmp_path, "--drive-id", TINY_ID) == 2
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"someone's training run"
    assert _download(tmp_path, "--drive-id", TINY_ID, "--overwrite") == 0
    assert load_model(target)[1]["imported_from"].endswith("patchguard_mvtec_bottle.pth")


def test_weights_list(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(INDEX_ENV, raising=False)
    index = tmp_path / "ids.yaml"
    index.write_text("mvtec:\n  cable: CABLEFILE_123\n")
    assert main(["weights", "list", "--dataset", "mvtec", "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cable\s+patchguard_mvtec_cable.pth\s+Drive file CABLEFILE_123", out)
    assert re.search(rf"bottle\s+patchguard_mvtec_bottle.pth\s+Drive file {BOTTLE_ID} "
                     r"\(the authors' download_weight.py\)", out)
    assert re.search(r"zipper\s+patchguard_mvtec_zipper.pth\s+not published", out)
    assert "mpdd" in out and "trust on first use" in out
    assert DRIVE_FOLDERS["mvtec"] in out


def _tar_of_class(root) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root / "bottle", arcname="mvtec_release/bottle")
    return buffer.getvalue()


def _vits14_state() -> dict[str, torch.Tensor]:
    """A state dict with every key and shape of the authors' default model (zeros)."""
    state = {}
    for line in (REFERENCE_DIR / "original-vits14-state-dict-keys.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = re.match(r"(\S+) \(([\d, ]*)\) \S+$", line).groups()
            state[key] = torch.zeros([int(v) for v in shape.split(",") if v.strip()])
    return state


@pytest.mark.slow
def test_train_and_test_download_data_and_the_authors_vits14_weights(
        drive, tmp_path, monkeypatch):
    """--download: the data set when the class is missing, then the authors' default-model
    checkpoint (every key of their ViT-S/14 list) when --checkpoint is missing."""
    make_mvtec_class(tmp_path / "src", "bottle", n_train=4, n_good=2, n_bad=2, size=64)
    drive.files["/mvtec.tar.gz"] = _tar_of_class(tmp_path / "src")
    toy = dl.DatasetSource(
        name="mvtec", dirname="mvtec", classes=("bottle",),
        required=("{cls}/train/good", "{cls}/test/good", "{cls}/ground_truth"),
        archives=(dl.Archive(drive.base + "/mvtec.tar.gz", "mvtec.tar.gz"),))
    monkeypatch.setitem(dl.DATASETS, "mvtec", toy)
    data_dir = tmp_path / "datasets" / "mvtec"
    assert main(["train", "--download", "--dataset", "mvtec", "--dataset-dir", str(data_dir),
                 "--class-name", "bottle", "--output-dir", str(tmp_path / "run"),
                 "--backbone", "test_vit", "--no-pretrained", "--image-size", "64",
                 "--feature-layers", "3", "--reg-layers", "2", "3", "--reg-coefficients", "0.01",
                 "0.05", "--epochs", "1",
                 "--batch-size", "4", "--steps-train", "1", "--workers", "0", "--device", "cpu",
                 "--quiet"]) == 0
    assert (data_dir / "bottle" / "train" / "good" / "000.png").is_file()
    assert (tmp_path / "run" / "last.pt").is_file()

    drive.drive["VITS14FILE_01"] = _saved(_vits14_state())
    drive.confirm_ids.add("VITS14FILE_01")
    index = tmp_path / "ids.json"
    index.write_text(json.dumps({"mvtec": {"bottle": "VITS14FILE_01"}}))
    monkeypatch.setenv(INDEX_ENV, str(index))
    checkpoint = tmp_path / "w" / "bottle" / "last.pt"
    requests = len(drive.requests)
    assert main(["test", "--download", "--checkpoint", str(checkpoint), "--dataset", "mvtec",
                 "--class-name", "bottle", "--dataset-dir", str(data_dir), "--epsilon-test", "0",
                 "--device", "cpu", "--quiet"]) == 0
    assert [p.split("?")[0] for p in drive.requests[requests:]] == ["/uc", "/usercontent"]
    model, state = load_model(checkpoint)
    config = state["config"]
    assert (config["backbone"], config["image_size"], config["feature_layers"]) == (
        "vit_small_patch14_dinov2.lvd142m", 224, [12])
    assert len(state["model"]) == 187  # every key of the authors' model, none of ours left
    rows = json.loads((checkpoint.parent / "results.json").read_text())
    assert rows[0]["attack"] == "clean" and rows[0]["n_images"] == 4


def test_download_refuses_a_dataset_dir_of_another_name(tmp_path, capsys):
    assert main(["train", "--download", "--dataset", "mvtec", "--dataset-dir",
                 str(tmp_path / "my_data"), "--class-name", "bottle", "--output-dir",
                 str(tmp_path / "run")]) == 2
    assert "a folder named 'mvtec'" in capsys.readouterr().err
    with pytest.raises(InputError, match="not a visa class"):
        read_index_entry = tmp_path / "i.json"
        read_index_entry.write_text(json.dumps({"visa": {"bottle": TINY_ID}}))
        read_index(read_index_entry, "visa")
