-- W1/W2/W3's reserve operation for the Redis peer (shared/workloads/WORKLOADS.md):
-- all or nothing across lines, atomic because a script runs alone.
--
-- KEYS[1..n]  stock keys `st:%012d` (rank - 1), in ascending SKU order
-- KEYS[n + 1] the reservation's key `rs:<id>`
-- ARGV[1..n]  the quantity of each line
-- ARGV[n + 1] the reservation record (its lines)
-- Returns 1 when reserved, 0 when some line is short (nothing changed).
local n = #KEYS - 1
for i = 1, n do
  local available = tonumber(redis.call('GET', KEYS[i]) or '0')
  if available < tonumber(ARGV[i]) then
    return 0
  end
end
for i = 1, n do
  redis.call('DECRBY', KEYS[i], ARGV[i])
end
redis.call('SET', KEYS[n + 1], ARGV[n + 1], 'EX', 900)
return 1
