-- KEYS[1] the replicas sorted set. ARGV: replica id, lag, forget (seconds).
-- Records that this replica reaches Redis (on Redis's clock, so hosts' clocks do
-- not matter), forgets replicas silent for longer than forget (gone), and returns
-- how many are silent for longer than lag: they may be missing invalidations.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
return redis.call('ZCOUNT', KEYS[1], '-inf', now - tonumber(ARGV[2]))
