"""PunchGuard signald: Tox signaling with the paired peer (unprivileged).

Run as ``python -m signald [--config FILE] [--runtime-dir DIR] [--state-dir DIR]``; see
docs/signald.md. ``python -m signald.address`` prints this host's Tox address for pairing.
"""

from __future__ import annotations

import sys

from punchguard.service import run
from signald.runner import serve


def main() -> None:
    sys.exit(run("signald", serve, description=__doc__ or ""))


if __name__ == "__main__":
    main()
