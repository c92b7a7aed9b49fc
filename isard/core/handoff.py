"""Passing a client's connection from a web worker to the SPICE gateway process.

A web worker that sees a CONNECT on the shared HTTPS port (`isard.port_sharing`) sends the
connection's descriptor (`SCM_RIGHTS`) in one datagram to the gateway's Unix socket;
nothing of the connection has been read, so the gateway serves it as if it had accepted
it itself. A datagram socket needs no connection per hand-off and never splits one.
"""

from __future__ import annotations

import array
import logging
import socket
from pathlib import Path

logger = logging.getLogger("isard.web")

#: What the worker writes on a handed descriptor's datagram (the gateway checks it).
HANDOFF_MESSAGE = b"isard-connect/1"


def handoff_socket() -> socket.socket:
    """The worker's end: an unbound datagram socket that sends to the gateway's path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def handoff_send(sock: socket.socket, path: Path, connection: socket.socket) -> bool:
    """Pass `connection` to the gateway listening on `path`; False when it cannot take it."""
    try:
        # Not socket.send_fds: before Python 3.12 it drops its address argument.
        rights = array.array("i", [connection.fileno()])
        sock.sendmsg(
            [HANDOFF_MESSAGE], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, str(path)
        )
    except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as error:
        logger.warning(
            "a CONNECT arrived on the HTTPS port but the SPICE gateway at %s cannot take it "
            "(%s): answered 503; is `manage.py isard_gateway` running?",
            path,
            error.strerror or type(error).__name__,
        )
        return False
    except OSError as error:
        logger.warning("could not pass a CONNECT to the SPICE gateway at %s: %s", path, error)
        return False
    return True


def handoff_listen(path: Path) -> socket.socket:
    """The gateway's end: a datagram socket at `path`, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a stale one from a killed gateway
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.setblocking(False)
    return sock


def handoff_receive(sock: socket.socket) -> list[socket.socket]:
    """The connections waiting on the gateway's socket (non-blocking; [] when none)."""
    received: list[socket.socket] = []
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(sock, 64, 4)
        except BlockingIOError:
            return received
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if message != HANDOFF_MESSAGE:
            logger.warning("gateway: ignored a datagram that is not a handed connection")
            for stray in sockets:
                stray.close()
            continue
        received.extend(sockets)
