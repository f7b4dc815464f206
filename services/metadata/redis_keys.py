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
    wharf:repo:{<name>}:refs                       HASH  blob digest -> how many of the repository's manifests
                                                         name it (config, layers, blobs): GC keeps such links
    wharf:repo:{<name>}:children                   HASH  manifest digest -> how many of the repository's indexes
                                                         name it: GC keeps such manifests
    wharf:repo:{<name>}:linked                     HASH  blob digest -> when the link was last made (ms)
    wharf:repo:{<name>}:tagtimes                   HASH  tag -> when it was last pushed (ms)
      (each manifest hash also holds: created (ms, first arrival), blobs and children: the digests
       it names, space-separated, so that a delete can take back its counts)
    wharf:repo:{<name>}:usage                      STRING bytes of the repository's blob links and manifests
    wharf:pushed                                   ZSET  repository -> its last manifest push (ms)
    wharf:ns:<namespace>:blobs                     HASH  digest -> how many of the namespace's repositories link it
    wharf:ns:<namespace>:usage                     STRING bytes of the namespace's unique blobs, plus its manifests
                                                         (what its quota counts; kept by the write scripts)
    wharf:ns:<namespace>:uploads                   HASH  upload id -> "<bytes> <expiry ms>": bytes open uploads hold
                                                         against the quota (a commit's link gives them back)
    wharf:policy:<kind>                            HASH  rule key -> rule JSON: governance rules set by wharf-admin
                                                         (immutable, quota, retention, ratelimit; policy.py)
    wharf:policy:version                           STRING bumped with every change of the stored rules
    wharf:blob:<digest>:repos                      HASH  repository -> size: who links the blob
    wharf:blob:<digest>:pins                       ZSET  pin id -> expiry (ms): uploads of the blob between
                                                         their commit in the blob store and their link
    wharf:blob:<digest>:deleting                   STRING fence id (with a TTL) while GC deletes the bytes
    wharf:mirror:<prefix>:pulls                    ZSET  "<repository>@<digest>" -> when a mirrored manifest was last
                                                         pulled (ms): eviction takes the oldest first
    wharf:gc-lock                                  STRING held (with a TTL) by the running garbage collection
    wharf:schema                                   STRING the data model's version (migrations.py)
    wharf:migration-lock                           STRING held (with a TTL) by the replica migrating
    wharf:migration:<version>:done                 SET   repositories already migrated to <version>
    wharf:invalidations                            pub/sub channel: {"id", "repositories"} per write
    wharf:invalidation-acks                        pub/sub channel: {"id", "replica"} once a replica applied <id>
    wharf:lease-grantors                           ZSET  replica id, score = when its last lease ends (ms)
    wharf:maintenance                              STRING set (with a TTL) by an operator (a restore, say):
                                                         every write script refuses to run
    wharf:gc-record                                HASH  garbage collection's totals: runs_ok, runs_failed,
                                                         blobs_removed, bytes_removed, last_success (Unix s)
    wharf:outbox:<shard>                           STREAM the event outbox, one per shard (repository hash mod
                                                         OUTBOX_SHARDS): n (sequence), a (action), r (repository),
                                                         d (digest), m (media type), s (size), t (tag), f (a mount's
                                                         source), o (origin JSON), [only (a replay's endpoint)]
    wharf:outbox:<shard>:seq                       STRING the shard's last sequence number (backlogs are differences)
    wharf:events:replicas                          ZSET  delivery replica id -> when its heartbeat ends (ms)
    wharf:events:lease:<shard>                     STRING the delivery replica owning the shard (with a TTL)
    wharf:events:cursor:<endpoint>                 HASH  shard -> "<stream id> <sequence>" delivered (or dead-lettered)
    wharf:events:status:<endpoint>                 HASH  delivered, failed, dead, overflow, last_error, last_error_at,
                                                         last_success_at (s)
    wharf:events:dead:<endpoint>                   STREAM the endpoint's dead letters: the event's fields, plus shard,
                                                         reason and attempts (capped at DEAD_LETTERS_MAX)
    wharf:ratelimit:<key>                          HASH  tokens, at (ms): a rate-limit token bucket (ratelimit.py),
                                                         with a TTL until it would be full again
    wharf:audit                                    STREAM the audit log (services/metadata/audit.py): at, account, kind,
                                                         address, agent, action, repository, reference, result,
                                                         status, detail, request, via; trimmed to about
                                                         WHARF_AUDIT_MAX_ENTRIES and WHARF_AUDIT_MAX_AGE

Repository names and digests are validated by the gateway and again by the
service before they reach a key. Every change that touches more than one key
runs as one Lua script (scripts are atomic and reach the AOF as one unit), so
a crash never leaves a tag pointing at a manifest that is not stored.
The ``{<name>}`` hash tag keeps a repository's keys in one Redis Cluster slot.
"""

from __future__ import annotations

import zlib

CATALOG = "wharf:catalog"
PUSHED = "wharf:pushed"
GC_LOCK = "wharf:gc-lock"
# How many collections have started (the collector adds one right after taking GC_LOCK, before
# its first fence): an upload linked without a pin checks it did not move (LINK_BLOB).
GC_STARTED = "wharf:gc:started"
SCHEMA = "wharf:schema"
MIGRATION_LOCK = "wharf:migration-lock"
INVALIDATIONS = "wharf:invalidations"
INVALIDATION_ACKS = "wharf:invalidation-acks"
LEASE_GRANTORS = "wharf:lease-grantors"
MAINTENANCE = "wharf:maintenance"
GC_RECORD = "wharf:gc-record"
AUDIT = "wharf:audit"
# The error a write script returns while MAINTENANCE exists (store.py turns it into a 503).
READ_ONLY = "WHARF_READ_ONLY"
_GUARD = f"""
if redis.call('EXISTS', '{MAINTENANCE}') == 1 then return redis.error_reply('{READ_ONLY}') end
"""
# The collector's and retention's deletes: refused alike, except in a dry run (ARGV[7] "1"),
# which writes nothing.
_GUARD_UNLESS_DRY = f"""
if ARGV[7] ~= '1' and redis.call('EXISTS', '{MAINTENANCE}') == 1 then return redis.error_reply('{READ_ONLY}') end
"""


# The outbox's shard count. Fixed: a repository's events stay in one shard's stream, which is what
# keeps them in order; changing it would need draining the outbox first.
OUTBOX_SHARDS = 16
EVENT_REPLICAS = "wharf:events:replicas"
DEAD_LETTERS_MAX = 100_000


def outbox_shard(name: str) -> int:
    """The shard of a repository's events (CRC-32: the same in every process and language)."""
    return zlib.crc32(name.encode()) % OUTBOX_SHARDS


def outbox(shard: int) -> str:
    return f"wharf:outbox:{shard}"


def outbox_seq(shard: int) -> str:
    return f"wharf:outbox:{shard}:seq"


def event_lease(shard: int) -> str:
    return f"wharf:events:lease:{shard}"


def event_cursor(endpoint: str) -> str:
    return f"wharf:events:cursor:{endpoint}"


def event_status(endpoint: str) -> str:
    return f"wharf:events:status:{endpoint}"


def dead_letters(endpoint: str) -> str:
    return f"wharf:events:dead:{endpoint}"


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


def refs(name: str) -> str:
    return repo_prefix(name) + "refs"


def children(name: str) -> str:
    return repo_prefix(name) + "children"


def linked(name: str) -> str:
    return repo_prefix(name) + "linked"


def tag_times(name: str) -> str:
    return repo_prefix(name) + "tagtimes"


def tags_of(name: str, digest: str) -> str:
    return f"{repo_prefix(name)}tagsof:{digest}"


def usage(name: str) -> str:
    return f"{repo_prefix(name)}usage"


def namespace_prefix(namespace: str) -> str:
    return f"wharf:ns:{namespace}:"


def blob_repos(digest: str) -> str:
    return f"wharf:blob:{digest}:repos"


def blob_pins(digest: str) -> str:
    return f"wharf:blob:{digest}:pins"


def blob_deleting(digest: str) -> str:
    return f"wharf:blob:{digest}:deleting"


def ratelimit_bucket(key: str) -> str:
    """A rate-limit bucket (``key`` checked by services/metadata/ratelimit.py)."""
    return f"wharf:ratelimit:{key}"


def mirror_pulls(prefix: str) -> str:
    return f"wharf:mirror:{prefix}:pulls"


def pull_member(repository: str, digest: str) -> str:
    return f"{repository}@{digest}"


# ARGV: (key, member, time ms) triples. Keeps the latest time of each (pulls arrive batched and
# out of order from several gateways).
RECORD_PULLS = """
for i = 1, #ARGV, 3 do
  local at = tonumber(ARGV[i + 2])
  local known = redis.call('ZSCORE', ARGV[i], ARGV[i + 1])
  if not known or tonumber(known) < at then redis.call('ZADD', ARGV[i], at, ARGV[i + 1]) end
end
return 1
"""


# KEYS[1]: an outbox shard. ARGV: (repository, digest, media type, size, tag, origin, when ms)
# per pull. Pull events, batched by the gateways; "w" keeps when the pull was answered.
EMIT_PULLS = """
for i = 1, #ARGV, 7 do
  local n = redis.call('INCR', KEYS[1] .. ':seq')
  redis.call('XADD', KEYS[1], '*', 'n', n, 'a', 'pull', 'r', ARGV[i], 'd', ARGV[i + 1], 'm', ARGV[i + 2],
             's', ARGV[i + 3], 't', ARGV[i + 4], 'f', '', 'o', ARGV[i + 5], 'w', ARGV[i + 6])
end
return 1
"""


def migration_done(version: int) -> str:
    return f"wharf:migration:{version}:done"


# The scripts below receive repo_prefix(name) as ARGV[1] and build the same
# suffixes as the functions above ("manifest:", "tags", "tagsof:", ...). Times are Redis's
# clock (TIME), so that every replica and the collector compare times on one clock.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function decr(hash, field)
  if redis.call('HINCRBY', hash, field, -1) <= 0 then redis.call('HDEL', hash, field) end
end
"""

# Storage accounting for quotas (services/metadata/quotas.py): a repository's usage is its blob
# links plus its manifests; a namespace's (a repository name's first component) counts a blob once
# however many of its repositories link it. Kept by every script that links, unlinks, stores or
# removes, in the same step. A quota's limit ("" for none) comes from the caller, with the rules'
# version (policy.py): a script refuses with WHARF_POLICY_STALE when the rules changed meanwhile.
_USAGE = """
local function ns_prefix(name)
  return 'wharf:ns:' .. string.match(name, '^[^/]+') .. ':'
end
local function account_link(p, name, digest, size)
  redis.call('INCRBY', p .. 'usage', size)
  local ns = ns_prefix(name)
  if redis.call('HINCRBY', ns .. 'blobs', digest, 1) == 1 then redis.call('INCRBY', ns .. 'usage', size) end
end
local function account_unlink(p, name, digest, size)
  redis.call('DECRBY', p .. 'usage', size)
  local ns = ns_prefix(name)
  if redis.call('HINCRBY', ns .. 'blobs', digest, -1) <= 0 then
    redis.call('HDEL', ns .. 'blobs', digest)
    redis.call('DECRBY', ns .. 'usage', size)
  end
end
local function account_manifest(p, name, size)
  redis.call('INCRBY', p .. 'usage', size)
  redis.call('INCRBY', ns_prefix(name) .. 'usage', size)
end
-- The bytes one upload holds (its entry is "<bytes> <expiry ms>"; 0 for none).
local function upload_hold(ns, upload_id)
  return tonumber(string.match(redis.call('HGET', ns .. 'uploads', upload_id) or '', '^(%d+) ') or '0')
end
local function held_by_uploads(ns, except, now)
  local total = 0
  local all = redis.call('HGETALL', ns .. 'uploads')
  for j = 1, #all, 2 do
    local bytes, expiry = string.match(all[j + 1], '^(%d+) (%d+)$')
    if not bytes or tonumber(expiry) < now then redis.call('HDEL', ns .. 'uploads', all[j])
    elseif all[j] ~= except then total = total + tonumber(bytes) end
  end
  return total
end
-- nil when `adding` more bytes fit the namespace's quota (`limit`, "" for none), else {usage, held}
local function over_quota(name, limit, adding, except)
  if limit == '' or adding <= 0 then return nil end
  local ns = ns_prefix(name)
  local usage = tonumber(redis.call('GET', ns .. 'usage') or '0')
  local held = held_by_uploads(ns, except, now_ms())
  if usage + held + adding > tonumber(limit) then return {usage, held} end
  return nil
end
local function policy_current(version)
  return version == '' or (redis.call('GET', 'wharf:policy:version') or '0') == version
end
local STALE = 'WHARF_POLICY_STALE'
"""

# The event outbox, written by the same script as the change it announces (so an event exists
# exactly when its change does). KEYS[1]: the repository's outbox shard, absent when events are off
# (or the write is a mirror's fill); the script's last ARGV: the write's origin (JSON, checked by
# store.py). A repository that leaves the catalog is announced as deleted.
_OUTBOX = """
local OUTBOX = KEYS[1]
local ORIGIN = ARGV[#ARGV]
local function emit(a, r, d, m, s, t, f)
  if not OUTBOX then return end
  local n = redis.call('INCR', OUTBOX .. ':seq')
  redis.call('XADD', OUTBOX, '*', 'n', n, 'a', a, 'r', r, 'd', d, 'm', m, 's', s, 't', t, 'f', f, 'o', ORIGIN)
end
local function drop_if_empty(p, catalog, name)
  if redis.call('SCARD', p .. 'manifests') == 0 and redis.call('HLEN', p .. 'blobs') == 0 then
    if redis.call('ZREM', catalog, name) == 1 then emit('delete', name, '', '', '', '', '') end
    redis.call('ZREM', '""" + PUSHED + """', name)
    redis.call('DEL', p .. 'usage')
  end
end
"""
BLOB_MEDIA_TYPE = "application/octet-stream"

# ARGV: prefix, catalog, name, digest, type, body, subject, descriptor,
#       nblobs, (blob, declared size or "")..., nmanifests, (manifest, size or "")..., ntags, tags...,
#       count_only ("1": count the references without requiring them), rules version ("": none
#       involved), nimmutable, immutable tags (of those pushed)..., quota limit ("": none), origin
# Returns {"ok"}, {"missing", digest...}, {"size", digest, declared, stored}, {"immutable", tag} or
# {"quota", usage, held} (nothing written but those).
# A manifest stored for the first time counts what it names (refs, children) and records its
# arrival; every tag it carries records its push time, and the repository its last push.
PUT_MANIFEST = _GUARD + _NOW + _USAGE + _OUTBOX + """
local p = ARGV[1]
local i = 9
local missing = {}
local wrong = nil
local blobs, kids = {}, {}
local nblobs = tonumber(ARGV[i]); i = i + 1
for _ = 1, nblobs do
  local stored = redis.call('HGET', p .. 'blobs', ARGV[i])
  if not stored then missing[#missing + 1] = ARGV[i]
  elseif ARGV[i + 1] ~= '' and stored ~= ARGV[i + 1] then wrong = wrong or {'size', ARGV[i], ARGV[i + 1], stored} end
  blobs[#blobs + 1] = ARGV[i]
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
  kids[#kids + 1] = ARGV[i]
  i = i + 2
end
-- After the tags: count_only, the rules' version, the immutable tags, the quota.
local j = i + 1 + tonumber(ARGV[i])
-- A mirror's manifest (count_only "1"): its references are counted, not required (the
-- blobs are filled when first pulled).
local count_only = ARGV[j] == '1'
if not policy_current(ARGV[j + 1]) then return redis.error_reply(STALE) end
local digest = ARGV[4]
local nimmutable = tonumber(ARGV[j + 2])
for k = j + 3, j + 2 + nimmutable do
  local current = redis.call('HGET', p .. 'tags', ARGV[k])
  if current and current ~= digest then return {'immutable', ARGV[k]} end
end
local limit = ARGV[j + 3 + nimmutable]
if wrong and not count_only then return wrong end
if #missing > 0 and not count_only then
  table.insert(missing, 1, 'missing')
  return missing
end
local now = now_ms()
local key = p .. 'manifest:' .. digest
local fresh = redis.call('EXISTS', key) == 0
if fresh then
  local over = over_quota(ARGV[3], limit, string.len(ARGV[6]), '')
  if over then return {'quota', over[1], over[2]} end
  account_manifest(p, ARGV[3], string.len(ARGV[6]))
end
if fresh then
  local seen = {}
  for _, d in ipairs(blobs) do
    if not seen[d] then seen[d] = true; redis.call('HINCRBY', p .. 'refs', d, 1) end
  end
  seen = {}
  for _, d in ipairs(kids) do
    if not seen[d] then seen[d] = true; redis.call('HINCRBY', p .. 'children', d, 1) end
  end
  redis.call('HSET', key, 'created', now, 'blobs', table.concat(blobs, ' '), 'children', table.concat(kids, ' '),
             'type', ARGV[5], 'body', ARGV[6], 'subject', ARGV[7])
else
  -- Pushed again: young again for garbage collection, as a blob pushed again is (an index
  -- pushed next names it); `created` keeps the first arrival, which retention reads.
  redis.call('HSET', key, 'pushed', now)
end
-- The same bytes pushed again keep the media type of their first push: a manifest without a
-- mediaType field takes its type from the request's Content-Type, and a later push of those
-- bytes with another one must not change what every tag on them serves (an immutable tag's
-- included).
local mtype = ARGV[5]
if not fresh then mtype = redis.call('HGET', key, 'type') or ARGV[5] end
redis.call('SADD', p .. 'manifests', digest)
local ntags = tonumber(ARGV[i]); i = i + 1
local size = string.len(ARGV[6])
if ntags == 0 then emit('push', ARGV[3], digest, mtype, size, '', '') end
for _ = 1, ntags do
  local tag = ARGV[i]
  emit('push', ARGV[3], digest, mtype, size, tag, '')
  local old = redis.call('HGET', p .. 'tags', tag)
  if old and old ~= digest then redis.call('SREM', p .. 'tagsof:' .. old, tag) end
  redis.call('HSET', p .. 'tags', tag, digest)
  redis.call('HSET', p .. 'tagtimes', tag, now)
  redis.call('ZADD', p .. 'taglist', 0, tag)
  redis.call('SADD', p .. 'tagsof:' .. digest, tag)
  i = i + 1
end
if ARGV[7] ~= '' then
  -- Written once, with the manifest: its descriptor names the first push's media type too.
  redis.call(fresh and 'HSET' or 'HSETNX', p .. 'referrers:' .. ARGV[7], digest, ARGV[8])
end
redis.call('ZADD', ARGV[2], 0, ARGV[3])
redis.call('ZADD', '""" + PUSHED + """', now, ARGV[3])
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

# Removes manifest `digest` of the repository (ARGV: prefix, catalog, name, digest), its tags,
# its referrers entry and the counts it holds; drops an emptied repository from the catalog.
_REMOVE_MANIFEST = """
local function remove_manifest(p, catalog, name, digest)
  local key = p .. 'manifest:' .. digest
  local v = redis.call('HMGET', key, 'subject', 'blobs', 'children', 'type')
  local size = redis.call('HSTRLEN', key, 'body')
  for _, tag in ipairs(redis.call('SMEMBERS', p .. 'tagsof:' .. digest)) do
    redis.call('HDEL', p .. 'tags', tag)
    redis.call('HDEL', p .. 'tagtimes', tag)
    redis.call('ZREM', p .. 'taglist', tag)
    emit('delete', name, digest, v[4] or '', size, tag, '')
  end
  emit('delete', name, digest, v[4] or '', size, '', '')
  for d in string.gmatch(v[2] or '', '%S+') do decr(p .. 'refs', d) end
  for d in string.gmatch(v[3] or '', '%S+') do decr(p .. 'children', d) end
  account_manifest(p, name, -size)
  redis.call('DEL', p .. 'tagsof:' .. digest, key)
  redis.call('SREM', p .. 'manifests', digest)
  if v[1] and v[1] ~= '' then
    redis.call('HDEL', p .. 'referrers:' .. v[1], digest)
  end
  drop_if_empty(p, catalog, name)
end
"""

# ARGV: prefix, catalog, name, digest, rules version, ntags, the tags the caller found pointing at
# it (and judged deletable)..., "1" when an immutable-tag rule covers the repository, origin.
# Returns 0 when the manifest was not stored, -1 when its tags are not those (a tag came meanwhile:
# the caller judges again), -2 when covered and an index of the repository names it (an immutable
# tag holds its index's children too), 1 when deleted.
DELETE_MANIFEST = _GUARD + _NOW + _USAGE + _OUTBOX + _REMOVE_MANIFEST + """
if redis.call('EXISTS', ARGV[1] .. 'manifest:' .. ARGV[4]) == 0 then return 0 end
if not policy_current(ARGV[5]) then return redis.error_reply(STALE) end
if ARGV[7 + tonumber(ARGV[6])] == '1' and redis.call('HEXISTS', ARGV[1] .. 'children', ARGV[4]) == 1 then
  return -2
end
local tagsof = ARGV[1] .. 'tagsof:' .. ARGV[4]
if redis.call('SCARD', tagsof) ~= tonumber(ARGV[6]) then return -1 end
for k = 7, 6 + tonumber(ARGV[6]) do
  if redis.call('SISMEMBER', tagsof, ARGV[k]) == 0 then return -1 end
end
remove_manifest(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""

# ARGV: prefix, tag, name, rules version (the caller judged the tag deletable by them), the push
# time the caller judged it by ("" any: retention deletes only the push it judged), "1" to delete
# only a dangling tag (its manifest not stored: wharf-admin check's repair), origin.
# Returns 0 when the tag did not exist (or was pushed again since, or is not dangling).
DELETE_TAG = _GUARD + _NOW + _USAGE + _OUTBOX + """
if not policy_current(ARGV[4]) then return redis.error_reply(STALE) end
local p = ARGV[1]
local digest = redis.call('HGET', p .. 'tags', ARGV[2])
if not digest then return 0 end
if ARGV[5] ~= '' and redis.call('HGET', p .. 'tagtimes', ARGV[2]) ~= ARGV[5] then return 0 end
local key = p .. 'manifest:' .. digest
if ARGV[6] == '1' and redis.call('EXISTS', key) == 1 then return 0 end
emit('delete', ARGV[3], digest, redis.call('HGET', key, 'type') or '', redis.call('HSTRLEN', key, 'body'), ARGV[2], '')
redis.call('HDEL', p .. 'tags', ARGV[2])
redis.call('HDEL', p .. 'tagtimes', ARGV[2])
redis.call('ZREM', p .. 'taglist', ARGV[2])
redis.call('SREM', p .. 'tagsof:' .. digest, ARGV[2])
return 1
"""

# ARGV: prefix, catalog, name, digest, size, blob_repos key, pin id ("" none), source ("" none,
# "*" any repository, else a repository's key prefix), pins key, source name (for the event),
# quota limit ("" none), rules version, upload id whose hold the link gives back ("" none),
# collections seen by an upload linked without a pin ("" for any other link), origin.
# Returns {result, collections started, 1 when one runs now[, 1 when the link added the repository
# to the catalog (which the gateways' catalog pages must hear of)]}, result being 1 (linked), 0 when
# the source does not link the blob (a mount that must become an upload), -1 when the pin is
# gone (the upload outlived its pin: the collector may have deleted the bytes its commit found,
# so nothing is linked and the client uploads again), -2 when an unpinned upload's collections
# moved (a collection runs or started since: nothing is linked, not even the quota hold is given
# back; the caller pins and links again); or {"quota", usage, held} when the namespace has no
# room for bytes it does not hold yet.
LINK_BLOB = _GUARD + _NOW + _USAGE + _OUTBOX + """
local p = ARGV[1]
if not policy_current(ARGV[12]) then return redis.error_reply(STALE) end
local started = tonumber(redis.call('GET', '""" + GC_STARTED + """') or '0')
local collecting = redis.call('EXISTS', '""" + GC_LOCK + """')
if ARGV[14] ~= '' and (collecting == 1 or started ~= tonumber(ARGV[14])) then
  return {-2, started, collecting}
end
local new_here = redis.call('HEXISTS', p .. 'blobs', ARGV[4]) == 0
if new_here and redis.call('HEXISTS', ns_prefix(ARGV[3]) .. 'blobs', ARGV[4]) == 0 then
  local over = over_quota(ARGV[3], ARGV[11], tonumber(ARGV[5]), ARGV[13])
  if over then
    if ARGV[13] ~= '' then redis.call('HDEL', ns_prefix(ARGV[3]) .. 'uploads', ARGV[13]) end
    return {'quota', over[1], over[2]}
  end
end
if ARGV[8] == '*' then
  if redis.call('EXISTS', ARGV[6]) == 0 then return {0, started, collecting} end
elseif ARGV[8] ~= '' then
  if redis.call('HEXISTS', ARGV[8] .. 'blobs', ARGV[4]) == 0 then return {0, started, collecting} end
end
if ARGV[7] ~= '' then
  if redis.call('ZREM', ARGV[9], ARGV[7]) == 0 then return {-1, started, collecting} end
end
if ARGV[13] ~= '' then redis.call('HDEL', ns_prefix(ARGV[3]) .. 'uploads', ARGV[13]) end
redis.call('HSET', p .. 'blobs', ARGV[4], ARGV[5])
if new_here then account_link(p, ARGV[3], ARGV[4], tonumber(ARGV[5])) end
redis.call('HSET', p .. 'linked', ARGV[4], now_ms())
redis.call('HSET', ARGV[6], ARGV[3], ARGV[5])
local added = redis.call('ZADD', ARGV[2], 0, ARGV[3])
if ARGV[8] == '' then emit('push', ARGV[3], ARGV[4], '""" + BLOB_MEDIA_TYPE + """', ARGV[5], '', '')
else emit('mount', ARGV[3], ARGV[4], '""" + BLOB_MEDIA_TYPE + """', ARGV[5], '', ARGV[10]) end
return {1, started, collecting, added}
"""

# ARGV: name, upload id, bytes to add to its hold, quota limit, rules version, ttl (ms).
# Returns {1, held by this upload}, or {0, usage, held by others, this upload's} (nothing held).
RESERVE_UPLOAD = _NOW + _USAGE + """
if not policy_current(ARGV[5]) then return redis.error_reply(STALE) end
local ns = ns_prefix(ARGV[1])
local now = now_ms()
local mine = upload_hold(ns, ARGV[2])
local want = mine + tonumber(ARGV[3])
local usage = tonumber(redis.call('GET', ns .. 'usage') or '0')
local others = held_by_uploads(ns, ARGV[2], now)
if usage + others + want > tonumber(ARGV[4]) then return {0, usage, others, mine} end
redis.call('HSET', ns .. 'uploads', ARGV[2], want .. ' ' .. (now + tonumber(ARGV[6])))
return {1, want}
"""

# ARGV: name, upload id, bytes to keep held (0: all goes back), ttl (ms). Gives back an upload's
# hold down to what its session still stores; never raises it.
RELEASE_UPLOAD = _NOW + _USAGE + """
local ns = ns_prefix(ARGV[1])
local keep = tonumber(ARGV[3] or '0') or 0
if keep <= 0 then return redis.call('HDEL', ns .. 'uploads', ARGV[2]) end
local mine = upload_hold(ns, ARGV[2])
if mine > keep then
  redis.call('HSET', ns .. 'uploads', ARGV[2], keep .. ' ' .. (now_ms() + tonumber(ARGV[4])))
end
return 1
"""

# ARGV: namespace, repositories... Recounts the namespace's usage and each repository's from their
# links and manifests (the upgrade to schema 3, and the recount after a rolling upgrade). Idempotent.
RECOUNT_NAMESPACE = """
local ns = 'wharf:ns:' .. ARGV[1] .. ':'
redis.call('DEL', ns .. 'blobs', ns .. 'usage')
local total = 0
for k = 2, #ARGV do
  local p = 'wharf:repo:{' .. ARGV[k] .. '}:'
  local used = 0
  local links = redis.call('HGETALL', p .. 'blobs')
  for j = 1, #links, 2 do
    local size = tonumber(links[j + 1])
    used = used + size
    if redis.call('HINCRBY', ns .. 'blobs', links[j], 1) == 1 then total = total + size end
  end
  for _, d in ipairs(redis.call('SMEMBERS', p .. 'manifests')) do
    local size = redis.call('HSTRLEN', p .. 'manifest:' .. d, 'body')
    used = used + size
    total = total + size
  end
  redis.call('SET', p .. 'usage', used)
end
redis.call('SET', ns .. 'usage', total)
return total
"""

# ARGV: pins key, deleting key, pin id, ttl (ms). Returns 1, or 0 while the collector is
# deleting the blob (the caller waits: it lasts one storage delete).
PIN_BLOB = _NOW + """
if redis.call('EXISTS', ARGV[2]) == 1 then return 0 end
local expiry = now_ms() + tonumber(ARGV[4])
redis.call('ZADD', ARGV[1], expiry, ARGV[3])
redis.call('PEXPIRE', ARGV[1], tonumber(ARGV[4]) + 60000)
return 1
"""

# ARGV: pins key, pin id. Returns 1 when the pin was there.
UNPIN_BLOB = """
return redis.call('ZREM', ARGV[1], ARGV[2])
"""

# ARGV: prefix, catalog, name, digest, blob_repos key, origin. Returns 0 when the link did not exist.
_UNLINK_BLOB = """
local function unlink(p, catalog, name, digest, holders)
  local size = redis.call('HGET', p .. 'blobs', digest)
  if not size then return 0 end
  redis.call('HDEL', p .. 'blobs', digest)
  account_unlink(p, name, digest, tonumber(size))
  redis.call('HDEL', p .. 'linked', digest)
  redis.call('HDEL', holders, name)
  emit('delete', name, digest, '""" + BLOB_MEDIA_TYPE + """', size, '', '')
  drop_if_empty(p, catalog, name)
  return 1
end
"""
# ARGV: prefix, catalog, name, digest, blob_repos key, rules version ("" unguarded), "1" when an
# immutable-tag rule covers the repository (by that version), origin. Returns 0 when the link did
# not exist, -1 (nothing changed) when guarded, covered and a manifest of the repository names the
# blob: an immutable tag holds its manifest's parts, not only the tag.
UNLINK_BLOB = _GUARD + _NOW + _USAGE + _OUTBOX + _UNLINK_BLOB + """
if ARGV[6] ~= '' then
  if not policy_current(ARGV[6]) then return redis.error_reply(STALE) end
  if ARGV[7] == '1' and redis.call('HEXISTS', ARGV[1] .. 'blobs', ARGV[4]) == 1
      and redis.call('HEXISTS', ARGV[1] .. 'refs', ARGV[4]) == 1 then return -1 end
end
return unlink(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

# UNLINK_BLOB's ARGV. Unlinks the blob only while no manifest of the repository names it (what
# deleting a whole repository unlinks after its manifests: one pushed meanwhile keeps its blobs).
# Returns 0 when the link did not exist, -1 when a manifest names the blob.
UNLINK_UNNAMED_BLOB = _GUARD + _NOW + _USAGE + _OUTBOX + _UNLINK_BLOB + """
if redis.call('HEXISTS', ARGV[1] .. 'refs', ARGV[4]) == 1 then return -1 end
return unlink(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

# -- garbage collection (lifecycle.py): each candidate is re-checked inside its script ----------

# ARGV: prefix, catalog, name, digest, blob_repos key, grace (ms), dry ("1"/"0"), origin.
# Unlinks a blob no manifest of the repository names, linked longer ago than the grace.
# Returns 1 when it (dry: would have) unlinked.
GC_UNLINK_BLOB = _GUARD_UNLESS_DRY + _NOW + _USAGE + _OUTBOX + _UNLINK_BLOB + """
local p = ARGV[1]
if redis.call('HEXISTS', p .. 'blobs', ARGV[4]) == 0 then return 0 end
if redis.call('HEXISTS', p .. 'refs', ARGV[4]) == 1 then return 0 end
local at = tonumber(redis.call('HGET', p .. 'linked', ARGV[4]) or '0')
if now_ms() - at < tonumber(ARGV[6]) then return 0 end
if ARGV[7] == '1' then return 1 end
return unlink(p, ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

# ARGV: prefix, catalog, name, digest, grace (ms), untagged ("1": any untagged manifest may go;
# "0": only referrers whose subject is gone), dry ("1"/"0"), origin.
# Deletes a manifest no tag points at and no index of the repository names, that arrived (or was
# last pushed) longer ago than the grace, and is not a referrer of a manifest still stored. Returns 1 when it (dry:
# would have) deleted.
GC_DELETE_MANIFEST = _GUARD_UNLESS_DRY + _NOW + _USAGE + _OUTBOX + _REMOVE_MANIFEST + """
local p = ARGV[1]
local key = p .. 'manifest:' .. ARGV[4]
local v = redis.call('HMGET', key, 'type', 'subject', 'created', 'pushed')
if not v[1] then return 0 end
if redis.call('SCARD', p .. 'tagsof:' .. ARGV[4]) > 0 then return 0 end
if redis.call('HEXISTS', p .. 'children', ARGV[4]) == 1 then return 0 end
local subject = v[2] or ''
if subject ~= '' then
  if redis.call('EXISTS', p .. 'manifest:' .. subject) == 1 then return 0 end
elseif ARGV[6] ~= '1' then
  return 0
end
if now_ms() - math.max(tonumber(v[3] or '0'), tonumber(v[4] or '0')) < tonumber(ARGV[5]) then return 0 end
if ARGV[7] == '1' then return 1 end
remove_manifest(p, ARGV[2], ARGV[3], ARGV[4])
return 1
"""

# ARGV: blob_repos key, pins key, deleting key, fence id, ttl (ms).
# The fence under which the collector deletes a blob's bytes: set only when no repository links
# the blob and no upload holds a pin on it; while it stands, no pin can be taken (so no commit
# can find the bytes) and no link can be made (a mount needs a link, an upload a pin).
# Returns "ok", or why not: "read-only" (maintenance), "linked", "pinned", "busy".
BEGIN_BLOB_DELETE = _NOW + f"""
if redis.call('EXISTS', '{MAINTENANCE}') == 1 then return 'read-only' end
if redis.call('EXISTS', ARGV[1]) == 1 then return 'linked' end
redis.call('ZREMRANGEBYSCORE', ARGV[2], '-inf', now_ms())
if redis.call('ZCARD', ARGV[2]) > 0 then return 'pinned' end
if redis.call('SET', ARGV[3], ARGV[4], 'NX', 'PX', tonumber(ARGV[5])) then return 'ok' end
return 'busy'
"""

# ARGV: prefix, migrated-set key, name, now (ms), then per manifest: digest, nblobs, blobs...,
# nchildren, children..., then "end", then the number of manifests read.
# Schema 2's backfill of one repository, in one step: recounts refs and children from scratch,
# gives manifests without an arrival time `now`, tags without a push time their manifest's
# arrival, links without a time `now` (and without a reverse entry one). Refuses ("changed") if the
# repository's manifests are not the ones read (a write came in between: the caller reads again).
# Idempotent.
MIGRATE_REPOSITORY = """
local p = ARGV[1]
local now = ARGV[4]
local i = 5
local entries = {}
while ARGV[i] ~= 'end' do
  local digest = ARGV[i]; i = i + 1
  local nb = tonumber(ARGV[i]); i = i + 1
  local blobs = {}
  for _ = 1, nb do blobs[#blobs + 1] = ARGV[i]; i = i + 1 end
  local nk = tonumber(ARGV[i]); i = i + 1
  local kids = {}
  for _ = 1, nk do kids[#kids + 1] = ARGV[i]; i = i + 1 end
  entries[#entries + 1] = {digest, blobs, kids}
end
if redis.call('SCARD', p .. 'manifests') ~= tonumber(ARGV[i + 1]) then return 'changed' end
for _, e in ipairs(entries) do
  if redis.call('SISMEMBER', p .. 'manifests', e[1]) == 0 then return 'changed' end
end
redis.call('DEL', p .. 'refs', p .. 'children')
for _, e in ipairs(entries) do
  local key = p .. 'manifest:' .. e[1]
  local seen = {}
  for _, d in ipairs(e[2]) do
    if not seen[d] then seen[d] = true; redis.call('HINCRBY', p .. 'refs', d, 1) end
  end
  seen = {}
  for _, d in ipairs(e[3]) do
    if not seen[d] then seen[d] = true; redis.call('HINCRBY', p .. 'children', d, 1) end
  end
  redis.call('HSET', key, 'blobs', table.concat(e[2], ' '), 'children', table.concat(e[3], ' '))
  redis.call('HSETNX', key, 'created', now)
end
local last = 0
for _, tag in ipairs(redis.call('HKEYS', p .. 'tags')) do
  local digest = redis.call('HGET', p .. 'tags', tag)
  local at = redis.call('HGET', p .. 'manifest:' .. digest, 'created') or now
  redis.call('HSETNX', p .. 'tagtimes', tag, at)
  local t = tonumber(redis.call('HGET', p .. 'tagtimes', tag))
  if t > last then last = t end
end
local links = redis.call('HGETALL', p .. 'blobs')
for j = 1, #links, 2 do
  redis.call('HSETNX', p .. 'linked', links[j], now)
  -- links older than the reverse index have no entry in it: the collector's fence relies on it
  redis.call('HSETNX', 'wharf:blob:' .. links[j] .. ':repos', ARGV[3], links[j + 1])
end
if last == 0 and redis.call('SCARD', p .. 'manifests') > 0 then last = tonumber(now) end
if last > 0 and not redis.call('ZSCORE', '""" + PUSHED + """', ARGV[3]) then
  redis.call('ZADD', '""" + PUSHED + """', last, ARGV[3])
end
redis.call('SADD', ARGV[2], ARGV[3])
return 'ok'
"""

# KEYS: a lock key. ARGV: the holder's value. Deletes the key only if it still holds that
# value, in one step: a holder whose key expired and was taken over never ends another's.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# The same with the key in ARGV (for callers that pass ARGV only).
RELEASE_IF_HELD_ARGV = """
if redis.call('GET', ARGV[1]) == ARGV[2] then return redis.call('DEL', ARGV[1]) end
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


# -- event delivery (services/events) ------------------------------------------------------------

# KEYS: the endpoint's cursor hash, its status hash, its dead-letter stream, then the lease of each
# shard whose cursor moves. ARGV: replica id, now (s), events delivered, dead-letter reason ("" none),
# attempts, the number of shards, (shard, new cursor "<stream id> <sequence>") per shard, then each
# dead event (JSON).
# Moves the endpoint's cursors past what was delivered or dead-lettered, in one step with the dead
# letters and the counts, and only while this replica still owns every one of those shards (0
# otherwise, nothing written): a replica that lost a lease can never move the next owner's cursor.
ADVANCE_CURSORS = """
local n = tonumber(ARGV[6])
for i = 1, n do
  if redis.call('GET', KEYS[3 + i]) ~= ARGV[1] then return 0 end
end
for i = 1, n do redis.call('HSET', KEYS[1], ARGV[5 + 2 * i], ARGV[6 + 2 * i]) end
if tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'delivered', ARGV[3])
  redis.call('HSET', KEYS[2], 'last_success_at', ARGV[2])
end
local first = 7 + 2 * n
if #ARGV >= first then
  for i = first, #ARGV do
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '""" + str(DEAD_LETTERS_MAX) + """', '*', 'event', ARGV[i],
               'reason', ARGV[4], 'attempts', ARGV[5], 'at', ARGV[2])
  end
  redis.call('HINCRBY', KEYS[2], 'dead', #ARGV - first + 1)
  if ARGV[4] ~= 'attempts' then redis.call('HINCRBY', KEYS[2], 'overflow', #ARGV - first + 1) end
end
return 1
"""

# KEYS: the shard's lease, the endpoint's cursor hash. ARGV: replica id, shard, cursor.
# An endpoint's first cursor on a shard, set once (0 when it exists or the lease is not ours).
INIT_CURSOR = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
"""

# KEYS: an endpoint's dead-letter stream, the event's outbox shard. ARGV: dead letter id, endpoint.
# Puts one dead letter back at the end of its shard's outbox, for that endpoint only (field
# "only"), and removes it from the dead letters, in one step. Returns 0 when it was gone.
REPLAY_DEAD_LETTER = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local fields = found[1][2]
local event = nil
for i = 1, #fields, 2 do if fields[i] == 'event' then event = cjson.decode(fields[i + 1]) end end
if not event then redis.call('XDEL', KEYS[1], ARGV[1]); return 0 end
local n = redis.call('INCR', KEYS[2] .. ':seq')
redis.call('XADD', KEYS[2], '*', 'n', n, 'a', event.a or '', 'r', event.r or '', 'd', event.d or '',
           'm', event.m or '', 's', event.s or '', 't', event.t or '', 'f', event.f or '', 'o', event.o or '{}',
           'w', event.w or '', 'i', event.i or '', 'only', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""
