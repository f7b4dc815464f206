"""Wharf's services: the HTTP gateway (api), blob store, metadata and auth services."""
