"""``weights download``: what a bad answer from the server gives, through the local
Drive server of tests/drive_server.py.
"""

from __future__ import annotations

import pytest

from .common import assert_refused
from helpers.drive_server import drive_server
from helpers.models import TINY_BACKBONE, TINY_SIZE

IMPORT = ["--backbone", TINY_BACKBONE, "--image-size", str(TINY_SIZE), "--feature-layers", "3",
          "--reg-layers", "2", "3"]


@pytest.fixture
def server(monkeypatch):
    with drive_server(monkeypatch) as state:
        yield state


def _download(cli, tmp_path, url: str):
    return cli("weights", "download", "--dataset", "mvtec", "--class-name", "bottle",
               "--output-dir", tmp_path / "w", "--quiet", "--url", url, *IMPORT)


def test_an_html_page_is_never_advised_to_load_with_weights_only_false(cli, server, tmp_path):
    # Formerly: torch's advice to set weights_only=False (which runs the file's code) was
    # passed on for an HTML page saved as the checkpoint.
    server.files["/bottle.pth"] = b"<!DOCTYPE html><html><body>Sign in</body></html>"
    result = _download(cli, tmp_path, server.base + "/bottle.pth")
    assert_refused(result, "bottle", "HTML page")
    assert "weights_only" not in result.text, result


def test_a_404_is_not_retried_and_names_no_partial_file(cli, server, tmp_path):
    # Formerly: a 404 was retried 4 times and the message named a .part file that did not exist.
    result = _download(cli, tmp_path, server.base + "/nowhere.pth")
    assert_refused(result, "404")
    assert server.requests.count("/nowhere.pth") == 1, server.requests
    assert ".part" not in result.text, result
