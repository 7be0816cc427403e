"""Datasets on disk: the default data root and the Omniglot downloader (``python -m rkmeta_rl.data omniglot``)."""

from .fetch import ChecksumError, DownloadError, check_url_base, download_file, extract_zip_atomic
from .omniglot import (
                       OMNIGLOT_ARCHIVES,
                       OMNIGLOT_URL_BASE,
                       DownloadReport,
                       OmniglotArchive,
                       download_omniglot,
                       omniglot_command,
                       omniglot_root,
)
from .roots import DATA_ENV, default_data_root

__all__ = [
    "ChecksumError", "DownloadError", "check_url_base", "download_file", "extract_zip_atomic",
    "OMNIGLOT_ARCHIVES", "OMNIGLOT_URL_BASE", "DownloadReport", "OmniglotArchive", "download_omniglot",
    "omniglot_command", "omniglot_root", "DATA_ENV", "default_data_root",
]
