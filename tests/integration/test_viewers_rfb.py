"""A minimal RFB (VNC) client for the viewer tests and `bench/bench_viewer.py`, with its tests.

It speaks RFB 3.8 with VNC authentication, asks for the pixel format noVNC uses (32 bits,
bytes R, G, B, X) and Raw encoding only, so a framebuffer read here can be compared byte
for byte with what noVNC drew on its canvas. It runs over plain TCP (a direct connection
to QEMU) or over the platform's websocket proxy (the `websockets` library as the client).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

RAW = 0
DESKTOP_SIZE = -223
# bpp 32, depth 24, little endian, true colour, max 255 each, shifts R 0, G 8, B 16.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)


class RfbError(Exception):
    pass


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """DES of the challenge with the password as key, each key byte's bits reversed (RFB 7.2.2)."""
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode()[:8].ljust(8, b"\0"))
    # Three equal keys make TripleDES plain DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


class Transport:
    """Bytes in, bytes out; subclasses carry them over TCP or a websocket."""

    bytes_received = 0

    async def read_exactly(self, size: int) -> bytes:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class TcpTransport(Transport):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> TcpTransport:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def read_exactly(self, size: int) -> bytes:
        data = await self.reader.readexactly(size)
        self.bytes_received += size
        return data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ConnectionError):
            pass


class WebsocketTransport(Transport):
    """RFB over the platform's websocket proxy, with the `websockets` library as client."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.buffer = bytearray()

    @classmethod
    async def open(cls, url: str, *, cookie: str = "", origin: str = "") -> WebsocketTransport:
        from websockets.asyncio.client import connect

        headers = {"Cookie": cookie} if cookie else {}
        connection = await connect(
            url,
            additional_headers=headers,
            origin=origin or None,  # type: ignore[arg-type]
            max_size=None,
            compression=None,
        )
        return cls(connection)

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            message = await self.connection.recv()
            self.buffer += message if isinstance(message, bytes) else message.encode()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.bytes_received += size
        return data

    async def write(self, data: bytes) -> None:
        await self.connection.send(data)

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class Framebuffer:
    width: int
    height: int
    name: str
    pixels: bytearray = field(default_factory=bytearray)

    def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(width * height * 4)

    def non_background_ratio(self) -> float:
        """Share of pixels that differ from the top-left one (the background)."""
        if not self.pixels:
            return 0.0
        background = bytes(self.pixels[0:3])
        total = self.width * self.height
        pixels = self.pixels
        same = sum(
            1 for offset in range(0, len(pixels), 4) if pixels[offset : offset + 3] == background
        )
        return 1 - same / total


class RfbClient:
    """Handshake, then full-screen Raw framebuffer updates on request."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.framebuffer = Framebuffer(0, 0, "")
        self.security_types: set[int] = set()

    async def handshake(self, password: str) -> Framebuffer:
        read, write = self.transport.read_exactly, self.transport.write
        version = await read(12)
        if not version.startswith(b"RFB 003."):
            raise RfbError(f"not an RFB server: {version!r}")
        await write(b"RFB 003.008\n")
        (count,) = struct.unpack(">B", await read(1))
        if count == 0:
            raise RfbError(await self._reason())
        types = set(await read(count))
        self.security_types = types
        if 2 in types:
            await write(b"\x02")
            await write(vnc_auth_response(password, await read(16)))
        elif 1 in types:
            await write(b"\x01")
        else:
            raise RfbError(f"no supported security type in {sorted(types)}")
        (result,) = struct.unpack(">I", await read(4))
        if result != 0:
            raise RfbError(f"authentication failed: {await self._reason()}")
        return await self.initialise()

    async def initialise(self) -> Framebuffer:
        """After authentication (here, or by someone else on this stream): ClientInit,
        ServerInit, the pixel format and the encodings."""
        read, write = self.transport.read_exactly, self.transport.write
        await write(b"\x01")  # shared session: the browser viewer may be connected too
        width, height = struct.unpack(">HH", await read(4))
        await read(16)
        (name_length,) = struct.unpack(">I", await read(4))
        name = (await read(name_length)).decode(errors="replace")
        self.framebuffer = Framebuffer(width, height, name)
        self.framebuffer.resize(width, height)
        await write(b"\x00\x00\x00\x00" + PIXEL_FORMAT)
        encodings = (RAW, DESKTOP_SIZE)
        await write(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        return self.framebuffer

    async def _reason(self) -> str:
        (length,) = struct.unpack(">I", await self.transport.read_exactly(4))
        return (await self.transport.read_exactly(length)).decode(errors="replace")

    async def request(self, *, incremental: bool = False) -> None:
        fb = self.framebuffer
        await self.transport.write(
            struct.pack(">BBHHHH", 3, int(incremental), 0, 0, fb.width, fb.height)
        )

    async def read_update(self) -> int:
        """Read server messages until one framebuffer update; return its pixel bytes."""
        read = self.transport.read_exactly
        while True:
            (kind,) = struct.unpack(">B", await read(1))
            if kind == 0:
                break
            if kind == 2:  # bell
                continue
            if kind == 3:  # server cut text
                await read(3)
                (length,) = struct.unpack(">I", await read(4))
                await read(length)
                continue
            raise RfbError(f"unexpected server message {kind}")
        await read(1)
        (rectangles,) = struct.unpack(">H", await read(2))
        received = 0
        fb = self.framebuffer
        for _ in range(rectangles):
            x, y, width, height, encoding = struct.unpack(">HHHHi", await read(12))
            if encoding == DESKTOP_SIZE:
                fb.resize(width, height)
                continue
            if encoding != RAW:
                raise RfbError(f"unexpected encoding {encoding}")
            data = await read(width * height * 4)
            received += len(data)
            for row in range(height):
                start = ((y + row) * fb.width + x) * 4
                fb.pixels[start : start + width * 4] = data[row * width * 4 : (row + 1) * width * 4]
        return received

    async def full_frame(self) -> Framebuffer:
        """Ask for the whole screen and wait until it is here (through resizes)."""
        while True:
            size = (self.framebuffer.width, self.framebuffer.height)
            await self.request(incremental=False)
            await self.read_update()
            if (self.framebuffer.width, self.framebuffer.height) == size:
                return self.framebuffer

    async def close(self) -> None:
        await self.transport.close()


async def timed(operation: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = await operation()
    return time.perf_counter() - started, value


# --- tests of the client itself ------------------------------------------------------------


def test_vnc_auth_response_matches_openssl_des() -> None:
    # openssl enc -des-ecb -nopad -K 8c4ccc2cac6cec1c (the bit-reversed "12345678")
    response = vnc_auth_response("12345678", b"0123456789abcdef")
    assert response.hex() == "89d0c31376ecd556f5672d63bad2ee98"
    # Only the first 8 characters count, as in every VNC server.
    assert vnc_auth_response("123456789", bytes(16)) == vnc_auth_response("12345678", bytes(16))


@pytest.mark.asyncio
async def test_client_reads_a_screen_from_a_stand_in_server() -> None:
    password = "s3cret"
    challenge = bytes(range(16))

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x01\x02")
        assert await reader.readexactly(1) == b"\x02"
        writer.write(challenge)
        assert await reader.readexactly(16) == vnc_auth_response(password, challenge)
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)
        writer.write(struct.pack(">HH", 2, 1) + PIXEL_FORMAT + b"\0\0\0\x04test")
        await reader.readexactly(20)  # SetPixelFormat
        await reader.readexactly(4 + 8)  # SetEncodings with two encodings
        await reader.readexactly(10)  # FramebufferUpdateRequest
        writer.write(b"\x00\x00" + struct.pack(">H", 1) + struct.pack(">HHHHi", 0, 0, 2, 1, RAW))
        writer.write(b"\x01\x02\x03\x00\x04\x05\x06\x00")
        await writer.drain()
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = RfbClient(await TcpTransport.open("127.0.0.1", port))
    framebuffer = await client.handshake(password)
    assert (framebuffer.width, framebuffer.height, framebuffer.name) == (2, 1, "test")
    await client.full_frame()
    assert bytes(framebuffer.pixels) == b"\x01\x02\x03\x00\x04\x05\x06\x00"
    await client.close()
    listener.close()
    await listener.wait_closed()
