"""The `wharf` command line (being written)."""

from __future__ import annotations

import sys


def main() -> None:
    sys.exit("wharf: the client command line is not built yet")
