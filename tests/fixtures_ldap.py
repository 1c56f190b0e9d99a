"""Fixtures for the ldap tests."""
