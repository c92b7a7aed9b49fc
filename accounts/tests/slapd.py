"""A real OpenLDAP server for the LDAP tests, and a fresh subtree per test.

`slapd` (Debian's package) runs in the foreground on a free loopback port, with a
cn=config directory generated here and loaded with `slapadd -n0`, an mdb database in a
temporary directory, plain LDAP and LDAPS (a self-signed certificate made with `openssl`,
also offered through StartTLS). One server serves the whole test session; every test gets
its own `ou=<random>` subtree, so tests never see each other's people and groups.

The server behaves like a school's directory, not like an administrator's shortcut:
isard reads it as a service account with read access only, and anonymous searches and
sizes above 100 entries per page are refused, so the code under test has to bind and to
page its searches.

Use the fixtures by importing them into a test module (pytest collects fixtures from the
module's namespace):

    from accounts.tests.slapd import directory_fixture, slapd_fixture  # noqa: F401
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap
import ldap.modlist
import pytest

SUFFIX = "dc=school,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-secret"
SERVICE_DN = f"cn=isard,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
#: Entries per search (and per page) that the server hands to the service account.
SIZE_LIMIT = 100
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
START_TIMEOUT_SECONDS = 15.0


class SlapdError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: Active Directory's group class (its own OID), members in `member`, which may be empty:
#: enough of AD's schema for isard to read AD groups from slapd.
ACTIVE_DIRECTORY_SCHEMA = """\
dn: cn=activedirectory,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: activedirectory
olcObjectClasses: ( 1.2.840.113556.1.5.8 NAME 'group' SUP top STRUCTURAL
  MUST cn MAY ( member $ description ) )
"""


def config_ldif(workdir: Path) -> str:
    """cn=config for one mdb database; schemas come from Debian's /etc/ldap/schema."""
    includes = "\n".join(f"include: file:///etc/ldap/schema/{name}.ldif" for name in SCHEMAS)
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {workdir}/slapd.pid
olcArgsFile: {workdir}/slapd.args
olcLogLevel: none
olcTLSCACertificateFile: {workdir}/tls/cert.pem
olcTLSCertificateFile: {workdir}/tls/cert.pem
olcTLSCertificateKeyFile: {workdir}/tls/key.pem

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}

{ACTIVE_DIRECTORY_SCHEMA}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: {SIZE_LIMIT}

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PASSWORD}
olcDbDirectory: {workdir}/data
olcDbMaxSize: 268435456
olcDbIndex: objectClass eq
olcDbIndex: uid,memberUid,member,gidNumber eq
olcSizeLimit: size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal=unlimited
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{SERVICE_DN}" read by self read by * none
"""


def base_ldif() -> str:
    return f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: school
o: Test school

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: isard
userPassword: {SERVICE_PASSWORD}
"""


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise SlapdError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class SlapdServer:
    """One slapd process with its configuration, data and TLS certificate in `workdir`."""

    workdir: Path
    port: int
    tls_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_cert_file(self) -> Path:
        return self.workdir / "tls" / "cert.pem"

    @classmethod
    def start(cls) -> SlapdServer:
        for binary in ("slapd", "slapadd", "ldapsearch", "openssl"):
            if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
                pytest.fail(
                    f"{binary} is not installed: `./isardctl test` installs slapd, ldap-utils, "
                    "openssl"
                )
        workdir = Path(tempfile.mkdtemp(prefix="isard-slapd-"))
        last_error: SlapdError | None = None
        for _attempt in range(3):  # a free port may be taken between probing and binding
            server = cls(workdir=workdir, port=free_port(), tls_port=free_port())
            try:
                server._prepare()
                server._launch()
                return server
            except SlapdError as error:
                last_error = error
                server.stop(remove=False)
                shutil.rmtree(workdir, ignore_errors=True)
                workdir = Path(tempfile.mkdtemp(prefix="isard-slapd-"))
        shutil.rmtree(workdir, ignore_errors=True)
        raise SlapdError(f"slapd did not start: {last_error}")

    def _prepare(self) -> None:
        config_dir = self.workdir / "slapd.d"
        for directory in (config_dir, self.workdir / "data", self.workdir / "tls"):
            directory.mkdir(parents=True)
        run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(self.workdir / "tls" / "key.pem"),
                "-out",
                str(self.ca_cert_file),
            ]
        )
        (self.workdir / "config.ldif").write_text(config_ldif(self.workdir))
        (self.workdir / "base.ldif").write_text(base_ldif())
        run(["slapadd", "-n0", "-F", str(config_dir), "-l", str(self.workdir / "config.ldif")])
        run(["slapadd", "-n1", "-F", str(config_dir), "-l", str(self.workdir / "base.ldif")])

    def _launch(self) -> None:
        # `-d 0` keeps slapd in the foreground, so this process is the server and can be
        # stopped by its pid, without reading a pid file or looking for it by name.
        with (self.workdir / "slapd.log").open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    *("slapd", "-d", "0", "-F", str(self.workdir / "slapd.d")),
                    *("-h", f"{self.uri}/ {self.ldaps_uri}/"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SlapdError(
                    f"slapd exited with {self.process.returncode}: "
                    + (self.workdir / "slapd.log").read_text(errors="replace")
                )
            answer = subprocess.run(
                [
                    *("ldapsearch", "-x", "-H", self.uri, "-o", "nettimeout=1"),
                    *("-D", SERVICE_DN, "-w", SERVICE_PASSWORD, "-b", SUFFIX, "-s", "base", "dn"),
                ],
                capture_output=True,
                check=False,
            )
            if answer.returncode == 0:
                return
            time.sleep(0.05)
        raise SlapdError(f"slapd on {self.uri} did not answer within {START_TIMEOUT_SECONDS} s")

    def stop(self, *, remove: bool = True) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def connect_as_root(self) -> Any:
        connection = ldap.initialize(self.uri)
        connection.set_option(ldap.OPT_NETWORK_TIMEOUT, 5)
        connection.simple_bind_s(ROOT_DN, ROOT_PASSWORD)
        return connection


_server: SlapdServer | None = None


def shared_server() -> SlapdServer:
    """The session's server, started on first use (by whichever test module comes first)."""
    global _server
    if _server is None:
        _server = SlapdServer.start()
        atexit.register(_server.stop)  # in case the session ends without fixture teardown
    return _server


def stop_shared_server() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


def encode(attributes: dict[str, list[str] | str]) -> list[tuple[str, list[bytes]]]:
    as_lists = {
        name: [value] if isinstance(value, str) else value for name, value in attributes.items()
    }
    return ldap.modlist.addModlist(
        {name: [item.encode() for item in values] for name, values in as_lists.items()}
    )


@dataclass
class LdapTree:
    """A subtree of the test server with `ou=people` and `ou=groups`, written as root."""

    server: SlapdServer
    base: str
    connection: Any
    next_number: int = 10000
    people: dict[str, str] = field(default_factory=dict)

    @property
    def people_dn(self) -> str:
        return f"ou=people,{self.base}"

    @property
    def groups_dn(self) -> str:
        return f"ou=groups,{self.base}"

    @classmethod
    def create(cls, server: SlapdServer) -> LdapTree:
        base = f"ou=t{uuid.uuid4().hex[:10]},{SUFFIX}"
        tree = cls(server=server, base=base, connection=server.connect_as_root())
        for dn in (base, tree.people_dn, tree.groups_dn):
            ou = dn.split(",", 1)[0].split("=", 1)[1]
            tree.add(dn, {"objectClass": "organizationalUnit", "ou": ou})
        return tree

    def add(self, dn: str, attributes: dict[str, list[str] | str]) -> str:
        self.connection.add_s(dn, encode(attributes))
        return dn

    def add_person(
        self,
        uid: str,
        *,
        password: str = "secret",
        given_name: str | None = None,
        surname: str | None = None,
        mail: str | None = None,
        gid_number: int | None = None,
    ) -> str:
        """An inetOrgPerson (plus posixAccount when it has a primary group)."""
        dn = f"uid={uid},{self.people_dn}"
        given_name = given_name or uid.capitalize()
        surname = surname or "Tester"
        attributes: dict[str, list[str] | str] = {
            "objectClass": ["inetOrgPerson"],
            "uid": uid,
            "cn": f"{given_name} {surname}",
            "givenName": given_name,
            "sn": surname,
            "mail": mail or f"{uid}@school.test",
            "userPassword": password,
        }
        if gid_number is not None:
            self.next_number += 1
            attributes["objectClass"] = ["inetOrgPerson", "posixAccount"]
            attributes |= {
                "uidNumber": str(self.next_number),
                "gidNumber": str(gid_number),
                "homeDirectory": f"/home/{uid}",
            }
        self.people[uid] = dn
        return self.add(dn, attributes)

    def add_group_of_names(self, cn: str, members: list[str]) -> str:
        """A groupOfNames; `members` are uids of people in this tree, or full DNs."""
        dn = f"cn={cn},{self.groups_dn}"
        # The schema requires one member; an empty group lists the group itself, as
        # directory tools commonly do.
        member_dns = [self.member_dn(member) for member in members] or [dn]
        return self.add(dn, {"objectClass": "groupOfNames", "cn": cn, "member": member_dns})

    def add_group_of_unique_names(self, cn: str, members: list[str]) -> str:
        """A groupOfUniqueNames (members in `uniqueMember`), as older directories keep them."""
        dn = f"cn={cn},{self.groups_dn}"
        member_dns = [self.member_dn(member) for member in members] or [dn]
        return self.add(
            dn, {"objectClass": "groupOfUniqueNames", "cn": cn, "uniqueMember": member_dns}
        )

    def add_active_directory_group(self, cn: str, members: list[str]) -> str:
        """An Active Directory group (objectClass `group`); it may be empty, as in AD."""
        dn = f"cn={cn},{self.groups_dn}"
        attributes: dict[str, list[str] | str] = {"objectClass": "group", "cn": cn}
        if members:
            attributes["member"] = [self.member_dn(member) for member in members]
        return self.add(dn, attributes)

    def add_posix_group(self, cn: str, member_uids: list[str], *, gid_number: int = 0) -> str:
        dn = f"cn={cn},{self.groups_dn}"
        self.next_number += 1
        attributes: dict[str, list[str] | str] = {
            "objectClass": "posixGroup",
            "cn": cn,
            "gidNumber": str(gid_number or self.next_number),
        }
        if member_uids:
            attributes["memberUid"] = member_uids
        return self.add(dn, attributes)

    def member_dn(self, member: str) -> str:
        return member if "=" in member else self.people[member]

    def add_member(self, group_dn: str, member: str) -> None:
        attribute, value = self._membership(group_dn, member)
        self.connection.modify_s(group_dn, [(ldap.MOD_ADD, attribute, [value])])

    def remove_member(self, group_dn: str, member: str) -> None:
        attribute, value = self._membership(group_dn, member)
        self.connection.modify_s(group_dn, [(ldap.MOD_DELETE, attribute, [value])])

    def _membership(self, group_dn: str, member: str) -> tuple[str, bytes]:
        classes = self.connection.search_s(group_dn, ldap.SCOPE_BASE, attrlist=["objectClass"])
        if b"posixGroup" in classes[0][1]["objectClass"]:
            return "memberUid", member.encode()
        if b"groupOfUniqueNames" in classes[0][1]["objectClass"]:
            return "uniqueMember", self.member_dn(member).encode()
        return "member", self.member_dn(member).encode()

    def modify(self, dn: str, attribute: str, values: list[str]) -> None:
        self.connection.modify_s(
            dn, [(ldap.MOD_REPLACE, attribute, [value.encode() for value in values])]
        )

    def delete(self, dn: str) -> None:
        self.connection.delete_s(dn)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """isard's LDAP settings for this subtree, read as the service account."""
        values: dict[str, Any] = {
            "ISARD_LDAP_SERVER_URI": self.server.uri,
            "ISARD_LDAP_BIND_DN": SERVICE_DN,
            "ISARD_LDAP_BIND_PASSWORD": SERVICE_PASSWORD,
            "ISARD_LDAP_USER_SEARCH_BASE": self.people_dn,
            "ISARD_LDAP_USER_FILTER": "(uid=%(user)s)",
            "ISARD_LDAP_USERNAME_ATTRIBUTE": "uid",
            "ISARD_LDAP_GROUP_SEARCH_BASE": self.groups_dn,
            "ISARD_LDAP_GROUP_TYPE": "groupOfNames",
            "ISARD_LDAP_START_TLS": False,
            "ISARD_LDAP_CA_CERT_FILE": "",
            "ISARD_LDAP_ROLE_GROUPS": {},
            "ISARD_LDAP_TIMEOUT": 2.0,
            "ISARD_LDAP_SCHOOL": "",
            "AUTHENTICATION_BACKENDS": [
                "accounts.ldap.backend.IsardLDAPBackend",
                "django.contrib.auth.backends.ModelBackend",
            ],
        }
        values.update(overrides)
        return values

    def close(self) -> None:
        self.connection.unbind_s()


@pytest.fixture(scope="session", name="slapd")
def slapd_fixture() -> Iterator[SlapdServer]:
    yield shared_server()
    stop_shared_server()


@pytest.fixture(name="directory")
def directory_fixture(slapd: SlapdServer, settings: Any) -> Iterator[LdapTree]:
    """A fresh subtree, with isard's LDAP settings pointed at it for this test."""
    tree = LdapTree.create(slapd)
    for name, value in tree.settings().items():
        setattr(settings, name, value)
    yield tree
    tree.close()
