"""Print this host's Tox address (for pairing): ``python -m signald.address``.

Takes the same ``--config`` and ``--state-dir`` options as signald. If there is no savedata
yet, a new identity is created and saved (0600) exactly as signald would, owned by the state
directory's owner when run as root, so signald (user ``punchguard``) can read it later. A running
signald publishes the same address as ``signal.state.address``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from punchguard import config as configmod
from punchguard.service import load_config, parser
from signald import savedata, toxcore


def main(argv: Sequence[str] | None = None) -> int:
    args = parser("signald.address", "print this host's Tox address").parse_args(argv)
    try:
        cfg = load_config(args)
    except configmod.ConfigError as e:
        print(f"signald.address: config error: {e}", file=sys.stderr)
        return 2
    state_dir = cfg.paths.state_dir
    path = savedata.path_in(state_dir)
    try:
        savedata.ensure_state_dir(state_dir)
        data = savedata.load(path)
        with toxcore.Tox(toxcore.ToxOptions(udp=False, savedata=data or b"")) as tox:
            if data is None:
                savedata.write_atomic(path, tox.savedata())
                if os.geteuid() == 0:
                    st = os.stat(state_dir)
                    os.chown(path, st.st_uid, st.st_gid)
            print(tox.address().hex().upper())
    except (OSError, toxcore.ToxError) as e:
        print(f"signald.address: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
