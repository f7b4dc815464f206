"""The auth service's Redis key schema (its own keyspace, apart from the metadata's).

::

    wharf-auth:accounts                    ZSET  account names (score 0)
    wharf-auth:account:<name>              HASH  kind (user|robot), admin (0|1), hash (bcrypt), created_at
    wharf-auth:grants:<name>               HASH  repository pattern -> "pull,push,delete"
    wharf-auth:public                      SET   repository patterns anyone may pull
    wharf-auth:refresh:<id>                HASH  account, expires_at, backend ("" built-in; else the identity
                                                  backend asked again at redemption), stamp (sha256 of the
                                                  credential stamp the login checked: the password hash
                                                  for built-in accounts; redemption refuses the token
                                                  once it differs; absent on older tokens)
                                                  (TTL = refresh token lifetime)
    wharf-auth:refresh-of:<name>           SET   refresh token ids of an account (for revocation)
    wharf-auth:failures:<name>:<address>   STRING failed logins in the window   (TTL = window)
    wharf-auth:checking:<name>:<address>   ZSET  password checks in flight: token -> start (ms)
    wharf-auth:identity:<name>             STRING the grants of an identity from a backend other than the
                                                  built-in accounts (LDAP), as of its latest token (JSON;
                                                  TTL = token lifetime + 5 min): the catalog filters by them
    wharf-auth:ext:<backend>:...           keys a third-party identity backend keeps (services/auth/identity.py)

Account names are validated (:data:`ACCOUNT_RE`) before they reach a key. ``<address>`` is
a throttling bucket (:func:`services.auth.peers.throttle_bucket`: an IPv4 address, an IPv6
/64, ``unix`` or ``unknown``), or :data:`ANY_ADDRESS` for the admin API's count of an
account's failures from every address together.
"""

from __future__ import annotations

import re

# \Z, not $: "$" also matches before a final newline, and "alice\n" is not "alice".
ACCOUNT_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
ACCOUNTS = "wharf-auth:accounts"
PUBLIC = "wharf-auth:public"
ANY_ADDRESS = "*"


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


def checking(name: str, address: str) -> str:
    return f"wharf-auth:checking:{name}:{address}"
