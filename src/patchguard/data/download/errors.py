"""What can go wrong while downloading and unpacking a data set."""

from __future__ import annotations


class DownloadError(RuntimeError):
    """A transfer failed (HTTP error, truncated body, unexpected Drive answer)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum (the file is deleted)."""


class ManualDownloadError(DownloadError):
    """The data set (or its masks) must be fetched by hand; the message says how."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written, or would link, outside the extraction target."""


class LayoutError(RuntimeError):
    """An extracted data set does not have the expected folders."""
