"""Command line: ``python -m rkmeta_rl.data omniglot [--root DIR] [--url-base URL] [--no-progress]``.

Downloads and unpacks the dataset under the data root (``$RKMETA_DATA``, else ``~/.cache/rkmeta_rl/data``);
a second call finds it and downloads nothing. Exit status 0 on success, 1 with one line on stderr on failure.
"""

from __future__ import annotations

import argparse
import sys

from .fetch import DownloadError
from .omniglot import OMNIGLOT_URL_BASE, download_omniglot
from .roots import default_data_root

DATASETS = ("omniglot",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rkmeta_rl.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, help="which dataset to get")
    p.add_argument("--root", default=None,
                   help=f"data root; the dataset goes to ROOT/omniglot (default: {default_data_root()})")
    p.add_argument("--url-base", default=None, help=f"mirror serving the archives (default: {OMNIGLOT_URL_BASE})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = parse_args(argv)
    try:
        report = download_omniglot(args.root, url_base=args.url_base, progress=not args.no_progress)
    except (DownloadError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if report.downloaded:
        print(f"Omniglot ready in {report.root} (downloaded and verified {', '.join(report.downloaded)})")
    else:
        print(f"Omniglot already present in {report.root}; nothing downloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
