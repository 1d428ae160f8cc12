"""Is a model's missing robustness a generalisation gap or a training failure? Image AUROC of
normal against pseudo-anomalous images (the training probe's images and ``score`` objective),
clean, under FGSM and under PGD-10 from a random start, on training images and on the held-out
images, at 2/255 and 8/255.

Example (the figures in docs/robustness-study.md):
    OMP_NUM_THREADS=1 python benchmarks/robust_gap.py RUN/last.pt
Robust on training images but not on held-out ones: a generalisation gap (more data,
augmentation, fewer trained parameters). Not robust on training images either: the training
objective or attack does not fit the adversarial problem.
"""

from __future__ import annotations

import argparse
import json

import torch

from patchguard.config import TrainConfig
from patchguard.data.layouts import load_records
from patchguard.data.pseudo_anomaly import PseudoAnomalyGenerator
from patchguard.data.pseudo_anomaly.severity import min_patch_size
from patchguard.models.factory import load_model
from patchguard.training.heldout import probe_images, split_validation


def main() -> None:
    """Print one JSON line per image set and epsilon."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 8.0])
    parser.add_argument("--n-train", type=int, default=8, help="training images probed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, state = load_model(args.checkpoint, "cpu")
    config = TrainConfig.from_dict(state["config"], source=args.checkpoint)
    records = load_records(config.dataset, config.dataset_dir, config.class_name, "train")
    train, held_out = split_validation(records, config.val_fraction, config.seed)
    generator = PseudoAnomalyGenerator(
        min_patch_size(config.dataset, config.class_name, config.image_size),
        size_scale=config.pseudo_size_scale)
    for name, chosen in (("train", train[: args.n_train]), ("held_out", held_out)):
        if not chosen:
            print(json.dumps({"images": name, "note": "none (val_fraction 0)"}))
            continue
        probe = probe_images(chosen, chosen, config, generator, model.patch_size,
                             torch.device("cpu"))
        for eps in args.epsilons:
            probe.epsilon = eps / 255.0
            result = {k: round(v, 3) for k, v in probe.measure(model).items()}
            print(json.dumps({"images": name, "n_normal": len(chosen), "epsilon": eps,
                              **result}), flush=True)


if __name__ == "__main__":
    main()
