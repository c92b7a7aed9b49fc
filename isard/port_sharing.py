"""One public port for HTTPS, wss and the SPICE gateway: tell a connection by its first bytes.

remote-viewer opens each SPICE channel with a plain `CONNECT host:port HTTP/1.1` to its
proxy, and a browser opens TLS with a ClientHello whose first byte is 0x16 (a TLS
handshake record). So a web worker, instead of handing every connection on the HTTPS
socket straight to Twisted's TLS, accepts it itself, looks at the first bytes without
reading them (`MSG_PEEK`), and then:

- a TLS record: gives the untouched connection to Twisted (`adoptStreamConnection`) with
  the usual TLS and Daphne factory, so HTTPS and wss work exactly as before;
- `CONNECT `: passes the connection's descriptor (`SCM_RIGHTS`) to the gateway process over
  its Unix datagram socket (`ISARD_GATEWAY_SOCKET`); the gateway reads the request itself,
  nothing has been consumed. This process closes its copy without shutting the socket
  down, and never sees a byte of the tunnel;
- anything else (plain HTTP to the HTTPS port, noise): to Twisted's TLS as before, which
  drops it.

A gateway that is not running, or whose queue is full, gets the client an HTTP 503 and a
log line. A connection that sends nothing for `FIRST_BYTES_SECONDS` is closed, and a
worker holds at most `MAX_UNDECIDED` undecided connections (a flood of silent ones costs
descriptors, not the workers' loop).

Kernel load balancing between the workers is unchanged: they all accept on the one
inherited socket, as Twisted's own listening port did.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isard.core.handoff import handoff_send, handoff_socket

logger = logging.getLogger("isard.web")

TLS_HANDSHAKE = 0x16
CONNECT_PREFIX = b"CONNECT "
#: A client that has not sent its first bytes by then is closed.
FIRST_BYTES_SECONDS = 10.0
#: Undecided connections one worker holds at most; further ones are closed at once.
MAX_UNDECIDED = 512
#: How often a connection that sent only part of `CONNECT ` is looked at again.
PARTIAL_RECHECK_SECONDS = 0.05
ACCEPT_BATCH = 64
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def classify(first: bytes) -> str | None:
    """`tls`, `connect` or `other` from the first bytes; None: too few to tell yet."""
    if not first:
        return None
    if first[0] == TLS_HANDSHAKE:
        return "tls"
    if first.startswith(CONNECT_PREFIX):
        return "connect"
    if CONNECT_PREFIX.startswith(first):
        return None
    return "other"


@dataclass(eq=False)
class _Undecided:
    """One accepted connection whose first bytes have not told what it is yet; it is its
    own reader in the reactor while it waits (compared and hashed by identity)."""

    port: SharedTLSPort
    connection: socket.socket
    timer: Any = None
    reading: bool = False

    def fileno(self) -> int:
        return self.connection.fileno()

    def logPrefix(self) -> str:
        return "isard-https"

    def doRead(self) -> None:
        self.port.peeked(self)

    def connectionLost(self, reason: Any) -> None:
        self.port.drop(self)


@dataclass(eq=False)
class SharedTLSPort:
    """Accepts on the inherited HTTPS socket and routes each connection (see the module).

    Registered with Twisted's reactor as a reader (`fileno`, `doRead`, `logPrefix`,
    `connectionLost`), as a listening port of Twisted's own is.
    """

    reactor: Any
    listening: socket.socket
    tls_factory: Any
    gateway_socket: Path
    handoff: socket.socket = field(default_factory=handoff_socket)
    undecided: set[_Undecided] = field(default_factory=set)

    def start(self) -> None:
        self.tls_factory.doStart()
        self.reactor.addReader(self)
        logger.info(
            "HTTPS on %s also carries the SPICE gateway's CONNECTs (to %s)",
            self.listening.getsockname()[:2],
            self.gateway_socket,
        )

    def stop(self) -> None:
        """Stop accepting and close what is undecided (served connections go on)."""
        self.reactor.removeReader(self)
        for entry in list(self.undecided):
            self.drop(entry)
        self.listening.close()
        self.handoff.close()

    # -- the reactor's reader interface for the listening socket --
    def fileno(self) -> int:
        return self.listening.fileno()

    def logPrefix(self) -> str:
        return "isard-https"

    def connectionLost(self, reason: Any) -> None:
        logger.warning("the shared HTTPS socket was lost: %s", reason)

    def doRead(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                connection, _address = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as error:  # EMFILE and friends: try again on the next wake-up
                logger.warning("accept on the HTTPS socket failed: %s", error)
                return
            if len(self.undecided) >= MAX_UNDECIDED:
                connection.close()
                logger.warning(
                    "closed a connection: %d are already waiting for their first bytes",
                    MAX_UNDECIDED,
                )
                continue
            connection.setblocking(False)
            entry = _Undecided(self, connection)
            self.undecided.add(entry)
            entry.timer = self.reactor.callLater(FIRST_BYTES_SECONDS, self.drop, entry)
            self._watch(entry)

    # -- one undecided connection --
    def _watch(self, entry: _Undecided) -> None:
        if entry in self.undecided and not entry.reading:
            entry.reading = True
            self.reactor.addReader(entry)

    def _unwatch(self, entry: _Undecided) -> None:
        if entry.reading:
            self.reactor.removeReader(entry)
            entry.reading = False

    def _forget(self, entry: _Undecided) -> None:
        """Stop tracking `entry` (before its socket is closed or passed on)."""
        self._unwatch(entry)
        self.undecided.discard(entry)
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = None

    def drop(self, entry: _Undecided) -> None:
        """Close a connection that never told what it is (or went away)."""
        if entry in self.undecided:
            self._forget(entry)
            entry.connection.close()

    def peeked(self, entry: _Undecided) -> None:
        try:
            first = entry.connection.recv(len(CONNECT_PREFIX), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        kind = classify(first) if first else "closed"
        if kind is None:
            # Part of `CONNECT ` only: the data stays readable, so look again shortly
            # rather than being woken in a loop.
            self._unwatch(entry)
            self.reactor.callLater(PARTIAL_RECHECK_SECONDS, self._watch, entry)
            return
        self._forget(entry)
        connection = entry.connection
        if kind == "connect":
            if not handoff_send(self.handoff, self.gateway_socket, connection):
                try:
                    connection.recv(65536)  # unread bytes would make close() a reset
                    connection.send(UNAVAILABLE)
                except OSError:
                    pass
        elif kind != "closed":
            try:
                self.reactor.adoptStreamConnection(
                    connection.fileno(), connection.family, self.tls_factory
                )
            except OSError as error:  # the client went away in between
                logger.info("an HTTPS connection was gone before it was served: %s", error)
            except Exception:  # a bug: this client is closed, the next ones are served
                logger.exception("could not hand an HTTPS connection to Twisted")
        # Close, never shut down: Twisted serves its own duplicate of a TLS connection,
        # and the gateway holds a CONNECT one now.
        connection.close()
