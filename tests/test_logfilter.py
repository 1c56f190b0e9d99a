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
