"""The browser viewer's websocket: noVNC on one side, one desktop's VNC port on the other.

`/ws/viewer/<token>/` spends the token (`desktops.viewer.services.viewer_token_consume`), which
names the only port this connection may reach. The proxy signs in to that display itself
(`desktops.viewer.rfb`: VeNCrypt x509 TLS when offered, and required when the hop leaves
this machine; then VNC authentication with the password only the server knows), greets
the browser as a server that asks for no password, and from the browser's ClientInit on
relays its bytes through `ClientMessages`: the session is always a shared one (a teacher's
look never disconnects the student), and a view-only token's input never reaches the
display (only screen requests pass). The display's bytes come back unchanged.

A refusal is sent as a websocket close code after accepting, so the page can say why (a
refused handshake only shows the browser a failed connection). Daphne drops close
reasons, so the reason comes first, as the connection's only text frame:
`{"type": "refused", "code": ..., "message": ...}` (noVNC ignores text frames). The codes:

- 4401 not signed in, 4403 the token is not this person's, expired or already used,
- 4409 the desktop is not running or has no display, 4502 its screen does not answer or
  cannot be reached securely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from desktops.viewer import presence
from desktops.viewer.rfb import (
    BrowserGreeting,
    ClientMessages,
    RfbClientMessageError,
    RfbHandshakeError,
    RfbNotEncryptedError,
    UpstreamTls,
    upstream_sign_in,
)
from desktops.viewer.services import ViewerTarget, viewer_token_consume
from hypervisors import tls
from isard.core import metrics
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    InfrastructureError,
    PermissionDeniedError,
)

logger = logging.getLogger(__name__)

#: Bytes read from the VNC server per websocket message: a full 1080p raw frame is ~8 MiB,
#: so large reads keep the per-message cost of the proxy low; `read` returns what is there.
READ_SIZE = 1 << 20
CONNECT_TIMEOUT = 5.0
#: The display's opening (TLS, authentication) must be over within this time.
HANDSHAKE_TIMEOUT = 10.0

CLOSE_UNAUTHENTICATED = 4401
CLOSE_REFUSED = 4403
CLOSE_UNAVAILABLE = 4409
CLOSE_UNREACHABLE = 4502


def close_code_for(error: ApplicationError) -> int:
    if error.extra.get("reason") == "anonymous":
        return CLOSE_UNAUTHENTICATED
    if isinstance(error, PermissionDeniedError):
        return CLOSE_REFUSED
    if isinstance(error, ConflictError):
        return CLOSE_UNAVAILABLE
    if isinstance(error, InfrastructureError):
        return CLOSE_UNREACHABLE
    return CLOSE_REFUSED


class ViewerProxyConsumer(AsyncWebsocketConsumer):
    """Relays binary frames to the desktop's VNC server and its bytes back, unchanged."""

    # No channel layer: a viewer needs no group messages, so it does not wait on Redis and
    # keeps working through a Redis outage. (`get_channel_layer` gives None for an alias
    # that is not configured.)
    channel_layer_alias = "viewer-proxy-uses-no-channel-layer"
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    pump: asyncio.Task[None] | None = None
    target: ViewerTarget | None = None
    greeting: BrowserGreeting | None = None
    client_messages: ClientMessages | None = None
    counted_open = False
    presence: contextlib.AsyncExitStack | None = None

    def _subprotocol(self) -> str | None:
        # Old noVNC versions ask for "binary"; a browser drops a connection whose accepted
        # subprotocol is not one it asked for, so echo it back only when asked.
        offered = self.scope.get("subprotocols") or []
        return "binary" if "binary" in offered else None

    def _client(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else ""

    async def connect(self) -> None:
        token = self.scope["url_route"]["kwargs"]["token"]
        try:
            self.target = await database_sync_to_async(viewer_token_consume)(
                token=token, user=self.scope.get("user"), client=self._client()
            )
        except ApplicationError as error:
            await self._refuse(close_code_for(error), error.message)
            return
        target = self.target
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, limit=READ_SIZE),
                timeout=CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as error:
            logger.warning(
                "viewer of %s: cannot reach %s:%s: %s",
                target.domain_name,
                target.host,
                target.port,
                error,
            )
            await self._refuse(CLOSE_UNREACHABLE, "The desktop's screen does not answer.")
            return
        self.writer = writer

        async def tls_for_display() -> UpstreamTls:
            context = await asyncio.to_thread(tls.viewer_proxy_tls_context, paths=tls.pki_paths())
            return UpstreamTls(context=context, server_hostname=target.host)

        try:
            upstream = await asyncio.wait_for(
                upstream_sign_in(
                    reader,
                    writer,
                    password=target.password,
                    tls=tls_for_display,
                    require_tls=target.require_tls,
                ),
                timeout=HANDSHAKE_TIMEOUT,
            )
        except (RfbHandshakeError, OSError, TimeoutError, ApplicationError) as error:
            logger.warning(
                "viewer of %s: cannot sign in to %s:%s: %s",
                target.domain_name,
                target.host,
                target.port,
                str(error) or type(error).__name__,  # a timeout has no message
            )
            await self._close_desktop_side()
            if isinstance(error, ApplicationError):  # the platform's own TLS setup
                message = (
                    "The viewer's certificates are not set up yet: tell an administrator "
                    "(`manage.py isard_certs`)."
                )
            elif isinstance(error, RfbNotEncryptedError):
                message = (
                    "The desktop's screen cannot be reached securely: its hypervisor has no "
                    "TLS for viewers yet (an administrator runs `manage.py isard_certs "
                    "--hypervisor`)."
                )
            else:
                message = "The desktop's screen did not accept the viewer; try again."
            await self._refuse(CLOSE_UNREACHABLE, message)
            return
        self.reader = upstream.reader
        await self.accept(subprotocol=self._subprotocol())
        self.counted_open = True
        # Someone has the screen open (the idle shutdown asks), until this closes.
        self.presence = contextlib.AsyncExitStack()
        await self.presence.enter_async_context(presence.watching(target.desktop_id))
        # Off the event loop: a slow Redis must not stall the other viewers of this process.
        await asyncio.to_thread(metrics.count, metrics.VIEWER_CONNECTIONS_OPENED, kind="browser")
        logger.info(
            "viewer of %s (user %s%s) connected to %s:%s (%s)",
            target.domain_name,
            target.user_id,
            ", view only" if target.view_only else "",
            target.host,
            target.port,
            "TLS" if upstream.encrypted else "loopback, no TLS",
        )
        self.client_messages = ClientMessages(view_only=target.view_only)
        # The browser meets a server that needs no password: the proxy signed in already.
        self.greeting = BrowserGreeting()
        await self.send(bytes_data=BrowserGreeting.GREETING)

    async def _refuse(self, code: int, reason: str) -> None:
        await self.accept(subprotocol=self._subprotocol())
        await self.send(text_data=json.dumps({"type": "refused", "code": code, "message": reason}))
        # A close reason is at most 123 bytes on the wire.
        await self.close(code=code, reason=reason.encode()[:123].decode(errors="ignore"))

    async def _pump_from_desktop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                await self.send(bytes_data=data)
        except (OSError, asyncio.IncompleteReadError) as error:
            logger.info("viewer: the desktop's screen closed: %s", error)
        except asyncio.CancelledError:
            return
        await self._close_desktop_side()
        await self.close(code=1000)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.writer is None:
            return
        data = bytes_data if bytes_data is not None else (text_data or "").encode()
        greeting = self.greeting
        if greeting is not None and not greeting.done:
            try:
                reply = greeting.feed(data)
            except RfbHandshakeError as error:
                logger.info("viewer: the browser's RFB opening failed: %s", error)
                await self._close_desktop_side()
                await self.close(code=1002)
                return
            if reply:
                await self.send(bytes_data=reply)
            if not greeting.done:
                return
            data = greeting.leftover
            assert self.reader is not None
            self.pump = asyncio.create_task(self._pump_from_desktop(self.reader))
            if not data:
                return
        assert self.client_messages is not None
        try:
            data = self.client_messages.feed(data)
        except RfbClientMessageError as error:
            logger.info("viewer: closing a view-only viewer: %s", error)
            await self._close_desktop_side()
            await self.close(code=1002)
            return
        if not data:
            return
        self.writer.write(data)
        await self.writer.drain()

    async def disconnect(self, code: Any) -> None:
        watching, self.presence = self.presence, None
        if watching is not None:
            await watching.aclose()
        if self.counted_open:
            self.counted_open = False
            await asyncio.to_thread(
                metrics.count, metrics.VIEWER_CONNECTIONS_CLOSED, kind="browser"
            )
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pump
        await self._close_desktop_side()

    async def _close_desktop_side(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
