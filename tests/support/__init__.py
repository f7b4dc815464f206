"""Shared test support: locating outside tools, starting real servers."""
