"""The auth service's Redis key schema (its own keyspace, apart from the metadata's).

::

    wharf-auth:accounts                    ZSET  account names (score 0)
    wharf-auth:account:<name>              HASH  kind (user|robot), admin (0|1), hash (bcrypt), created_at
    wharf-auth:grants:<name>               HASH  repository pattern -> "pull,push,delete"
    wharf-auth:public                      SET   repository patterns anyone may pull
    wharf-auth:refresh:<id>                HASH  account, expires_at            (TTL = refresh token lifetime)
    wharf-auth:refresh-of:<name>           SET   refresh token ids of an account (for revocation)
    wharf-auth:failures:<name>:<address>   STRING failed logins in the window   (TTL = window)

Account names are validated (:data:`ACCOUNT_RE`) before they reach a key.
"""

from __future__ import annotations

import re

ACCOUNT_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
ACCOUNTS = "wharf-auth:accounts"
PUBLIC = "wharf-auth:public"


def account(name: str) -> str:
    return f"wharf-auth:account:{name}"


def grants(name: str) -> str:
    return f"wharf-auth:grants:{name}"


def refresh(token_id: str) -> str:
    return f"wharf-auth:refresh:{token_id}"


def refresh_of(name: str) -> str:
    return f"wharf-auth:refresh-of:{name}"


def failures(name: str, address: str) -> str:
    return f"wharf-auth:failures:{name}:{address}"
