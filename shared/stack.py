"""One host's stack under supervisord: directories, environment, and the supervisor commands.

``deploy/supervisord.conf`` takes every path from the environment; this module makes that
environment from the config, prepares the directories with the owners and modes of design 3,
and runs ``supervisord`` / ``supervisorctl``. The lab and the tests use the same path.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from punchguard import SERVICES
from punchguard.bus import RUNTIME_DIR_MODE
from punchguard.config import Config

REPO = Path(__file__).resolve().parent.parent
SUPERVISORD_CONF = REPO / "deploy" / "supervisord.conf"
SERVICE_USER = "punchguard"
UNPRIVILEGED = ("signald", "otrd", "punchd")


class StackError(Exception):
    """A problem preparing or running the stack, with a message fit for the user."""


@dataclass(frozen=True)
class Stack:
    config: Config
    config_file: Path | None
    user: str = SERVICE_USER

    @property
    def runtime_dir(self) -> Path:
        return self.config.paths.runtime_dir

    @property
    def state_dir(self) -> Path:
        return self.config.paths.state_dir

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PUNCHGUARD_RUNTIME_DIR=str(self.runtime_dir),
            PUNCHGUARD_STATE_DIR=str(self.state_dir),
            PUNCHGUARD_CONFIG=str(self.config_file.resolve()) if self.config_file else "",
            PUNCHGUARD_PYTHON=sys.executable,
            PUNCHGUARD_USER=self.user,
        )
        return env

    def prepare(self) -> None:
        """Create the runtime and state directories with the right owners and modes.

        runtime dir: 1770 root:<group>: the unprivileged stages create their sockets in it, the
        sticky bit stops them from replacing root's (guardd.pub); outsiders cannot enter;
        state dir: 0755 root, with one 0700 subdirectory per service owned by the user that
        service runs as (guardd's, holding the WireGuard private key, is root's).
        """
        if os.geteuid() != 0:
            raise StackError("starting the stack needs root (guardd manages WireGuard)")
        try:
            uid = pwd.getpwnam(self.user).pw_uid
            gid = grp.getgrnam(self.config.bus.group).gr_gid
        except KeyError as e:
            raise StackError(
                f"missing service user or group ({e}); run scripts/setup, or create them with"
                f" `groupadd --system {self.config.bus.group}` and `useradd --system"
                f" --gid {self.config.bus.group} --no-create-home {self.user}`"
            ) from None
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.runtime_dir, 0, gid)
        os.chmod(self.runtime_dir, RUNTIME_DIR_MODE)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)
        for service in SERVICES:
            d = self.state_dir / service
            d.mkdir(exist_ok=True)
            owner = uid if service in UNPRIVILEGED else 0
            os.chown(d, owner, gid if service in UNPRIVILEGED else 0)
            os.chmod(d, 0o700)

    def supervisord(self, *, foreground: bool = False) -> subprocess.Popen[bytes]:
        """Start supervisord for this stack (it daemonizes itself unless ``foreground``)."""
        self.prepare()
        argv = ["supervisord", "-c", str(SUPERVISORD_CONF)]
        if foreground:
            argv.append("-n")
        return subprocess.Popen(_venv_argv(argv), env=self.env())

    def ctl(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
        argv = _venv_argv(["supervisorctl", "-c", str(SUPERVISORD_CONF), *args])
        return subprocess.run(argv, env=self.env(), text=True, capture_output=capture, check=False)


def _venv_argv(argv: list[str]) -> list[str]:
    # supervisord/supervisorctl from the same environment as this interpreter
    exe = Path(sys.executable).with_name(argv[0])
    return [str(exe) if exe.exists() else argv[0], *argv[1:]]
