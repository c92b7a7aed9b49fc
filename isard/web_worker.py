"""One web worker: a Daphne server on the sockets `manage.py isard_web` opened.

Started by `isard.webserver.Supervisor` as `python -m isard.web_worker --listen ...`, never
by hand. It imports nothing of the platform before Daphne has installed Twisted's asyncio
reactor and Django is set up (through `isard.asgi`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("isard.web")


@dataclass(frozen=True)
class InheritedSocket:
    fileno: int
    family: int
    tls: bool

    @classmethod
    def parse(cls, text: str) -> InheritedSocket:
        kind, fileno, family = text.split(":")
        if kind not in ("plain", "tls"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected plain|tls:FD:FAMILY")
        return cls(fileno=int(fileno), family=int(family), tls=kind == "tls")


def twisted_tls_options(cert_file: Path, key_file: Path) -> Any:
    """Twisted's TLS settings for the server: the certificate with any intermediates that
    follow it in the file, and nothing older than TLS 1.2."""
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion

    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", cert_file.read_bytes(), re.S
    )
    if not blocks:
        raise SystemExit(f"isard web worker: {cert_file} holds no PEM certificate")
    chain = [Certificate.loadPEM(block).original for block in blocks]
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_file.read_bytes())
    options = CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    # Twisted hands pyOpenSSL X509 objects, which pyOpenSSL deprecates; its context is
    # made (and kept) here, once, rather than inside the first client's connection.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Passing pyOpenSSL", DeprecationWarning)
        options.getContext()
    return options


def worker_main(argv: list[str] | None = None) -> None:
    """Run one Daphne server on the sockets the parent opened (never called by hand)."""
    parser = argparse.ArgumentParser(description="one isard web worker (started by isard_web)")
    parser.add_argument("--listen", type=InheritedSocket.parse, action="append", required=True)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument(
        "--gateway-socket",
        type=Path,
        help="the SPICE gateway's Unix socket: CONNECTs on the TLS socket go there",
    )
    options = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isard.settings")
    # Daphne's server module installs Twisted's asyncio reactor: it comes first.
    from daphne.access import AccessLogGenerator
    from daphne.http_protocol import HTTPFactory, WebRequest
    from daphne.server import Server
    from twisted.internet import reactor as twisted_reactor
    from twisted.internet import task
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from isard.asgi import application
    from isard.port_sharing import SharedTLSPort

    reactor: Any = twisted_reactor  # the asyncio reactor Daphne installed
    sockets: list[InheritedSocket] = options.listen
    tls_options: Any = None
    if any(inherited.tls for inherited in sockets):
        if options.tls_cert is None or options.tls_key is None:
            parser.error("a tls socket needs --tls-cert and --tls-key")
        tls_options = twisted_tls_options(options.tls_cert, options.tls_key)

    class BodyLeavingRequest(WebRequest):
        """Daphne's request, leaving the body to Django.

        Twisted parses a form POST's body into `request.args` (which Daphne never reads)
        and answers one it cannot parse, a multipart body without a boundary, with an
        empty 400 before Django sees it: the API's JSON error, and its parsers' limits,
        never applied. Parsing it twice also cost the memory of every upload twice.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._parsePOSTFormSubmission = False

    class BodyLeavingHTTPFactory(HTTPFactory):
        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            protocol.requestFactory = BodyLeavingRequest
            return protocol

    class AdoptingServer(Server):
        """Daphne serving sockets opened by the parent instead of its endpoint strings."""

        def adopt_sockets(self) -> None:
            self.http_factory = BodyLeavingHTTPFactory(self)
            for inherited in sockets:
                # Every worker is woken for each new connection and only one gets it: a
                # blocking accept() would stall the others' whole event loop.
                os.set_blocking(inherited.fileno, False)
                factory: Any = self.http_factory
                if inherited.tls:
                    factory = TLSMemoryBIOFactory(tls_options, False, factory)
                if inherited.tls and options.gateway_socket is not None:
                    # One public port: this worker accepts and tells TLS from CONNECT.
                    listening = socket.socket(fileno=inherited.fileno)
                    SharedTLSPort(reactor, listening, factory, options.gateway_socket).start()
                    continue
                port = reactor.adoptStreamPort(inherited.fileno, inherited.family, factory)
                # Twisted listens on a duplicate; the inherited descriptor is ours to close.
                os.close(inherited.fileno)
                self.listen_success(port)

    server = AdoptingServer(
        application,
        endpoints=[f"fd:fileno={inherited.fileno}" for inherited in sockets],
        action_logger=None if options.no_access_log else AccessLogGenerator(sys.stdout),
    )
    # Daphne would open its endpoint strings itself; these sockets are open already, and
    # are adopted once Daphne has built its HTTP factory, just before the reactor runs.
    server.endpoints = []
    server.ready_callable = server.adopt_sockets

    def parent_gone() -> None:
        # A parent killed with SIGKILL cannot stop us; do not serve on as an orphan.
        if os.getppid() != options.parent_pid:
            logger.warning("the isard_web parent is gone: stopping")
            reactor.stop()

    task.LoopingCall(parent_gone).start(1.0, now=False)
    server.run()


if __name__ == "__main__":
    worker_main()
