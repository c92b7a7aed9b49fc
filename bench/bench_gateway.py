"""The viewers' two relays against direct connections, in one run (issue 14).

What is measured, each against its bare baseline in the same run:

- **SPICE gateway throughput**: bulk TLS both ways (the client sends, then receives,
  `--megabytes` each) through a CONNECT tunnel of the platform's gateway, against a TLS
  connection straight to the same endpoint. SPICE is TLS end to end and the gateway only
  copies bytes, so the endpoint is a local TLS source/sink: a guest's SPICE server under
  TCG could not fill the tunnel.
- **Time to connect through the gateway**: TCP connect, CONNECT, its answer (the
  credential checked in the database, the desktop's display looked up in libvirt, the
  tunnel logged as a desktop event) and the TLS handshake, against TCP connect and the
  same handshake straight to the endpoint. p50/p95.
- **VNC proxy throughput and first frame**: the browser viewer's websocket proxy (the
  Channels consumer in Daphne, which signs in to the display with VNC authentication
  itself) to a local RFB server that answers every request with a full Raw frame at once,
  against an RFB client straight to that server. `bench_viewer.py` measures the same
  proxy against a real guest, where QEMU under TCG limits both paths to ~38 MB/s.
- **Concurrent viewer streams on one core**: N tunnels through one gateway process pinned
  to one core, each carrying a display stream of `--stream-kbit` (messages of a fixed
  size at `--stream-hz`, plus 10 small input messages a second upstream); for each N the
  gateway's CPU time, the share of the offered bytes delivered and each message's delay
  from when it was due to be sent. Baseline: the same streams straight to the endpoint.

The relays run in processes of their own pinned to CPU `--relay-cpu`; the endpoints and
clients run here, pinned to `--client-cpu`. The desktops are database rows on a libvirt
`test:///` node (a file in the scratch directory) whose running domains have their
displays on the endpoints' ports: the relays ask libvirt where a display is, as in
production, and every tunnel and viewer is authorised by the platform's own code.

    .venv/bin/python bench/bench_gateway.py [--megabytes 1024] [--rounds 3] [--connects 50]
        [--frames 100] [--streams 25,50,100,150,200] [--window 10] [--json out.json]

`--listener` says how the gateway is reached; `gateway` (the only one so far) starts
`desktops.viewer.gateway.gateway_start` on `--gateway-address` in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    percentile,
    process_cpu_seconds,
    scratch_directory,
    setup_django,
    wait_for_port,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
PASSWORD = "bench-pw"
CHUNK = 1 << 20
UPSTREAM_HZ = 10
UPSTREAM_BYTES = 64
#: A stream kept up when this share of the offered bytes arrived and its p99 delay is below
#: KEPT_UP_P99_MS.
KEPT_UP_SHARE = 0.99
KEPT_UP_P99_MS = 100.0


# --- the endpoints ----------------------------------------------------------------------------


def listening_socket() -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    return listener


def port_of(listener: socket.socket) -> int:
    return int(listener.getsockname()[1])


def certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate for 127.0.0.1 (the endpoint's, as QEMU's SPICE has)."""
    cert, key = work / "endpoint-cert.pem", work / "endpoint-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def recv_exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return bytes(data)


def sink(connection: socket.socket, size: int) -> None:
    buffer = memoryview(bytearray(CHUNK))
    left = size
    while left:
        received = connection.recv_into(buffer, min(left, CHUNK))
        if not received:
            raise ConnectionError("closed early")
        left -= received


def source(connection: socket.socket, size: int, payload: memoryview) -> None:
    left = size
    while left:
        piece = payload[: min(left, CHUNK)]
        connection.sendall(piece)
        left -= len(piece)


class BulkEndpoint:
    """A TLS server standing in for a SPICE display: after the handshake the client sends
    `D` or `U` and a size; it then sends that many bytes, or receives them and answers `K`.
    A client that only shakes hands and leaves is fine too."""

    def __init__(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        self.listener, self.context = listener, context
        self.payload = memoryview(os.urandom(CHUNK))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(connection,), daemon=True).start()

    def session(self, connection: socket.socket) -> None:
        try:
            with self.context.wrap_socket(connection, server_side=True) as tls:
                command = tls.recv(9)
                if len(command) < 9:
                    return
                (size,) = struct.unpack(">Q", command[1:])
                if command[:1] == b"D":
                    source(tls, size, self.payload)
                elif command[:1] == b"U":
                    sink(tls, size)
                    tls.sendall(b"K")
        except (OSError, ssl.SSLError):
            pass


# --- reaching the endpoint: direct, or through the gateway -------------------------------------


@dataclass(frozen=True)
class Credential:
    public_id: str
    secret: str


def connect_request(target: tuple[str, int], credential: Credential) -> bytes:
    """CONNECT as spice-gtk sends it, with the `.vv` file's credential."""
    basic = base64.b64encode(f"{credential.public_id}:{credential.secret}".encode()).decode()
    host, port = target
    return (
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: Basic {basic}\r\n\r\n"
    ).encode()


def check_connect_answer(head: bytes) -> None:
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the gateway refused the tunnel: {status.decode(errors='replace')}")


def open_blocking(
    target: tuple[str, int], gateway: tuple[str, int] | None, credential: Credential | None
) -> tuple[socket.socket, float]:
    """A TCP connection to `target`, through a CONNECT tunnel when `gateway` is given.
    Returns it and the seconds the CONNECT took to be answered (0 direct)."""
    connection = socket.create_connection(gateway or target, timeout=30)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if gateway is None:
        return connection, 0.0
    assert credential is not None
    started = time.perf_counter()
    connection.sendall(connect_request(target, credential))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(4096)
        if not chunk:
            raise SystemExit("the gateway closed the connection without an answer")
        head += chunk
    check_connect_answer(head)
    if not head.endswith(b"\r\n\r\n"):
        raise SystemExit("the gateway sent bytes after its answer before the display spoke")
    return connection, time.perf_counter() - started


def bulk_transfer(
    direction: str,
    size: int,
    target: tuple[str, int],
    context: ssl.SSLContext,
    gateway: tuple[str, int] | None,
    credential: Credential | None,
    payload: memoryview,
) -> float:
    """MB/s of one transfer of `size` bytes, `D` (endpoint to client) or `U`."""
    connection, _ = open_blocking(target, gateway, credential)
    with context.wrap_socket(connection, server_hostname=target[0]) as tls:
        started = time.perf_counter()
        tls.sendall(direction.encode() + struct.pack(">Q", size))
        if direction == "D":
            sink(tls, size)
        else:
            source(tls, size, payload)
            if recv_exactly(tls, 1) != b"K":
                raise SystemExit("the endpoint did not confirm the upload")
        elapsed = time.perf_counter() - started
    return size / elapsed / 1e6


def time_to_tls(
    target: tuple[str, int],
    context: ssl.SSLContext,
    gateway: tuple[str, int] | None,
    credential: Credential | None,
) -> tuple[float, float]:
    """Milliseconds from starting the TCP connection to a finished TLS handshake, and of
    that the CONNECT's answer."""
    started = time.perf_counter()
    connection, answered = open_blocking(target, gateway, credential)
    with context.wrap_socket(connection, server_hostname=target[0]):
        elapsed = time.perf_counter() - started
    return elapsed * 1000, answered * 1000


# --- concurrent display streams ---------------------------------------------------------------
# Protocols and timer callbacks rather than a task per stream: the endpoints of 200 streams
# must fit in one core with room to spare, or the baseline measures the load generator.

MESSAGE_HEADER = struct.Struct(">Id")  # payload length, when the message was due (perf_counter)


@dataclass
class StreamConfig:
    message_bytes: int
    interval: float


class DisplayStream(asyncio.Protocol):
    """The display side of one stream: a message every `interval`, stamped with when it was
    due, so a message held up anywhere (here too) shows as delay; the client's input is
    dropped."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.payload = os.urandom(config.message_bytes - MESSAGE_HEADER.size)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        # Streams do not tick together.
        self.due = self.loop.time() + random.random() * self.config.interval
        self.timer = self.loop.call_at(self.due, self.send)

    def send(self) -> None:
        if self.transport.is_closing():
            return
        stamp = self.due - self.loop.time() + time.perf_counter()
        self.transport.write(MESSAGE_HEADER.pack(len(self.payload), stamp) + self.payload)
        self.due += self.config.interval
        self.timer = self.loop.call_at(self.due, self.send)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


@dataclass
class StreamCounters:
    measuring: bool = False
    received: int = 0
    delays: list[float] = field(default_factory=list)


class ViewerStream(asyncio.Protocol):
    """The viewer side: after the gateway's answer (if any), reads every message, notes its
    delay while measuring, and sends a small input message ten times a second."""

    def __init__(self, counters: StreamCounters, connect: bytes | None) -> None:
        self.counters = counters
        self.connect = connect
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.input = os.urandom(UPSTREAM_BYTES)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        if self.connect is not None:
            transport.write(self.connect)
        else:
            self.start()

    def start(self) -> None:
        self.answered.set_result(None)
        self.timer = self.loop.call_later(random.random() / UPSTREAM_HZ, self.send_input)

    def send_input(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.input)
            self.timer = self.loop.call_later(1 / UPSTREAM_HZ, self.send_input)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.answered.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if not status.startswith(b"HTTP/1.1 200"):
                self.answered.set_exception(
                    SystemExit(f"the gateway refused the tunnel: {status.decode(errors='replace')}")
                )
                return
            self.start()
        counters, offset, size = self.counters, 0, len(buffer)
        now = time.perf_counter()
        while size - offset >= MESSAGE_HEADER.size:
            length, due = MESSAGE_HEADER.unpack_from(buffer, offset)
            end = offset + MESSAGE_HEADER.size + length
            if end > size:
                break
            if counters.measuring:
                counters.received += end - offset
                counters.delays.append((now - due) * 1000)
            offset = end
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.answered.done():
            self.answered.set_exception(SystemExit("the gateway closed the connection"))


async def streams_round(
    count: int,
    target: tuple[str, int],
    gateway: tuple[str, int] | None,
    credentials: list[Credential],
    relay_pid: int | None,
    warmup: float,
    window: float,
    offered_per_stream: float,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counters = StreamCounters()
    opening = asyncio.Semaphore(25)  # a class arriving, not 200 CONNECTs in one instant

    async def opened(index: int) -> asyncio.Transport:
        connect = connect_request(target, credentials[index]) if gateway else None
        async with opening:
            transport, viewer = await loop.create_connection(
                lambda: ViewerStream(counters, connect), *(gateway or target)
            )
            await viewer.answered
        return transport

    transports = await asyncio.gather(*(opened(index) for index in range(count)))
    await asyncio.sleep(warmup)
    relay_before = process_cpu_seconds(relay_pid) if relay_pid else 0.0
    own_before = time.process_time()
    started = time.perf_counter()
    counters.measuring = True
    await asyncio.sleep(window)
    counters.measuring = False
    elapsed = time.perf_counter() - started
    relay_cpu = (process_cpu_seconds(relay_pid) - relay_before) if relay_pid else 0.0
    own_cpu = time.process_time() - own_before
    for transport in transports:
        transport.close()
    await asyncio.sleep(0.5)  # the tunnels close before the next round opens
    offered = count * offered_per_stream * elapsed
    delays = counters.delays or [float("nan")]
    return {
        "streams": count,
        "delivered_share": round(counters.received / offered, 4),
        "delay_p50_ms": round(percentile(delays, 0.5), 2),
        "delay_p99_ms": round(percentile(delays, 0.99), 2),
        "relay_core_share": round(relay_cpu / elapsed, 4),
        "clients_core_share": round(own_cpu / elapsed, 4),
    }


# --- VNC: a fast RFB server and a lean client -------------------------------------------------

RAW = 0


async def serve_rfb(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame: bytes, size: tuple[int, int]
) -> None:
    """RFB 3.8 with VNC authentication; every FramebufferUpdateRequest gets the whole
    screen as one Raw rectangle at once (the most a VNC server can send)."""
    from desktops.viewer.rfb import vnc_auth_response
    from tests.integration.test_viewers_rfb import PIXEL_FORMAT

    try:
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x01\x02")
        if await reader.readexactly(1) != b"\x02":
            return
        challenge = os.urandom(16)
        writer.write(challenge)
        if await reader.readexactly(16) != vnc_auth_response(PASSWORD, challenge):
            writer.write(struct.pack(">I", 1) + struct.pack(">I", 5) + b"wrong")
            return
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)  # ClientInit
        writer.write(struct.pack(">HH", *size) + PIXEL_FORMAT + struct.pack(">I", 5) + b"bench")
        update = b"\x00\x00" + struct.pack(">H", 1) + struct.pack(">HHHHi", 0, 0, *size, RAW)
        while True:
            kind = (await reader.readexactly(1))[0]
            if kind == 0:  # SetPixelFormat
                await reader.readexactly(19)
            elif kind == 2:  # SetEncodings
                (count,) = struct.unpack(">xH", await reader.readexactly(3))
                await reader.readexactly(4 * count)
            elif kind == 3:  # FramebufferUpdateRequest
                await reader.readexactly(9)
                writer.write(update)
                writer.write(frame)
                await writer.drain()
            elif kind == 4:  # KeyEvent
                await reader.readexactly(7)
            elif kind == 5:  # PointerEvent
                await reader.readexactly(5)
            elif kind == 6:  # ClientCutText
                (length,) = struct.unpack(">3xI", await reader.readexactly(7))
                await reader.readexactly(length)
            else:
                return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass  # cancelled: the run is over
    finally:
        writer.close()


async def read_update_discarding(transport: Any) -> int:
    """One FramebufferUpdate of Raw rectangles; the pixel bytes are counted, not kept."""
    read = transport.read_exactly
    header = await read(4)
    if header[0] != 0:
        raise SystemExit(f"unexpected RFB server message {header[0]}")
    (rectangles,) = struct.unpack(">H", header[2:])
    received = 0
    for _ in range(rectangles):
        _, _, width, height, encoding = struct.unpack(">HHHHi", await read(12))
        if encoding != RAW:
            raise SystemExit(f"unexpected encoding {encoding}")
        left = width * height * 4
        while left:
            left -= len(await read(min(left, CHUNK)))
        received += width * height * 4
    return received


# --- the relays under test --------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def start_gateway_process(address: tuple[str, int], cpu: int, log: Path) -> subprocess.Popen[bytes]:
    """`gateway_start` on `address` in a process of its own, pinned to `cpu`, using this
    run's database (the environment `setup_django` set)."""
    process = subprocess.Popen(
        [
            "taskset", "-c", str(cpu), sys.executable, __file__,
            "--serve-gateway", f"{address[0]}:{address[1]}",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    wait_for_port(*address)
    return process


#: How the benchmark reaches the gateway: name -> function that starts it on an address and
#: returns its process (whose CPU time is measured). A listener shared with HTTPS (told
#: apart by the first bytes) goes here too.
LISTENERS: dict[str, Callable[[tuple[str, int], int, Path], subprocess.Popen[bytes]]] = {
    "gateway": start_gateway_process,
}


def serve_gateway(address: str) -> None:
    """The child process of `start_gateway_process`: the tests' way of running the gateway."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isard.settings")
    import django

    django.setup()
    from desktops.viewer.gateway import gateway_start

    host, port = parse_address(address)

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = await gateway_start(host=host, port=port)
        async with server:
            await stop.wait()

    asyncio.run(serve())


def start_daphne(port: int, cpu: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            "taskset", "-c", str(cpu), str(ROOT / ".venv/bin/daphne"),
            "-b", "127.0.0.1", "-p", str(port), "isard.asgi:application",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    wait_for_port("127.0.0.1", port)
    return process


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- the platform's side: desktops on a test:/// node -----------------------------------------


def node_xml(path: Path, domains: list[tuple[str, int, int]]) -> None:
    """A libvirt test node whose running domains have their displays on these ports
    (name, SPICE TLS port, VNC port)."""
    parts = ["<node>"]
    for name, spice_tls_port, vnc_port in domains:
        parts.append(
            f"""<domain type='test'><name>{name}</name><memory>65536</memory>
  <os><type>hvm</type></os><devices>
  <graphics type='spice' port='-1' tlsPort='{spice_tls_port}' autoport='no' listen='127.0.0.1'>
    <listen type='address' address='127.0.0.1'/></graphics>
  <graphics type='vnc' port='{vnc_port}' autoport='no' listen='127.0.0.1'>
    <listen type='address' address='127.0.0.1'/></graphics>
</devices></domain>"""
        )
    parts.append("</node>")
    path.write_text("\n".join(parts))


def desktops_on_node(node: Path, count: int, ports: tuple[int, int, int]) -> dict[str, Any]:
    """`count` + 1 students, each with a started desktop on the node, and a gateway
    credential for each; desktop 0's SPICE display is the bulk endpoint, the others' the
    stream endpoint; all VNC displays are the RFB server."""
    from accounts.tests.factories import SchoolFactory, UserFactory
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.viewer.gateway_access import gateway_credential_issue
    from hypervisors.tests.factories import HypervisorFactory
    from templates_app.tests.factories import HardwareProfileFactory

    bulk_port, stream_port, vnc_port = ports
    school = SchoolFactory.create()
    hardware = HardwareProfileFactory.create(graphics_spice=True, graphics_vnc=True)
    hypervisor = HypervisorFactory.create(name="bench-node", uri=f"test://{node}")
    desktops, credentials = [], []
    for index in range(count + 1):
        # No password hashing: 200 PBKDF2 rounds would take a minute.
        owner = UserFactory.create(username=f"bench-{index}", school=school, password=None)
        desktop = Desktop.objects.create(
            name=f"bench {index}",
            owner=owner,
            hardware=hardware,
            status=DesktopStatus.STARTED,
            hypervisor=hypervisor,
            graphics_password=PASSWORD,
        )
        issued = gateway_credential_issue(actor=owner, desktop=desktop)
        desktops.append(desktop)
        credentials.append(Credential(issued.public_id, issued.secret))
    node_xml(
        node,
        [
            (desktop.domain_name, bulk_port if index == 0 else stream_port, vnc_port)
            for index, desktop in enumerate(desktops)
        ],
    )
    return {"desktops": desktops, "credentials": credentials}


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-gateway", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--listener", choices=sorted(LISTENERS), default="gateway")
    parser.add_argument(
        "--gateway-address", default="127.0.0.1:0", help="HOST:PORT (port 0: a free one)"
    )
    parser.add_argument("--megabytes", type=int, default=1024, help="per bulk transfer")
    parser.add_argument("--rounds", type=int, default=3, help="bulk and VNC rounds per path")
    parser.add_argument("--connects", type=int, default=50, help="timed connections per path")
    parser.add_argument("--frames", type=int, default=100, help="full VNC frames per round")
    parser.add_argument("--screen", default="1280x800", help="the RFB server's screen")
    parser.add_argument("--streams", default="25,50,100,150,200")
    parser.add_argument("--stream-kbit", type=float, default=1500, help="per stream, offered")
    parser.add_argument("--stream-hz", type=float, default=30, help="display messages a second")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per N")
    parser.add_argument("--relay-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma list of: spice,connect,vnc,streams")
    parser.add_argument(
        "--renice",
        type=int,
        default=0,
        help="lower this run's nice value by N (root; the relays inherit it): on a machine "
        "busy with other work, so the relays are measured rather than the scheduler's share",
    )
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if options.serve_gateway:
        serve_gateway(options.serve_gateway)
        return
    skip = set(filter(None, options.skip.split(",")))
    counts = [int(n) for n in options.streams.split(",") if n]
    os.sched_setaffinity(0, {options.client_cpu})
    if options.renice:
        os.nice(-options.renice)

    work = scratch_directory()
    gateway_process: subprocess.Popen[bytes] | None = None
    daphne: subprocess.Popen[bytes] | None = None
    try:
        setup_django(work, REDIS_URL)
        bulk_listener, stream_listener, rfb_listener = (listening_socket() for _ in range(3))
        node = work / "node.xml"
        rows = desktops_on_node(
            node,
            max(counts, default=1),
            (port_of(bulk_listener), port_of(stream_listener), port_of(rfb_listener)),
        )
        credentials: list[Credential] = rows["credentials"]
        cert, key = certificate(work)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        client_context = ssl.create_default_context(cafile=str(cert))
        BulkEndpoint(bulk_listener, server_context)

        host, port = parse_address(options.gateway_address)
        if not port:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        gateway = (host, port)
        gateway_process = LISTENERS[options.listener](
            gateway, options.relay_cpu, work / "gateway.log"
        )
        load_before = os.getloadavg()[0]
        report: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "load_average_1min": round(load_before, 1),
            "listener": options.listener,
            "relay_cpu": options.relay_cpu,
            "client_cpu": options.client_cpu,
            "reniced_by": options.renice,
        }
        bulk_target = ("127.0.0.1", port_of(bulk_listener))

        if "spice" not in skip:
            report["spice"] = spice_throughput(
                options, bulk_target, client_context, gateway, credentials[0], gateway_process.pid
            )
        if "connect" not in skip:
            report["connect"] = connect_times(
                options, bulk_target, client_context, gateway, credentials[0]
            )
        if "streams" not in skip:
            config = StreamConfig(
                message_bytes=max(
                    MESSAGE_HEADER.size + 1, round(options.stream_kbit * 125 / options.stream_hz)
                ),
                interval=1 / options.stream_hz,
            )
            report["streams"] = asyncio.run(
                concurrency(
                    options,
                    counts,
                    ("127.0.0.1", port_of(stream_listener)),
                    stream_listener,
                    gateway,
                    credentials[1:],
                    gateway_process.pid,
                    config,
                )
            )
        stop(gateway_process)
        gateway_process = None
        if "vnc" not in skip:
            web_port = free_port()
            daphne = start_daphne(web_port, options.relay_cpu, work / "daphne.log")
            report["vnc"] = asyncio.run(
                vnc_measure(options, rfb_listener, web_port, rows["desktops"][0], daphne.pid)
            )
        print_report(report, options)
        if options.json:
            options.json.write_text(json.dumps(report, indent=2))
    finally:
        stop(gateway_process)
        stop(daphne)
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spice_throughput(
    options: Any,
    target: tuple[str, int],
    context: ssl.SSLContext,
    gateway: tuple[str, int],
    credential: Credential,
    relay_pid: int,
) -> dict[str, Any]:
    size = options.megabytes * (1 << 20)
    payload = memoryview(os.urandom(CHUNK))
    raw: dict[str, list[float]] = {}
    for direction in ("U", "D"):
        bulk_transfer(direction, 64 << 20, target, context, gateway, credential, payload)  # warm
        for path in ("direct", "gateway"):
            raw[f"{direction}_{path}"] = []
        relay_cpu = 0.0
        wall = {"direct": 0.0, "gateway": 0.0}
        own = {"direct": 0.0, "gateway": 0.0}
        for _ in range(options.rounds):
            for path, via in (("direct", None), ("gateway", gateway)):
                cpu_before, started = process_cpu_seconds(relay_pid), time.perf_counter()
                own_before = time.process_time()
                rate = bulk_transfer(direction, size, target, context, via, credential, payload)
                own[path] += time.process_time() - own_before
                wall[path] += time.perf_counter() - started
                if via is not None:
                    relay_cpu += process_cpu_seconds(relay_pid) - cpu_before
                raw[f"{direction}_{path}"].append(rate)
        raw[f"{direction}_relay_core_share"] = [relay_cpu / wall["gateway"]]
        for path in wall:
            raw[f"{direction}_{path}_clients_core_share"] = [own[path] / wall[path]]
    result: dict[str, Any] = {"megabytes": options.megabytes, "raw_mb_s": raw}
    for direction, name in (("U", "up"), ("D", "down")):
        direct = statistics.median(raw[f"{direction}_direct"])
        through = statistics.median(raw[f"{direction}_gateway"])
        result[name] = {
            "direct_mb_s": round(direct, 1),
            "gateway_mb_s": round(through, 1),
            "ratio": round(through / direct, 3),
            "relay_core_share": round(raw[f"{direction}_relay_core_share"][0], 3),
            "clients_core_share_direct": round(raw[f"{direction}_direct_clients_core_share"][0], 3),
            "clients_core_share_gateway": round(
                raw[f"{direction}_gateway_clients_core_share"][0], 3
            ),
        }
    return result


def connect_times(
    options: Any,
    target: tuple[str, int],
    context: ssl.SSLContext,
    gateway: tuple[str, int],
    credential: Credential,
) -> dict[str, Any]:
    time_to_tls(target, context, gateway, credential)  # warm the gateway's first query
    direct, through, answers = [], [], []
    for _ in range(options.connects):
        direct.append(time_to_tls(target, context, None, None)[0])
        total, answered = time_to_tls(target, context, gateway, credential)
        through.append(total)
        answers.append(answered)

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(values), 2),
            "p95_ms": round(percentile(values, 0.95), 2),
        }

    return {
        "connects": options.connects,
        "direct": summary(direct),
        "gateway": summary(through),
        "connect_answer": summary(answers),
    }


async def concurrency(
    options: Any,
    counts: list[int],
    target: tuple[str, int],
    listener: socket.socket,
    gateway: tuple[str, int],
    credentials: list[Credential],
    relay_pid: int,
    config: StreamConfig,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DisplayStream(config), sock=listener, backlog=512)
    rounds = []
    try:
        for count in counts:
            for path, via, pid in (("direct", None, None), ("gateway", gateway, relay_pid)):
                result = await streams_round(
                    count,
                    target,
                    via,
                    credentials,
                    pid,
                    options.warmup,
                    options.window,
                    config.message_bytes / config.interval,
                )
                result["path"] = path
                result["kept_up"] = bool(
                    result["delivered_share"] >= KEPT_UP_SHARE
                    and result["delay_p99_ms"] < KEPT_UP_P99_MS
                )
                rounds.append(result)
                print(json.dumps(result), flush=True)
    finally:
        server.close()
    kept = [r for r in rounds if r["path"] == "gateway" and r["kept_up"]]
    best = max(kept, key=lambda r: r["streams"], default=None)
    per_core = None
    if best is not None and best["relay_core_share"] > 0:
        per_core = int(best["streams"] / best["relay_core_share"])
    return {
        "stream_kbit": options.stream_kbit,
        "message_bytes": config.message_bytes,
        "messages_per_second": options.stream_hz,
        "window_s": options.window,
        "rounds": rounds,
        "most_streams_kept_up": best["streams"] if best else 0,
        "streams_per_core_projected": per_core,
    }


async def vnc_measure(
    options: Any, listener: socket.socket, web_port: int, desktop: Any, relay_pid: int
) -> dict[str, Any]:
    from django.conf import settings
    from django.test import Client

    from desktops.viewer.services import viewer_token_issue
    from tests.integration.test_viewers_rfb import RfbClient, TcpTransport, WebsocketTransport

    width, height = (int(n) for n in options.screen.split("x"))
    frame = os.urandom(width * height * 4)
    server = await asyncio.start_server(
        lambda r, w: serve_rfb(r, w, frame, (width, height)), sock=listener
    )
    rfb_port = port_of(listener)
    base = f"http://127.0.0.1:{web_port}"

    def sign_in() -> str:
        client = Client()
        client.force_login(desktop.owner)
        name = settings.SESSION_COOKIE_NAME
        return f"{name}={client.cookies[name].value}"

    cookie = await asyncio.to_thread(sign_in)

    async def open_direct() -> RfbClient:
        viewer = RfbClient(await TcpTransport.open("127.0.0.1", rfb_port))
        await viewer.handshake(PASSWORD)
        return viewer

    async def open_proxy(path: str) -> RfbClient:
        transport = await WebsocketTransport.open(
            f"ws://127.0.0.1:{web_port}{path}", cookie=cookie, origin=base
        )
        viewer = RfbClient(transport)
        await viewer.handshake("")  # the proxy signs in to the display with the password
        return viewer

    async def token_path() -> str:
        access = await asyncio.to_thread(
            lambda: viewer_token_issue(actor=desktop.owner, desktop=desktop)
        )
        return access.websocket_path

    async def first_frame(proxy: bool) -> float:
        path = await token_path() if proxy else ""
        started = time.perf_counter()
        viewer = await (open_proxy(path) if proxy else open_direct())
        await viewer.request(incremental=False)
        await read_update_discarding(viewer.transport)
        elapsed = time.perf_counter() - started
        await viewer.close()
        return elapsed * 1000

    relay_cpu = relay_wall = 0.0

    async def throughput(proxy: bool) -> float:
        nonlocal relay_cpu, relay_wall
        viewer = await (open_proxy(await token_path()) if proxy else open_direct())
        await viewer.request(incremental=False)
        await read_update_discarding(viewer.transport)
        received = 0
        cpu_before, started = process_cpu_seconds(relay_pid), time.perf_counter()
        for _ in range(options.frames):
            await viewer.request(incremental=False)
            received += await read_update_discarding(viewer.transport)
        elapsed = time.perf_counter() - started
        if proxy:
            relay_cpu += process_cpu_seconds(relay_pid) - cpu_before
            relay_wall += elapsed
        await viewer.close()
        return received / elapsed / 1e6

    try:
        await first_frame(True)  # warm Daphne
        direct_ms, proxy_ms = [], []
        for _ in range(options.connects):
            direct_ms.append(await first_frame(False))
            proxy_ms.append(await first_frame(True))
        direct_rates, proxy_rates = [], []
        for _ in range(options.rounds):
            direct_rates.append(await throughput(False))
            proxy_rates.append(await throughput(True))
    finally:
        server.close()
    direct, proxy = statistics.median(direct_rates), statistics.median(proxy_rates)
    return {
        "screen": options.screen,
        "frame_bytes": width * height * 4,
        "frames": options.frames,
        "direct_mb_s": round(direct, 1),
        "proxy_mb_s": round(proxy, 1),
        "ratio": round(proxy / direct, 3),
        "relay_core_share": round(relay_cpu / relay_wall, 3),
        "raw_mb_s": {"direct": direct_rates, "proxy": proxy_rates},
        "first_frame_direct": {
            "p50_ms": round(statistics.median(direct_ms), 2),
            "p95_ms": round(percentile(direct_ms, 0.95), 2),
        },
        "first_frame_proxy": {
            "p50_ms": round(statistics.median(proxy_ms), 2),
            "p95_ms": round(percentile(proxy_ms, 0.95), 2),
        },
    }


def print_report(report: dict[str, Any], options: Any) -> None:
    print()
    print(
        f"load average {report['load_average_1min']} on {report['cpus']} CPUs; relays on CPU "
        f"{report['relay_cpu']}, endpoints and clients on CPU {report['client_cpu']}"
    )
    if "spice" in report:
        spice = report["spice"]
        print()
        print(
            f"| SPICE gateway, TLS bulk, {spice['megabytes']} MiB x {options.rounds} "
            "| direct MB/s | via gateway MB/s | ratio (target >= 0.9) | gateway's core "
            "| endpoints' core direct / via gateway |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name, label in (("up", "client to display"), ("down", "display to client")):
            row = spice[name]
            print(
                f"| {label} | {row['direct_mb_s']} | {row['gateway_mb_s']} | {row['ratio']} | "
                f"{row['relay_core_share'] * 100:.0f}% | "
                f"{row['clients_core_share_direct'] * 100:.0f}% / "
                f"{row['clients_core_share_gateway'] * 100:.0f}% |"
            )
    if "connect" in report:
        connect = report["connect"]
        print()
        print(f"| connect to TLS ready, {connect['connects']} connections | p50 | p95 |")
        print("| --- | --- | --- |")
        for key, label in (
            ("direct", "direct: TCP + TLS handshake"),
            ("gateway", "via gateway: TCP + CONNECT + TLS handshake"),
            ("connect_answer", "of which CONNECT sent to its 200"),
        ):
            print(f"| {label} | {connect[key]['p50_ms']} ms | {connect[key]['p95_ms']} ms |")
    if "vnc" in report:
        vnc = report["vnc"]
        print()
        print(f"| VNC, {vnc['screen']} Raw frames | direct | via websocket proxy | ratio |")
        print("| --- | --- | --- | --- |")
        print(
            f"| throughput, {options.rounds} x {vnc['frames']} frames (target >= 0.9) | "
            f"{vnc['direct_mb_s']} MB/s | {vnc['proxy_mb_s']} MB/s "
            f"(Daphne's core {vnc['relay_core_share'] * 100:.0f}%) | {vnc['ratio']} |"
        )
        for share in ("p50", "p95"):
            direct = vnc["first_frame_direct"][f"{share}_ms"]
            proxy = vnc["first_frame_proxy"][f"{share}_ms"]
            print(f"| open to first frame {share} | {direct} ms | {proxy} ms | |")
    if "streams" in report:
        streams = report["streams"]
        print()
        print(
            f"| streams of {streams['stream_kbit']:.0f} kbit/s ({streams['message_bytes']} B x "
            f"{streams['messages_per_second']:.0f}/s), {streams['window_s']:.0f} s | path | "
            "delivered | delay p50 | delay p99 | relay core | CPU per stream | clients core |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in streams["rounds"]:
            per_stream = (
                f"{row['relay_core_share'] / row['streams'] * 100:.3f}%"
                if row["path"] == "gateway"
                else ""
            )
            relay = f"{row['relay_core_share'] * 100:.1f}%" if row["path"] == "gateway" else ""
            print(
                f"| {row['streams']} | {row['path']} | {row['delivered_share'] * 100:.1f}% | "
                f"{row['delay_p50_ms']} ms | {row['delay_p99_ms']} ms | {relay} | "
                f"{per_stream} | {row['clients_core_share'] * 100:.1f}% |"
            )
        print()
        print(
            f"most streams the gateway kept up with (>= {KEPT_UP_SHARE:.0%} delivered, p99 "
            f"delay < {KEPT_UP_P99_MS:.0f} ms): {streams['most_streams_kept_up']}; projected "
            f"streams per core at that load: {streams['streams_per_core_projected']}"
        )


if __name__ == "__main__":
    main()
