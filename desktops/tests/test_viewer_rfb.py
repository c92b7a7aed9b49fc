"""The proxy's RFB opening (`desktops.viewer.rfb`) against stand-in servers, for the corner
cases a real QEMU does not show on demand: VeNCrypt sub-types, refusals, wrong host names,
and the browser's side. Real QEMU with and without TLS: tests/integration/test_viewers*.py.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from desktops.viewer.rfb import (
    BrowserGreeting,
    RfbHandshakeError,
    RfbNotEncryptedError,
    UpstreamTls,
    upstream_sign_in,
    vnc_auth_response,
)
from hypervisors import tls

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(autouse=True)
def quick_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "RSA_KEY_SIZE", 2048)


@pytest.fixture
def pki(tmp_path: Path) -> tls.PkiPaths:
    paths = tls.PkiPaths(tmp_path / "pki")
    tls.host_certificate_issue(paths=paths, names=tls.HostNames(dns=("hv.example",)))
    return paths


def test_vnc_auth_matches_openssl_des() -> None:
    # openssl enc -des-ecb -nopad -K 8c4ccc2cac6cec1c (the bit-reversed "12345678")
    assert vnc_auth_response("12345678", b"0123456789abcdef").hex() == (
        "89d0c31376ecd556f5672d63bad2ee98"
    )


async def sign_in_to(
    handler: Handler, *, tls_settings: UpstreamTls | None, require_tls: bool, password: str = "pw"
) -> bool:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def make_tls() -> UpstreamTls:
        assert tls_settings is not None
        return tls_settings

    try:
        upstream = await asyncio.wait_for(
            upstream_sign_in(
                reader,
                writer,
                password=password,
                tls=make_tls if tls_settings is not None else None,
                require_tls=require_tls,
            ),
            timeout=10,
        )
        return upstream.encrypted
    finally:
        writer.close()
        server.close()


def vencrypt_server(pki: tls.PkiPaths, subtypes: list[int], seen: list[str]) -> Handler:
    """VeNCrypt as QEMU does it, with the TLS server demanding the CA's client certificate."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.host_cert, pki.host_key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"RFB 003.008\n")
            await reader.readexactly(12)
            writer.write(b"\x01\x13")  # VeNCrypt only
            assert await reader.readexactly(1) == b"\x13"
            writer.write(b"\x00\x02")
            assert await reader.readexactly(2) == b"\x00\x02"
            writer.write(b"\x00" + bytes([len(subtypes)]))
            writer.write(struct.pack(f">{len(subtypes)}I", *subtypes))
            (chosen,) = struct.unpack(">I", await reader.readexactly(4))
            seen.append(f"subtype {chosen}")
            writer.write(b"\x01")
            await writer.drain()
            await writer.start_tls(context)
            seen.append("tls")
            if chosen == 261:
                challenge = os.urandom(16)
                writer.write(challenge)
                ok = await reader.readexactly(16) == vnc_auth_response("pw", challenge)
                seen.append("password ok" if ok else "password wrong")
                writer.write(struct.pack(">I", 0 if ok else 1))
                if not ok:
                    writer.write(struct.pack(">I", 6) + b"failed")
            else:
                writer.write(struct.pack(">I", 0))
            await writer.drain()
            await reader.read(1)
        except (OSError, asyncio.IncompleteReadError, AssertionError) as error:
            seen.append(f"error {type(error).__name__}")
        finally:
            writer.close()

    return handle


@pytest.mark.asyncio
async def test_vencrypt_x509_vnc_with_the_proxys_certificate(pki: tls.PkiPaths) -> None:
    seen: list[str] = []
    settings = UpstreamTls(tls.viewer_proxy_tls_context(paths=pki), "hv.example")
    encrypted = await sign_in_to(
        vencrypt_server(pki, [261], seen), tls_settings=settings, require_tls=True
    )
    assert encrypted and seen == ["subtype 261", "tls", "password ok"]


@pytest.mark.asyncio
async def test_vencrypt_x509_none_needs_no_password(pki: tls.PkiPaths) -> None:
    seen: list[str] = []
    settings = UpstreamTls(tls.viewer_proxy_tls_context(paths=pki), "hv.example")
    assert await sign_in_to(
        vencrypt_server(pki, [257, 260], seen), tls_settings=settings, require_tls=True
    )
    assert seen == ["subtype 260", "tls"]


@pytest.mark.asyncio
async def test_a_wrong_password_over_tls_is_refused(pki: tls.PkiPaths) -> None:
    seen: list[str] = []
    settings = UpstreamTls(tls.viewer_proxy_tls_context(paths=pki), "hv.example")
    with pytest.raises(RfbHandshakeError, match="refused the password: failed"):
        await sign_in_to(
            vencrypt_server(pki, [261], seen),
            tls_settings=settings,
            require_tls=True,
            password="nope",
        )


@pytest.mark.asyncio
async def test_a_host_whose_certificate_names_another_host_is_refused(pki: tls.PkiPaths) -> None:
    seen: list[str] = []
    settings = UpstreamTls(tls.viewer_proxy_tls_context(paths=pki), "other.example")
    with pytest.raises(RfbHandshakeError, match="TLS with the display failed"):
        await sign_in_to(vencrypt_server(pki, [261], seen), tls_settings=settings, require_tls=True)
    assert "password ok" not in seen


@pytest.mark.asyncio
async def test_anonymous_tls_sub_types_are_not_enough(pki: tls.PkiPaths) -> None:
    seen: list[str] = []
    settings = UpstreamTls(tls.viewer_proxy_tls_context(paths=pki), "hv.example")
    with pytest.raises(RfbHandshakeError, match="no x509 VeNCrypt sub-type"):
        await sign_in_to(
            vencrypt_server(pki, [257, 258], seen), tls_settings=settings, require_tls=True
        )
    assert not any(step.startswith("subtype") for step in seen)  # it chose none


@pytest.mark.asyncio
async def test_a_plain_display_gets_no_password_when_tls_is_required() -> None:
    after_security_types: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x01\x02")
        after_security_types.set_result(await reader.read(17))  # b"" once the proxy hangs up
        writer.close()

    with pytest.raises(RfbNotEncryptedError, match="offers no TLS"):
        await sign_in_to(plain, tls_settings=None, require_tls=True)
    assert await asyncio.wait_for(after_security_types, timeout=5) == b""


def test_the_browser_greeting_speaks_3_8_3_7_and_3_3() -> None:
    newest = BrowserGreeting()
    assert newest.feed(b"RFB 003.008\n") == b"\x01\x01"
    assert newest.feed(b"\x01\x01") == struct.pack(">I", 0)
    assert newest.done and newest.leftover == b"\x01"
    older = BrowserGreeting()
    assert older.feed(b"RFB 003.007\n\x01") == b"\x01\x01"  # no security result in 3.7
    assert older.done and older.leftover == b""
    oldest = BrowserGreeting()
    assert oldest.feed(b"RFB 003.003\n") == struct.pack(">I", 1)
    assert oldest.done
    with pytest.raises(RfbHandshakeError):
        BrowserGreeting().feed(b"RFB 004.000\n")
