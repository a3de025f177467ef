"""PunchGuard punchd: ICE hole punching and the hand-off to WireGuard (unprivileged)."""
