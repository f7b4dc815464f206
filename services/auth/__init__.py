"""The auth service: accounts, repository policy and registry tokens (JWT) over gRPC."""
