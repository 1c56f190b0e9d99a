"""mup: a Twisted bot that bridges IRC, the company directory (LDAP) and an SMS gateway."""

__version__ = "0.1.0"
