"""``python -m devstack.ensure``: check system tools, install the caches (as ``ma-devstack install``)."""

from __future__ import annotations

import sys

from devstack.cli import main

if __name__ == "__main__":
    sys.exit(main(["install"]))
