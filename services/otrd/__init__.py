"""PunchGuard otrd: Off-the-Record session with the paired peer (unprivileged)."""
