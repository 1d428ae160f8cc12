"""The registry of baselines, importable without torch or anomalib: name -> its
:class:`.anomalib.Baseline` (imported when first used). A new baseline is one entry here and
its ``Baseline`` value with an adapter function in :mod:`.anomalib`."""

from __future__ import annotations

from ..utils.registry import Entry, Registry

BASELINES: Registry = Registry("baseline", {
    "patchcore": Entry("patchguard.baselines.anomalib:PATCHCORE", "PatchCore (memory bank)"),
    "padim": Entry("patchguard.baselines.anomalib:PADIM", "PaDiM (Gaussian per patch)"),
    "efficient_ad": Entry("patchguard.baselines.anomalib:EFFICIENT_AD",
                          "EfficientAd (student-teacher)"),
})
