"""`wharf-healthcheck ADDRESS`: exit 0 when a Wharf gRPC service reports SERVING.

For container HEALTHCHECKs; Kubernetes probes the same health service natively.
An ``http://`` or ``https://`` address checks the gateway's /v2/ instead (200, or 401 in token
mode; a certificate is not verified: this is a liveness probe of our own process).
"""

from __future__ import annotations

import sys

from services.common.health import grpc_serving, http_ok


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: wharf-healthcheck HOST:PORT | http://HOST:PORT")
    target = sys.argv[1]
    ok = http_ok(target.rstrip("/") + "/v2/") if target.startswith("http") else grpc_serving(target)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
