"""Fixtures for the irc tests."""
