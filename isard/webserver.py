"""Daphne on every core: one parent holds the listening sockets, N Daphne children serve.

A single Daphne process runs Django in one Python interpreter, so it uses one core at
most. `manage.py isard_web` (the `web:` line of the Procfile) opens the sockets once:

- plain HTTP on `ISARD_BIND:ISARD_PORT` (loopback by default: the admin's own browser),
- HTTPS and wss on `ISARD_TLS_BIND:ISARD_TLS_PORT` with the platform's host certificate
  (`var/pki/server-cert.pem`, made by `manage.py isard_certs`) or the files named by
  `ISARD_TLS_CERT_FILE` / `ISARD_TLS_KEY_FILE`,

then starts `ISARD_WEB_WORKERS` children (default: one per CPU), each a Daphne server on
the inherited sockets: the kernel hands each new connection to whichever child accepts it
first. Websockets work from any child because the channel layer is Redis: a status change
sent by the Celery worker reaches the child that holds the student's socket.

TLS ends inside Daphne (Twisted's TLS over the adopted socket), so Daphne itself marks
those requests `https` in the ASGI scope and Django's `request.is_secure()` is true
without any proxy header.

The parent restarts a child that dies (with a growing pause when it keeps dying at
start, and gives up after several such deaths in a row, so a broken configuration
stops `./isardctl up` with its error instead of looping), forwards SIGTERM and SIGINT,
and on SIGHUP replaces the children one at a time, e.g. to load a rotated certificate.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isard.core.errors import ApplicationError

logger = logging.getLogger("isard.web")

#: A child that exits within this many seconds of its start counts as failing at start.
QUICK_DEATH_SECONDS = 5.0
#: This many quick deaths in a row of one child and the parent stops with an error.
MAX_QUICK_DEATHS = 5
#: Children get this long to finish their requests after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 10.0
LISTEN_BACKLOG = 1024


class WebServerError(ApplicationError):
    """The web tier cannot start: a port is taken, a certificate is missing or broken."""

    status_code = 500


@dataclass(frozen=True)
class Listener:
    """One listening address: plain HTTP, or HTTPS (and wss) when `tls`."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"


@dataclass(frozen=True)
class WebConfig:
    """What the web tier serves, read from the settings by `web_config_from_settings`."""

    listeners: tuple[Listener, ...]
    workers: int
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    access_log: bool = True
    #: Where CONNECTs arriving on the HTTPS port go (the SPICE gateway); None: not shared.
    gateway_socket: Path | None = None


def web_config_from_settings() -> WebConfig:
    """The listeners, certificate and number of children the settings ask for."""
    # Lazily: the parent process imports this module before Django is set up.
    from django.conf import settings

    from hypervisors.tls import pki_paths

    listeners = [Listener(settings.ISARD_BIND, settings.ISARD_PORT, tls=False)]
    cert_file = key_file = None
    if settings.ISARD_TLS_PORT:
        listeners.append(Listener(settings.ISARD_TLS_BIND, settings.ISARD_TLS_PORT, tls=True))
        paths = pki_paths()
        cert_file = Path(settings.ISARD_TLS_CERT_FILE or paths.host_cert)
        key_file = Path(settings.ISARD_TLS_KEY_FILE or paths.host_key)
    workers = settings.ISARD_WEB_WORKERS or os.cpu_count() or 1
    gateway_socket = None
    if settings.ISARD_TLS_PORT and settings.ISARD_GATEWAY_SHARED:
        gateway_socket = Path(settings.ISARD_GATEWAY_SOCKET)
    return WebConfig(
        listeners=tuple(listeners),
        workers=workers,
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        access_log=settings.ISARD_WEB_ACCESS_LOG,
        gateway_socket=gateway_socket,
    )


def check_tls_files(cert_file: Path, key_file: Path) -> None:
    """Fail once, in the parent, with the file names, rather than in every child."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as error:
        raise WebServerError(
            f"the HTTPS certificate or key is missing ({error.filename}): run "
            "`manage.py isard_certs`, or set ISARD_TLS_CERT_FILE and ISARD_TLS_KEY_FILE, "
            "or ISARD_TLS_PORT=0 to serve plain HTTP only."
        ) from error
    except (OSError, ssl.SSLError) as error:
        raise WebServerError(
            f"cannot use {cert_file} with {key_file} for HTTPS ({error}): the certificate "
            "must be PEM (the server's first, then any intermediates) and match the key."
        ) from error


def open_socket(listener: Listener) -> socket.socket:
    """A listening socket the children inherit, for an IPv4 or IPv6 address or a name."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise WebServerError(f"cannot listen on {listener.host!r}: {error}") from error
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        which = "ISARD_TLS_BIND/ISARD_TLS_PORT" if listener.tls else "ISARD_BIND/ISARD_PORT"
        raise WebServerError(
            f"cannot listen on {listener.url} ({error.strerror}): another program holds "
            f"the port, or change {which}."
        ) from error
    sock.set_inheritable(True)
    sock.setblocking(False)  # shared by every worker: see isard.web_worker
    return sock


# --- the parent ----------------------------------------------------------------------------


@dataclass
class _Slot:
    """One child's place: its process and how often it died right after starting."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


@dataclass
class Supervisor:
    """Runs `config.workers` Daphne children on the sockets and keeps them running."""

    config: WebConfig
    sockets: list[tuple[Listener, socket.socket]]
    slots: list[_Slot] = field(default_factory=list)
    stopping: bool = False
    reload_requested: bool = False

    def child_command(self) -> list[str]:
        command = [sys.executable, "-m", "isard.web_worker", "--parent-pid", str(os.getpid())]
        for listener, sock in self.sockets:
            kind = "tls" if listener.tls else "plain"
            command += ["--listen", f"{kind}:{sock.fileno()}:{int(sock.family)}"]
        if self.config.tls_cert_file and self.config.tls_key_file:
            command += [
                "--tls-cert",
                str(self.config.tls_cert_file),
                "--tls-key",
                str(self.config.tls_key_file),
            ]
        if not self.config.access_log:
            command.append("--no-access-log")
        if self.config.gateway_socket is not None:
            command += ["--gateway-socket", str(self.config.gateway_socket)]
        return command

    def spawn(self, slot: _Slot) -> None:
        from django.conf import settings

        slot.process = subprocess.Popen(
            self.child_command(),
            pass_fds=[sock.fileno() for _, sock in self.sockets],
            cwd=settings.BASE_DIR,
        )
        slot.started_at = time.monotonic()
        logger.info("web worker %d started (pid %d)", slot.index, slot.process.pid)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _request_reload(self, signum: int, frame: Any) -> None:
        self.reload_requested = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status for the command."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_reload)
        self.slots = [_Slot(index) for index in range(self.config.workers)]
        for slot in self.slots:
            self.spawn(slot)
        status = 0
        while not self.stopping:
            if self.reload_requested:
                self.reload_requested = False
                self._replace_all()
            failed = self._tend()
            if failed:
                status = 1
                break
            time.sleep(0.2)
        self._stop_all()
        return status

    def _tend(self) -> bool:
        """Restart dead children; True when one keeps dying at start (give up)."""
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None and process.poll() is None:
                if now - slot.started_at > QUICK_DEATH_SECONDS:
                    slot.quick_deaths = 0
                continue
            if process is not None:
                code = process.returncode
                lived = now - slot.started_at
                slot.process = None
                if lived < QUICK_DEATH_SECONDS:
                    slot.quick_deaths += 1
                else:
                    slot.quick_deaths = 0
                if slot.quick_deaths >= MAX_QUICK_DEATHS:
                    logger.error(
                        "web worker %d died %d times right after starting (exit %s): giving up",
                        slot.index,
                        slot.quick_deaths,
                        code,
                    )
                    return True
                pause = min(0.5 * 2**slot.quick_deaths, 10.0) if slot.quick_deaths else 0.0
                slot.restart_at = now + pause
                logger.warning(
                    "web worker %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                    slot.index,
                    process.pid,
                    code,
                    lived,
                    pause,
                )
            if now >= slot.restart_at and not self.stopping:
                self.spawn(slot)
        return False

    def _replace_all(self) -> None:
        """Start a new child beside each old one, then stop the old: no gap in service."""
        logger.info("SIGHUP: replacing the web workers one at a time")
        for slot in self.slots:
            if self.stopping:
                return
            old = slot.process
            self.spawn(slot)
            if old is not None and old.poll() is None:
                _terminate([old])

    def _stop_all(self) -> None:
        _terminate([slot.process for slot in self.slots if slot.process is not None])


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(config: WebConfig) -> int:
    """Open the sockets, check the certificate, run the children until told to stop."""
    if config.workers < 1:
        raise WebServerError(f"ISARD_WEB_WORKERS={config.workers}: at least one is needed.")
    if config.tls_cert_file and config.tls_key_file:
        check_tls_files(config.tls_cert_file, config.tls_key_file)
    opened: list[tuple[Listener, socket.socket]] = []
    try:
        for listener in config.listeners:
            opened.append((listener, open_socket(listener)))
        return Supervisor(config=config, sockets=opened).run()
    finally:
        for _, sock in opened:
            sock.close()
