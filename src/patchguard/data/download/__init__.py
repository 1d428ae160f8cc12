"""Download, verify and safely extract the data sets PatchGuard is evaluated on.

Everything here uses the standard library (``urllib``) plus ``tqdm`` for the progress bar:

* :func:`download_file` resumes an interrupted transfer with an HTTP ``Range`` request into
  ``dest.part``, verifies a known checksum and renames atomically; an existing complete file is
  not fetched again.
* :func:`drive_download` performs Google Drive's virus-scan confirmation for large files (the
  old ``download_warning_*`` cookie token and the newer ``drive.usercontent.google.com`` form).
  Drive *folders* cannot be fetched without an API key; they raise :class:`ManualDownloadError`
  with instructions to download them as a zip and pass the archive instead.
* :func:`safe_extract` refuses absolute paths, ``..`` components and links that leave the
  target, and extracts into a temporary directory first.
* :func:`download_dataset` ties it together for every entry of :data:`DATASETS`, checks the
  layout and writes a marker so a second run does nothing.
"""

from .errors import (
    ChecksumError,
    DownloadError,
    LayoutError,
    ManualDownloadError,
    UnsafeArchiveError,
)
from .extraction import safe_extract
from .prepare import MARKER_NAME, check_layout, download_dataset, download_foreground
from .sources import DATASETS, Archive, DatasetSource, get_source
from .transfer import download_file, drive_download, drive_file_id, file_digest

__all__ = [
    "DATASETS",
    "MARKER_NAME",
    "Archive",
    "ChecksumError",
    "DatasetSource",
    "DownloadError",
    "LayoutError",
    "ManualDownloadError",
    "UnsafeArchiveError",
    "check_layout",
    "download_dataset",
    "download_file",
    "download_foreground",
    "drive_download",
    "drive_file_id",
    "file_digest",
    "get_source",
    "safe_extract",
]
