"""The platform CA and host certificate, their rotation, and libvirt's SPICE TLS setup.

The certificates are checked by OpenSSL itself (Python's `ssl`) in a real TLS handshake,
not only by reading them back with the library that wrote them.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hypervisors import tls

NAMES = tls.HostNames(dns=("vdi.school.example", "localhost"))


@pytest.fixture(autouse=True)
def quick_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "RSA_KEY_SIZE", 2048)


@pytest.fixture
def pki(tmp_path: Path) -> tls.PkiPaths:
    return tls.PkiPaths(tmp_path / "pki")


def serial(path: Path) -> int:
    certificate = tls.load_certificate(path)
    assert certificate is not None
    return certificate.serial_number


def handshake(pki: tls.PkiPaths, *, ca_pem: str, server_name: str = "localhost") -> str:
    """Serve the host certificate on a loopback port and connect with OpenSSL verifying it."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.host_cert, pki.host_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls_connection:
                tls_connection.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cadata=ca_pem)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context.wrap_socket(raw, server_hostname=server_name) as connection,
        ):
            der = connection.getpeercert(binary_form=True)
            assert der is not None
            peer = x509.load_der_x509_certificate(der)
            connection.sendall(b"x")
            return str(peer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    finally:
        thread.join(timeout=5)
        listener.close()


def test_a_new_ca_and_host_certificate_pass_a_real_tls_handshake(pki: tls.PkiPaths) -> None:
    host = tls.host_certificate_ensure(paths=pki, names=NAMES)
    assert handshake(pki, ca_pem=tls.ca_bundle_pem(paths=pki)) == "vdi.school.example"
    assert tls.host_subject(host) == "O=isard,CN=vdi.school.example"
    assert pki.ca_key.stat().st_mode & 0o777 == 0o600
    assert pki.host_key.stat().st_mode & 0o777 == 0o600
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"vdi.school.example", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_ensure_changes_nothing_when_all_is_in_order(pki: tls.PkiPaths) -> None:
    tls.host_certificate_ensure(paths=pki, names=NAMES)
    before = (serial(pki.ca_cert), serial(pki.host_cert))
    tls.host_certificate_ensure(paths=pki, names=NAMES)
    assert (serial(pki.ca_cert), serial(pki.host_cert)) == before


def test_a_new_host_name_gets_a_new_host_certificate_from_the_same_ca(pki: tls.PkiPaths) -> None:
    tls.host_certificate_ensure(paths=pki, names=NAMES)
    ca, host = serial(pki.ca_cert), serial(pki.host_cert)
    more = tls.HostNames(dns=(*NAMES.dns, "vdi2.school.example"))
    assert "does not cover" in tls.host_certificate_problem(paths=pki, names=more)
    tls.host_certificate_ensure(paths=pki, names=more)
    assert serial(pki.ca_cert) == ca and serial(pki.host_cert) != host
    assert handshake(pki, ca_pem=tls.ca_bundle_pem(paths=pki), server_name="vdi2.school.example")


def test_rotating_the_ca_keeps_trusting_the_old_one_for_guests_started_before(
    pki: tls.PkiPaths, tmp_path: Path
) -> None:
    tls.host_certificate_ensure(paths=pki, names=NAMES)
    old_ca = pki.ca_cert.read_text()
    old_host = tls.PkiPaths(tmp_path / "old")
    old_host.directory.mkdir()
    old_host.host_cert.write_bytes(pki.host_cert.read_bytes())
    old_host.host_key.write_bytes(pki.host_key.read_bytes())

    tls.ca_rotate(paths=pki, names=NAMES)
    bundle = tls.ca_bundle_pem(paths=pki)
    assert pki.ca_cert.read_text() != old_ca and old_ca in bundle
    assert tls.host_certificate_problem(paths=pki, names=NAMES) == ""
    # The new host certificate and one QEMU loaded before the rotation both verify.
    assert handshake(pki, ca_pem=bundle)
    assert handshake(old_host, ca_pem=bundle)
    # Without the previous CA, the old host certificate would be refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(old_host, ca_pem=pki.ca_cert.read_text())


def test_a_host_certificate_from_another_ca_is_replaced(pki: tls.PkiPaths, tmp_path: Path) -> None:
    tls.host_certificate_ensure(paths=pki, names=NAMES)
    other = tls.PkiPaths(tmp_path / "other")
    tls.host_certificate_ensure(paths=other, names=NAMES)
    pki.host_cert.write_bytes(other.host_cert.read_bytes())
    assert "not signed by the current CA" in tls.host_certificate_problem(paths=pki, names=NAMES)


@pytest.fixture
def libvirt_files(tmp_path: Path) -> tuple[Path, Path]:
    conf = tmp_path / "qemu.conf"
    conf.write_text('# comment\n#spice_tls = 1\n#spice_tls_x509_cert_dir = "/etc/pki"\n')
    return tmp_path / "libvirt-spice", conf


def test_libvirt_setup_installs_the_certificates_and_restarts_only_when_config_changes(
    pki: tls.PkiPaths, libvirt_files: tuple[Path, Path]
) -> None:
    cert_dir, conf = libvirt_files
    restarts: list[Any] = []
    tls.host_certificate_ensure(paths=pki, names=NAMES)

    def install() -> tls.LibvirtSpiceResult:
        return tls.libvirt_spice_install(
            paths=pki, cert_dir=cert_dir, qemu_conf=conf, restart=lambda: restarts.append(1)
        )

    first = install()
    assert first.config_changed and first.restarted and len(first.files_changed) == 3
    assert "\nspice_tls = 1\n" in conf.read_text()
    assert conf.read_text().count("spice_tls =") == 1
    assert tls.libvirt_spice_tls_enabled(conf)
    assert (cert_dir / "server-cert.pem").read_bytes() == pki.host_cert.read_bytes()
    assert (cert_dir / "ca-cert.pem").read_bytes() == pki.ca_cert.read_bytes()
    assert (cert_dir / "server-key.pem").stat().st_mode & 0o007 == 0

    second = install()
    assert second.files_changed == [] and not second.config_changed and len(restarts) == 1

    tls.host_certificate_issue(paths=pki, names=NAMES)
    rotated = install()
    assert sorted(Path(f).name for f in rotated.files_changed) == [
        "server-cert.pem",
        "server-key.pem",
    ]
    assert not rotated.restarted and len(restarts) == 1


def test_libvirt_setup_appends_the_setting_when_qemu_conf_lacks_it(
    pki: tls.PkiPaths, tmp_path: Path
) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "libvirt-qemu"\n')
    tls.host_certificate_ensure(paths=pki, names=NAMES)
    tls.libvirt_spice_install(paths=pki, cert_dir=tmp_path / "spice", qemu_conf=conf)
    assert conf.read_text().startswith('user = "libvirt-qemu"\n')
    assert tls.libvirt_spice_tls_enabled(conf)


def test_libvirt_setup_refuses_without_certificates(pki: tls.PkiPaths, tmp_path: Path) -> None:
    with pytest.raises(tls.TlsSetupError, match="no CA or host certificate"):
        tls.libvirt_spice_install(
            paths=pki, cert_dir=tmp_path / "spice", qemu_conf=tmp_path / "qemu.conf"
        )


def test_the_management_command_creates_then_rotates(
    tmp_path: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import call_command

    settings.ISARD_PKI_DIR = tmp_path / "pki"
    call_command("isard_certs", "--hostname", "vdi.school.example")
    paths = tls.pki_paths()
    host = serial(paths.host_cert)
    call_command("isard_certs", "--hostname", "vdi.school.example")
    assert serial(paths.host_cert) == host
    call_command("isard_certs", "--rotate-host", "--hostname", "vdi.school.example")
    assert serial(paths.host_cert) != host
    output = capsys.readouterr().out
    assert "host: O=isard,CN=vdi.school.example" in output


@pytest.fixture
def no_network_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket, "getfqdn", lambda: "Host.Example")
    monkeypatch.setattr(socket, "gethostname", lambda: "host")
    yield


def test_default_names_are_this_machines_and_the_configured_ones(
    no_network_names: None, settings: Any
) -> None:
    settings.ISARD_TLS_HOSTNAMES = ["vdi.school.example"]
    assert tls.default_host_names().dns == (
        "vdi.school.example",
        "host.example",
        "host",
        "localhost",
    )


# --- other hypervisors and the viewer proxy's client certificate -------------------------------


def mutual_handshake(
    *, server_cert: Path, server_key: Path, ca_file: Path, client_context: ssl.SSLContext, name: str
) -> str:
    """A TLS server that, like QEMU with `vnc_tls_x509_verify = 1`, demands a client
    certificate of the CA; returns the client's CN, or raises what the client saw."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server_cert, server_key)
    server_context.load_verify_locations(ca_file)
    server_context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls_connection:
                der = tls_connection.getpeercert(binary_form=True)
                assert der is not None
                subject = x509.load_der_x509_certificate(der).subject
                seen.append(str(subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value))
                tls_connection.recv(1)  # unread bytes at close would reset the connection
                tls_connection.sendall(b"y")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context.wrap_socket(raw, server_hostname=name) as connection,
        ):
            connection.sendall(b"x")
            if connection.recv(1) != b"y":  # TLS 1.3: a refused client learns it on reading
                raise ConnectionError("the server closed the connection")
    finally:
        thread.join(timeout=5)
        listener.close()
    return seen[0]


def test_a_hypervisor_bundle_serves_tls_that_only_the_proxy_can_use(
    tmp_path: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import call_command

    settings.ISARD_PKI_DIR = tmp_path / "pki"
    out = tmp_path / "hv2"
    call_command(
        "isard_certs",
        "--hypervisor",
        "hv2",
        "--hostname",
        "hv2.school.example",
        "--hostname",
        "10.0.0.9",
        "--out",
        str(out),
    )
    paths = tls.pki_paths()
    assert "hypervisor hv2: O=isard,CN=hv2.school.example" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "ca-cert.pem",
        "qemu.conf.isard",
        "server-cert.pem",
        "server-key.pem",
    ]
    assert (out / "server-key.pem").stat().st_mode & 0o077 == 0
    instructions = (out / "qemu.conf.isard").read_text()
    for line in ("vnc_tls = 1", "vnc_tls_x509_verify = 1", "spice_tls = 1"):
        assert f"\n{line}\n" in instructions
    # The platform keeps the certificate (for .vv files' host subject), not the key.
    kept = tls.hypervisor_certificate(paths=paths, hypervisor_name="hv2")
    assert kept is not None and kept == tls.load_certificate(out / "server-cert.pem")
    assert not list(paths.directory.rglob("hypervisors/**/*key*"))

    # The proxy's context verifies the hypervisor by its address and shows its certificate.
    proxy = tls.viewer_proxy_tls_context(paths=paths)
    common_name = mutual_handshake(
        server_cert=out / "server-cert.pem",
        server_key=out / "server-key.pem",
        ca_file=out / "ca-cert.pem",
        client_context=proxy,
        name="10.0.0.9",
    )
    assert common_name == tls.PROXY_CLIENT_NAME
    # Anyone else, even trusting the CA, is turned away.
    stranger = ssl.create_default_context(cafile=out / "ca-cert.pem")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        mutual_handshake(
            server_cert=out / "server-cert.pem",
            server_key=out / "server-key.pem",
            ca_file=out / "ca-cert.pem",
            client_context=stranger,
            name="10.0.0.9",
        )
    # And the proxy refuses a host by a name its certificate does not carry.
    with pytest.raises(ssl.SSLCertVerificationError):
        mutual_handshake(
            server_cert=out / "server-cert.pem",
            server_key=out / "server-key.pem",
            ca_file=out / "ca-cert.pem",
            client_context=tls.viewer_proxy_tls_context(paths=paths),
            name="10.0.0.10",
        )


def test_the_hypervisor_option_needs_names_and_a_directory(tmp_path: Path, settings: Any) -> None:
    from django.core.management import CommandError, call_command

    settings.ISARD_PKI_DIR = tmp_path / "pki"
    with pytest.raises(CommandError, match="--hostname"):
        call_command("isard_certs", "--hypervisor", "hv2", "--out", str(tmp_path / "x"))


def test_the_proxys_client_certificate_is_kept_and_renewed_after_a_ca_rotation(
    pki: tls.PkiPaths,
) -> None:
    tls.ca_ensure(paths=pki)
    first = tls.client_certificate_ensure(paths=pki)
    assert tls.client_certificate_ensure(paths=pki) == first
    usage = first.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    tls.ca_rotate(paths=pki, names=NAMES)
    renewed = tls.client_certificate_ensure(paths=pki)
    assert renewed != first
    ca = tls.load_certificate(pki.ca_cert)
    assert ca is not None
    renewed.verify_directly_issued_by(ca)


def test_hypervisor_tls_install_sets_up_vnc_and_spice_once(
    pki: tls.PkiPaths, tmp_path: Path
) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#vnc_tls = 1\n#vnc_tls_x509_verify = 1\nuser = "qemu"\n')
    files = tls.hypervisor_certificate_issue(
        paths=pki, hypervisor_name="hv2", names=tls.HostNames(dns=("hv2.example",))
    )
    restarts: list[int] = []

    def install() -> tls.LibvirtSpiceResult:
        return tls.hypervisor_tls_install(
            files=files,
            qemu_conf=conf,
            vnc_dir=tmp_path / "vnc",
            spice_dir=tmp_path / "spice",
            restart=lambda: restarts.append(1),
        )

    first = install()
    assert first.config_changed and first.restarted and len(first.files_changed) == 6
    text = conf.read_text()
    assert text.startswith('vnc_tls = 1\nvnc_tls_x509_verify = 1\nuser = "qemu"\n')
    assert f'vnc_tls_x509_cert_dir = "{tmp_path / "vnc"}"' in text
    assert f'spice_tls_x509_cert_dir = "{tmp_path / "spice"}"' in text
    assert text.count("vnc_tls =") == 1
    for directory in ("vnc", "spice"):
        assert (tmp_path / directory / "server-cert.pem").read_bytes() == files.server_cert
    second = install()
    assert second.files_changed == [] and not second.config_changed and restarts == [1]


def test_the_command_can_put_vnc_tls_on_this_hosts_libvirt(
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django.core.management import CommandError, call_command

    settings.ISARD_PKI_DIR = tmp_path / "pki"
    monkeypatch.setattr(tls, "LIBVIRT_QEMU_CONF", tmp_path / "qemu.conf")
    monkeypatch.setattr(tls, "LIBVIRT_VNC_DIR", tmp_path / "libvirt-vnc")
    monkeypatch.setattr(tls, "LIBVIRT_SPICE_DIR", tmp_path / "libvirt-spice")
    with pytest.raises(CommandError, match="--install-libvirt"):
        call_command("isard_certs", "--vnc-tls")
    call_command("isard_certs", "--install-libvirt", "--vnc-tls", "--no-restart")
    output = capsys.readouterr().out
    assert "qemu.conf: spice_tls = 1, vnc_tls = 1, vnc_tls_x509_verify = 1; restart" in output
    text = (tmp_path / "qemu.conf").read_text()
    assert "vnc_tls = 1\n" in text and "vnc_tls_x509_verify = 1\n" in text
    paths = tls.pki_paths()
    for directory in ("libvirt-vnc", "libvirt-spice"):
        assert (tmp_path / directory / "server-cert.pem").read_bytes() == (
            paths.host_cert.read_bytes()
        )


def test_the_proxy_never_makes_a_ca_of_its_own(pki: tls.PkiPaths) -> None:
    with pytest.raises(tls.TlsSetupError, match="no CA"):
        tls.viewer_proxy_tls_context(paths=pki)
    assert not pki.ca_cert.exists()


def test_the_command_issues_the_proxys_client_certificate(
    tmp_path: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import call_command

    settings.ISARD_PKI_DIR = tmp_path / "pki"
    call_command("isard_certs", "--hostname", "vdi.school.example")
    assert f"viewer proxy (client): O=isard,CN={tls.PROXY_CLIENT_NAME}" in capsys.readouterr().out
    assert tls.pki_paths().client_cert.exists()
