"""The README's first command, as a newcomer uses it: start the demo, join its IRC server,
poke someone, send an SMS that reaches the fake SMSC, text the bot back, text it while it is
stopped (the relay keeps the text), Ctrl-C, and nothing is left running, also when the demo's
output goes through a pipe that Ctrl-C breaks."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mup.testing.ircclient import LineClient
from mup.testing.process import require_binary, wait_for

ROOT = Path(__file__).resolve().parent.parent
SERVERS = [("/usr/sbin/ngircd", "ngircd"), ("/usr/sbin/bearerbox", "kannel"),
           ("/usr/sbin/smsbox", "kannel"), ("/usr/lib/kannel/test/fakesmsc", "kannel-extras")]


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid``: {pid: command name}."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        parents[int(entry.name)] = int(fields[1])
        names[int(entry.name)] = name
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = names[child]
                frontier.append(child)
    return found


def running_with(text: str) -> list[int]:
    """PIDs of live processes whose command line mentions ``text`` (the demo's run dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def demo(tmp_path):
    """``demo/run`` in the background on free ports, the way a newcomer starts it."""
    for path, package in SERVERS:
        require_binary(path, package)
    run_dir = tmp_path / "demo-run"
    out = tmp_path / "demo.out"
    env = dict(os.environ, MUP_DEMO_PYTHON=sys.executable)
    with open(out, "wb") as f:
        proc = subprocess.Popen([str(ROOT / "demo" / "run"), "--no-setup", "--ports", "free",
                                 "--run-dir", str(run_dir)],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "The demo is ready." in out.read_text(), 45, "the demo to start",
                 lambda: proc.poll() is None, interval=0.1)
    except (RuntimeError, TimeoutError) as e:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        raise AssertionError(f"{e}\n--- demo output ---\n{out.read_text()[-4000:]}") from None
    proc.run_dir = run_dir
    proc.out = out
    proc.ports = json.loads((run_dir / "ports.json").read_text())
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def bot(demo, action: str) -> None:
    """demo/bot stop|start, as the README says."""
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "bot"), "--run-dir",
                           str(demo.run_dir), action], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


def relay_holds_something(demo) -> bool:
    url = f"http://127.0.0.1:{demo.ports['relay']}/healthz"
    with urllib.request.urlopen(url, timeout=5) as answer:
        health = json.loads(answer.read())
    return max(health.get("relay_backlog", 0), health.get("backlog", 0)) >= 1


def text(demo, message: str) -> None:
    """Play the phone: niemeyer's mobile texts the bot, through demo/text."""
    texted = subprocess.run([sys.executable, str(ROOT / "demo" / "text"), "--run-dir",
                             str(demo.run_dir), "--from", "+5511955551234", message],
                            capture_output=True, text=True, timeout=10)
    assert texted.returncode == 0, texted.stderr


def test_demo_end_to_end(demo):
    children = descendants(demo.pid)
    names = set(children.values())
    for server in ("ngircd", "bearerbox", "smsbox", "fakesmsc"):
        assert server in names, f"{server} not among the demo's processes: {names}"

    irc = LineClient(demo.ports["irc"], "alice")
    try:
        irc.register()
        irc.join("#demo")

        irc.privmsg("#demo", "@poke kenji")
        reply = irc.expect(r"^:mup!\S+ PRIVMSG #demo :")
        assert "alice: kenji is Kenji Tanaka" in reply
        assert "<kenji@example.com>" in reply and "<mobile:+81 90 1234 5678>" in reply

        irc.privmsg("#demo", "@sms niemeyer Where are you? We're waiting!")
        reply = irc.expect(r"^:mup!\S+ PRIVMSG #demo :", 15)
        assert reply.endswith(":alice: SMS is on the way!"), reply
        phone_log = demo.run_dir / "phone.log"
        wait_for(lambda: "Where are you? We're waiting!" in phone_log.read_text(), 15,
                 "the SMS in the phone log")
        sms = next(line for line in phone_log.read_text().splitlines() if "waiting" in line)
        assert "to +5511955551234: #demo alice> Where are you? We're waiting!" in sms
        report = irc.expect(r"^:mup!\S+ PRIVMSG alice :", 15)
        assert report.endswith(":SMS to niemeyer delivered."), report

        text(demo, "#demo on my way")
        line = irc.expect(r"^:mup!\S+ PRIVMSG \S+ :.*on my way", 20)
        assert line.endswith(" PRIVMSG #demo :[SMS] <niemeyer> on my way"), line

        # No #channel first: the answer goes to whoever texted niemeyer last, privately.
        text(demo, "ok, 5 min")
        line = irc.expect(r"^:mup!\S+ PRIVMSG \S+ :.*5 min", 20)
        assert line.endswith(" PRIVMSG alice :[SMS] <niemeyer> ok, 5 min"), line

        # What the relay is for: the bot is down, niemeyer texts, the bot comes back.
        bot(demo, "stop")
        irc.expect(r"^:mup!\S+ QUIT", 20)
        text(demo, "#demo texted while the bot was down")
        wait_for(lambda: relay_holds_something(demo), 20, "the relay to keep the text")
        bot(demo, "start")
        line = irc.expect(r"^:mup!\S+ PRIVMSG #demo :.*while the bot was down", 30)
        assert line.endswith(":[SMS] <niemeyer> texted while the bot was down"), line
        children = descendants(demo.pid)   # the bot has a new PID
    finally:
        irc.close()

    chat_out = demo.run_dir.parent / "chat.out"
    with open(chat_out, "wb") as f:
        chat = subprocess.Popen([sys.executable, str(ROOT / "demo" / "chat"), "--port",
                                 str(demo.ports["irc"]), "--nick", "carol"],
                                stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT)
    try:
        chat.stdin.write(b"@poke dave\n")
        chat.stdin.flush()
        wait_for(lambda: "#demo <mup> carol: dave is Dave Wilson" in chat_out.read_text(), 15,
                 "demo/chat to show the poke reply", lambda: chat.poll() is None)
        # Over IRC's 512 bytes: split, not a disconnection (the server would drop carol).
        long_line = " ".join(f"word{i:03}" for i in range(120))     # 959 bytes
        chat.stdin.write(long_line.encode() + b"\n@poke kenji\n")
        chat.stdin.flush()
        wait_for(lambda: "#demo <mup> carol: kenji is Kenji Tanaka" in chat_out.read_text(), 15,
                 "demo/chat still connected after a long line", lambda: chat.poll() is None)
        shown = chat_out.read_text()
        assert "sent as 3 lines" in shown and "word119" in shown
        chat.stdin.write(b"/quit\n")
        chat.stdin.close()
        assert chat.wait(10) == 0
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()

    demo.send_signal(signal.SIGINT)
    assert demo.wait(30) == 0, demo.out.read_text()[-3000:]
    left = {pid: name for pid, name in children.items() if alive(pid)}
    assert not left, f"still running after Ctrl-C: {left}"
    assert not running_with(str(demo.run_dir)), "a process still uses the demo's run dir"
    assert not (demo.run_dir / "phone.fifo").exists()


def test_text_says_when_no_demo_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "text"), "--run-dir",
                             str(tmp_path), "hello"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "the demo is not running" in result.stderr


def test_demo_configs_are_valid_mup_configs(tmp_path):
    """The templates render into configs mup accepts (a renamed key would stop the demo)."""
    sys.path.insert(0, str(ROOT / "demo"))
    try:
        import demo as demo_module
    finally:
        sys.path.remove(str(ROOT / "demo"))
    from mup.config import load

    d = demo_module.Demo(tmp_path, {"irc": 6667, "relay": 8180, "webhook": 8181})
    d.values["sendsms_port"] = 13013
    bot = load(str(demo_module.render("mup.toml.in", tmp_path / "mup.toml", d.values)),
               environ={})
    relay = load(str(demo_module.render("relay.toml.in", tmp_path / "relay.toml", d.values)),
                 environ={})
    assert bot.irc.endpoint == "tcp:host=127.0.0.1:port=6667"
    assert bot.sms.require_account is False and bot.sms.allowed_hostmasks
    assert bot.inbound.relay_url == "http://127.0.0.1:8180"
    assert bot.inbound.relay_token == relay.relay.token != ""
    assert bot.section("sms.kannel").inbound_token == relay.section("sms.kannel").inbound_token
    assert bot.resolve_path(bot.ldap.ldif) == str(ROOT / "demo" / "people.ldif")
    assert relay.webhook.endpoint == "tcp:port=8180:interface=127.0.0.1"


def test_demo_people_load_and_can_be_texted():
    """demo/people.ldif loads into the embedded directory; every mobile is a valid E.164
    number and every zone a real one, so @sms and the local times work for everyone."""
    from zoneinfo import ZoneInfo

    from mup.ldif import load_ldif
    from mup.phone import normalise

    path = ROOT / "demo" / "people.ldif"
    load_ldif(str(path))
    text = path.read_text()
    mobiles = [line.split(":", 1)[1].strip() for line in text.splitlines()
               if line.startswith("mobile:")]
    zones = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith("timezone:")]
    assert len(mobiles) == text.count("objectClass: mupPerson") >= 5
    for mobile in mobiles:
        assert normalise(mobile, "").startswith("+")
    for zone in zones:
        ZoneInfo(zone)


def test_ctrl_c_through_a_pipe_stops_every_server(tmp_path):
    """``./demo/run | tee log`` and Ctrl-C: the terminal's SIGINT reaches tee too, so the
    demo's stdout is a broken pipe when it cleans up.  Every server must stop all the same."""
    for path, package in SERVERS:
        require_binary(path, package)
    run_dir = tmp_path / "demo-run"
    env = dict(os.environ, MUP_DEMO_PYTHON=sys.executable)
    proc = subprocess.Popen([str(ROOT / "demo" / "run"), "--no-setup", "--ports", "free",
                             "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    children: dict[int, str] = {}
    try:
        output = b""
        deadline = time.monotonic() + 45
        while b"The demo is ready." not in output:
            assert time.monotonic() < deadline and proc.poll() is None, output[-3000:]
            readable, _, _ = select.select([proc.stdout], [], [], 0.5)
            if readable:
                output += os.read(proc.stdout.fileno(), 65536)
        for port in ("IRC", "mup-relay", "bot receiver", "/healthz"):
            assert port.encode() in output, f"the banner does not show {port}"
        children = descendants(proc.pid)
        assert {"ngircd", "bearerbox", "smsbox", "fakesmsc"} <= set(children.values())
        assert sum(name.startswith(("twistd", "python")) for name in children.values()) >= 2
        proc.stdout.close()                  # tee is gone ...
        proc.send_signal(signal.SIGINT)      # ... and the demo gets its Ctrl-C
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = {pid: name for pid, name in children.items() if alive(pid)}
        for pid in left:                     # don't leak them into the rest of the suite
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after Ctrl-C through a pipe: {left}"
