"""A real InspIRCd 3 + Atheme 7.2 pair on 127.0.0.1 (free ports, temp dir): services accounts,
SASL PLAIN, account-tag/account-notify/extended-join.  Adapted from the configs in
../shared/notes/inspircd-atheme (observed to work here).

Registering accounts through NickServ is slow (each InspIRCd client waits ~1 s to register),
so :func:`make_seed` registers ``ACCOUNTS`` once and keeps Atheme's database as a seed that
every later start copies.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from mup.testing.ircclient import LineClient
from mup.testing.process import ServerProcess, free_port, require_binary, wait_for

__all__ = ["ACCOUNTS", "ATHEME", "INSPIRCD", "InspircdAtheme", "make_seed"]

INSPIRCD = "/usr/sbin/inspircd"
ATHEME = "/usr/bin/atheme-services"

ACCOUNTS = {"alice": "alicepass1", "bob": "bobpass22"}
"""Services accounts in the seed database: account -> password."""

_INSPIRCD_CONF = """\
<server name="irc.test" description="Test IRC server" network="TestNet" id="001">
<admin name="Test" nick="test" email="test@irc.test">
<path configdir="{dir}/inspircd" datadir="{dir}/run" logdir="{dir}/log">
<pid file="{dir}/run/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default"
     target="{dir}/log/inspircd.log">
<dns server="127.0.0.1" timeout="1">
<bind address="127.0.0.1" port="{port}" type="clients">
<bind address="127.0.0.1" port="{link_port}" type="servers">
<connect name="main" allow="*" timeout="60" pingfreq="120" hardsendq="1M" softsendq="1M"
         recvq="64K" threshold="1000" commandrate="100000" fakelag="no"
         localmax="1000" globalmax="1000" limit="5000" maxchans="100"
         resolvehostnames="no" useident="no">
<options prefixquit="Quit: ">
<security hideulines="no">
<module name="cap">
<module name="ircv3">
<module name="ircv3_accounttag">
<module name="ircv3_servertime">
<module name="ircv3_echomessage">
<module name="sasl">
<module name="services_account">
<module name="spanningtree">
<module name="chghost">
<module name="svshold">
<module name="cban">
<module name="topiclock">
<link name="services.test" ipaddr="127.0.0.1" port="{link_port}" allowmask="127.0.0.0/8"
      sendpass="linkpass" recvpass="linkpass">
<uline server="services.test" silent="yes">
<sasl target="services.test" requiressl="no">
{tls}"""

_INSPIRCD_TLS = """
<module name="ssl_gnutls">
<module name="sslinfo">
<sslprofile name="Clients" provider="gnutls" certfile="{cert}" keyfile="{key}" hash="sha256"
            requestclientcert="yes">
<bind address="127.0.0.1" port="{tls_port}" type="clients" sslprofile="Clients">
"""

_ATHEME_CONF = """\
loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/register";
loadmodule "modules/nickserv/identify";
loadmodule "modules/nickserv/logout";
loadmodule "modules/nickserv/info";
loadmodule "modules/nickserv/help";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";
loadmodule "modules/saslserv/external";
loadmodule "modules/nickserv/cert";
serverinfo {{
	name = "services.test"; desc = "Atheme IRC Services"; numeric = "00A"; recontime = 1;
	netname = "TestNet"; hidehostsuffix = "users.test"; adminname = "test";
	adminemail = "test@irc.test"; registeremail = "noreply@irc.test"; mta = "/bin/false";
	loglevel = {{ error; info; admin; network; }};
	maxlogins = 50; maxusers = 1000; mdlimit = 30; emaillimit = 10; emailtime = 300;
	auth = none; casemapping = rfc1459;
}};
uplink "irc.test" {{ host = "127.0.0.1"; port = {link_port}; password = "linkpass"; }};
nickserv {{ nick = "NickServ"; user = "NickServ"; host = "services.test";
	real = "Nickname Services"; maxnicks = 5; expire = 0; }};
saslserv {{ nick = "SaslServ"; user = "SaslServ"; host = "services.test";
	real = "SASL Authentication Agent"; }};
general {{
	flood_msgs = 1000; flood_time = 1; commit_interval = 5; default_clone_allowed = 1000;
	default_clone_warn = 1000; uplink_sendq_limit = 1048576; language = "en";
}};
"""


class InspircdAtheme:
    """InspIRCd with Atheme linked to it, in ``directory``; ``.port`` takes clients."""

    def __init__(self, directory: Path | str, seed: Path | None = None,
                 port: int | None = None, link_port: int | None = None,
                 tls_cert: Path | str | None = None, tls_key: Path | str | None = None) -> None:
        self.dir = Path(directory)
        self.seed = seed
        self.port = port or free_port()
        self.link_port = link_port or free_port()
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_port = free_port() if tls_cert else None
        """With ``tls_cert``/``tls_key``: a TLS client port that asks for client certificates
        (their SHA-256 fingerprints work with NickServ CERT and SASL EXTERNAL)."""
        self.inspircd: ServerProcess | None = None
        self.atheme: ServerProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"

    @property
    def services_db(self) -> Path:
        return self.dir / "atheme" / "data" / "services.db"

    def _prepare(self) -> None:
        for sub in ("inspircd", "atheme/data", "log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        tls = (_INSPIRCD_TLS.format(cert=self.tls_cert, key=self.tls_key, tls_port=self.tls_port)
               if self.tls_cert else "")
        values = {"dir": self.dir, "port": self.port, "link_port": self.link_port, "tls": tls}
        (self.dir / "inspircd" / "inspircd.conf").write_text(_INSPIRCD_CONF.format(**values))
        (self.dir / "atheme" / "atheme.conf").write_text(_ATHEME_CONF.format(**values))
        if self.seed is not None:
            shutil.copy(self.seed, self.services_db)
        # Atheme drops nothing, but InspIRCd may run as another user: let both write here.
        os.chmod(self.dir, 0o755)

    def start(self, timeout: float = 20.0) -> InspircdAtheme:
        """Start both and wait until Atheme has synced (SASL and NickServ work from then)."""
        inspircd = require_binary(INSPIRCD, "inspircd")
        atheme = require_binary(ATHEME, "atheme-services")
        self._prepare()
        argv = [inspircd, "--config", str(self.dir / "inspircd" / "inspircd.conf"), "--nofork"]
        if os.geteuid() == 0:
            argv.append("--runasroot")
        self.inspircd = ServerProcess(argv, self.dir / "log" / "inspircd.stdout")
        self.inspircd.wait_for_output("is now running", timeout)
        log = self.dir / "log" / "atheme.log"
        self.atheme = ServerProcess(
            [atheme, "-n", "-c", str(self.dir / "atheme" / "atheme.conf"), "-l", str(log),
             "-p", str(self.dir / "run" / "atheme.pid"), "-D", str(self.dir / "atheme" / "data")],
            self.dir / "log" / "atheme.stdout")

        def synced() -> bool:
            try:
                return "finished synching with uplink" in log.read_text(errors="replace")
            except OSError:
                return False

        try:
            wait_for(synced, timeout, "Atheme to sync with InspIRCd", self.atheme.alive)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- atheme ---\n{self.atheme.output()[-2000:]}") from None
        return self

    def stop_atheme(self) -> None:
        """SIGTERM Atheme (it writes its database) and wait for it."""
        if self.atheme is not None:
            self.atheme.stop(timeout=10)

    def stop(self) -> None:
        """Stop both by PID; safe to call twice."""
        for process in (self.atheme, self.inspircd):
            if process is not None and process.alive():
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in (self.atheme, self.inspircd):
            if process is not None:
                process.stop()

    def processes(self) -> list[ServerProcess]:
        return [p for p in (self.inspircd, self.atheme) if p is not None]

    def __enter__(self) -> InspircdAtheme:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_seed(directory: Path, accounts: dict[str, str] | None = None,
              timeout: float = 20.0) -> Path:
    """Register ``accounts`` (default :data:`ACCOUNTS`) with NickServ on a fresh pair and
    return the saved Atheme database, for ``InspircdAtheme(seed=...)``."""
    accounts = ACCOUNTS if accounts is None else accounts
    servers = InspircdAtheme(Path(directory) / "servers")
    servers.start(timeout)
    try:
        clients = []
        for nick in accounts:  # connect all first: each waits ~1 s for InspIRCd's tick
            client = LineClient(servers.port, nick, timeout=timeout)
            client.send(f"NICK {nick}")
            client.send(f"USER {nick} 0 * :{nick}")
            clients.append(client)
        for client in clients:
            client.expect(r"^:\S+ 001 ", timeout)
            client.send(f"PRIVMSG NickServ :REGISTER {accounts[client.nick]} "
                        f"{client.nick}@example.com")
        for client in clients:
            client.expect(r"NOTICE \S+ :.*(registered|now logged in)", timeout)
            client.close()
        servers.stop_atheme()
        deadline = time.monotonic() + timeout
        while not servers.services_db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        seed = Path(directory) / "seed.db"
        shutil.copy(servers.services_db, seed)
        return seed
    finally:
        servers.stop()
