"""PunchGuard guardd: the WireGuard interface (the only privileged stage)."""
