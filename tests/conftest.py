"""Fixtures shared by the tests: real servers on loopback, started per test module or session.

Each area keeps its fixtures in its own module, imported here."""

from fixtures_inbound import *  # noqa: F401,F403
from fixtures_irc import *  # noqa: F401,F403
from fixtures_ldap import *  # noqa: F401,F403
from fixtures_postgres import *  # noqa: F401,F403
from fixtures_sms import *  # noqa: F401,F403
