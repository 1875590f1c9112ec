-- KEYS[1] the artist's marker, KEYS[2] its cached entry. ARGV: version, encoded profile,
-- fetched-at, ttl. Fills only if no newer version is known (the marker) or cached, so a
-- reader that fetched an old version before a save cannot put it back after the save.
-- Returns 1 filled, 0 refused.
local version = tonumber(ARGV[1])
if version < tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
if version <= tonumber(redis.call('HGET', KEYS[2], 'v') or '0') then return 0 end
redis.call('HSET', KEYS[2], 'v', ARGV[1], 'd', ARGV[2], 'f', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
