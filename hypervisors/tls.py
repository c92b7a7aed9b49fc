"""The platform's own certificate authority and host certificate, and libvirt's SPICE TLS.

The platform keeps a small CA in `ISARD_PKI_DIR` (default `var/pki`): `ca-key.pem`,
`ca-cert.pem`, and one host certificate (`server-cert.pem`, `server-key.pem`) for this
machine's names and loopback addresses. The host certificate serves SPICE over TLS (and
can serve HTTPS/wss); `.vv` files carry the CA so `remote-viewer` verifies the host.

Rotation: `isard_certs --rotate-host` issues a new host certificate from the same CA;
`--rotate-ca` makes a new CA and keeps the old CA certificate as `ca-previous.pem`, whose
trust is still handed to clients until it expires, because guests started before the
rotation keep the host certificate QEMU loaded when they started.

`libvirt_spice_install` copies the CA and host certificate where libvirt's QEMU driver
reads them (`/etc/pki/libvirt-spice`) and sets `spice_tls = 1` in `qemu.conf`. libvirtd
is restarted only when `qemu.conf` changed: QEMU reads the certificate files at every
guest start, so rotating certificates needs no restart.
"""

from __future__ import annotations

import datetime
import fcntl
import grp
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

from hypervisors.drivers import libvirt_driver
from isard.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
HOST_VALIDITY = datetime.timedelta(days=397)
#: A host certificate closer than this to its end is reissued by `host_certificate_ensure`.
HOST_RENEW_BEFORE = datetime.timedelta(days=30)
RSA_KEY_SIZE = 3072
ORGANIZATION = "isard"

LIBVIRT_SPICE_DIR = Path("/etc/pki/libvirt-spice")
LIBVIRT_VNC_DIR = Path("/etc/pki/libvirt-vnc")
#: The common name of the certificate the viewer proxy shows to hypervisors' VNC servers.
PROXY_CLIENT_NAME = "isard-viewer-proxy"
LIBVIRT_QEMU_CONF = Path("/etc/libvirt/qemu.conf")
#: Groups that QEMU runs in on Debian (libvirt-qemu) and Fedora (qemu): the key is theirs.
QEMU_GROUPS = ("libvirt-qemu", "qemu")


class TlsSetupError(InfrastructureError):
    """Certificates or libvirt's TLS configuration could not be written or read."""


@dataclass(frozen=True)
class PkiPaths:
    """Where the platform keeps its CA and host certificate."""

    directory: Path

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca-cert.pem"

    @property
    def previous_ca_cert(self) -> Path:
        return self.directory / "ca-previous.pem"

    @property
    def host_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def host_cert(self) -> Path:
        return self.directory / "server-cert.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client-cert.pem"

    def hypervisor_cert(self, hypervisor_name: str) -> Path:
        """The host certificate issued to a remote hypervisor (`isard_certs --hypervisor`)."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", hypervisor_name) or "_"
        return self.directory / "hypervisors" / safe / "server-cert.pem"


@dataclass(frozen=True)
class HostNames:
    """The DNS names and addresses a host certificate is valid for; the first name is its CN."""

    dns: tuple[str, ...]
    addresses: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass
class LibvirtSpiceResult:
    files_changed: list[str] = field(default_factory=list)
    config_changed: bool = False
    restarted: bool = False


def pki_paths(directory: Path | None = None) -> PkiPaths:
    """The PKI directory from `ISARD_PKI_DIR` (default `var/pki` in the checkout)."""
    if directory is None:
        directory = Path(
            getattr(settings, "ISARD_PKI_DIR", Path(settings.BASE_DIR) / "var" / "pki")
        )
    return PkiPaths(Path(directory))


def default_host_names() -> HostNames:
    """This machine's names plus any in `ISARD_TLS_HOSTNAMES` (names clients connect to)."""
    names: list[str] = list(getattr(settings, "ISARD_TLS_HOSTNAMES", []) or [])
    names += [socket.getfqdn(), socket.gethostname(), "localhost"]
    unique = tuple(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    return HostNames(dns=unique)


# --- reading and writing PEM files ---------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically, so a reader never sees half a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def load_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise TlsSetupError(f"{path} is not a PEM certificate: {error}") from error


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError) as error:
        raise TlsSetupError(f"cannot read the private key {path}: {error}") from error
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TlsSetupError(f"{path} is not an RSA key")
    return key


# --- the CA -----------------------------------------------------------------------------


def _new_ca(paths: PkiPaths) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"isard CA {now:%Y-%m-%d %H:%M:%S}"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths.ca_key, _key_pem(key), 0o600)
    _write(paths.ca_cert, _cert_pem(certificate), 0o644)
    logger.info("created the platform CA in %s", paths.directory)
    return certificate


def ca_ensure(*, paths: PkiPaths) -> x509.Certificate:
    """Return the platform CA, creating it on first use."""
    certificate = load_certificate(paths.ca_cert)
    if certificate is not None and paths.ca_key.exists():
        return certificate
    return _new_ca(paths)


def ca_rotate(*, paths: PkiPaths, names: HostNames | None = None) -> x509.Certificate:
    """Make a new CA, keep the old certificate as `ca-previous.pem`, reissue the host's."""
    current = load_certificate(paths.ca_cert)
    if current is not None:
        _write(paths.previous_ca_cert, _cert_pem(current), 0o644)
    certificate = _new_ca(paths)
    host_certificate_issue(paths=paths, names=names or default_host_names())
    return certificate


def ca_bundle_pem(*, paths: PkiPaths) -> str:
    """The CA certificates a client should trust: the current one and, until it expires,
    the one it replaced (guests started before a rotation still present hosts signed by it).
    """
    bundle = []
    for path in (paths.ca_cert, paths.previous_ca_cert):
        certificate = load_certificate(path)
        if certificate is not None and certificate.not_valid_after_utc > _now():
            bundle.append(_cert_pem(certificate).decode())
    if not bundle:
        raise TlsSetupError(f"no CA certificate in {paths.directory}: run manage.py isard_certs")
    return "".join(bundle)


# --- the host certificate --------------------------------------------------------------------


def _san(names: HostNames) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [x509.DNSName(name) for name in names.dns]
    general += [x509.IPAddress(ipaddress.ip_address(address)) for address in names.addresses]
    return x509.SubjectAlternativeName(general)


def host_certificate_issue(*, paths: PkiPaths, names: HostNames) -> x509.Certificate:
    """Issue a new host certificate (and key) signed by the current CA."""
    certificate, key = _issue_leaf(paths=paths, names=names)
    _write(paths.host_key, _key_pem(key), 0o600)
    _write(paths.host_cert, _cert_pem(certificate), 0o644)
    logger.info("issued a host certificate for %s", ", ".join(names.dns))
    return certificate


def _issue_leaf(
    *, paths: PkiPaths, names: HostNames, client: bool = False
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A certificate signed by the current CA: a server's for `names`, or with `client`
    the viewer proxy's, which it shows to hypervisors that check their clients."""
    if not names.dns:
        raise TlsSetupError("a certificate needs at least one DNS name")
    ca_certificate = ca_ensure(paths=paths)
    ca_key = _load_key(paths.ca_key)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, names.dns[0]),
        ]
    )
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    not_after = min(now + HOST_VALIDITY, ca_certificate.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # QEMU's TLS code insists on both usages for a server (and client) certificate.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_san(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate, key


def _names_of(certificate: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    dns = set(san.get_values_for_type(x509.DNSName))
    addresses = {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    return dns, addresses


def host_certificate_problem(*, paths: PkiPaths, names: HostNames) -> str:
    """Why the host certificate must be (re)issued, or "" when it is fine."""
    certificate = load_certificate(paths.host_cert)
    ca_certificate = load_certificate(paths.ca_cert)
    if certificate is None or not paths.host_key.exists():
        return "there is no host certificate"
    if ca_certificate is None or certificate.issuer != ca_certificate.subject:
        return "the host certificate is not signed by the current CA"
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return "the host certificate is not signed by the current CA"
    if certificate.not_valid_after_utc - _now() < HOST_RENEW_BEFORE:
        return f"the host certificate expires on {certificate.not_valid_after_utc:%Y-%m-%d}"
    dns, addresses = _names_of(certificate)
    wanted_addresses = {str(ipaddress.ip_address(a)) for a in names.addresses}
    if not set(names.dns) <= dns or not wanted_addresses <= addresses:
        return "the host certificate does not cover every name of this host"
    return ""


def _signed_by_current_ca(certificate: x509.Certificate, paths: PkiPaths) -> bool:
    ca_certificate = load_certificate(paths.ca_cert)
    if ca_certificate is None or certificate.issuer != ca_certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def host_certificate_ensure(*, paths: PkiPaths, names: HostNames | None = None) -> x509.Certificate:
    """Return a valid host certificate, issuing one when missing, stale or for other names."""
    names = names or default_host_names()
    ca_ensure(paths=paths)
    problem = host_certificate_problem(paths=paths, names=names)
    if problem:
        logger.info("issuing a host certificate: %s", problem)
        return host_certificate_issue(paths=paths, names=names)
    certificate = load_certificate(paths.host_cert)
    assert certificate is not None
    return certificate


_SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
}


def host_subject(certificate: x509.Certificate) -> str:
    """The subject in the form SPICE clients compare (`host-subject=O=isard,CN=host`).

    spice-gtk parses "key=value" pairs separated by commas in certificate order, so this is
    not RFC 4514 (which reverses the order and escapes differently).
    """
    parts = []
    for attribute in certificate.subject:
        short = _SHORT_NAMES.get(attribute.oid)
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode()
        if short is None or "," in value:
            raise TlsSetupError(f"cannot express the subject {certificate.subject} for SPICE")
        parts.append(f"{short}={value}")
    return ",".join(parts)


def describe(certificate: x509.Certificate) -> str:
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":")
    return (
        f"{host_subject(certificate)}; valid until {certificate.not_valid_after_utc:%Y-%m-%d}; "
        f"SHA-256 {fingerprint[:23]}…"
    )


# --- libvirt's SPICE TLS on this machine --------------------------------------------------------

_SPICE_TLS_LINE = re.compile(r"^\s*#?\s*spice_tls\s*=.*$", re.MULTILINE)
_SPICE_TLS_ON = re.compile(r"^\s*spice_tls\s*=\s*1\s*$", re.MULTILINE)


def libvirt_spice_tls_enabled(qemu_conf: Path = LIBVIRT_QEMU_CONF) -> bool:
    try:
        return bool(_SPICE_TLS_ON.search(qemu_conf.read_text()))
    except FileNotFoundError:
        return False


def _qemu_group() -> int | None:
    for name in QEMU_GROUPS:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


def _install_file(target: Path, data: bytes, mode: int, group: int | None) -> bool:
    try:
        if target.read_bytes() == data and (target.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    _write(target, data, mode)
    if group is not None:
        os.chown(target, 0, group)
    return True


def libvirt_spice_install(
    *,
    paths: PkiPaths,
    cert_dir: Path = LIBVIRT_SPICE_DIR,
    qemu_conf: Path = LIBVIRT_QEMU_CONF,
    restart: Callable[[], None] | None = None,
) -> LibvirtSpiceResult:
    """Give libvirt's QEMU driver the platform's certificates and turn on `spice_tls`.

    Idempotent and quick when nothing changed. The certificates go in first: with
    `spice_tls = 1` and no certificates, every guest with SPICE would fail to start.
    `restart` is called only when `qemu.conf` changed.
    """
    result = LibvirtSpiceResult()
    ca_certificate = load_certificate(paths.ca_cert)
    host_certificate = load_certificate(paths.host_cert)
    if ca_certificate is None or host_certificate is None or not paths.host_key.exists():
        raise TlsSetupError(f"no CA or host certificate in {paths.directory}")
    group = _qemu_group() if os.geteuid() == 0 else None
    try:
        cert_dir.mkdir(parents=True, exist_ok=True)
        cert_dir.chmod(0o755)
        files = (
            ("ca-cert.pem", _cert_pem(ca_certificate), 0o644, None),
            ("server-cert.pem", _cert_pem(host_certificate), 0o644, None),
            # QEMU (not root) reads the key when a guest starts.
            ("server-key.pem", paths.host_key.read_bytes(), 0o640 if group else 0o600, group),
        )
        for name, data, mode, owner_group in files:
            if _install_file(cert_dir / name, data, mode, owner_group):
                result.files_changed.append(str(cert_dir / name))
        if not libvirt_spice_tls_enabled(qemu_conf):
            text = qemu_conf.read_text() if qemu_conf.exists() else ""
            if _SPICE_TLS_LINE.search(text):
                text = _SPICE_TLS_LINE.sub("spice_tls = 1", text, count=1)
            else:
                text = text.rstrip("\n") + "\n\n# Set by isard (manage.py isard_certs).\n"
                text += "spice_tls = 1\n"
            _write(qemu_conf, text.encode(), 0o644)
            result.config_changed = True
    except OSError as error:
        raise TlsSetupError(
            f"cannot configure libvirt's SPICE TLS in {cert_dir} and {qemu_conf}: {error} "
            "(run as root)"
        ) from error
    if result.config_changed and restart is not None:
        restart()
        result.restarted = True
    return result


def libvirtd_restart(*, uri: str = "qemu:///system", timeout: float = 30) -> None:
    """Restart the local libvirtd so it reads `qemu.conf` again; running guests keep running."""
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "restart", "libvirtd.service"], check=False)
    else:
        pid_file = Path("/run/libvirtd.pid")
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = 0
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        subprocess.run(["libvirtd", "-d"], check=True)
    libvirt_driver.forget_connection(uri)
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt_driver.ping(uri)
            return
        except libvirt_driver.DriverError as error:
            if time.monotonic() > deadline:
                raise TlsSetupError(f"libvirtd did not come back: {error}") from error
            libvirt_driver.forget_connection(uri)
            time.sleep(0.2)


def local_spice_tls_ensure(
    *, paths: PkiPaths | None = None, names: HostNames | None = None, restart: bool = True
) -> LibvirtSpiceResult:
    """Everything the local host needs for SPICE over TLS, as `isard_certs --install-libvirt`."""
    paths = paths or pki_paths()
    host_certificate_ensure(paths=paths, names=names)
    return libvirt_spice_install(paths=paths, restart=libvirtd_restart if restart else None)


# --- the viewer proxy's hop to remote hypervisors: VNC over TLS (VeNCrypt x509) -------------------


def client_certificate_ensure(*, paths: PkiPaths) -> x509.Certificate:
    """The viewer proxy's client certificate, issued on first use, after a CA rotation and a
    month before it expires. Hypervisors set up with `vnc_tls_x509_verify = 1` accept TLS
    only from holders of a certificate of the platform CA, so a student who reaches a
    hypervisor's VNC port directly cannot even start the handshake.

    Never creates the CA: a proxy that made its own would trust nothing the hypervisors
    hold. Several processes may get here at once; a lock keeps key and certificate a pair.
    """
    if load_certificate(paths.ca_cert) is None or not paths.ca_key.exists():
        raise TlsSetupError(f"no CA in {paths.directory}: run manage.py isard_certs")
    paths.directory.mkdir(parents=True, exist_ok=True)
    with open(paths.directory / ".client-cert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        certificate = load_certificate(paths.client_cert)
        if (
            certificate is not None
            and paths.client_key.exists()
            and _signed_by_current_ca(certificate, paths)
            and certificate.not_valid_after_utc - _now() > HOST_RENEW_BEFORE
        ):
            return certificate
        certificate, key = _issue_leaf(
            paths=paths, names=HostNames(dns=(PROXY_CLIENT_NAME,), addresses=()), client=True
        )
        _write(paths.client_key, _key_pem(key), 0o600)
        _write(paths.client_cert, _cert_pem(certificate), 0o644)
    logger.info("issued the viewer proxy's client certificate")
    return certificate


def viewer_proxy_tls_context(*, paths: PkiPaths) -> ssl.SSLContext:
    """How the proxy opens TLS to a hypervisor's VNC server: it trusts the platform CA (and
    the previous one until it expires), checks the host's name, and shows its own client
    certificate."""
    client_certificate_ensure(paths=paths)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_bundle_pem(paths=paths))
    try:
        context.load_cert_chain(paths.client_cert, paths.client_key)
    except (OSError, ssl.SSLError) as error:
        raise TlsSetupError(
            f"cannot load the viewer proxy's client certificate: {error}"
        ) from error
    return context


def hypervisor_certificate(*, paths: PkiPaths, hypervisor_name: str) -> x509.Certificate | None:
    """The certificate issued to a remote hypervisor, if any (else it uses the platform's)."""
    return load_certificate(paths.hypervisor_cert(hypervisor_name))


@dataclass(frozen=True)
class HypervisorTlsFiles:
    """What a hypervisor's libvirt needs in its VNC and SPICE certificate directories."""

    ca_cert: bytes
    server_cert: bytes
    server_key: bytes
    certificate: x509.Certificate


def platform_host_tls_files(*, paths: PkiPaths) -> HypervisorTlsFiles:
    """This host's own certificate as a hypervisor's files (for VNC TLS on the local host)."""
    certificate = load_certificate(paths.host_cert)
    if certificate is None or not paths.host_key.exists():
        raise TlsSetupError(f"no host certificate in {paths.directory}: run manage.py isard_certs")
    return HypervisorTlsFiles(
        ca_cert=ca_bundle_pem(paths=paths).encode(),
        server_cert=_cert_pem(certificate),
        server_key=paths.host_key.read_bytes(),
        certificate=certificate,
    )


def hypervisor_certificate_issue(
    *, paths: PkiPaths, hypervisor_name: str, names: HostNames
) -> HypervisorTlsFiles:
    """A host certificate for another hypervisor, valid for the names the proxy and SPICE
    clients use to reach its guests' displays. The platform keeps only the certificate
    (for the host subject of `.vv` files); the key leaves with the returned files."""
    certificate, key = _issue_leaf(paths=paths, names=names)
    _write(paths.hypervisor_cert(hypervisor_name), _cert_pem(certificate), 0o644)
    logger.info("issued a host certificate for hypervisor %s (%s)", hypervisor_name, names.dns)
    return HypervisorTlsFiles(
        # The whole bundle: clients' certificates may come from the previous CA for a while.
        ca_cert=ca_bundle_pem(paths=paths).encode(),
        server_cert=_cert_pem(certificate),
        server_key=_key_pem(key),
        certificate=certificate,
    )


def qemu_conf_with(text: str, values: dict[str, str]) -> str:
    """`qemu.conf` text with each key set to its value: the first line that sets it (or a
    commented-out example of it) is replaced, else the setting is appended."""
    appended: list[str] = []
    for key, value in values.items():
        line = f"{key} = {value}"
        pattern = re.compile(rf"^\s*#?\s*{re.escape(key)}\s*=.*$", re.MULTILINE)
        if re.search(rf"^\s*{re.escape(key)}\s*=\s*{re.escape(value)}\s*$", text, re.MULTILINE):
            continue
        if pattern.search(text):
            text = pattern.sub(line, text, count=1)
        else:
            appended.append(line)
    if appended:
        text = text.rstrip("\n") + "\n\n# Set by isard (manage.py isard_certs).\n"
        text += "\n".join(appended) + "\n"
    return text


def graphics_tls_settings(
    *, vnc_dir: Path | None, spice_dir: Path | None, verify_clients: bool = True
) -> dict[str, str]:
    """The `qemu.conf` settings for VNC (VeNCrypt x509) and SPICE over TLS."""
    values: dict[str, str] = {}
    if vnc_dir is not None:
        values["vnc_tls"] = "1"
        values["vnc_tls_x509_cert_dir"] = f'"{vnc_dir}"'
        values["vnc_tls_x509_verify"] = "1" if verify_clients else "0"
    if spice_dir is not None:
        values["spice_tls"] = "1"
        values["spice_tls_x509_cert_dir"] = f'"{spice_dir}"'
    return values


def hypervisor_tls_install(
    *,
    files: HypervisorTlsFiles,
    qemu_conf: Path,
    vnc_dir: Path | None = LIBVIRT_VNC_DIR,
    spice_dir: Path | None = LIBVIRT_SPICE_DIR,
    owner: tuple[int, int] | None = None,
    restart: Callable[[], None] | None = None,
) -> LibvirtSpiceResult:
    """Put a hypervisor's certificates where its libvirt reads them and turn on VNC and
    SPICE TLS in its `qemu.conf` (on that machine, or on a daemon of this one).

    `owner` (uid, gid) owns the files: QEMU runs as that user and reads the key when a
    guest starts. Certificates go in first, so no guest ever starts with TLS on and no
    certificate. `restart` is called only when `qemu.conf` changed; QEMU reads the files at
    every guest start, so a new certificate needs no restart.
    """
    result = LibvirtSpiceResult()
    try:
        for directory in (vnc_dir, spice_dir):
            if directory is None:
                continue
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
            for name, data, mode in (
                ("ca-cert.pem", files.ca_cert, 0o644),
                ("server-cert.pem", files.server_cert, 0o644),
                ("server-key.pem", files.server_key, 0o600 if owner else 0o640),
            ):
                target = directory / name
                if _install_file(target, data, mode, None):
                    result.files_changed.append(str(target))
                if owner is not None:
                    os.chown(target, *owner)
                elif name == "server-key.pem" and os.geteuid() == 0:
                    group = _qemu_group()
                    if group is not None:
                        os.chown(target, 0, group)
        text = qemu_conf.read_text() if qemu_conf.exists() else ""
        updated = qemu_conf_with(text, graphics_tls_settings(vnc_dir=vnc_dir, spice_dir=spice_dir))
        if updated != text:
            _write(qemu_conf, updated.encode(), 0o644)
            if owner is not None:
                os.chown(qemu_conf, *owner)
            result.config_changed = True
    except OSError as error:
        raise TlsSetupError(
            f"cannot configure libvirt's graphics TLS ({vnc_dir}, {spice_dir}, {qemu_conf}): "
            f"{error}"
        ) from error
    if result.config_changed and restart is not None:
        restart()
        result.restarted = True
    return result


def hypervisor_tls_bundle_write(*, files: HypervisorTlsFiles, directory: Path) -> list[Path]:
    """The files to copy to a remote hypervisor, with the `qemu.conf` lines it needs."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data, mode in (
        ("ca-cert.pem", files.ca_cert, 0o644),
        ("server-cert.pem", files.server_cert, 0o644),
        ("server-key.pem", files.server_key, 0o600),
    ):
        _write(directory / name, data, mode)
        written.append(directory / name)
    settings_text = "\n".join(
        f"{key} = {value}"
        for key, value in graphics_tls_settings(
            vnc_dir=LIBVIRT_VNC_DIR, spice_dir=LIBVIRT_SPICE_DIR
        ).items()
    )
    readme = (
        "# Copy ca-cert.pem, server-cert.pem and server-key.pem to both\n"
        f"# {LIBVIRT_VNC_DIR} and {LIBVIRT_SPICE_DIR} on the hypervisor (the key readable by\n"
        "# the group QEMU runs in: libvirt-qemu on Debian), add these lines to\n"
        "# /etc/libvirt/qemu.conf and restart libvirtd; then restart its desktops.\n"
        f"{settings_text}\n"
    )
    _write(directory / "qemu.conf.isard", readme.encode(), 0o644)
    written.append(directory / "qemu.conf.isard")
    return written
