"""PunchGuard signald: Tox signaling with the paired peer (unprivileged)."""
