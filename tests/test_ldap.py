"""The directory API against a real slapd (and, where it applies, the embedded directory):
lookups, credentials, a server that goes away and comes back, a hung server, saturation."""

from __future__ import annotations

import time

import pytest
from fixtures_ldap import PEOPLE_LDIF, make_directory
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from mup.directory import SLUGGISH, UNAVAILABLE, DirectoryError


def nick(person):
    return person.nick if person is not None else None


@pytest.mark.parametrize(("method", "value", "expected"), [
    ("by_nick", "jose", "jose"),
    ("by_nick", "JOSE", "jose"),
    ("by_nick", "nobody", None),
    ("by_nick", "*", None),
    ("by_nick", "jo*", None),
    ("by_nick", "", None),
    ("by_account", "elodie.dupre", "elodie"),  # account_attribute = uid
    ("by_account", "elodie", None),
    ("by_account", "*)(uid=*", None),
    ("by_phone", "+34600333444", "jose"),  # the second of two mobiles
    ("by_phone", "+34 600 111 222", "jose"),
    ("by_phone", "+442079460018", "ann"),  # stored as "+44 (20) 7946-0018"
    ("by_phone", "0044 20 7946 0018", "ann"),
    ("by_phone", "+5511555512340", None),  # one digit too many
    ("by_phone", "+1 555", None),
    ("by_phone", "", None),
])
def test_lookups(ldap_reactor, people_directory, method, value, expected):
    assert nick(ldap_reactor.call(getattr(people_directory, method), value)) == expected


@pytest.mark.parametrize(("keys", "expected"), [
    ([("account", "elodie.dupre"), ("nick", "jose")], ["elodie", "jose"]),
    ([("nick", "JOSE"), ("nick", "ann")], ["jose", "ann"]),
    ([("nick", "jose"), ("nick", "jose")], ["jose", "jose"]),           # texting oneself
    ([("account", "elodie.dupre"), ("nick", "elodie")], ["elodie", "elodie"]),
    ([("account", "elodie"), ("nick", "jose")], [None, "jose"]),         # a nick, not an account
    ([("nick", "jose"), ("nick", "nobody")], ["jose", None]),
    ([("nick", "nobody"), ("nick", "*")], [None, None]),
    ([("nick", "*)(mozillaNickname=*"), ("nick", "ann")], [None, "ann"]),  # no injection
    ([("nick", ""), ("nick", "ann")], [None, "ann"]),
    ([("nick", "ann")], ["ann"]),
    ([], []),
])
def test_find_all_is_by_nick_and_by_account_at_once(ldap_reactor, people_directory, keys,
                                                      expected):
    people = ldap_reactor.call(people_directory.find_all, keys)
    assert [nick(p) for p in people] == expected
    one_by_one = [ldap_reactor.call(getattr(people_directory, f"by_{kind}"), value)
                  for kind, value in keys]
    assert people == one_by_one


@pytest.fixture(scope="module")
def slapd_directory(ldap_reactor, slapd_server):
    """The LDAP server's directory alone (what a round trip costs matters there only)."""
    directory, stop = make_directory(ldap_reactor, url=slapd_server.url)
    yield directory
    stop()


def test_find_all_asks_the_server_once(ldap_reactor, slapd_directory, monkeypatch):
    """Two people, one search: what makes ``sms`` wait for one round trip, not two."""
    filters = []
    real = type(slapd_directory)._entries

    def counting(self, filt):
        filters.append(filt.asText())
        return real(self, filt)

    monkeypatch.setattr(type(slapd_directory), "_entries", counting)
    ldap_reactor.call(slapd_directory.find_all, [("account", "elodie.dupre"), ("nick", "jose")])
    assert len(filters) == 1 and "elodie.dupre" in filters[0] and "jose" in filters[0]


def test_find_all_falls_back_when_the_server_compares_differently(ldap_reactor,
                                                                  slapd_directory,
                                                                  monkeypatch):
    """An entry that no key claims (the server's matching rule is not ours): each key is
    asked on its own, so the answer is still what by_nick/by_account give."""
    import mup.ldap

    monkeypatch.setattr(mup.ldap, "_values_of", lambda attributes, attr: [])  # none claimed
    people = ldap_reactor.call(slapd_directory.find_all,
                               [("account", "elodie.dupre"), ("nick", "jose"),
                                ("nick", "nobody")])
    assert [nick(p) for p in people] == ["elodie", "jose", None]


def test_person_record(ldap_reactor, people_directory):
    person = ldap_reactor.call(people_directory.by_nick, "jose")
    assert person.name == "José Ñúñez"
    assert person.mail == "jose@example.com"
    assert person.phones == (("mobile", "+34 600 111 222"), ("mobile", "+34 600 333 444"),
                             ("home", "+34 91 555 0101"))
    assert person.mobile == "+34 600 111 222"
    assert person.zone == "Europe/Madrid"
    taro = ldap_reactor.call(people_directory.by_nick, "taro")
    assert (taro.zone, taro.mobile) == ("+0900", "+81 90 1234 5678")


def test_bind_with_credentials(ldap_reactor, slapd_server):
    directory, stop = make_directory(ldap_reactor, url=slapd_server.url,
                                     bind_dn=slapd_server.root_dn,
                                     bind_password=slapd_server.root_password)
    try:
        assert nick(ldap_reactor.call(directory.by_nick, "niemeyer")) == "niemeyer"
    finally:
        stop()


def test_bind_with_a_wrong_password(ldap_reactor, slapd_server):
    directory, stop = make_directory(ldap_reactor, url=slapd_server.url,
                                     bind_dn=slapd_server.root_dn, bind_password="wrong")
    try:
        with pytest.raises(DirectoryError) as e:
            ldap_reactor.call(directory.by_nick, "niemeyer")
        assert e.value.user_message == UNAVAILABLE
        assert "invalidCredentials" in str(e.value)
        # and again, at once, without waiting for another attempt
        started = time.monotonic()
        with pytest.raises(DirectoryError) as e:
            ldap_reactor.call(directory.search, "niemeyer")
        assert "invalidCredentials" in str(e.value)
        assert time.monotonic() - started < 1
    finally:
        stop()


def test_nothing_listening(ldap_reactor):
    from mup.testing.process import free_port

    directory, stop = make_directory(ldap_reactor, url=f"ldap://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(DirectoryError) as e:
            ldap_reactor.call(directory.search, "niemeyer")
        assert e.value.user_message == UNAVAILABLE
        assert "refused" in str(e.value).lower()
    finally:
        stop()


def _search_until_found(ldap_reactor, directory, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ldap_reactor.call(directory.search, "niemeyer")
        except DirectoryError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_slapd_stopped_and_restarted(ldap_reactor, own_slapd):
    directory, stop = make_directory(ldap_reactor, url=own_slapd.url, reconnect_max_delay=0.5)
    try:
        assert [p.nick for p in ldap_reactor.call(directory.search, "niemeyer")] == ["niemeyer"]
        own_slapd.stop()
        with pytest.raises(DirectoryError) as e:
            ldap_reactor.call(directory.search, "niemeyer")
        assert e.value.user_message == UNAVAILABLE
        with pytest.raises(DirectoryError):  # still down: answered at once
            ldap_reactor.call(directory.search, "niemeyer")
        own_slapd.start()
        assert [p.nick for p in _search_until_found(ldap_reactor, directory)] == ["niemeyer"]
    finally:
        stop()


def test_a_hung_server_times_out_and_recovers(ldap_reactor, own_slapd):
    directory, stop = make_directory(ldap_reactor, url=own_slapd.url, timeout=0.3)
    try:
        assert ldap_reactor.call(directory.by_nick, "ann").nick == "ann"
        own_slapd.pause()
        started = time.monotonic()
        with pytest.raises(DirectoryError) as e:
            ldap_reactor.call(directory.by_nick, "ann")
        assert e.value.user_message == SLUGGISH
        assert 0.25 < time.monotonic() - started < 3
        own_slapd.resume()
        # the same connection answers again; the abandoned query's late answer is ignored
        assert ldap_reactor.call(directory.by_nick, "jose").nick == "jose"
        assert directory.in_flight == 0
    finally:
        stop()


def test_saturation_answers_at_once(ldap_reactor, own_slapd):
    directory, stop = make_directory(ldap_reactor, url=own_slapd.url, timeout=0.5,
                                     max_in_flight=2)
    try:
        assert ldap_reactor.call(directory.by_nick, "ann").nick == "ann"  # connected
        own_slapd.pause()

        def three():
            ds = [directory.search(q) for q in ("ann", "jose", "taro")]
            return DeferredList(ds, consumeErrors=True)

        results = ldap_reactor.call(three)
        messages = [r.value.user_message if not ok else r for ok, r in results]
        assert messages == [SLUGGISH, SLUGGISH, SLUGGISH]
        # the third was refused for saturation, the first two timed out
        assert [str(r.value) for _, r in results][2].endswith("in flight already")
        assert "timed out" in str(results[0][1].value)
        own_slapd.resume()
        assert ldap_reactor.call(directory.by_nick, "taro").nick == "taro"
    finally:
        stop()


def test_embedded_directory_is_always_there(ldap_reactor):
    directory, stop = make_directory(ldap_reactor, ldif=str(PEOPLE_LDIF))
    try:
        for _ in range(3):
            assert ldap_reactor.call(directory.by_nick, "pat").name == "Pat (Paren) Smith*"
    finally:
        stop()
    assert reactor.running


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory):
    from mup.testing.process import require_binary
    from mup.testing.slapd import SLAPD, Slapd

    require_binary(SLAPD, "slapd")
    server = Slapd(tmp_path_factory.mktemp("slapd-tls"), PEOPLE_LDIF, tls=True).start()
    yield server
    server.stop()


@pytest.mark.parametrize("how", ["ldaps", "start_tls"])
def test_tls_with_the_server_certificate_trusted(ldap_reactor, tls_slapd, how):
    url = tls_slapd.ldaps_url if how == "ldaps" else tls_slapd.url
    directory, stop = make_directory(ldap_reactor, url=url, start_tls=how == "start_tls",
                                     ca_certificate=str(tls_slapd.ca_certificate),
                                     bind_dn=tls_slapd.root_dn,
                                     bind_password=tls_slapd.root_password)
    try:
        assert ldap_reactor.call(directory.by_nick, "taro").name == "山田 太郎"
    finally:
        stop()


@pytest.mark.parametrize("how", ["ldaps", "start_tls"])
def test_tls_refuses_an_untrusted_certificate(ldap_reactor, tls_slapd, how):
    url = tls_slapd.ldaps_url if how == "ldaps" else tls_slapd.url
    # the system's CAs do not include the test server's self-signed certificate
    directory, stop = make_directory(ldap_reactor, url=url, start_tls=how == "start_tls",
                                     bind_dn=tls_slapd.root_dn,
                                     bind_password=tls_slapd.root_password)
    try:
        with pytest.raises(DirectoryError) as e:
            ldap_reactor.call(directory.by_nick, "taro")
        assert e.value.user_message == UNAVAILABLE
        assert "certificate verify failed" in str(e.value), str(e.value)
    finally:
        stop()


def test_the_schema_in_the_docs_is_mup_schema_and_loads_into_cn_config(tmp_path):
    """docs/directory.md's cn=config LDIF defines what mup/testing/mup.schema does, and
    OpenLDAP's own tools load it (as ``ldapadd`` into cn=config would)."""
    import re
    import subprocess
    from pathlib import Path

    from mup.ldif import read_ldif
    from mup.testing.process import require_binary
    from mup.testing.slapd import SCHEMA, SLAPADD, SLAPTEST, SYSTEM_SCHEMA

    require_binary(SLAPTEST, "slapd")
    doc = (Path(__file__).parent.parent / "docs" / "directory.md").read_text()
    [olc] = [block for block in re.findall(r"```ldif\n(.*?)```", doc, re.DOTALL)
             if "cn=schema,cn=config" in block]
    [entry] = read_ldif(olc)

    def definitions(texts):
        return sorted(" ".join(t.split()) for t in texts)

    schema = re.sub(r"(?m)^#.*\n", "", SCHEMA.read_text())
    in_file = re.split(r"\n(?=attributetype|objectclass)", schema.strip())
    assert definitions(entry.attributes["olcAttributeTypes"]
                       + entry.attributes["olcObjectClasses"]) == definitions(
        re.sub(r"^(attributetype|objectclass)\s+", "", d) for d in in_file)

    (tmp_path / "slapd.d").mkdir()
    (tmp_path / "slapd.conf").write_text("".join(
        f"include {SYSTEM_SCHEMA}/{name}.schema\n" for name in ("core", "cosine",
                                                               "inetorgperson")))
    (tmp_path / "mup.ldif").write_text(olc)
    subprocess.run([SLAPTEST, "-f", str(tmp_path / "slapd.conf"), "-F",
                    str(tmp_path / "slapd.d")], check=True, capture_output=True)
    added = subprocess.run([SLAPADD, "-n0", "-F", str(tmp_path / "slapd.d"), "-l",
                            str(tmp_path / "mup.ldif")], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    assert list((tmp_path / "slapd.d" / "cn=config" / "cn=schema").glob("cn={*}mup.ldif"))
