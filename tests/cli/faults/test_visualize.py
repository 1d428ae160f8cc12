"""``visualize``: flags and the panels it writes.

Split by verb from the former tests/cli/test_faults.py; helpers and fixtures in
common.py and conftest.py beside this file.
"""

from __future__ import annotations

import pytest

from .common import (
    assert_names_key,
    assert_refused,
    digest,
)

# ============================================================================ visualize

VIS_BAD = [
    ("V-max-0", "max_images", ["--max-images", "0"], "0"),  # before: "error: division by zero"
    ("V-max-neg", "max_images", ["--max-images", "-2"], "-2"),  # before: numpy concatenate error
    ("V-eps-neg", "epsilon", ["--epsilon", "-8"], "-8"),  # before: silently clean-only panels
    ("V-eps-nan", "epsilon", ["--epsilon", "nan"], "nan"),  # before the fixes: silently clean-only
    ("V-steps-neg", "steps", ["--steps", "-1"], "-1"),  # before the fixes: accepted
]


@pytest.mark.parametrize("key,flags,value", [c[1:] for c in VIS_BAD],
                         ids=[c[0] for c in VIS_BAD])
def test_visualize_refuses_out_of_domain_flag(cli, finished_run, tmp_path, key, flags, value):
    out = tmp_path / "vis"
    result = cli("visualize", "--checkpoint", finished_run / "last.pt", "--device", "cpu",
                 "--quiet", "--steps", "1", "--output-dir", out, *flags)
    assert_refused(result, value)
    assert_names_key(result, key)
    assert not out.exists()


# ============================================================================ past failures


def test_visualize_leaves_a_folder_of_photos_alone(cli, finished_run, data, tmp_path):
    # Formerly (loss): visualize deleted every NNNN_*.png in its output folder.
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("0001_beach.png", "0002_mountain.png", "0000_good_000.png"):
        (photos / name).write_bytes(b"a photo")
    before = digest(photos)
    argv = ["visualize", "--checkpoint", finished_run / "last.pt", "--dataset-dir", data,
            "--device", "cpu", "--quiet", "--epsilon", "0", "--output-dir"]
    result = cli(*argv, photos)
    assert_refused(result, "--output-dir", "did not write", "--overwrite")
    assert digest(photos) == before
    # Its own folder: a rerun with fewer images removes only its own stale panels.
    own = tmp_path / "vis"
    assert cli(*argv, own).code == 0
    (own / "0099_mine.png").write_bytes(b"added by the user")
    assert cli(*argv, own, "--max-images", "1").code == 0
    names = sorted(p.name for p in own.glob("*.png"))
    assert names == ["0000_good_000.png", "0099_mine.png", "contact_sheet.png"], names
