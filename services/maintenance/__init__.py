"""Registry maintenance behind `wharf-admin check`, `export` and `import`.

Reads come from Redis (through the key names of services/metadata/redis_keys.py, in pages:
never KEYS) and from the blob store's gRPC API; every write goes through the metadata service's
gRPC API, whose scripts keep the derived indexes (reference counts, link and push times, the
catalog) right. docs/backup.md says when to use which.
"""
