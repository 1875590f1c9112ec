-- KEYS[1] generation key. ARGV: prefix, generation this replica knew (empty
-- at start), ttl, bump ("1" when this replica lost track of what it missed),
-- then name/version pairs of invalidations Redis missed while unreachable.
-- At start the current generation is adopted. After an outage it is kept
-- unless Redis lost it (a restart) or a bump is asked for; moving to a new
-- generation leaves every copy filled before behind. The missed invalidations
-- become markers, dropping older copies, in the generation returned.
local prefix, ttl = ARGV[1], tonumber(ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = tonumber(ARGV[2])
if known == nil then
  if cur == 0 then
    cur = 1
    redis.call('SET', KEYS[1], cur)
  end
elseif cur < known or (cur == known and ARGV[4] == '1') then
  cur = known + 1
  redis.call('SET', KEYS[1], cur)
end
local ns = prefix .. ':' .. cur
for i = 5, #ARGV, 2 do
  invalidate(ns, ARGV[i], tonumber(ARGV[i + 1]), ttl)
end
return cur
