"""examples/quickstart.ipynb executed end to end with nbclient on tiny data (a random tiny
ViT, a handful of demo images); its results checked against sklearn on the model's scores."""

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration  # runs the command line or a whole path end to end

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("skimage")  # the demo data set's textures

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs_on_tiny_data(tmp_path, monkeypatch):
    import torch
    from sklearn.metrics import roc_auc_score

    import patchguard
    from patchguard.models.factory import load_model

    out = tmp_path / "run"
    # The kernel is another process: it imports the patchguard under test, not another one.
    here = str(Path(patchguard.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("PATCHGUARD_QUICKSTART_TINY", "1")
    monkeypatch.setenv("PATCHGUARD_QUICKSTART_DIR", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Shipped without outputs, so that the file shows the code, not one machine's numbers.
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "img clean" in text and "image threshold:" in text
    figures = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 1  # the gallery, inline (patchguard left the kernel's backend alone)
    assert Image.open(io.BytesIO(base64.b64decode(figures[0]))).size[0] > 200
    assert (out / "report.html").is_file()
    # The notebook's clean image AUROC against sklearn on the checkpoint's own scores.
    last = out / "runs" / "adversarial" / "last.pt"
    rows = json.loads((out / "runs" / "adversarial" / "results.json").read_text())
    model, _ = load_model(last)
    test_dir = out / "data" / "washer" / "test"
    files = sorted(test_dir.glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.LANCZOS))
                       for f in files]) / 255.0
    scores, _ = model.predict(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    labels = [f.parent.name != "good" for f in files]
    assert rows[0]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores.numpy()),
                                                   abs=1e-9)
