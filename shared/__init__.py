"""PunchGuard's common library: the bus, its messages, configuration, logging and the CLI."""

__version__ = "0.1.0"

SERVICES = ("signald", "otrd", "punchd", "guardd")
