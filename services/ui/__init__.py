"""Wharf's web interface: server-rendered pages at ``/`` and ``/ui/`` served by the gateway
(see README.md in this directory)."""
