"""Use cases of the dialer: store a command, place the call, bridge it, report how it ended."""
