"""Builds the SMS gateway that ``[sms] gateway`` names from its config section: the one place
that knows every gateway class (each is imported only when chosen)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mup.config import Config, Section
from mup.gateway import Gateway
from mup.gateways import HTTPGateway, real_http_client

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = ["gateway_from_config"]


def gateway_from_config(config: Config, reactor: Any, http_client: HTTPClient | None = None
                        ) -> Gateway | None:
    """The gateway ``[sms] gateway`` names, built from its section; None when SMS is off.

    ``http_client`` is a treq ``HTTPClient`` (tests pass ``treq.testing.StubTreq``); by default
    one with a persistent pool on ``reactor`` (the whole reactor: the agent connects through
    it, and the gateway's timers run on it)."""
    sms = config.section("sms")
    if not sms.gateway:
        return None
    http = http_client if http_client is not None else real_http_client(reactor)
    public_url = config.section("webhook").public_url
    common = {"timeout": sms.timeout, "retries": sms.retries}
    gateway = _build(config, reactor, sms, http, public_url, common)
    gateway.debug_numbers = config.section("log").level == "debug"
    return gateway


def _build(config: Config, reactor: Any, sms: Section, http: HTTPClient, public_url: str,
           common: dict[str, Any]) -> HTTPGateway:
    if sms.gateway == "kannel":
        from mup.gateways.kannel import KannelGateway

        k = config.section("sms.kannel")
        return KannelGateway(http, reactor, k.sendsms_url, k.username, k.password,
                             sender=sms.sender, smsc=k.smsc, public_url=public_url,
                             inbound_token=k.inbound_token, **common)
    if sms.gateway == "twilio":
        from mup.gateways.twilio import TwilioGateway

        t = config.section("sms.twilio")
        return TwilioGateway(http, reactor, t.account_sid, t.auth_token, sender=sms.sender,
                             messaging_service_sid=t.messaging_service_sid, api_url=t.api_url,
                             public_url=public_url, **common)
    if sms.gateway == "aql":
        from mup.gateways.aql import AQLGateway

        a = config.section("sms.aql")
        return AQLGateway(http, reactor, a.url, a.username, a.password, sender=sms.sender,
                          **common)
    raise ValueError(f"unknown SMS gateway {sms.gateway!r}")
