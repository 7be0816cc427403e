#!/usr/bin/env python
"""Get a dataset: ``python scripts/get_data.py omniglot [--root DIR] [--url-base URL]``.

The same as ``python -m rkmeta_rl.data omniglot``; see docs/data.md.
"""

import sys

from rkmeta_rl.data.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
