"""The proxy's side of RFB (VNC): it signs in to the guest's display itself.

The proxy speaks RFB's opening with QEMU as a client: VeNCrypt with x509 certificates when
the server offers it (TLS checked against the platform CA, with the proxy's own client
certificate), then VNC authentication with the desktop's password, which only the server
knows. It then presents the browser with a server that asks for no password (security
type None) and relays everything after that (`ClientMessages`): the browser's ClientInit
always asks for a shared session, so that one viewer never disconnects another, and for
a view-only viewer every input message (keys, pointer, clipboard, power and resize
requests) is dropped here, whatever the page in the browser does. So the graphics password never
reaches a browser, and the bytes between the proxy and a hypervisor are encrypted
whenever they leave this machine: a display that offers no TLS there is refused.

References: RFC 6143 (RFB 3.3, 3.7, 3.8) and the VeNCrypt extension as QEMU implements it
(ui/vnc-auth-vencrypt.c): version 0.2, one sub-type, an accept byte, then TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

SECURITY_INVALID = 0
SECURITY_NONE = 1
SECURITY_VNC = 2
SECURITY_VENCRYPT = 19
VENCRYPT_X509_NONE = 260
VENCRYPT_X509_VNC = 261

SUPPORTED_VERSIONS = {b"RFB 003.003\n": 3, b"RFB 003.007\n": 7, b"RFB 003.008\n": 8}


class RfbHandshakeError(Exception):
    """The guest's display refused the proxy or spoke something else; the message says why."""


class RfbNotEncryptedError(RfbHandshakeError):
    """The display offers no TLS, and this hop must be encrypted."""


@dataclass(frozen=True)
class UpstreamTls:
    """How to open TLS to the display: the proxy's context and the name the host's
    certificate must carry."""

    context: ssl.SSLContext
    server_hostname: str


@dataclass(frozen=True)
class Upstream:
    """A signed-in connection to the display, at the point where the client sends ClientInit."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    encrypted: bool


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """DES of the challenge with the password as key, each key byte's bits reversed (RFB
    7.2.2). Only the first 8 characters count, as in every VNC server."""
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode()[:8].ljust(8, b"\0"))
    # Three equal keys make TripleDES plain DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


async def _read(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as error:
        raise RfbHandshakeError("the display closed the connection during the handshake") from error


async def _reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await _read(reader, 4))
    return (await _read(reader, min(length, 4096))).decode(errors="replace")


async def _security_result(reader: asyncio.StreamReader, minor: int) -> None:
    (result,) = struct.unpack(">I", await _read(reader, 4))
    if result != 0:
        reason = await _reason(reader) if minor >= 8 else "no reason given"
        raise RfbHandshakeError(f"the display refused the password: {reason}")


async def _vnc_auth(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str, minor: int
) -> None:
    challenge = await _read(reader, 16)
    writer.write(vnc_auth_response(password, challenge))
    await writer.drain()
    await _security_result(reader, minor)


async def _vencrypt(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    password: str,
    minor: int,
    tls_factory: Callable[[], Awaitable[UpstreamTls]],
) -> None:
    tls = await tls_factory()  # first: without certificates there is no point going on
    version = await _read(reader, 2)
    if version != b"\x00\x02":
        raise RfbHandshakeError(f"unsupported VeNCrypt version {version[0]}.{version[1]}")
    writer.write(b"\x00\x02")
    await writer.drain()
    if (await _read(reader, 1)) != b"\x00":
        raise RfbHandshakeError("the display refused VeNCrypt 0.2")
    (count,) = struct.unpack(">B", await _read(reader, 1))
    subtypes = struct.unpack(f">{count}I", await _read(reader, 4 * count))
    if VENCRYPT_X509_VNC in subtypes:
        chosen = VENCRYPT_X509_VNC
    elif VENCRYPT_X509_NONE in subtypes:
        chosen = VENCRYPT_X509_NONE
    else:
        raise RfbHandshakeError(
            f"the display offers no x509 VeNCrypt sub-type (it offers {list(subtypes)}): "
            "its hypervisor needs the platform's certificates"
        )
    writer.write(struct.pack(">I", chosen))
    await writer.drain()
    if (await _read(reader, 1)) != b"\x01":
        raise RfbHandshakeError("the display refused the VeNCrypt sub-type it offered")
    try:
        await writer.start_tls(tls.context, server_hostname=tls.server_hostname)
    except (ssl.SSLError, ssl.CertificateError) as error:
        raise RfbHandshakeError(f"TLS with the display failed: {error}") from error
    if chosen == VENCRYPT_X509_VNC:
        await _vnc_auth(reader, writer, password, minor)
    else:
        await _security_result(reader, minor)


async def upstream_sign_in(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    password: str,
    tls: Callable[[], Awaitable[UpstreamTls]] | None,
    require_tls: bool,
) -> Upstream:
    """Sign in to a VNC server as a client, up to (not including) ClientInit.

    VeNCrypt is used whenever the server offers it and `tls` (which makes the TLS context,
    only when needed) is given; with `require_tls` a server that offers no VeNCrypt is
    refused before any password is sent.
    """
    version = await _read(reader, 12)
    minor = SUPPORTED_VERSIONS.get(version)
    if minor is None:
        if not version.startswith(b"RFB 003."):
            raise RfbHandshakeError(f"not a VNC server (it said {version[:12]!r})")
        minor = 8  # a newer 3.x: answer with the newest version we speak
    writer.write(b"RFB 003.%03d\n" % minor)
    await writer.drain()
    if minor == 3:
        (kind,) = struct.unpack(">I", await _read(reader, 4))
        offered: set[int] = {kind}
        if kind == SECURITY_INVALID:
            raise RfbHandshakeError(f"the display refused the connection: {await _reason(reader)}")
    else:
        (count,) = struct.unpack(">B", await _read(reader, 1))
        if count == 0:
            raise RfbHandshakeError(f"the display refused the connection: {await _reason(reader)}")
        offered = set(await _read(reader, count))
    if SECURITY_VENCRYPT in offered and tls is not None:
        if minor != 3:
            writer.write(bytes([SECURITY_VENCRYPT]))
            await writer.drain()
        await _vencrypt(reader, writer, password, minor, tls)
        return Upstream(reader=reader, writer=writer, encrypted=True)
    if require_tls:
        raise RfbNotEncryptedError(
            "the display offers no TLS (VeNCrypt), and the way to its hypervisor must be "
            f"encrypted (it offers security types {sorted(offered)})"
        )
    if SECURITY_VNC in offered:
        if minor != 3:
            writer.write(bytes([SECURITY_VNC]))
            await writer.drain()
        await _vnc_auth(reader, writer, password, minor)
    elif SECURITY_NONE in offered:
        if minor != 3:
            writer.write(bytes([SECURITY_NONE]))
            await writer.drain()
        if minor == 8:
            await _security_result(reader, minor)
    else:
        raise RfbHandshakeError(f"no security type the proxy speaks in {sorted(offered)}")
    return Upstream(reader=reader, writer=writer, encrypted=False)


class BrowserGreeting:
    """The proxy as an RFB server that asks for no password, fed the browser's bytes.

    `feed` takes whatever arrived (websocket messages may split or join RFB messages) and
    returns the bytes to send back; once `done`, `leftover` holds what the browser sent
    after its security choice (its ClientInit), for the display.
    """

    GREETING = b"RFB 003.008\n"

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.minor: int | None = None
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            raise RfbHandshakeError("the greeting is over")
        self.buffer += data
        reply = b""
        if self.minor is None:
            if len(self.buffer) < 12:
                return reply
            version = bytes(self.buffer[:12])
            del self.buffer[:12]
            minor = SUPPORTED_VERSIONS.get(version)
            if minor is None:
                raise RfbHandshakeError(f"the viewer asked for {version!r}")
            self.minor = minor
            if minor == 3:
                # RFB 3.3: the server names the one security type; no choice, no result.
                self._finish()
                return struct.pack(">I", SECURITY_NONE)
            reply += bytes([1, SECURITY_NONE])
        if len(self.buffer) < 1:
            return reply
        choice = self.buffer[0]
        del self.buffer[:1]
        if choice != SECURITY_NONE:
            raise RfbHandshakeError(f"the viewer chose security type {choice}")
        if self.minor == 8:
            reply += struct.pack(">I", 0)
        self._finish()
        return reply

    def _finish(self) -> None:
        self.done = True
        self.leftover = bytes(self.buffer)
        self.buffer.clear()


# --- the browser's messages, after its security choice ------------------------------------

MSG_SET_PIXEL_FORMAT = 0
MSG_SET_ENCODINGS = 2
MSG_FRAMEBUFFER_UPDATE_REQUEST = 3
MSG_KEY_EVENT = 4
MSG_POINTER_EVENT = 5
MSG_CLIENT_CUT_TEXT = 6
MSG_ENABLE_CONTINUOUS_UPDATES = 150
MSG_CLIENT_FENCE = 248
MSG_XVP = 250
MSG_SET_DESKTOP_SIZE = 251
MSG_QEMU = 255
QEMU_EXTENDED_KEY_EVENT = 0
QEMU_AUDIO = 1

#: What a view-only viewer may still send: how it wants the screen, never anything that
#: changes the guest (keys, pointer, clipboard, xvp power actions, display size, audio).
VIEW_ONLY_ALLOWED = frozenset(
    {
        MSG_SET_PIXEL_FORMAT,
        MSG_SET_ENCODINGS,
        MSG_FRAMEBUFFER_UPDATE_REQUEST,
        MSG_ENABLE_CONTINUOUS_UPDATES,
        MSG_CLIENT_FENCE,
    }
)
SHARED = 1


class RfbClientMessageError(Exception):
    """The browser sent a message the view-only filter cannot measure: the connection must
    close, as the filter cannot find where the next message starts."""


def client_message_size(buffer: bytes | bytearray) -> int | None:
    """The length of the client-to-server message at the start of `buffer` (RFC 6143 7.5
    and the registered extensions noVNC and QEMU speak); None: more bytes are needed."""
    if not buffer:
        return None
    kind = buffer[0]
    fixed = {
        MSG_SET_PIXEL_FORMAT: 20,
        MSG_FRAMEBUFFER_UPDATE_REQUEST: 10,
        MSG_KEY_EVENT: 8,
        MSG_POINTER_EVENT: 6,
        MSG_ENABLE_CONTINUOUS_UPDATES: 10,
        MSG_XVP: 4,
    }
    if kind in fixed:
        return fixed[kind]
    if kind == MSG_SET_ENCODINGS:
        if len(buffer) < 4:
            return None
        (count,) = struct.unpack(">H", buffer[2:4])
        return 4 + 4 * count
    if kind == MSG_CLIENT_CUT_TEXT:
        if len(buffer) < 8:
            return None
        (length,) = struct.unpack(">i", buffer[4:8])  # negative: extended clipboard
        return 8 + abs(length)
    if kind == MSG_CLIENT_FENCE:
        return 9 + buffer[8] if len(buffer) >= 9 else None
    if kind == MSG_SET_DESKTOP_SIZE:
        return 8 + 16 * buffer[6] if len(buffer) >= 8 else None
    if kind == MSG_QEMU:
        if len(buffer) < 2:
            return None
        if buffer[1] == QEMU_EXTENDED_KEY_EVENT:
            return 12
        if buffer[1] == QEMU_AUDIO:
            if len(buffer) < 4:
                return None
            (operation,) = struct.unpack(">H", buffer[2:4])
            return 10 if operation == 2 else 4
        raise RfbClientMessageError(f"unknown QEMU client message {buffer[1]}")
    raise RfbClientMessageError(f"unknown client message type {kind}")


class ClientMessages:
    """The browser's bytes on their way to the display, from its ClientInit on.

    The ClientInit's shared flag is always set: QEMU's default policy disconnects every
    other viewer when one asks for exclusive access, and a teacher's look must never cut
    off the student (nor a student's reconnect the teacher). For a view-only viewer, each
    message is measured and only those in `VIEW_ONLY_ALLOWED` are passed on; input is
    dropped and counted in `dropped`. Otherwise the bytes pass unchanged.
    """

    def __init__(self, *, view_only: bool) -> None:
        self.view_only = view_only
        self.buffer = bytearray()
        self.client_init_seen = False
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        """Take what arrived (messages may be split or joined) and return what to forward."""
        if self.client_init_seen and not self.view_only:
            return data
        self.buffer += data
        out = bytearray()
        if not self.client_init_seen:
            if not self.buffer:
                return b""
            del self.buffer[:1]
            out.append(SHARED)
            self.client_init_seen = True
            if not self.view_only:
                out += self.buffer
                self.buffer.clear()
                return bytes(out)
        while self.buffer:
            size = client_message_size(self.buffer)
            if size is None or len(self.buffer) < size:
                break
            message = bytes(self.buffer[:size])
            del self.buffer[:size]
            if message[0] in VIEW_ONLY_ALLOWED:
                out += message
            else:
                self.dropped += 1
        return bytes(out)
