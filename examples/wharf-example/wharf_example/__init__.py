"""Example Wharf extensions (docs/extending.md)."""
