"""Helpers for testing mup, and code built on it, against real servers on loopback.

Each server module (``mup.testing.ngircd``, ``.slapd``, ``.kannel``, ``.inspircd``) starts a
real daemon in a temp dir on free 127.0.0.1 ports and stops it by PID.  The demo uses them too.
"""
