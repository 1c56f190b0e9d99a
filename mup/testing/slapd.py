"""Run a real OpenLDAP ``slapd`` from an LDIF file: temp dir, free port, stopped by PID.

Used by the tests, the benchmark and the demo.  The database is built offline with ``slapadd``
(fast, no network), then slapd serves it on ``ldap://127.0.0.1:PORT``.  Anonymous users may
read; ``root_dn``/``root_password`` bind with full rights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from mup.testing.certs import self_signed
from mup.testing.process import ServerProcess, free_port

__all__ = ["SCHEMA", "SLAPADD", "SLAPD", "SLAPTEST", "Slapd"]

SCHEMA = Path(__file__).with_name("mup.schema")
"""mozillaNickname, mozillaCustom4, voipPhone, skypePhone, timezone and objectClass mupPerson."""

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SLAPTEST = "/usr/sbin/slaptest"
SYSTEM_SCHEMA = Path("/etc/ldap/schema")
MODULE_PATH = "/usr/lib/ldap"

_CONF = """\
include {system}/core.schema
include {system}/cosine.schema
include {system}/inetorgperson.schema
include {schema}
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath {modules}
moduleload back_mdb
loglevel stats
sizelimit 500

database mdb
maxsize 33554432
suffix "{suffix}"
rootdn "{root_dn}"
rootpw "{root_password}"
directory {dir}/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
"""

_TLS_CONF = """\
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
"""


class Slapd:
    """One slapd serving ``ldif`` (whose first entry is ``suffix``) from ``directory``."""

    def __init__(self, directory: Path, ldif: Path, port: int | None = None,
                 suffix: str = "dc=example,dc=com", root_dn: str = "cn=admin,dc=example,dc=com",
                 root_password: str = "secret", schema: Path = SCHEMA,
                 tls: bool = False) -> None:
        self.dir = Path(directory)
        self.ldif = Path(ldif)
        self.port = port or free_port()
        self.suffix = suffix
        self.root_dn = root_dn
        self.root_password = root_password
        self.schema = schema
        self.process: ServerProcess | None = None
        self.conf = self.dir / "slapd.conf"
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.ca_certificate = self.dir / "cert.pem"
        """With ``tls``: the server's self-signed certificate (for 127.0.0.1 and localhost),
        the CA file a client must trust."""

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _prepare(self) -> None:
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        conf = _CONF.format(
            system=SYSTEM_SCHEMA, schema=self.schema, dir=self.dir, modules=MODULE_PATH,
            suffix=self.suffix, root_dn=self.root_dn, root_password=self.root_password)
        if self.tls:
            key = self.dir / "key.pem"
            self_signed(self.ca_certificate, key)
            conf = _TLS_CONF.format(cert=self.ca_certificate, key=key) + conf
        self.conf.write_text(conf)
        result = subprocess.run([SLAPADD, "-q", "-f", str(self.conf), "-l", str(self.ldif)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"slapadd failed on {self.ldif}:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 15.0) -> Slapd:
        """Start (or restart, on the same port and data) and wait until it accepts connections."""
        if not (self.dir / "db" / "data.mdb").exists():
            self._prepare()
        urls = f"{self.url}/" + (f" {self.ldaps_url}/" if self.tls else "")
        self.process = ServerProcess([SLAPD, "-f", str(self.conf), "-h", urls, "-d", "0"],
                                     self.dir / "slapd.log")
        self.process.wait_for_port(self.port, timeout)
        if self.tls:
            self.process.wait_for_port(self.tls_port, timeout)
        return self

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL if it lingers); safe to call twice."""
        if self.process is not None:
            self.process.stop()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        # The signal is delivered asynchronously: wait until every thread is stopped.
        tasks = Path(f"/proc/{self.process.pid}/task")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0]
                          for t in tasks.iterdir()]
            except OSError:
                states = []
            if states and all(state in "tT" for state in states):
                return
            time.sleep(0.005)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> Slapd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
