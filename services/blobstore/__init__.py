"""The blob store service: content-addressed blobs and resumable upload sessions over gRPC."""
