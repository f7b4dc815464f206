"""Auth service settings, read once from the environment in main."""

from __future__ import annotations

import dataclasses
import pathlib

from services.common.settings import LOG_LEVELS, env, secret

# Bounds that keep a typo from quietly turning a protection off (checked at start, like every
# setting): a token lives at least the 60 s the token specification promises clients, and at most
# a day, since an access token keeps its rights until it expires (revocation waits for it); a
# login window of 0 made Redis drop every failure as it was counted (no lockout at all), a limit
# of 0 locked every account out, and bcrypt takes costs 4 to 31 only.
MIN_TOKEN_TTL = 60
MAX_TOKEN_TTL = 86400
MAX_REFRESH_TTL = 366 * 86400


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    listen: str = env("WHARF_AUTH_LISTEN", "127.0.0.1:50053", "gRPC address to bind (host:port)")
    redis_url: str = env("WHARF_AUTH_REDIS_URL", "redis://127.0.0.1:6379/0",
                         "Redis URL for accounts and refresh tokens (keys under wharf-auth:); the same forms "
                         "as WHARF_REDIS_URL, Sentinel included")
    keys_dir: pathlib.Path = env("WHARF_AUTH_KEYS_DIR", pathlib.Path("./data/auth/keys"),
                                 "directory of the ES256 signing keys (PEM); created with a key when empty")
    token_issuer: str = env("WHARF_AUTH_ISSUER", "wharf-auth", "the iss claim of the tokens")
    token_service: str = env("WHARF_AUTH_SERVICE", "wharf", "the service name tokens are issued for (aud)")
    token_ttl: int = env("WHARF_TOKEN_TTL", 300, "seconds an access token is valid",
                         minimum=MIN_TOKEN_TTL, maximum=MAX_TOKEN_TTL)
    key_publish_delay: int = env("WHARF_KEY_PUBLISH_DELAY", 90,
                                 "seconds a rotated key is published before it signs; keep it above the "
                                 "gateways' WHARF_AUTH_KEY_REFRESH", minimum=0)
    refresh_ttl: int = env("WHARF_REFRESH_TOKEN_TTL", 30 * 86400, "seconds a refresh token is valid",
                           minimum=MIN_TOKEN_TTL, maximum=MAX_REFRESH_TTL)
    bcrypt_rounds: int = env("WHARF_BCRYPT_ROUNDS", 12, "bcrypt cost factor for new password hashes",
                             minimum=4, maximum=31)
    admin_password: str = env("WHARF_ADMIN_PASSWORD", "", "password of the first admin, used at first start only")
    admin_password_file: str = env("WHARF_ADMIN_PASSWORD_FILE", "", "file holding that password")
    login_failures: int = env("WHARF_LOGIN_FAILURES", 5,
                              "failed logins per account and address before further attempts are refused", minimum=1)
    login_window: int = env("WHARF_LOGIN_WINDOW", 300, "seconds failed logins are counted over (and locked)",
                            minimum=1)
    workers: int = env("WHARF_AUTH_WORKERS", 16, "threads in each of the service's two pools for blocking calls: "
                                                 "logins with a password (bcrypt, LDAP), and every other call",
                       minimum=1)
    internal_token_file: str = env("WHARF_INTERNAL_TOKEN_FILE", "",
                                   "file holding the secret every internal gRPC call carries (required; "
                                   "make run generates one)")
    metadata_addr: str = env("WHARF_METADATA_ADDR", "127.0.0.1:50052",
                             "metadata service gRPC target the audit log's records of admin logins and changes "
                             "are sent to (set empty: they are only logged, with a warning at start-up)")
    metrics_addr: str = env("WHARF_AUTH_METRICS_ADDR", "",
                            "host:port serving Prometheus metrics on /metrics (empty: off)", address=True)
    otlp_endpoint: str = env("WHARF_OTLP_ENDPOINT", "", "OTLP/HTTP collector base URL traces are exported to "
                             "(e.g. http://127.0.0.1:4318; empty: tracing off)")
    log_level: str = env("WHARF_LOG_LEVEL", "info", "log level", choices=LOG_LEVELS)

    def first_admin_password(self) -> str:
        return secret(self.admin_password, self.admin_password_file)
