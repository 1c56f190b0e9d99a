"""mup.ircmsg: parsing, formatting, decoding, sanitizing and splitting IRC text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mup.ircmsg import Message, decode, format_line, irc_lower, parse, sanitize, split_message

PARSE_CASES = [
    ("PING :irc.test", Message("PING", ("irc.test",))),
    (":irc.test 001 mup :Welcome to IRC mup!u@h",
     Message("001", ("mup", "Welcome to IRC mup!u@h"), "irc.test")),
    (":alice!a@h PRIVMSG #ops :@echo hi there",
     Message("PRIVMSG", ("#ops", "@echo hi there"), "alice!a@h")),
    ("@account=alice;time=2026-01-01T00:00:00.000Z :alice!a@h PRIVMSG mup :hi",
     Message("PRIVMSG", ("mup", "hi"), "alice!a@h",
             {"account": "alice", "time": "2026-01-01T00:00:00.000Z"})),
    (r"@a=x\sy\:z\\w\r\n;b;c= :n!u@h TAGMSG #c",
     Message("TAGMSG", ("#c",), "n!u@h", {"a": "x y;z\\w\r\n", "b": "", "c": ""})),
    ("@t=end\\ :s CMD", Message("CMD", (), "s", {"t": "end"})),
    (":s  CAP  *  LS  *  :sasl account-tag",
     Message("CAP", ("*", "LS", "*", "sasl account-tag"), "s")),
    (":alice!a@h JOIN #ops alice :Alice A", Message("JOIN", ("#ops", "alice", "Alice A"),
                                                    "alice!a@h")),
    ("privmsg #c ::)", Message("PRIVMSG", ("#c", ":)"))),
    (":s 353 mup = #c :@alice +bob carol\r\n",
     Message("353", ("mup", "=", "#c", "@alice +bob carol"), "s")),
    ("CMD a b :", Message("CMD", ("a", "b", ""))),
]


@pytest.mark.parametrize(("line", "expected"), PARSE_CASES)
def test_parse(line: str, expected: Message) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("line", ["", "   ", "@tag=1", ":prefix", "@t :p"])
def test_parse_rejects_lines_without_command(line: str) -> None:
    with pytest.raises(ValueError):
        parse(line)


def test_message_nick() -> None:
    assert parse(":alice!a@h PRIVMSG x :y").nick == "alice"
    assert parse(":irc.test NOTICE x :y").nick == "irc.test"


FORMAT_CASES = [
    (("PRIVMSG", "#ops", "hello world"), "PRIVMSG #ops :hello world"),
    (("PRIVMSG", "#ops", "x"), "PRIVMSG #ops x"),
    (("PRIVMSG", "#ops", ":)"), "PRIVMSG #ops ::)"),
    (("PRIVMSG", "#ops", ""), "PRIVMSG #ops :"),
    (("NICK", "mup"), "NICK mup"),
    (("PRIVMSG", "alice", "hi"), "PRIVMSG alice hi"),
    (("PRIVMSG", "#ops", "a\r\nQUIT :pwned\0"), "PRIVMSG #ops :a QUIT :pwned"),
    (("USER", "mup", "0", "*", "real name"), "USER mup 0 * :real name"),
]


@pytest.mark.parametrize(("args", "expected"), FORMAT_CASES)
def test_format_line(args: tuple[str, ...], expected: str) -> None:
    assert format_line(*args) == expected


def test_format_line_trailing() -> None:
    assert format_line("PRIVMSG", "alice", "hi", trailing=True) == "PRIVMSG alice :hi"


def test_format_line_rejects_space_in_middle_param() -> None:
    with pytest.raises(ValueError):
        format_line("PRIVMSG", "#a b", "x")


DECODE_CASES = [
    ("héllo ✓".encode(), "héllo ✓"),
    ("café".encode("cp1252"), "café"),
    (b"smart \x93quotes\x94", "smart \u201cquotes\u201d"),
    (b"undefined in cp1252 \x81\xff", "undefined in cp1252 \x81\xff"),
    (b"\xff\xfe\xfd", "ÿþý"),
]


@pytest.mark.parametrize(("raw", "expected"), DECODE_CASES)
def test_decode(raw: bytes, expected: str) -> None:
    assert decode(raw) == expected


@given(st.binary())
def test_decode_never_fails(raw: bytes) -> None:
    assert isinstance(decode(raw), str)


SANITIZE_CASES = [
    ("plain", "plain"),
    ("a\r\nb", "a b"),
    ("a\nb\rc\td", "a b c d"),
    ("nul\0here", "nulhere"),
    ("\x01ACTION waves\x01", "ACTION waves"),
    ("\x02bold\x02 \x0304red\x03 \x1ditalic\x1d \x1funder\x1f \x16rev\x16 \x0freset",
     "\x02bold\x02 \x0304red\x03 \x1ditalic\x1d \x1funder\x1f \x16rev\x16 \x0freset"),
    ("bell\x07 esc\x1b[31m del\x7f", "bell esc[31m del"),
]


@pytest.mark.parametrize(("text", "expected"), SANITIZE_CASES)
def test_sanitize(text: str, expected: str) -> None:
    assert sanitize(text) == expected


@given(st.text())
def test_sanitize_leaves_no_line_breaks_or_nul(text: str) -> None:
    clean = sanitize(text)
    assert not any(c in clean for c in "\r\n\0")


SPLIT_CASES = [
    ("short", 10, ["short"]),
    ("one two three four", 9, ["one two", "three", "four"]),
    ("one two three four", 7, ["one two", "three", "four"]),
    ("abcdefghij", 4, ["abcd", "efgh", "ij"]),
    ("héé", 4, ["hé", "é"]),             # é is 2 bytes: never cut in half
    ("✓✓✓", 4, ["✓", "✓", "✓"]),         # 3-byte characters
    ("a\nb\r\n\nc", 10, ["a", "b", "c"]),  # line breaks start new lines; empty ones dropped
    ("word  \t  ", 10, ["word"]),
    ("", 10, []),
]


@pytest.mark.parametrize(("text", "limit", "expected"), SPLIT_CASES)
def test_split_message(text: str, limit: int, expected: list[str]) -> None:
    assert split_message(text, limit) == expected


@given(st.text(), st.integers(min_value=4, max_value=600))
def test_split_message_fits_and_keeps_every_word(text: str, limit: int) -> None:
    lines = split_message(text, limit)
    for line in lines:
        assert 0 < len(line.encode("utf-8")) <= limit
        assert "\r" not in line and "\n" not in line and "\0" not in line
    # nothing is lost: the words, in order, are the same (a cut inside a word only splits it)
    assert "".join("".join(lines).split()) == "".join(sanitize(text).split())


def test_split_message_rejects_tiny_limit() -> None:
    with pytest.raises(ValueError):
        split_message("x", 3)


def test_irc_lower() -> None:
    assert irc_lower("Alice[M]\\~") == "alice{m}|^"
