"""Garbage collection of blobs (``wharf-gc``)."""
