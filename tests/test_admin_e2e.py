"""Operators run the real bot (twistd) from IRC: on ngircd with hostmask operators, and on
InspIRCd + Atheme with account operators.  Join/part and ignores survive a restart; reload
re-reads the config and the LDIF on the same connection; a broken config is refused; SIGHUP."""

from __future__ import annotations

import os
import signal

from mup.config import dumps
from mup.testing.inspircd import ACCOUNTS

LDIF = """\
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
mozillaNickname: alice
"""

NEWCOMER = """
dn: uid=nadia,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: nadia
cn: Nadia Newcomer
sn: Newcomer
mozillaNickname: nadia
"""


def config(endpoint: str, tmp_path, channels=("#team",), **admin) -> dict:
    return {
        "irc": {"endpoint": endpoint, "nick": "mupadm", "channels": list(channels),
                "line_rate": 0.0, "command_rate": 0.0},
        "ldap": {"ldif": str(tmp_path / "people.ldif"), "base_dn": "ou=people,dc=example,dc=com"},
        "state": {"directory": str(tmp_path / "state")},
        "admin": admin,
    }


def test_hostmask_operators_on_ngircd(ngircd, irc_client, run_bot, tmp_path):
    (tmp_path / "people.ldif").write_text(LDIF)
    conf = config(ngircd.endpoint, tmp_path, hostmasks=["boss!*@*"])
    bot = run_bot(conf)
    boss = irc_client(ngircd.port, "boss")
    pleb = irc_client(ngircd.port, "pleb")
    for client in (boss, pleb):
        client.join("#team")

    # Not an operator: a plain refusal, for every admin command.
    for command in ("status", "join #extra", "ignore boss", "reload", "part #team"):
        pleb.privmsg("#team", f"@{command}")
        pleb.expect(r"PRIVMSG #team :pleb: You are not an operator of this bot\.$")

    # join: the bot comes to #extra (boss waits there to see it).
    boss.join("#extra")
    boss.privmsg("#team", "@join #extra")
    boss.expect(r":mupadm!\S+ JOIN :?#extra$")
    boss.expect(r"PRIVMSG #team :boss: Joining #extra \(kept across restarts\)\.$")

    # ignore: pleb's command gets nothing; boss's, sent after, is answered first.
    boss.privmsg("#team", "@ignore pleb")
    boss.expect(r"PRIVMSG #team :boss: Ignoring pleb!\*@\* until unignored\.$")
    pleb.expect(r"PRIVMSG #team :boss: Ignoring pleb!")  # what pleb saw so far, read
    pleb.privmsg("#team", "@poke alice")
    boss.privmsg("#team", "@poke alice")
    line = pleb.expect(r"^:mupadm!\S+ PRIVMSG #team :")
    assert "boss: alice is Alice Example" in line, line

    # status: the parts of the bot, in one or two lines.
    boss.privmsg("mupadm", "status")
    line = boss.expect(r"PRIVMSG boss :IRC: ")
    assert "connected to 127.0.0.1:" in line and "#extra" in line and "directory: answering" \
        in line, line

    # reload: a new person in the LDIF is found, on the same IRC connection.
    with open(tmp_path / "people.ldif", "a") as f:
        f.write(NEWCOMER)
    boss.privmsg("#team", "@reload")
    boss.expect(r"PRIVMSG #team :boss: Reloaded .*Directory: 3 entries from ")
    boss.privmsg("#team", "@poke nadia")
    boss.expect(r"PRIVMSG #team :boss: nadia is Nadia Newcomer")

    # A broken config is refused and the running one stays.
    good = bot.config_path.read_text()
    bot.config_path.write_text(good + "\n[irc]\nnick = 'twice'\n")
    boss.privmsg("#team", "@reload")
    boss.expect(r"PRIVMSG #team :boss: Reload refused, the running config stays: .*TOML syntax")
    boss.privmsg("#team", "@poke alice")
    boss.expect(r"PRIVMSG #team :boss: alice is Alice Example")
    pleb.expect(r"PRIVMSG #team :boss: Reload refused")
    pleb.expect(r"PRIVMSG #team :boss: alice is Alice Example")

    # SIGHUP: a channel added to the config is joined; a restart-only key is reported.
    boss.join("#more")
    conf["irc"]["channels"] = ["#team", "#more"]
    bot.config_path.write_text(dumps(conf))
    os.kill(bot.pid, signal.SIGHUP)
    boss.expect(r":mupadm!\S+ JOIN :?#more$")
    bot.wait_for_output("reloaded ")
    log = bot.output()
    assert log.count("Registered on IRC as") == 1, "the reloads must not reconnect"

    # A restart keeps the channel joined from IRC and the ignore list.
    bot.stop()
    conf["irc"]["channels"] = ["#team"]
    run_bot(conf, wait=False)
    boss.expect(r":mupadm!\S+ JOIN :?#extra$", timeout=15)
    pleb.privmsg("#team", "@poke alice")
    boss.privmsg("#team", "@poke nadia")
    line = pleb.expect(r"^:mupadm!\S+ PRIVMSG #team :")
    assert "boss: nadia is Nadia Newcomer" in line, line
    boss.privmsg("#team", "@ignores")
    boss.expect(r"PRIVMSG #team :boss: Ignored: pleb!\*@\*\.$")


def test_account_operators_on_inspircd_atheme(inspircd_atheme, irc_client, run_bot, tmp_path):
    (tmp_path / "people.ldif").write_text(LDIF)
    run_bot(config(inspircd_atheme.endpoint, tmp_path, accounts=["alice"]))
    # Logged in as alice under another nick: an operator.
    op = irc_client(inspircd_atheme.port, "someone", sasl=("alice", ACCOUNTS["alice"]))
    op.privmsg("mupadm", "ignores")
    op.expect(r"PRIVMSG someone :Nobody is ignored\.$")
    # The nick alice without the account: not an operator.
    impostor = irc_client(inspircd_atheme.port, "alice")
    impostor.privmsg("mupadm", "ignores")
    impostor.expect(r"PRIVMSG alice :You are not an operator of this bot\.$")
    # bob's account is not an operator's either; and an operator can ignore him.
    bob = irc_client(inspircd_atheme.port, "bob", sasl=("bob", ACCOUNTS["bob"]))
    bob.privmsg("mupadm", "part #team")
    bob.expect(r"PRIVMSG bob :You are not an operator of this bot\.$")
    op.privmsg("mupadm", "ignore bob 1h")
    op.expect(r"PRIVMSG someone :Ignoring bob!\*@\* for 1h\.$")
    bob.privmsg("mupadm", "poke nobody-at-all")   # ignored: no answer
    op.privmsg("mupadm", "unignore bob")
    op.expect(r"PRIVMSG someone :No longer ignoring bob!\*@\*\.$")
    bob.privmsg("mupadm", "poke alice")
    line = bob.expect(r"PRIVMSG bob :")
    assert "alice is Alice Example" in line, line
    impostor.privmsg("mupadm", "help")
    line = impostor.expect(r"PRIVMSG alice :Commands: ")
    assert "Operator commands: " in line
