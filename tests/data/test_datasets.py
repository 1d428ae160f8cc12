import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from patchguard.data.datasets import TestDataset, TrainDataset
from patchguard.data.images import read_image
from patchguard.data.layouts import load_records
from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator
from patchguard.data.records import DatasetError

from helpers.data import make_mvtec_class


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "RGB"])
def test_read_image_any_mode(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (7, 9), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (7, 9, 3), dtype=np.uint8)).convert(mode)
    img.save(tmp_path / "x.png")
    array = read_image(tmp_path / "x.png")
    assert array.shape == (7, 9, 3) and array.dtype == np.uint8
    if mode == "I;16":
        assert array.max() > 200  # the full 16-bit range maps to the full 8-bit range


def test_bad_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError, match="broken.png"):
        read_image(tmp_path / "broken.png")


def test_records_pair_masks_even_under_a_parent_named_test(tmp_path):
    root = tmp_path / "test" / "data"
    make_mvtec_class(root)
    records = load_records("mvtec", root, "widget", "test")
    assert len(records) == 8
    for record in records:
        if record.label:
            assert record.mask_path.parent == root / "widget" / "ground_truth" / "spot"
            assert record.mask_path.name == record.path.stem + "_mask.png"
        else:
            assert record.mask_path is None
    train = load_records("mvtec", root, "widget", "train")
    assert all(r.foreground_path.name == r.path.name for r in train)


def test_missing_mask_is_reported_by_name(tmp_path):
    make_mvtec_class(tmp_path)
    (tmp_path / "widget/ground_truth/spot/002_mask.png").unlink()
    with pytest.raises(DatasetError, match="002.png"):
        load_records("mvtec", tmp_path, "widget", "test")


def test_unknown_class_lists_the_classes_found(tmp_path):
    make_mvtec_class(tmp_path)
    with pytest.raises(DatasetError, match="widget"):
        load_records("mvtec", tmp_path, "gadget", "train")


def test_test_dataset_masks_and_labels(tmp_path):
    make_mvtec_class(tmp_path, size=80)
    dataset = TestDataset(load_records("mvtec", tmp_path, "widget", "test"), 64)
    assert dataset.has_pixel_masks
    samples = [dataset[i] for i in range(len(dataset))]
    for sample in samples:
        assert sample["image"].shape == (3, 64, 64) and sample["mask"].shape == (1, 64, 64)
        assert bool(sample["mask"].any()) == bool(sample["label"])


def test_mask_of_wrong_size_is_refused(tmp_path):
    make_mvtec_class(tmp_path, size=80)
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(
        tmp_path / "widget/ground_truth/spot/000_mask.png")
    with pytest.raises(DatasetError, match="000_mask.png"):
        load_records("mvtec", tmp_path, "widget", "test")  # refused up front
    records = load_records("mvtec", tmp_path, "widget", "test", validate=False)
    dataset = TestDataset(records, 64)
    index = next(i for i, r in enumerate(dataset.records) if r.path.name == "000.png" and r.label)
    with pytest.raises(DatasetError, match="000_mask.png"):
        dataset[index]


def _train_dataset(root, seed=0):
    records = load_records("mvtec", root, "widget", "train")
    return TrainDataset(records, 64, PseudoAnomalyGenerator(min_size=6), seed=seed)


def test_train_samples_mask_changed_pixels_inside_foreground(tmp_path):
    make_mvtec_class(tmp_path)
    dataset = _train_dataset(tmp_path)
    assert dataset.foreground_count == 8
    for i in range(len(dataset)):
        sample = dataset[i]
        changed = (sample["image"] != sample["pseudo_image"]).any(0)
        mask = sample["pseudo_mask"][0] > 0
        assert mask.any() and not (changed & ~mask).any()


def test_pseudo_anomalies_identical_for_any_worker_count(tmp_path):
    make_mvtec_class(tmp_path)
    dataset = _train_dataset(tmp_path)
    dataset.set_epoch(3)

    def collect(workers):
        loader = DataLoader(dataset, batch_size=3, num_workers=workers)
        return torch.cat([b["pseudo_image"] for b in loader])

    single = collect(0)
    assert torch.equal(single, collect(2))
    dataset.set_epoch(4)
    assert not torch.equal(single, collect(0))
