-- KEYS[1] generation key. ARGV: prefix, name, version, ttl, channel, message.
-- Raises the marker in the current generation, drops older copies, then tells
-- every replica. Returns the generation and how many subscribers got the message.
local prefix, name = ARGV[1], ARGV[2]
local gen = redis.call('GET', KEYS[1])
if gen then invalidate(prefix .. ':' .. gen, name, tonumber(ARGV[3]), tonumber(ARGV[4])) end
return {gen or false, redis.call('PUBLISH', ARGV[5], ARGV[6])}
