"""The platform's CA and host certificate; SPICE over TLS for the local libvirt.

    manage.py isard_certs                      create what is missing, show what there is
    manage.py isard_certs --install-libvirt    also give them to the local libvirtd and set
                                               spice_tls = 1 (restarts libvirtd only when
                                               qemu.conf changed; needs root)
    manage.py isard_certs --install-libvirt --vnc-tls
                                               also VNC over TLS (VeNCrypt x509, clients
                                               need the platform's certificate): for
                                               ISARD_VIEWER_TLS=required on this host
    manage.py isard_certs --rotate-host        issue a new host certificate
    manage.py isard_certs --rotate-ca          a new CA (the old one stays trusted until it
                                               expires) and a new host certificate
    manage.py isard_certs --hypervisor NAME --hostname hv2.school.example --out DIR
                                               certificates for another hypervisor (VNC and
                                               SPICE TLS for its guests' displays) in DIR,
                                               with the qemu.conf lines it needs

Safe to run at every start: with nothing to do it changes nothing and takes milliseconds.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from hypervisors import tls


class Command(BaseCommand):
    help = "Create or rotate the platform CA and host certificate; set up libvirt's SPICE TLS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--install-libvirt",
            action="store_true",
            help="Copy the certificates to /etc/pki/libvirt-spice and enable spice_tls.",
        )
        parser.add_argument(
            "--no-restart",
            action="store_true",
            help="With --install-libvirt: do not restart libvirtd even if qemu.conf changed.",
        )
        parser.add_argument(
            "--vnc-tls",
            action="store_true",
            help="With --install-libvirt: VNC over TLS too (vnc_tls, vnc_tls_x509_verify).",
        )
        parser.add_argument("--rotate-host", action="store_true", help="Issue a new host cert.")
        parser.add_argument("--rotate-ca", action="store_true", help="Make a new CA.")
        parser.add_argument(
            "--hostname",
            action="append",
            default=[],
            help="A name clients use for this host (repeatable); added to the machine's names.",
        )
        parser.add_argument(
            "--hypervisor",
            metavar="NAME",
            help="Issue a certificate for the hypervisor NAME (as registered) instead; needs "
            "--hostname (its names or addresses) and --out.",
        )
        parser.add_argument("--out", metavar="DIR", help="Where --hypervisor writes its files.")

    def handle(self, *args: Any, **options: Any) -> None:
        paths = tls.pki_paths()
        if options["hypervisor"]:
            self._hypervisor(paths, options)
            return
        if options["vnc_tls"] and not options["install_libvirt"]:
            raise CommandError("--vnc-tls goes with --install-libvirt")
        names = tls.default_host_names()
        if options["hostname"]:
            extra = tuple(name.strip().lower() for name in options["hostname"] if name.strip())
            names = tls.HostNames(dns=tuple(dict.fromkeys(extra + names.dns)))
        try:
            if options["rotate_ca"]:
                tls.ca_rotate(paths=paths, names=names)
                self.stdout.write("rotated the CA; the previous one stays trusted until it expires")
            elif options["rotate_host"]:
                tls.host_certificate_issue(paths=paths, names=names)
                self.stdout.write("issued a new host certificate")
            ca = tls.ca_ensure(paths=paths)
            host = tls.host_certificate_ensure(paths=paths, names=names)
            self.stdout.write(f"CA:   {tls.describe(ca)}")
            self.stdout.write(f"host: {tls.describe(host)} ({paths.host_cert})")
            client = tls.client_certificate_ensure(paths=paths)
            self.stdout.write(f"viewer proxy (client): {tls.describe(client)}")
            if options["install_libvirt"]:
                restart = None if options["no_restart"] else tls.libvirtd_restart
                if options["vnc_tls"]:
                    result = tls.hypervisor_tls_install(
                        files=tls.platform_host_tls_files(paths=paths),
                        qemu_conf=tls.LIBVIRT_QEMU_CONF,
                        vnc_dir=tls.LIBVIRT_VNC_DIR,
                        spice_dir=tls.LIBVIRT_SPICE_DIR,
                        restart=restart,
                    )
                    settings_changed = "spice_tls = 1, vnc_tls = 1, vnc_tls_x509_verify = 1"
                else:
                    result = tls.libvirt_spice_install(paths=paths, restart=restart)
                    settings_changed = "spice_tls = 1"
                changed = ", ".join(result.files_changed) or "certificates unchanged"
                self.stdout.write(f"libvirt graphics TLS: {changed}")
                if result.config_changed:
                    self.stdout.write(
                        f"qemu.conf: {settings_changed}"
                        + ("; libvirtd restarted" if result.restarted else "; restart libvirtd")
                    )
                if result.files_changed:
                    self.stdout.write("running desktops use the new certificate after a restart")
        except tls.TlsSetupError as error:
            raise CommandError(error.message) from error

    def _hypervisor(self, paths: tls.PkiPaths, options: dict[str, Any]) -> None:
        """Certificates for a remote hypervisor: names are DNS names or IP addresses."""
        if not options["hostname"] or not options["out"]:
            raise CommandError("--hypervisor needs --hostname (at least one) and --out DIR")
        dns: list[str] = []
        addresses: list[str] = []
        for name in (value.strip().lower() for value in options["hostname"]):
            try:
                addresses.append(str(ipaddress.ip_address(name)))
            except ValueError:
                dns.append(name)
        if not dns:
            dns = [options["hypervisor"].lower()]
        try:
            files = tls.hypervisor_certificate_issue(
                paths=paths,
                hypervisor_name=options["hypervisor"],
                names=tls.HostNames(dns=tuple(dns), addresses=tuple(addresses)),
            )
            written = tls.hypervisor_tls_bundle_write(files=files, directory=Path(options["out"]))
        except tls.TlsSetupError as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"hypervisor {options['hypervisor']}: {tls.describe(files.certificate)}")
        for path in written:
            self.stdout.write(f"  {path}")
        self.stdout.write(f"then follow {written[-1]} on that hypervisor")
