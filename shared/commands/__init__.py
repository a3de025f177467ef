"""The `punchguard` subcommands, one module per group. Exit codes (every command):

0  success
1  the command ran and the answer is "no" (status: not all stages well; doctor: a check
   failed; unpair: not paired)
2  usage or configuration error, invalid input (a bad invitation code, ...)
3  refused: would overwrite something without --force, or not confirmed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

EXIT_CODES_HELP = """\
exit codes: 0 success; 1 the answer is "no" (status not all well, a doctor check failed);
2 usage, configuration or input error; 3 refused (exists without --force, not confirmed).
Add --debug to see a traceback for an unexpected error."""


class CommandError(Exception):
    """An error for the user: printed without a traceback, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def example(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
