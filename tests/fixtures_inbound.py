"""Fixtures for the inbound tests."""
