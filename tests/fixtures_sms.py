"""Fixtures for the sms tests."""
