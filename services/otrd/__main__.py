"""PunchGuard otrd: the Off-the-Record session with the paired peer (unprivileged).

``python -m otrd --print-fingerprint [--config FILE] [--state-dir DIR]`` creates the OTR key
if there is none and prints its fingerprint (40 hex digits) for pairing, then exits.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from otrd.identity import IdentityError, ensure_key
from otrd.runner import serve
from punchguard import config as configmod
from punchguard.service import load_config, parser, run


def print_fingerprint(argv: Sequence[str]) -> int:
    p = parser("otrd", "print this host's OTR fingerprint")
    p.add_argument("--print-fingerprint", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args)
        print(ensure_key(cfg.paths.state_dir))
    except (configmod.ConfigError, IdentityError) as e:
        print(f"otrd: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--print-fingerprint" in args:
        sys.exit(print_fingerprint(args))
    sys.exit(run("otrd", serve, args, description=__doc__ or ""))


if __name__ == "__main__":
    main()
