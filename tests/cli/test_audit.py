"""``patchguard audit`` end to end: the authors' tiny checkpoint served under the real Drive ids
of two MVTec AD classes by the local Drive-like server, tiny test data, tiny attack budgets."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from patchguard.authors.index import INDEX_ENV
from patchguard.cli import main
from patchguard.models.factory import load_model

from helpers.data import REFERENCE_DIR, make_mvtec_class
from helpers.drive_server import drive_server

pytestmark = pytest.mark.integration  # runs the command line end to end

IDS = {"bottle": "1vAV5zzVxx6SqLlirkP0kibEileHxKflz",  # the authors' download_weight.py
       "cable": "1mNWWZXmr07bsxOkSY2FerNPM5nSMFIz6"}
TINY_IMPORT = ["--backbone", "test_vit", "--image-size", "64", "--feature-layers", "6",
               "--reg-layers", "2", "4", "6"]
QUICK = ["--pgd-steps", "2", "--standard-apgd-steps", "2", "--standard-square-queries", "4",
         "--batch-size", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE_DIR / "original-tiny-reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_data") / "mvtec"
    for seed, name in enumerate(IDS):
        make_mvtec_class(root, name, n_train=1, n_good=2, n_bad=2, size=64, seed=seed)
    return root


@pytest.fixture
def drive(monkeypatch, reference):
    monkeypatch.delenv(INDEX_ENV, raising=False)
    buffer = io.BytesIO()
    torch.save(reference["state_dict"], buffer)
    with drive_server(monkeypatch) as state:
        for file_id in IDS.values():
            state.drive[file_id] = buffer.getvalue()
            state.confirm_ids.add(file_id)
        yield state


def _audit(data, out, *extra: str) -> int:
    return main(["audit", "--download", "--dataset", "mvtec", "--dataset-dir", str(data),
                 "--output-dir", str(out), *TINY_IMPORT, *QUICK, *extra])


def _row(rows, attack, epsilon):
    return next(r for r in rows if r["attack"] == attack and r["epsilon"] == epsilon)


@pytest.mark.slow
def test_audit_downloads_runs_both_sides_and_resumes(drive, data, tmp_path, capsys):
    out = tmp_path / "audit"
    # An audit cut short after its first class, then run for both: bottle is read back.
    assert _audit(data, out, "--class-name", "bottle") == 0
    stamp = (out / "bottle" / "audit.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _audit(data, out, "--classes", "bottle", "cable") == 0
    printed = capsys.readouterr().out
    assert "bottle: read back" in printed and "cable: auditing" in printed
    assert (out / "bottle" / "audit.json").stat().st_mtime_ns == stamp
    summary = json.loads((out / "audit.json").read_text())
    bottle = summary["classes"]["bottle"]
    rows = bottle["rows"]
    assert [(r["side"], r["attack"], r["epsilon"]) for r in rows] == [
        ("paper", "clean", 0.0), ("paper", "pgd", 4.0), ("paper", "pgd", 8.0),
        ("standard", "standard", 2.0), ("standard", "standard", 8.0)]
    assert _row(rows, "pgd", 8.0)["objective"] == "mask" and _row(rows, "pgd", 8.0)["steps"] == 2

    # The clean figure against sklearn on scores taken from the images directly.
    model, _ = load_model(out / "bottle" / "last.pt")
    files = sorted((data / "bottle" / "test").rglob("*.png"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(
        2, 0, 1).float() / 255 for f in files])
    scores = model.predict(images)[0].numpy()
    labels = [int(f.parent.name != "good") for f in files]
    assert _row(rows, "clean", 0.0)["image_auroc"] == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-6)
    # standard holds the paper's PGD (same steps, seed and draws): per image it is at least as
    # bad, so its image AUROC at 8/255 cannot be above the paper's attack's.
    for result in summary["classes"].values():
        paper, worst = _row(result["rows"], "pgd", 8.0), _row(result["rows"], "standard", 8.0)
        assert worst["image_auroc"] <= paper["image_auroc"] + 1e-9
        assert result["sanity"]["checks"]

    # The first line says how far standard moves each figure, in plain words.
    first = (out / "audit.md").read_text().splitlines()[0]
    means = {m: [np.mean([_row(r["rows"], a, 8.0)[m] for r in summary["classes"].values()])
                 for a in ("pgd", "standard")] for m in ("image_auroc", "pixel_auroc")}
    assert first.startswith("On 2 mvtec classes (means), standard moves the figures at 8/255")
    for metric, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
        paper, worst = means[metric]
        assert f"{label} from {paper:.3f} under the paper's PGD to {worst:.3f} " \
               f"({worst - paper:+.3f})" in first
    assert first == summary["summary"]
    text = (out / "audit.md").read_text()
    assert "### bottle" in text and "### cable" in text and "not citable" in text
    html = (out / "audit.html").read_text()
    assert first.replace("'", "&#x27;") in html

    # A rerun reads every class back and fetches nothing.
    requests = len(drive.requests)
    assert _audit(data, out, "--classes", "bottle", "cable") == 0
    assert capsys.readouterr().out.count("read back") == 2
    assert len(drive.requests) == requests
    # Other settings in the same folder are refused, not silently redone.
    assert _audit(data, out, "--class-name", "bottle", "--standard-apgd-steps", "3") == 2
    assert "made with other settings" in capsys.readouterr().err
    assert (out / "bottle" / "audit.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_audit_takes_a_local_authors_file_or_a_patchguard_checkpoint(drive, data, tmp_path,
                                                                     reference, capsys):
    original = tmp_path / "patchguard_mvtec_bottle.pth"
    torch.save(reference["state_dict"], original)
    common = ["--dataset", "mvtec", "--dataset-dir", str(data), "--class-name", "bottle",
              "--no-sanity", *TINY_IMPORT, *QUICK]
    assert main(["audit", "--checkpoint", str(original), "--output-dir",
                 str(tmp_path / "a"), *common]) == 0
    imported = tmp_path / "a" / "bottle" / "imported.pt"
    assert load_model(imported)[1]["imported_from"].endswith("patchguard_mvtec_bottle.pth")
    # Our own checkpoint format, audited the same way, gives the same figures.
    assert main(["audit", "--checkpoint", str(imported), "--output-dir",
                 str(tmp_path / "b"), *common]) == 0
    rows_a = json.loads((tmp_path / "a" / "bottle" / "audit.json").read_text())["rows"]
    rows_b = json.loads((tmp_path / "b" / "bottle" / "audit.json").read_text())["rows"]
    assert [r["image_auroc"] for r in rows_a] == [r["image_auroc"] for r in rows_b]
    assert "sanity checks: skipped" in (tmp_path / "b" / "audit.md").read_text()
    assert drive.requests == []


@pytest.mark.parametrize("argv, message", [
    (["--download", "--class-name", "bottel"], "is not a mvtec class"),
    (["--download", "--class-name", "zipper"], "the authors publish no checkpoint for mvtec"),
    (["--download", "--dataset", "btad", "--class-name", "01"], "no checkpoints for --dataset"),
    (["--checkpoint", "CKPT", "--class-name", "widget"], "has no folder in"),
    (["--checkpoint", "CKPT", "--classes", "bottle", "cable"], "several classes were given"),
])
def test_bad_requests_end_in_a_message_with_nothing_written(drive, data, tmp_path, capsys,
                                                            reference, argv, message):
    checkpoint = tmp_path / "patchguard_mvtec_bottle.pth"
    torch.save(reference["state_dict"], checkpoint)
    argv = [str(checkpoint) if a == "CKPT" else a for a in argv]
    dataset = ["--dataset", "mvtec"] if "--dataset" not in argv else []
    assert main(["audit", *argv, *dataset, "--dataset-dir", str(data), "--output-dir",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(re.escape(message), err) and "Traceback" not in err
    assert not (tmp_path / "out").exists() and drive.requests == []


@pytest.mark.slow
def test_audit_of_our_own_run_reads_its_data_and_class(tiny_data, tmp_path, capsys):
    from patchguard.training.trainer import train

    from helpers.models import tiny_config

    checkpoint = train(tiny_config(tiny_data, tmp_path / "run", epochs=1, steps_train=1),
                       progress=False)
    assert main(["audit", "--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "a"),
                 "--no-sanity", *QUICK]) == 0
    result = json.loads((tmp_path / "a" / "widget" / "audit.json").read_text())
    assert (result["dataset"], result["class_name"]) == ("mvtec", "widget")
    assert result["rows"][0]["n_images"] == 8 and result["dataset_dir"] == str(tiny_data)
    assert capsys.readouterr().out.count("On mvtec widget, standard moves") == 1


@pytest.mark.parametrize("fault, message", [
    ("page", "returned a page instead of file"),
    ("truncated", "is not a PatchGuard checkpoint and was deleted"),
])
def test_a_bad_download_stops_the_audit_with_nothing_written(drive, data, tmp_path, capsys,
                                                             fault, message):
    if fault == "page":
        drive.pages[IDS["bottle"]] = "Google Drive - Quota exceeded"
    else:
        drive.drive[IDS["bottle"]] = drive.drive[IDS["bottle"]][:4096]
    assert _audit(data, tmp_path / "out", "--class-name", "bottle") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
