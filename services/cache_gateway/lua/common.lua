-- Shared by every script: keys of one generation of the gateway's namespace.
-- ns is "<prefix>:<generation>"; an artist's hash holds m (the newest version
-- known committed: the marker), v (version of the cached copy), d (the
-- encoded profile) and f (when it was read from the store).
local function entry_key(ns, name) return ns .. ':p:' .. name end

-- Drop the cached copy of name (keeping its marker) and release its bytes.
local function drop(ns, name)
  local removed = redis.call('HDEL', entry_key(ns, name), 'v', 'd', 'f')
  local size = tonumber(redis.call('HGET', ns .. ':sizes', name)) or 0
  redis.call('HDEL', ns .. ':sizes', name)
  redis.call('ZREM', ns .. ':resident', name)
  if size > 0 then redis.call('DECRBY', ns .. ':bytes', size) end
  return removed
end

-- Raise the marker of name to version and drop any older copy.
local function invalidate(ns, name, version, ttl)
  local key = entry_key(ns, name)
  local cur = redis.call('HMGET', key, 'm', 'v')
  if version > (tonumber(cur[1]) or 0) then redis.call('HSET', key, 'm', version) end
  local have = tonumber(cur[2])
  if have and have < version then drop(ns, name) end
  redis.call('EXPIRE', key, ttl)
end
