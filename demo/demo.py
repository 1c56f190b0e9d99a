"""The local demo: every part of mup on loopback, started as child processes, stopped by PID.

Run through ``./demo/run`` (which sets up first).  It starts ngircd, Kannel (bearerbox, smsbox
and the fake SMSC standing in for the phone network), mup-relay (where Kannel posts inbound SMS)
and the bot, each from real config files written into the run directory (``demo-run/``), then
prints how to join and play.  Ctrl-C stops everything it started, and nothing is left running,
also when the output goes through a pipe (``./demo/run | tee log``) that Ctrl-C breaks: the
servers are stopped first and the report printed after, and a broken pipe only silences it.

The "phone": ``demo/text`` writes a line into ``demo-run/phone.fifo``; this process injects it
into the fake SMSC as an inbound SMS.  SMS the bot sends land in ``demo-run/phone.log`` and
are printed here as they arrive.  ``demo/bot stop`` and ``demo/bot start`` stop and restart
the bot through the same FIFO, to show what mup-relay is for: texts sent meanwhile wait in the
relay and reach IRC when the bot is back.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from string import Template
from typing import Any, Callable

DEMO = Path(__file__).resolve().parent
ROOT = DEMO.parent

try:
    import mup  # noqa: F401  (installed by scripts/setup into .venv)
except ImportError:  # running from a checkout without installing: use the tree
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

from mup.testing.process import (  # noqa: E402
    ServerProcess,
    missing_binary,
    port_open,
    twistd_argv,
    wait_for,
)

CHANNEL = "#demo"
BOT_NICK = "mup"
SENDER = "4242"
"""The number the bot's SMS come from, and the number colleagues text."""

FIXED_PORTS = {"irc": 6667, "relay": 8180, "webhook": 8181}
"""The documented ports, used when all are free (``--ports fixed``, the default).  Kannel's
launcher (mup/testing/kannel.py) always takes free ports for its own."""

SERVERS = [("/usr/sbin/ngircd", "ngircd"), ("/usr/sbin/bearerbox", "kannel"),
           ("/usr/sbin/smsbox", "kannel"), ("/usr/lib/kannel/test/fakesmsc", "kannel-extras")]
"""The real servers the demo runs, and their Debian packages (scripts/setup installs them)."""

MARKER = ".mup-demo"
"""A file in the run directory saying the demo made it, so it may be wiped at the next start."""


class DemoError(Exception):
    """Something the person running the demo can act on, said in one line."""


_silenced = False


def say(text: str = "") -> None:
    """Print a line; once stdout is gone (a pipe whose reader died, e.g. ``| tee`` after
    Ctrl-C) print nothing more, and never fail: stopping the servers matters more."""
    global _silenced
    if _silenced:
        return
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        _silenced = True
        try:    # nothing left for the interpreter to flush (and fail on) at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def choose_ports(mode: str) -> dict[str, int]:
    """The fixed, documented ports when they are all free; otherwise free ports."""
    if mode == "fixed" and not any(port_open(p) for p in FIXED_PORTS.values()):
        return dict(FIXED_PORTS)
    if mode == "fixed":
        busy = [f"{n}={p}" for n, p in FIXED_PORTS.items() if port_open(p)]
        say(f"(ports in use: {', '.join(busy)}; using free ports instead)")
    ports: dict[str, int] = {}
    socks = []
    for name in FIXED_PORTS:  # hold every socket until all are chosen, so none repeats
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports[name] = s.getsockname()[1]
    for s in socks:
        s.close()
    return ports


def fifo_has_reader(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def prepare_run_dir(run_dir: Path) -> None:
    """A fresh run directory: refuse while another demo uses it; wipe only what a demo made."""
    fifo = run_dir / "phone.fifo"
    if fifo.exists() and fifo_has_reader(fifo):
        raise DemoError(f"a demo is already running in {run_dir} (stop it with Ctrl-C first)")
    left = leftover_pids(run_dir)
    if left:
        pids = " ".join(map(str, left))
        raise DemoError(f"processes of an earlier demo in {run_dir} are still running; "
                        f"stop them with: kill {pids}")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / MARKER).exists():
            raise DemoError(f"{run_dir} exists and was not made by the demo; "
                            "choose another --run-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("made by demo/demo.py; wiped at the next start\n")


def leftover_pids(run_dir: Path) -> list[int]:
    """PIDs listed in ``run_dir/pids`` by an earlier demo that are still alive (it was killed
    before it could stop them): the same PID with the same command line."""
    try:
        recorded = json.loads((run_dir / "pids").read_text())
    except (OSError, ValueError):
        return []
    alive = []
    for pid, cmdline in recorded:
        try:
            now = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if now == cmdline:
            alive.append(pid)
    return alive


def render(template: str, target: Path, values: dict[str, Any]) -> Path:
    """Write ``demo/<template>`` into the run directory with the demo's values."""
    text = Template((DEMO / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()})
    target.write_text(text)
    return target


class Demo:
    """Every process the demo started, in start order; ``stop()`` ends them all by PID."""

    def __init__(self, run_dir: Path, ports: dict[str, int]) -> None:
        self.run_dir = run_dir
        self.ports = ports
        self.values: dict[str, Any] = {
            "run_dir": run_dir, "demo_dir": DEMO, "sender": SENDER,
            "irc_port": ports["irc"], "relay_port": ports["relay"],
            "webhook_port": ports["webhook"], "sendsms_port": 0,  # known once Kannel runs
            "kannel_username": "mup", "kannel_password": secrets.token_hex(8),
            "kannel_token": secrets.token_hex(12), "relay_token": secrets.token_hex(16),
        }
        self.stoppers: list[tuple[str, Callable[[], None]]] = []
        self.watched: list[tuple[str, ServerProcess]] = []
        self.kannel: Any = None
        self.phone_fd: int | None = None
        self.seen_mt = 0
        self.controls: queue.Queue[str] = queue.Queue()
        """``demo/bot`` requests (``stop``, ``start``), run by the main loop."""

    # -- starting -------------------------------------------------------------------------

    def start(self) -> None:
        for step in (self.start_ngircd, self.start_kannel, self.start_relay, self.start_bot):
            step()
            self.record_pids()
        self.open_phone()

    def record_pids(self) -> None:
        """Write every child's PID and command line to ``pids``, so that a demo killed before
        it could clean up is noticed by the next start."""
        recorded = []
        for _name, proc in self.watched:
            try:
                recorded.append([proc.pid, Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(
                    errors="replace")])
            except OSError:
                continue
        (self.run_dir / "pids").write_text(json.dumps(recorded))

    def start_ngircd(self) -> None:
        from mup.testing.ngircd import Ngircd

        server = Ngircd(self.run_dir / "ngircd", port=self.ports["irc"], name="irc.demo.local")
        self.stoppers.append(("ngircd", server.stop))
        server.start()
        self.watched.extend(("ngircd", p) for p in server.processes())

    def start_kannel(self) -> None:
        from mup.testing.kannel import Kannel

        v = self.values
        mo_url = (f"http://127.0.0.1:{v['relay_port']}/kannel/mo?from=%p&to=%P&text=%a&id=%I"
                  f"&coding=%c&charset=%C&token={v['kannel_token']}")
        kannel = Kannel(self.run_dir / "kannel", get_url=mo_url, username=v["kannel_username"],
                        password=v["kannel_password"], max_messages=3)
        self.stoppers.append(("kannel", kannel.stop))
        kannel.start()
        self.kannel = kannel
        v["sendsms_port"] = kannel.sendsms_port
        self.ports["sendsms"] = kannel.sendsms_port
        self.watched.extend(("kannel " + name, proc) for name, proc in (
            ("bearerbox", kannel.bearerbox), ("smsbox", kannel.smsbox),
            ("fakesmsc", kannel.fakesmsc)))

    def twistd(self, name: str, plugin: str, config: Path, ready: Callable[[], bool],
               what: str, timeout: float = 20.0) -> ServerProcess:
        argv = twistd_argv("-n", f"--pidfile={self.run_dir / (name + '.pid')}", plugin,
                           "--config", str(config))
        proc = ServerProcess(argv, self.run_dir / f"{name}.log", cwd=self.run_dir)
        self.stoppers.append((name, proc.stop))
        self.watched.append((name, proc))
        try:
            wait_for(ready, timeout, what, proc.alive, interval=0.05)
        except (RuntimeError, TimeoutError) as e:
            raise DemoError(f"{name} did not start ({e}); its log:\n{proc.output()[-3000:]}"
                            ) from None
        return proc

    def start_relay(self) -> None:
        config = render("relay.toml.in", self.run_dir / "relay.toml", self.values)
        port = self.ports["relay"]
        self.twistd("relay", "mup-relay", config, lambda: port_open(port),
                    f"mup-relay on port {port}")

    def start_bot(self) -> None:
        config = render("mup.toml.in", self.run_dir / "mup.toml", self.values)
        self.twistd("mup", "mup", config,
                    lambda: bot_in_channel(self.ports["irc"], BOT_NICK, CHANNEL),
                    f"the bot to join {CHANNEL}")

    # -- the phone ------------------------------------------------------------------------

    def open_phone(self) -> None:
        """A FIFO ``demo/text`` writes to; held open read-write so it never sees EOF."""
        path = self.run_dir / "phone.fifo"
        os.mkfifo(path, 0o600)
        self.phone_fd = os.open(path, os.O_RDWR)
        (self.run_dir / "phone.log").touch()
        threading.Thread(target=self.read_phone, name="phone", daemon=True).start()

    def read_phone(self) -> None:
        with os.fdopen(os.dup(self.phone_fd), "rb", buffering=0) as fifo:
            buf = b""
            while True:
                data = fifo.read(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.text_the_bot(line)

    def text_the_bot(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("bot") in ("stop", "start"):
                self.controls.put(msg["bot"])
                return
            sender, text = str(msg["from"]), str(msg["text"])
            to = str(msg.get("to") or SENDER)
        except (ValueError, KeyError, TypeError):
            say(f"phone: ignored a line that is not from demo/text: {line[:80]!r}")
            return
        try:
            self.kannel.inject_mo(sender, to, text)
        except (RuntimeError, TimeoutError, ValueError) as e:
            say(f"[phone] could not text the bot: {e}")
            return
        say(f"[phone] {sender} -> {to}: {text}")

    def poll_phone_inbox(self) -> None:
        """Append the SMS the fake SMSC received since the last call to phone.log, and print."""
        received = self.kannel.received()
        new, self.seen_mt = received[self.seen_mt:], len(received)
        if not new:
            return
        with open(self.run_dir / "phone.log", "a", encoding="utf-8") as log:
            for sms in new:
                parts = f" ({sms.parts} parts)" if sms.parts > 1 else ""
                line = f"{time.strftime('%H:%M:%S')} to {sms.receiver}{parts}: {sms.text}"
                log.write(line + "\n")
                say(f"[phone] {line}")

    # -- the bot, stopped and started again (demo/bot) ---------------------------------------

    def run_controls(self) -> None:
        while True:
            try:
                action = self.controls.get_nowait()
            except queue.Empty:
                return
            if action == "stop":
                self.stop_bot()
            else:
                self.restart_bot()

    def _bot(self) -> ServerProcess | None:
        return next((proc for name, proc in self.watched if name == "mup"), None)

    def stop_bot(self) -> None:
        proc = self._bot()
        if proc is None:
            say("[demo] the bot is already stopped; demo/bot start starts it")
            return
        proc.stop()
        self.watched = [(n, p) for n, p in self.watched if p is not proc]
        self.stoppers = [(n, s) for n, s in self.stoppers if n != "mup"]
        self.record_pids()
        say("[demo] the bot is stopped.  Text it now (demo/text ...): mup-relay keeps the SMS "
            "until the bot is back (demo/bot start).")

    def restart_bot(self) -> None:
        if self._bot() is not None:
            say("[demo] the bot is already running")
            return
        say("[demo] starting the bot again ...")
        self.start_bot()
        self.record_pids()
        say("[demo] the bot is back: what was texted meanwhile comes from the relay now.")

    # -- running and stopping -------------------------------------------------------------

    def check_children(self) -> None:
        for name, proc in self.watched:
            if not proc.alive():
                raise DemoError(f"{name} exited unexpectedly; its log ({proc.log}):\n"
                                f"{proc.output()[-2000:]}")

    def stop(self) -> bool:
        """Stop everything started, newest first, by PID; False if something resisted."""
        for name, stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as e:  # keep stopping the others
                say(f"(stopping {name}: {e})")
        self.stoppers.clear()
        left = [f"{name} (PID {proc.pid})" for name, proc in self.watched if proc.alive()]
        if left:
            say("demo: still running, stop them by hand: " + ", ".join(left))
        if self.phone_fd is not None:
            os.close(self.phone_fd)
            self.phone_fd = None
        fifo = self.run_dir / "phone.fifo"
        if fifo.exists() and stat.S_ISFIFO(fifo.stat().st_mode):
            fifo.unlink()
        return not left


def bot_in_channel(irc_port: int, nick: str, channel: str) -> bool:
    """Ask the IRC server (NAMES) whether ``nick`` is in ``channel``; a throwaway connection."""
    me = "chk" + secrets.token_hex(2)  # short: ngircd allows 9 characters by default
    try:
        with socket.create_connection(("127.0.0.1", irc_port), timeout=3) as s:
            s.sendall(f"NICK {me}\r\nUSER {me} 0 * :demo check\r\n".encode())
            buf = b""
            deadline = time.monotonic() + 3
            asked = False
            while time.monotonic() < deadline:
                data = s.recv(4096)
                if not data:
                    return False
                buf += data
                lines = buf.split(b"\r\n")
                buf = lines.pop()
                for raw in lines:
                    parts = raw.decode("utf-8", "replace").split(" ")
                    if parts[0] == "PING":
                        s.sendall(f"PONG {parts[1] if len(parts) > 1 else ''}\r\n".encode())
                    elif len(parts) > 1 and parts[1] in ("001", "376", "422") and not asked:
                        s.sendall(f"NAMES {channel}\r\n".encode())
                        asked = True
                    elif len(parts) > 1 and parts[1] == "353":
                        names = raw.decode("utf-8", "replace").rsplit(" :", 1)[-1].split()
                        if any(n.lstrip("@+%&~") == nick for n in names):
                            s.sendall(b"QUIT\r\n")
                            return True
                    elif len(parts) > 1 and parts[1] == "366":
                        s.sendall(b"QUIT\r\n")
                        return False
    except OSError:
        return False
    return False


def instructions(ports: dict[str, int], run_dir: Path) -> str:
    rel = os.path.relpath(run_dir)
    if rel.startswith(".."):
        rel = str(run_dir)
    if shutil.which("irssi"):
        join = f"irssi -c 127.0.0.1 -p {ports['irc']} -n alice     (then: /join {CHANNEL})"
    else:
        join = f"demo/chat --port {ports['irc']} --nick alice     (irssi is not installed)"
    text_cmd = "demo/text" + ("" if rel == "demo-run" else f" --run-dir {rel}")
    bot_cmd = "demo/bot" + ("" if rel == "demo-run" else f" --run-dir {rel}")
    return "\n".join([
        "",
        f"mup demo is running: IRC on 127.0.0.1:{ports['irc']}, channel {CHANNEL}, "
        f"bot '{BOT_NICK}'.  Ctrl-C stops it all.",
        f"  Ports:       IRC {ports['irc']}, mup-relay {ports['relay']} (Kannel posts inbound SMS "
        f"there), bot receiver {ports['webhook']}",
        f"               (delivery reports), Kannel sendsms {ports.get('sendsms', '?')}",
        f"  Health:      http://127.0.0.1:{ports['relay']}/healthz (relay)   "
        f"http://127.0.0.1:{ports['webhook']}/healthz (bot)",
        f"  Join:        {join}",
        "  Type:        @poke niemeyer    @poke kenji    @poke +55 11    "
        "@sms niemeyer Where are you?",
        f"  Be a phone:  {text_cmd} --from +5511955551234 \"{CHANNEL} on my way\"   "
        "(niemeyer texts the channel)",
        f"               {text_cmd} --from +5511955551234 \"ok, 5 min\"   "
        "(a reply: to who texted him last)",
        f"  Phone inbox: {rel}/phone.log (the SMS the bot sends; also printed below)",
        "  People:      niemeyer (Sao Paulo), alice (Paris), kenji (Tokyo), carol (New York),",
        "               priya (Kolkata), dave (+10:00): demo/people.ldif",
        f"  The relay:   {bot_cmd} stop; then text the bot; then {bot_cmd} start: texts sent",
        "               while the bot was down wait in mup-relay and arrive when it is back.",
        "  Note:        ngircd has no services accounts: the demo lets anyone on 127.0.0.1 who",
        "               uses a nick from People send SMS ([sms] require_account = false).",
        f"  Configs and logs: {rel}/ (mup.toml, relay.toml, kannel/, *.log)",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mup's local demo (see demo/demo.py).")
    parser.add_argument("--run-dir", default=os.environ.get("MUP_DEMO_RUN_DIR",
                                                            str(ROOT / "demo-run")))
    parser.add_argument("--ports", choices=("fixed", "free"), default="fixed",
                        help="fixed: the documented ports when free (default); free: any")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C, kill PID, a closed terminal: all stop the demo

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    demo: Demo | None = None
    try:
        missing = [f"{path} (package {package})" for path, package in SERVERS
                   if missing_binary(path)]
        if missing:
            raise DemoError("not installed: " + ", ".join(missing) + "; run ./demo/run "
                            "without --no-setup (scripts/setup installs them)")
        prepare_run_dir(run_dir)
        ports = choose_ports(args.ports)
        (run_dir / "ports.json").write_text(json.dumps(ports))
        demo = Demo(run_dir, ports)
        say("Starting ngircd, Kannel (bearerbox, smsbox, fakesmsc), mup-relay and mup ...")
        demo.start()
        say(instructions(ports, run_dir))
        say("The demo is ready.")
        while True:
            time.sleep(0.2)
            demo.run_controls()
            demo.poll_phone_inbox()
            demo.check_children()
    except KeyboardInterrupt:
        return 0
    except (DemoError, RuntimeError, TimeoutError, OSError) as e:
        say(f"demo: {e}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        # Stop first, report after: after Ctrl-C through a pipe (| tee) there may be nobody
        # left to print to, and a failed print must not leave the servers running.
        if demo is not None and demo.stop():
            say("Stopped everything the demo started; nothing is left running.")


if __name__ == "__main__":
    sys.exit(main())
