-- KEYS[1] generation key. ARGV: prefix, generation seen when the lookup began,
-- name, version, encoded profile, fetched-at, ttl, byte budget.
-- Fills only if the generation is unchanged and no newer version is known
-- (the marker) or cached; then evicts the least-read copies over the budget.
-- Returns 1 filled, 0 refused (older than known), -1 generation changed.
local prefix, gen, name = ARGV[1], ARGV[2], ARGV[3]
local version, ttl, budget = tonumber(ARGV[4]), tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('GET', KEYS[1]) ~= gen then return -1 end
local ns = prefix .. ':' .. gen
local key = entry_key(ns, name)
local cur = redis.call('HMGET', key, 'm', 'v')
if version < (tonumber(cur[1]) or 0) or version <= (tonumber(cur[2]) or 0) then return 0 end
drop(ns, name)
local size = string.len(ARGV[5])
redis.call('HSET', key, 'm', version, 'v', version, 'd', ARGV[5], 'f', ARGV[6])
redis.call('EXPIRE', key, ttl)
redis.call('HSET', ns .. ':sizes', name, size)
local reads = tonumber(redis.call('ZSCORE', prefix .. ':reads', name)) or 0
redis.call('ZADD', ns .. ':resident', reads, name)
local total = redis.call('INCRBY', ns .. ':bytes', size)
while total > budget do
  local victim = redis.call('ZRANGE', ns .. ':resident', 0, 0)[1]
  if not victim then break end
  drop(ns, victim)
  total = tonumber(redis.call('GET', ns .. ':bytes')) or 0
end
for _, suffix in ipairs({':sizes', ':resident', ':bytes'}) do
  redis.call('EXPIRE', ns .. suffix, ttl)
end
return 1
