"""Code every Wharf service shares: errors, digests, names, settings, gRPC plumbing."""
