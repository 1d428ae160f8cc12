"""``--logger tensorboard|mlflow|csv``: a training run and a test logged, then read back with
TensorBoard's own event reader, the csv module and MLflow's client (each skipped when its
package is missing) and compared with ``train_log.jsonl`` and the results file."""

import csv
import json
import logging

import pytest

from patchguard import tracking
from patchguard.cli import main
from patchguard.tracking import Tracker, Trackers

from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE

TINY_FLAGS = [
    "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
    "--feature-layers", "3", "--reg-layers", "2", "3", "--reg-coefficients", "0.01", "0.05",
    "--epochs", "2", "--batch-size", "4", "--steps-train", "2", "--workers", "0",
    "--device", "cpu", "--quiet",
]
TRAIN_KEYS = ("loss", "clean", "pseudo", "adv_clean", "adv_pseudo", "lr", "images_per_s")


def _loggers():
    names = ["csv"]
    try:
        tracking.check_loggers(["tensorboard"])
        names.append("tensorboard")
    except ModuleNotFoundError:
        pass
    return names


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    make_mvtec_class(root / "data")
    loggers = _loggers()
    assert main(["train", "--dataset", "mvtec", "--dataset-dir", str(root / "data"),
                 "--class_name", "widget", "--output-dir", str(root / "run"), *TINY_FLAGS,
                 "--logger", *loggers]) == 0
    assert main(["test", "--checkpoint", str(root / "run" / "last.pt"), "--epsilon-test", "8",
                 "--steps-test", "1", "--gallery", "0", "--json", str(root / "out" / "r.json"),
                 "--quiet", "--no-record", "--logger", *loggers,
                 "--log-dir", str(root / "run" / "logs")]) == 0
    return root


def _epochs(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _csv(path):
    out = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            out.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return out


@pytest.mark.slow
def test_csv_holds_every_epoch_and_result_row(logged):
    epochs = _epochs(logged / "run")
    metrics = _csv(logged / "run" / "logs" / "csv" / "train" / "metrics.csv")
    for key in TRAIN_KEYS:
        assert metrics[f"train/{key}"] == [(e["epoch"], e[key]) for e in epochs]
    rows = json.loads((logged / "out" / "r.json").read_text())
    test = _csv(logged / "run" / "logs" / "csv" / "test" / "metrics.csv")
    assert test["test/image_auroc/clean"] == [(2, rows[0]["image_auroc"])]
    assert test["test/pixel_auroc/pgd_eps8"] == [(2, rows[1]["pixel_auroc"])]
    assert test["test/images_per_s"][0][1] > 0
    with (logged / "run" / "logs" / "csv" / "test" / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["image_auroc"]) for r in table] == [r["image_auroc"] for r in rows]


@pytest.mark.slow
def test_tensorboard_events_read_back(logged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = _epochs(logged / "run")
    train = EventAccumulator(str(logged / "run" / "logs" / "tensorboard" / "train"))
    train.Reload()
    for key in TRAIN_KEYS:
        events = train.Scalars(f"train/{key}")
        assert [e.step for e in events] == [e["epoch"] for e in epochs]
        assert [e.value for e in events] == pytest.approx([e[key] for e in epochs], rel=1e-6)
    rows = json.loads((logged / "out" / "r.json").read_text())
    test = EventAccumulator(str(logged / "run" / "logs" / "tensorboard" / "test"))
    test.Reload()
    for row, setting in zip(rows, ("clean", "pgd_eps8")):
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            (event,) = test.Scalars(f"test/{metric}/{setting}")
            assert event.step == 2 and event.value == pytest.approx(row[metric], rel=1e-6)
    assert "test/results/text_summary" in test.Tags()["tensors"]


def test_resumed_run_keeps_one_value_per_epoch(logged, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(logged / "run", run)
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "3", "--quiet",
                 "--logger", "csv"]) == 0
    metrics = _csv(run / "logs" / "csv" / "train" / "metrics.csv")
    assert [step for step, _ in metrics["train/loss"]] == [1, 2, 3]
    assert [v for _, v in metrics["train/loss"]] == [e["loss"] for e in _epochs(run)]


def test_python_api_takes_loggers(tmp_path):
    import patchguard

    from helpers.models import tiny_config

    make_mvtec_class(tmp_path / "data", n_train=4)
    config = tiny_config(tmp_path / "data", tmp_path / "run", epochs=1)
    patchguard.train(config, progress=False, loggers=["csv"], log_dir=tmp_path / "logs")
    metrics = _csv(tmp_path / "logs" / "csv" / "train" / "metrics.csv")
    assert metrics["train/loss"] == [(1, _epochs(tmp_path / "run")[0]["loss"])]


def test_missing_package_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tracking._PACKAGES, "mlflow", ("no_such_module_pg", "mlflow"))
    code = main(["train", "--dataset-dir", str(tmp_path / "nothing"), "--class-name", "x",
                 "--output-dir", str(tmp_path / "run"), "--logger", "mlflow", "--quiet"])
    assert code == 2
    assert "pip install 'patchguard[mlflow]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_failing_tracker_is_dropped_with_a_warning(caplog):
    class Broken(Tracker):
        name = "broken"

        def scalars(self, values, step):
            raise OSError("disk full")

    class Kept(Tracker):
        name = "kept"
        seen = []

        def scalars(self, values, step):
            self.seen.append((step, values))

    trackers = Trackers([Broken(), Kept()])
    with caplog.at_level(logging.WARNING, logger="patchguard"):
        trackers.scalars({"a": 1.0}, 1)
        trackers.scalars({"a": 2.0}, 2)
    assert Kept.seen == [(1, {"a": 1.0}), (2, {"a": 2.0})]
    assert sum("broken failed" in r.message for r in caplog.records) == 1


def test_mlflow_run_read_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # nothing may land in the working directory
    rows = [{"attack": "clean", "epsilon": 0.0, "image_auroc": 0.75},
            {"attack": "pgd", "epsilon": 8.0, "objective": "mask", "image_auroc": 0.25}]
    with tracking.open_trackers(["mlflow"], tmp_path, "test") as trackers:
        trackers.params({"epochs": 2})
        trackers.scalars({"train/loss": 1.5}, 1)
        trackers.results(rows, 2)
        run_id = trackers.trackers[0].run.info.run_id
        trackers_uri = trackers.trackers[0].tracking_uri
    assert str(tmp_path / "mlflow") in trackers_uri and not any((tmp_path / "cwd").iterdir())
    client = MlflowClient(trackers_uri)
    run = client.get_run(run_id)
    assert run.data.params["epochs"] == "2"
    assert run.data.metrics["test/image_auroc/pgd_eps8"] == 0.25
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [
        (1, 1.5)]
    assert "test_results_2.md" in [a.path for a in client.list_artifacts(run_id)]
