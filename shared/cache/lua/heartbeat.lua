-- KEYS[1] the gateways sorted set. ARGV: gateway id, forget (seconds). Scores the gateway
-- with Redis's clock (hosts' clocks do not matter) and forgets members silent for longer.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return 1
