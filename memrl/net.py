"""A free TCP port, for the rendezvous of a process group (learner ranks, weight transfer)."""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    """A port nothing listens on now at `host` ("" = every interface); the caller binds it soon after."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
