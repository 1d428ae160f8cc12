"""Evaluation speed, side by side: this tree against main's commit a0df06f (before the speed work).

One full evaluation (``evaluate``: a clean pass and PGD-10 at 8/255, every metric: image and
pixel AUROC, AP, F1-max and AUPRO) of a generated MVTec-layout test set is timed for each
implementation in its own process, alternating A and B; a fresh test-set object per call, so
nothing decoded in one call helps the next. The figures are test images per second of the
whole evaluation and their ratio. Random initialisation. Printed, not asserted.

Settings: paper224 (224 px, feature layer 12) and fast (112 px, feature layer 6), both
attacked with PGD-10 at 8/255 (the paper's evaluation attack).

Examples:
    python benchmarks/bench_eval.py --settings paper224 fast --threads 1 --cpus 1
    python benchmarks/bench_eval.py --epsilons 0 2 4 8 --images 16   # more passes per decode
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sidebyside  # noqa: E402

SETTINGS = {
    "paper224": {"preset": "paper", "image_size": 224},
    "fast": {"preset": "fast", "image_size": 112},
}


# ----------------------------------------------------------------------------- worker side


class Evaluation:
    """A model and a test-set folder for one setting in this process's patchguard."""

    def __init__(self, cmd: dict) -> None:
        import torch

        self.pg = sidebyside.api()
        values = dict(SETTINGS[cmd["setting"]])
        preset = values.pop("preset")
        values.update({"pretrained": False, "device": cmd["device"], **cmd.get("extra", {})})
        known = set(self.pg.TrainConfig.__dataclass_fields__)
        self.config = self.pg.build_config(preset, overrides={k: v for k, v in values.items()
                                                               if k in known})
        self.device = torch.device(cmd["device"])
        torch.manual_seed(0)
        self.model, _ = self.pg.build_model(self.config, load_weights=False)
        self.model.to(self.device).eval()
        self.root = cmd["root"]
        self.cmd = cmd

    def run(self) -> tuple[float, list[dict]]:
        """Seconds of one whole evaluation, and its rows."""
        records = self.pg.load_records("mvtec", self.root, self.cmd.get("class_name", "bottle"),
                                       "test")
        dataset = self.pg.TestDataset(records, self.config.image_size)  # fresh: no cache
        sidebyside.synchronize(self.device)
        started = sidebyside.timer()
        # Keywords only: the old positional order and today's settings value both take them.
        rows = self.pg.evaluate(self.model, dataset, epsilons=self.cmd["epsilons"],
                                steps=self.cmd["steps"], batch_size=self.cmd["batch_size"],
                                device=self.device, workers=self.cmd["workers"],
                                progress=False)
        sidebyside.synchronize(self.device)
        return sidebyside.timer() - started, rows


_EVALUATIONS: dict[str, Evaluation] = {}


def _evaluation(cmd: dict) -> Evaluation:
    key = cmd["setting"]
    if key not in _EVALUATIONS:
        _EVALUATIONS.clear()
        _EVALUATIONS[key] = Evaluation(cmd)
    return _EVALUATIONS[key]


def _setup(cmd: dict) -> dict:
    started = sidebyside.timer()
    evaluation = _evaluation(cmd)
    for _ in range(cmd["warmup"]):
        evaluation.run()
    return {"seconds": [sidebyside.timer() - started], "layout": evaluation.pg.layout}


def _time(cmd: dict) -> dict:
    seconds, rows = _evaluation(cmd).run()
    keep = ("attack", "epsilon", "image_auroc", "pixel_auroc", "aupro", "n_images")
    return {"seconds": [seconds], "rows": [{k: r.get(k) for k in keep} for r in rows]}


def worker() -> None:
    """Serve the driver's commands."""
    sidebyside.serve({"setup": _setup, "time": _time})


# ----------------------------------------------------------------------------- driver side


def make_test_set(root: Path, n: int, size: int) -> None:
    """An MVTec-layout 'bottle' test split: n/2 good images, n/2 with a bright square and its
    mask; smooth random textures of size x size (MVTec's are 700 to 1024 px)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    cls = root / "bottle"
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cls / sub).mkdir(parents=True, exist_ok=True)

    def texture() -> np.ndarray:
        coarse = rng.integers(0, 255, (size // 32, size // 32, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC)).copy()

    Image.fromarray(texture()).save(cls / "train/good/000.png")
    for i in range(n - n // 2):
        Image.fromarray(texture()).save(cls / f"test/good/{i:03d}.png")
    for i in range(n // 2):
        image, mask = texture(), np.zeros((size, size), np.uint8)
        y, x = rng.integers(size // 8, size // 2, 2)
        image[y : y + size // 5, x : x + size // 5] = 250
        mask[y : y + size // 5, x : x + size // 5] = 255
        Image.fromarray(image).save(cls / f"test/spot/{i:03d}.png")
        Image.fromarray(mask).save(cls / f"ground_truth/spot/{i:03d}_mask.png")


def main() -> None:
    """Run the driver (or, with --worker, a worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", nargs="+", default=["paper224", "fast"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--reference", default=sidebyside.REFERENCE_COMMIT,
                        help="commit to compare against ('' for none)")
    parser.add_argument("--reference-src", default=None)
    parser.add_argument("--impl", action="append", default=[],
                        help="LABEL=JSON: a variant of this tree (config overrides)")
    parser.add_argument("--extra", default="{}", help="JSON config overrides for every one")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=8, help="test images (half defective)")
    parser.add_argument("--source-size", type=int, default=900, help="pixels of the files")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0, 8])
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (CPU), 32 (GPU)")
    parser.add_argument("--workers", type=int, default=0, help="loader processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cpus", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.worker:
        worker()
        return

    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    batch = args.batch_size or (32 if cuda else 8)
    common = json.loads(args.extra)
    impls = sidebyside.parse_impls(args.impl) or [("current", {})]
    results: dict = {"device": device, "load_before": sidebyside.load_average(), "settings": {}}
    print(f"device {device}, {args.images} test images of {args.source_size} px, epsilons "
          f"{args.epsilons} with PGD-{args.steps}, batch {batch}, threads "
          f"{args.threads or 'default'}, load {results['load_before']}", flush=True)
    with sidebyside.reference_tree(args.reference, args.reference_src) as ref_src, \
            tempfile.TemporaryDirectory() as tmp:
        make_test_set(Path(tmp), args.images, args.source_size)
        workers = []
        if ref_src is not None:
            workers.append(sidebyside.Worker(f"ref {args.reference or 'given'}", ref_src,
                                             __file__, common, args.threads, args.cpus))
        for label, extra in impls:
            workers.append(sidebyside.Worker(label, sidebyside.CURRENT_SRC, __file__,
                                             {**common, **extra}, args.threads, args.cpus))
        base_cmd = dict(device=device, root=tmp, epsilons=args.epsilons, steps=args.steps,
                        batch_size=batch, workers=args.workers)
        try:
            for setting in args.settings:
                print(f"[{setting}] {SETTINGS[setting]}", flush=True)
                for w in workers:
                    reply = w.ask(cmd="setup", setting=setting, warmup=args.warmup, **base_cmd)
                    print(f"  {w.label}: {reply['layout']} layout, set-up and warm-up "
                          f"{reply['seconds'][0]:.1f} s", flush=True)
                replies = sidebyside.alternate(workers, args.rounds, lambda w: w.ask(
                    cmd="time", setting=setting, **base_cmd))
                base = sidebyside.median_of(replies[workers[0].label])
                out = {}
                for w in workers:
                    seconds = sidebyside.median_of(replies[w.label])
                    paired = statistics.median(
                        a["seconds"][0] / b["seconds"][0]
                        for a, b in zip(replies[workers[0].label], replies[w.label]))
                    rows = replies[w.label][-1]["rows"]
                    out[w.label] = {"seconds": seconds, "images_per_s": args.images / seconds,
                                    "ratio": base / seconds, "ratio_per_round": paired,
                                    "rows": rows}
                    aurocs = "; ".join(f"{r['attack']} {r['epsilon']:g}: img "
                                       f"{r['image_auroc']:.4f} pix {r['pixel_auroc']:.4f}"
                                       for r in rows)
                    print(f"  [{setting}] {w.label:>14}: {seconds:8.2f} s  "
                          f"{args.images / seconds:7.3f} test img/s  x{base / seconds:.2f} "
                          f"(per round x{paired:.2f})  [{aurocs}]", flush=True)
                results["settings"][setting] = out
        finally:
            for w in workers:
                w.close()
    results["load_after"] = sidebyside.load_average()
    print(f"load after {results['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
