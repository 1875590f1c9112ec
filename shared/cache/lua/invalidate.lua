-- KEYS[1] the artist's marker, KEYS[2] its cached entry (one hash slot). ARGV[1] the
-- committed version. Raises the marker (kept without TTL) and drops an older copy.
-- Idempotent: the store's outbox may run it again.
local version = tonumber(ARGV[1])
if version > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], version)
end
local have = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
if have > 0 and have < version then redis.call('DEL', KEYS[2]) end
return 1
