"""The SPICE gateway: an HTTP CONNECT proxy that lets remote-viewer on a student's own
device reach a desktop's display through the platform.

remote-viewer, given `proxy=http://<id>:<secret>@<platform>:<port>` in the `.vv` file,
opens each SPICE channel (main, display, inputs, cursor, sound, every USB redirection)
with `CONNECT <display host>:<TLS port> HTTP/1.0` and that credential as Basic proxy
authentication (spice-gtk hands the URL's user and password to GIO's HTTP proxy). Each
CONNECT is decided by `gateway_tunnel_authorize` with the platform's data of that moment,
which is why this is our own small asyncio server and not squid. Once granted, bytes are
copied both ways unchanged: SPICE stays TLS from remote-viewer to QEMU, and the gateway
never sees the display in the clear.

Answers: 400 a malformed request, 405 another method, 407 no valid credential, 403 a
target other than the desktop's display (nothing is connected to it) or a desktop that is
not running, 431 a header over `MAX_HEADER_BYTES`, 502 a display that does not answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from channels.db import database_sync_to_async

from desktops.viewer import presence
from desktops.viewer.gateway_access import (
    GatewayRefusedError,
    TunnelGrant,
    gateway_tunnel_authorize,
)
from isard.core import metrics
from isard.core.handoff import handoff_listen, handoff_receive

logger = logging.getLogger(__name__)

#: The whole request head (request line and headers); remote-viewer's is ~200 bytes.
MAX_HEADER_BYTES = 8192
#: How long a client may take to send its request head.
HEADER_TIMEOUT_SECONDS = 10.0
#: How long reaching the display may take.
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_IDLE_SECONDS = 3600.0
CHUNK_BYTES = 262144
#: Each side's read buffer. Not MAX_HEADER_BYTES: a StreamReader pauses its transport
#: whenever it holds twice its limit, and an 8 KiB one stalled the tunnel's bulk copy
#: every 16 KiB (BENCHMARKS.md). The request head is held to MAX_HEADER_BYTES by hand.
STREAM_LIMIT = 4 * CHUNK_BYTES
#: What a side's writer may hold before its pump waits (asyncio's default is 64 KiB).
WRITE_BUFFER_HIGH = 4 * CHUNK_BYTES

REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
}


class MalformedRequestError(Exception):
    pass


@dataclass(frozen=True)
class ConnectRequest:
    host: str
    port: int
    credential_id: str
    secret: str


def parse_target(target: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port`."""
    if target.startswith("["):
        host, separator, rest = target[1:].partition("]")
        if not separator or not rest.startswith(":"):
            raise MalformedRequestError(f"bad target {target!r}")
        port_text = rest[1:]
    else:
        host, separator, port_text = target.rpartition(":")
        if not separator or ":" in host:
            raise MalformedRequestError(f"bad target {target!r}")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MalformedRequestError(f"bad target {target!r}")
    return host, int(port_text)


def parse_credentials(value: str) -> tuple[str, str]:
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    credential_id, _, secret = decoded.partition(":")
    return credential_id, secret


def parse_connect(head: bytes) -> ConnectRequest:
    """The CONNECT request head, up to and including its blank line."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError as error:
        raise MalformedRequestError("not ASCII") from error
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise MalformedRequestError(f"bad request line {lines[0][:80]!r}")
    method, target, _ = parts
    if method != "CONNECT":
        raise GatewayRefusedError(405, "method", "Only CONNECT is served here.")
    host, port = parse_target(target)
    credential_id = secret = ""
    for line in lines[1:]:
        if not line:
            continue
        name, separator, value = line.partition(":")
        if not separator or not name or name != name.strip():
            raise MalformedRequestError(f"bad header line {line[:80]!r}")
        if name.lower() == "proxy-authorization":
            credential_id, secret = parse_credentials(value)
    return ConnectRequest(host=host, port=port, credential_id=credential_id, secret=secret)


async def _answer(writer: asyncio.StreamWriter, status: int, *, authenticate: bool = False) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
    if authenticate:
        lines.append('Proxy-Authenticate: Basic realm="isard"')
    if status != 200:
        lines += ["Content-Length: 0", "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()


@dataclass
class _Traffic:
    last_activity: float
    up: int = 0
    down: int = 0


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, traffic: _Traffic, *, up: bool
) -> None:
    loop = asyncio.get_running_loop()
    while data := await reader.read(CHUNK_BYTES):
        traffic.last_activity = loop.time()
        writer.write(data)
        await writer.drain()
        if up:
            traffic.up += len(data)
        else:
            traffic.down += len(data)
    if writer.can_write_eof():
        writer.write_eof()


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    display: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    idle_seconds: float,
) -> tuple[int, int]:
    """Copy bytes both ways until both sides are done (or one fails), or until neither
    side sent a byte for `idle_seconds`. Returns (bytes up, bytes down)."""
    loop = asyncio.get_running_loop()
    traffic = _Traffic(last_activity=loop.time())
    pumps = {
        asyncio.ensure_future(_pump(client[0], display[1], traffic, up=True)),
        asyncio.ensure_future(_pump(display[0], client[1], traffic, up=False)),
    }
    waiting = set(pumps)
    try:
        while waiting:
            remaining = traffic.last_activity + idle_seconds - loop.time()
            if remaining <= 0:
                break
            done, waiting = await asyncio.wait(waiting, timeout=remaining)
            if any(task.exception() is not None for task in done):
                break
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    return traffic.up, traffic.down


class Gateway:
    """One listening gateway; `handle` serves one client connection."""

    def __init__(self, *, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds

    async def authorize(self, request: ConnectRequest, client: str) -> TunnelGrant:
        try:
            return await database_sync_to_async(gateway_tunnel_authorize)(
                credential_id=request.credential_id,
                secret=request.secret,
                host=request.host,
                port=request.port,
                client=client,
            )
        except GatewayRefusedError:
            raise
        except Exception as error:  # the database, a bug: this client gets 502, not a hang
            logger.exception("gateway: could not decide on a tunnel for %s", client)
            raise GatewayRefusedError(502, "error", "The gateway could not decide.") from error

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        try:
            await self._serve(reader, writer, client)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), timeout=HEADER_TIMEOUT_SECONDS
            )
            if len(head) > MAX_HEADER_BYTES:
                raise asyncio.LimitOverrunError("request head too large", len(head))
            request = parse_connect(head)
            if not request.credential_id:
                raise GatewayRefusedError(407, "no-credential", "No gateway credential.")
            grant = await self.authorize(request, client)
        except asyncio.LimitOverrunError:
            logger.warning("gateway refused (header-too-large): client=%s", client)
            await _answer(writer, 431)
            return
        except TimeoutError:
            await _answer(writer, 408)
            return
        except MalformedRequestError as error:
            logger.warning("gateway refused (malformed): client=%s: %s", client, error)
            await _answer(writer, 400)
            return
        except GatewayRefusedError as refused:
            await _answer(writer, refused.status, authenticate=refused.status == 407)
            return
        try:
            display = await asyncio.wait_for(
                asyncio.open_connection(grant.host, grant.port, limit=STREAM_LIMIT),
                timeout=CONNECT_TIMEOUT_SECONDS,
            )
        except (OSError, TimeoutError) as error:
            logger.warning(
                "gateway: display %s:%s of desktop %s does not answer: %s",
                grant.host,
                grant.port,
                grant.desktop_id,
                error,
            )
            await _answer(writer, 502)
            return
        # Counted before the answer, so a scrape after the client's 200 sees it.
        await asyncio.to_thread(metrics.count, metrics.VIEWER_CONNECTIONS_OPENED, kind="gateway")
        try:
            # Someone looks at the desktop (the idle shutdown asks) from before the 200 on.
            async with presence.watching(grant.desktop_id):
                await _answer(writer, 200)
                for side in (writer, display[1]):
                    side.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
                logger.info(
                    "gateway tunnel opened: desktop=%s user=%s credential=%s "
                    "target=%s:%s client=%s",
                    grant.desktop_id,
                    grant.user_id,
                    grant.credential_id,
                    grant.host,
                    grant.port,
                    client,
                )
                up, down = await splice((reader, writer), display, idle_seconds=self.idle_seconds)
        finally:
            display[1].close()
            await asyncio.to_thread(
                metrics.count, metrics.VIEWER_CONNECTIONS_CLOSED, kind="gateway"
            )
        logger.info(
            "gateway tunnel closed: desktop=%s client=%s up=%d down=%d bytes",
            grant.desktop_id,
            client,
            up,
            down,
        )


async def gateway_start(
    *, host: str, port: int, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> asyncio.Server:
    """Listen on host:port (port 0: any free one) and serve CONNECT tunnels."""
    gateway = Gateway(idle_seconds=idle_seconds)
    return await asyncio.start_server(gateway.handle, host, port, limit=STREAM_LIMIT)


def gateway_take_handoffs(
    path: Path, *, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> Callable[[], Awaitable[None]]:
    """Serve the CONNECTs the web workers pass on from the shared HTTPS port (see
    `isard.port_sharing`) from the Unix socket at `path`, in the running loop. Returns
    the coroutine function that stops: no more hand-offs, open tunnels closed."""
    loop = asyncio.get_running_loop()
    gateway = Gateway(idle_seconds=idle_seconds)
    listening = handoff_listen(path)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(connection: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=connection, limit=STREAM_LIMIT)
        except OSError:
            connection.close()
            return
        await gateway.handle(reader, writer)

    def take() -> None:
        for connection in handoff_receive(listening):
            connection.setblocking(False)
            task = loop.create_task(serve(connection))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop.add_reader(listening.fileno(), take)

    async def stop() -> None:
        loop.remove_reader(listening.fileno())
        listening.close()
        path.unlink(missing_ok=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return stop
