-- KEYS[1] the gateways sorted set. ARGV[1] window (seconds). The gateways heard from
-- within the window, on Redis's clock: the ones an invalidation waits for.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
