"""``[log] level`` filters every observer while the service runs."""

from twisted.logger import Logger, LogPublisher

from mup.logfilter import LevelFilterService


def test_filters_below_level_and_restores():
    publisher = LogPublisher()
    seen: list = []
    publisher.addObserver(seen.append)
    log = Logger(observer=publisher, namespace="t")
    service = LevelFilterService("warn", publisher)
    service.startService()
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    assert [e["log_format"] for e in seen] == ["w", "e"]
    service.stopService()
    log.info("after")
    assert seen[-1]["log_format"] == "after"


def test_debug_keeps_everything():
    publisher = LogPublisher()
    seen: list = []
    publisher.addObserver(seen.append)
    service = LevelFilterService("debug", publisher)
    service.startService()
    Logger(observer=publisher).debug("d")
    assert [e["log_format"] for e in seen] == ["d"]


def test_client_service_retry_lines_are_dropped_but_not_at_debug():
    """Issue 13 item 8: one line per change of state, not one per reconnect attempt."""
    for level, expected in [("info", ["Cannot connect", "w"]),
                            ("debug", ["Cannot connect", "Scheduling retry 3 to connect x in "
                                       "{delay} seconds.", "w"])]:
        publisher = LogPublisher()
        seen: list = []
        publisher.addObserver(seen.append)
        service = LevelFilterService(level, publisher)
        service.startService()
        Logger(observer=publisher, namespace="mup.irc").info("Cannot connect")
        twisted = Logger(observer=publisher,
                         namespace="twisted.application.internet.ClientService")
        twisted.info("Scheduling retry 3 to connect x in {delay} seconds.", delay=1)
        twisted.warn("w")
        assert [e["log_format"] for e in seen] == expected
        service.stopService()


def test_each_http_connection_s_factory_lines_are_dropped_but_not_at_debug():
    """Twisted's HTTP client starts and stops a factory per connection (a relay pull, a
    gateway send): two info lines each that tell operators nothing."""
    lines = ["Starting factory {factory!r}", "Stopping factory {factory!r}"]
    for level, expected in [("info", ["Starting factory {factory!r}"]),
                            ("debug", [*lines, "Starting factory {factory!r}"])]:
        publisher = LogPublisher()
        seen: list = []
        publisher.addObserver(seen.append)
        service = LevelFilterService(level, publisher)
        service.startService()
        http = Logger(observer=publisher,
                      namespace="twisted.web.client._HTTP11ClientFactory")
        for line in lines:
            http.info(line, factory=object())
        Logger(observer=publisher, namespace="mup.irc._IRCFactory").info(lines[0])
        assert [e["log_format"] for e in seen] == expected
        service.stopService()
