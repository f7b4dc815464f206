"""The HTTP gateway: the registry API in Flask, backed by the gRPC services."""
