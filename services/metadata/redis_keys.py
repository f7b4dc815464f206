"""The Redis key schema: the one module that names keys.

::

    wharf:catalog                                  ZSET  repository names, score 0 (lexical order)
    wharf:repo:{<name>}:blobs                      HASH  digest -> size: blobs the repository may serve
    wharf:repo:{<name>}:manifests                  SET   digests of the manifests stored in the repository
    wharf:repo:{<name>}:manifest:<digest>          HASH  type, body (exact bytes), subject
    wharf:repo:{<name>}:tags                       HASH  tag -> manifest digest
    wharf:repo:{<name>}:taglist                    ZSET  tags, score 0 (lexical order for paging)
    wharf:repo:{<name>}:tagsof:<digest>            SET   tags that point at a manifest (for deletes)
    wharf:repo:{<name>}:referrers:<subject digest> HASH  referrer digest -> descriptor JSON
    wharf:invalidations                            pub/sub channel: {"id", "repositories"} per write
    wharf:invalidation:<id>:acks                   LIST  one entry per replica that applied message <id>
    wharf:lease-grantors                           ZSET  replica id, score = when its last lease ends (ms)
    wharf:maintenance                              STRING set (with a TTL) while garbage collection runs:
                                                         every write script refuses to run
    wharf:gc-record                                HASH  garbage collection's totals: runs_ok, runs_failed,
                                                         blobs_removed, bytes_removed, last_success (Unix s)

Repository names and digests are validated by the gateway and again by the
service before they reach a key. Every change that touches more than one key
runs as one Lua script (scripts are atomic and reach the AOF as one unit), so
a crash never leaves a tag pointing at a manifest that is not stored.
The ``{<name>}`` hash tag keeps a repository's keys in one Redis Cluster slot.
"""

from __future__ import annotations

CATALOG = "wharf:catalog"
INVALIDATIONS = "wharf:invalidations"
LEASE_GRANTORS = "wharf:lease-grantors"
MAINTENANCE = "wharf:maintenance"
GC_RECORD = "wharf:gc-record"
# The error a write script returns while MAINTENANCE exists (store.py turns it into a 503).
READ_ONLY = "WHARF_READ_ONLY"
_GUARD = f"""
if redis.call('EXISTS', '{MAINTENANCE}') == 1 then return redis.error_reply('{READ_ONLY}') end
"""


def invalidation_acks(message_id: str) -> str:
    return f"wharf:invalidation:{message_id}:acks"


def repo_prefix(name: str) -> str:
    return f"wharf:repo:{{{name}}}:"


def blobs(name: str) -> str:
    return repo_prefix(name) + "blobs"


def manifests(name: str) -> str:
    return repo_prefix(name) + "manifests"


def manifest(name: str, digest: str) -> str:
    return repo_prefix(name) + "manifest:" + digest


def tags(name: str) -> str:
    return repo_prefix(name) + "tags"


def taglist(name: str) -> str:
    return repo_prefix(name) + "taglist"


def referrers(name: str, subject: str) -> str:
    return repo_prefix(name) + "referrers:" + subject


def blob_repos(digest: str) -> str:
    return f"wharf:blob:{digest}:repos"


# The scripts below receive repo_prefix(name) as ARGV[1] and build the same
# suffixes as the functions above ("manifest:", "tags", "tagsof:", ...).

# ARGV: prefix, catalog, name, digest, type, body, subject, descriptor,
#       nblobs, (blob, declared size or "")..., nmanifests, (manifest, size or "")..., ntags, tags...
# Returns {"ok"}, {"missing", digest...} or {"size", digest, declared, stored} (nothing written).
PUT_MANIFEST = _GUARD + """
local p = ARGV[1]
local i = 9
local missing = {}
local wrong = nil
local nblobs = tonumber(ARGV[i]); i = i + 1
for _ = 1, nblobs do
  local stored = redis.call('HGET', p .. 'blobs', ARGV[i])
  if not stored then missing[#missing + 1] = ARGV[i]
  elseif ARGV[i + 1] ~= '' and stored ~= ARGV[i + 1] then wrong = wrong or {'size', ARGV[i], ARGV[i + 1], stored} end
  i = i + 2
end
local nman = tonumber(ARGV[i]); i = i + 1
for _ = 1, nman do
  local key = p .. 'manifest:' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then missing[#missing + 1] = ARGV[i]
  elseif ARGV[i + 1] ~= '' then
    local stored = tostring(redis.call('HSTRLEN', key, 'body'))
    if stored ~= ARGV[i + 1] then wrong = wrong or {'size', ARGV[i], ARGV[i + 1], stored} end
  end
  i = i + 2
end
if wrong then return wrong end
if #missing > 0 then
  table.insert(missing, 1, 'missing')
  return missing
end
local digest = ARGV[4]
redis.call('HSET', p .. 'manifest:' .. digest, 'type', ARGV[5], 'body', ARGV[6], 'subject', ARGV[7])
redis.call('SADD', p .. 'manifests', digest)
local ntags = tonumber(ARGV[i]); i = i + 1
for _ = 1, ntags do
  local tag = ARGV[i]
  local old = redis.call('HGET', p .. 'tags', tag)
  if old and old ~= digest then redis.call('SREM', p .. 'tagsof:' .. old, tag) end
  redis.call('HSET', p .. 'tags', tag, digest)
  redis.call('ZADD', p .. 'taglist', 0, tag)
  redis.call('SADD', p .. 'tagsof:' .. digest, tag)
  i = i + 1
end
if ARGV[7] ~= '' then
  redis.call('HSET', p .. 'referrers:' .. ARGV[7], digest, ARGV[8])
end
redis.call('ZADD', ARGV[2], 0, ARGV[3])
return {'ok'}
"""

# ARGV: prefix, reference, is_tag ("1"/"0"). Returns nil or {digest, type, body, subject}.
GET_MANIFEST = """
local p = ARGV[1]
local digest = ARGV[2]
if ARGV[3] == '1' then
  digest = redis.call('HGET', p .. 'tags', ARGV[2])
  if not digest then return nil end
end
local v = redis.call('HMGET', p .. 'manifest:' .. digest, 'type', 'body', 'subject')
if not v[1] then return nil end
return {digest, v[1], v[2], v[3]}
"""

# ARGV: prefix, catalog, name, digest. Returns 0 when the manifest was not stored.
DELETE_MANIFEST = _GUARD + """
local p = ARGV[1]
local digest = ARGV[4]
local key = p .. 'manifest:' .. digest
if redis.call('EXISTS', key) == 0 then return 0 end
local subject = redis.call('HGET', key, 'subject')
for _, tag in ipairs(redis.call('SMEMBERS', p .. 'tagsof:' .. digest)) do
  redis.call('HDEL', p .. 'tags', tag)
  redis.call('ZREM', p .. 'taglist', tag)
end
redis.call('DEL', p .. 'tagsof:' .. digest, key)
redis.call('SREM', p .. 'manifests', digest)
if subject and subject ~= '' then
  redis.call('HDEL', p .. 'referrers:' .. subject, digest)
end
if redis.call('SCARD', p .. 'manifests') == 0 and redis.call('HLEN', p .. 'blobs') == 0 then
  redis.call('ZREM', ARGV[2], ARGV[3])
end
return 1
"""

# ARGV: prefix, tag. Returns 0 when the tag did not exist.
DELETE_TAG = _GUARD + """
local p = ARGV[1]
local digest = redis.call('HGET', p .. 'tags', ARGV[2])
if not digest then return 0 end
redis.call('HDEL', p .. 'tags', ARGV[2])
redis.call('ZREM', p .. 'taglist', ARGV[2])
redis.call('SREM', p .. 'tagsof:' .. digest, ARGV[2])
return 1
"""

# ARGV: prefix, catalog, name, digest, size, blob_repos key.
LINK_BLOB = _GUARD + """
local p = ARGV[1]
redis.call('HSET', p .. 'blobs', ARGV[4], ARGV[5])
redis.call('HSET', ARGV[6], ARGV[3], ARGV[5])
redis.call('ZADD', ARGV[2], 0, ARGV[3])
return 1
"""

# ARGV: prefix, catalog, name, digest, blob_repos key. Returns 0 when the link did not exist.
_UNLINK_BLOB = """
local p = ARGV[1]
if redis.call('HDEL', p .. 'blobs', ARGV[4]) == 0 then return 0 end
redis.call('HDEL', ARGV[5], ARGV[3])
if redis.call('SCARD', p .. 'manifests') == 0 and redis.call('HLEN', p .. 'blobs') == 0 then
  redis.call('ZREM', ARGV[2], ARGV[3])
end
return 1
"""
UNLINK_BLOB = _GUARD + _UNLINK_BLOB
# The same for garbage collection, which holds the maintenance key itself.
GC_UNLINK_BLOB = _UNLINK_BLOB

# KEYS: a lock key. ARGV: the holder's value. Deletes the key only if it still holds that
# value, in one step: a holder whose key expired and was taken over never ends another's.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: a lock key. ARGV: the holder's value, new TTL (ms). Renews only the holder's own key.
RENEW_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# KEYS: lease-grantors. ARGV: replica id, how long (ms) its leases may run from now.
# Redis's clock, so that every replica and writer compare times on one clock; entries
# of replicas gone for a minute are dropped.
REFRESH_GRANTOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
return now
"""

# KEYS: lease-grantors. Returns {now (ms), id, until, id, until, ...} of replicas whose leases may run.
LIVE_GRANTORS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
table.insert(live, 1, now)
return live
"""
