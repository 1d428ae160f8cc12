"""The original authors' per-class checkpoints: import a file into a patchguard checkpoint, or
download it first (:func:`download_original_checkpoint`, locations in :mod:`.index`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import DEFAULT_BACKBONE
from ..data.layouts import LAYOUTS
from ..utils.checkpoint import save_checkpoint
from .convert import (
    convert_original_state_dict,
    load_original_state_dict,
    names_from_filename,
)

logger = logging.getLogger(__name__)


def import_original_checkpoint(
    original: str | Path,
    output: str | Path,
    backbone: str = DEFAULT_BACKBONE,
    image_size: int | None = 224,
    **kwargs: Any,
) -> Path:
    """Convert an original checkpoint file and save it (atomically) as a patchguard checkpoint.

    Dataset and class default to those in the original's file name
    (``patchguard_<dataset>_<class>.pth``) when the dataset layout is known.
    """
    return _save_import(load_original_state_dict(original), original, output, backbone,
                        image_size, **kwargs)


def _save_import(state: dict, original: str | Path, output: str | Path, backbone: str,
                 image_size: int | None, provenance: dict[str, str] | None = None,
                 **kwargs: Any) -> Path:
    dataset, class_name = names_from_filename(original)
    if dataset in LAYOUTS:
        kwargs.setdefault("dataset", dataset)
        kwargs.setdefault("class_name", class_name)
    payload = convert_original_state_dict(state, backbone=backbone, image_size=image_size,
                                          source=imported_source(original), **kwargs)
    # The model card prints every train_summary entry: where the file came from, its digest.
    payload["train_summary"].update(provenance or {})
    return save_checkpoint(output, payload)


#: The train_summary key holding the SHA-256 of the authors' file (recorded on first download).
ORIGINAL_SHA256 = "original_sha256"


def imported_source(original: str | Path) -> str:
    """What an imported checkpoint records as its origin (``imported_from``)."""
    return f"original PatchGuard checkpoint {Path(original).name}"


def default_checkpoint(dataset: str, class_name: str, output_dir: str | Path | None = None
                       ) -> Path:
    """Where ``weights download`` puts a class's checkpoint: ``DIR/<class>/last.pt``.

    ``DIR`` defaults to ``weights/<dataset>``; the folder per class keeps each class's
    ``results.json`` apart and is the layout ``patchguard benchmark --checkpoint-dir`` reads.
    """
    root = Path(output_dir) if output_dir is not None else Path("weights") / dataset
    return root / class_name / "last.pt"


def download_original_checkpoint(
    dataset: str,
    class_name: str,
    checkpoint: str | Path | None = None,
    *,
    drive_id: str | None = None,
    url: str | None = None,
    index: str | Path | None = None,
    sha256: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    backbone: str = DEFAULT_BACKBONE,
    image_size: int | None = 224,
    **import_kwargs: Any,
) -> Path:
    """Fetch the authors' checkpoint of one class and import it; return the patchguard file.

    The authors' ``patchguard_<dataset>_<class>.pth`` is downloaded (resumably, through
    Google Drive's confirm page) beside ``checkpoint`` (default :func:`default_checkpoint`) and
    kept there, then converted with :func:`import_original_checkpoint`. Run again, it does
    nothing: a complete download is not fetched twice and a checkpoint imported from that file
    is kept. Any other file at ``checkpoint`` is refused unless ``overwrite``. The import
    settings (backbone, image size, ...) default to the authors' model (ViT-S/14, 224 px).

    No digest is published, so the first download's SHA-256 is recorded in the model card
    (``train_summary``: ``original_sha256``) and a later download of the file next to that
    import must match it: trust on first use. A ``sha256`` given here is checked instead.
    """
    from ..utils.checkpoint import load_checkpoint
    from ..utils.files import check_output_file
    from .index import resolve_weights

    entry = resolve_weights(dataset, class_name, drive_id=drive_id, url=url, index=index,
                            sha256=sha256)
    target = Path(checkpoint) if checkpoint is not None else default_checkpoint(
        entry.dataset, entry.class_name)
    original = target.parent / entry.filename
    check_output_file(target, "checkpoint", [("downloaded original", original)],
                      overwrite=True)  # a folder or the original itself is refused here
    expected = entry.sha256
    if target.exists() and not overwrite:
        try:
            previous = load_checkpoint(target)
        except ValueError:
            previous = {}
        if previous.get("imported_from") == imported_source(original):
            if original.is_file():
                logger.info("%s is already imported from %s", target, original)
                return target
            # Trust on first use: a second download must be the file imported the first time.
            expected = expected or (previous.get("train_summary") or {}).get(ORIGINAL_SHA256)
        else:
            check_output_file(target, "checkpoint", overwrite=False,
                              fix="choose another --output-dir, or add --overwrite")
    created = _missing_ancestor(target.parent)
    try:
        return _fetch_and_import(entry, original, target, expected, progress, backbone,
                                 image_size, import_kwargs)
    except BaseException:
        _remove_if_empty(target.parent, created)  # a failed first download leaves no folders
        raise


def _missing_ancestor(folder: Path) -> Path | None:
    """The outermost folder on the way to ``folder`` that does not exist yet (None if all do)."""
    missing = None
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing = parent
    return missing


def _remove_if_empty(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty."""
    if up_to is None:
        return
    for path in (folder, *folder.parents):
        try:
            path.rmdir()  # only an empty folder goes
        except OSError:
            return
        if path == up_to:
            return


def _fetch_and_import(entry, original: Path, target: Path, expected: str | None,
                      progress: bool, backbone: str, image_size: int | None,
                      import_kwargs: dict[str, Any]) -> Path:
    """Download the authors' file (checked against ``expected``), import it, record its digest."""
    from ..data.download.transfer import download_file, drive_download, file_digest

    if entry.drive_id:
        logger.info("downloading %s from Google Drive (file %s, %s)", entry.filename,
                    entry.drive_id, entry.source)
        drive_download(entry.drive_id, original, sha256=expected, progress=progress)
        where = f"Google Drive file {entry.drive_id} ({entry.source})"
    else:
        logger.info("downloading %s from %s (%s)", entry.filename, entry.url, entry.source)
        download_file(entry.url, original, sha256=expected, progress=progress)
        where = f"{entry.url} ({entry.source})"
    try:
        state = load_original_state_dict(original)
    except ValueError as error:
        # Our own download, not the user's file: remove it so that the next run fetches again.
        original.unlink(missing_ok=True)
        raise ValueError(f"the file downloaded for {entry.dataset} {entry.class_name} "
                         f"({entry.source}) is not a PatchGuard checkpoint and was deleted: "
                         f"{error}. Check the id or URL.") from None
    digest = file_digest(original)
    provenance = {"original_location": where, ORIGINAL_SHA256: digest,
                  "original_sha256_note": ("checked against the published digest" if entry.sha256
                                           else "trust on first use: no digest is published; "
                                           "this is the first download's")}
    logger.info("%s: sha256 %s (%s)", entry.filename, digest, provenance["original_sha256_note"])
    return _save_import(state, original, target, backbone, image_size, provenance,
                        dataset=entry.dataset, class_name=entry.class_name, **import_kwargs)


def checkpoint_kind(path: str | Path) -> str:
    """``"patchguard"`` for one of our checkpoints, ``"original"`` for an authors' state dict.

    Read with ``weights_only=True``; anything else is a ValueError naming the file.
    """
    import torch

    from .convert import unwrap_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old-format file cannot be mapped: read it whole
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ...
            raise ValueError(f"cannot load checkpoint {path} safely ({type(error).__name__}: "
                             f"{error}); it is truncated or not a checkpoint") from None
    if isinstance(payload, dict) and "model" in payload and "config" in payload:
        return "patchguard"
    try:
        if "discriminator.positional_encodings" in unwrap_state_dict(payload):
            return "original"
    except ValueError:
        pass
    raise ValueError(f"{path} is neither a patchguard checkpoint nor an original PatchGuard "
                     "state dict (patchguard_<dataset>_<class>.pth)")
