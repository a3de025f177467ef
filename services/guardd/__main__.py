"""PunchGuard guardd: the WireGuard interface (the only privileged stage).

Runs as root (or with CAP_NET_ADMIN). Takes nothing from the bus but ``punch.path`` from punchd;
see docs/guardd.md and guardd/core.py.
"""

from __future__ import annotations

import sys

from guardd.runner import serve
from punchguard.service import run


def main() -> None:
    sys.exit(run("guardd", serve, description=__doc__ or ""))


if __name__ == "__main__":
    main()
