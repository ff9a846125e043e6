"""The Lua scripts behind billing/holds.py's Redis backend. Each touches keys of one hash slot only (one tenant's, or
the one registry key: billing/keyspace.py), so they run unchanged on a Redis Cluster."""

from __future__ import annotations

# KEYS: one counter per budget (a hash: s + p = settled spend, r = reserved), the hold, the tenant's lease set: all
# of one tenant, so one hash slot (billing/keyspace.py).
# ARGV: amount, overdraft, lease expiry, request id, then per budget: limit, hard (1/0).
RESERVE = """
local n = #KEYS - 2
local amount, overdraft = tonumber(ARGV[1]), tonumber(ARGV[2])
local missing = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 0 then return {-1, missing} end
local state, ok = {}, 1
for i = 1, n do
  -- A started micro-dollar counts whole: a hard budget is never passed by a fraction.
  local spent = tonumber(redis.call('HGET', KEYS[i], 's') or '0')
  if tonumber(redis.call('HGET', KEYS[i], 'p') or '0') > 0 then spent = spent + 1 end
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'r') or '0')
  state[#state + 1] = spent
  state[#state + 1] = reserved
  if ARGV[4 + 2 * i] == '1' and spent + reserved + amount > tonumber(ARGV[3 + 2 * i]) + overdraft then ok = 0 end
end
-- Every admitted request gets a hold and a lease, even of 0 (an unpriced model, a free prompt): it must settle its
-- cost here like any other, or a hard budget would never see what such requests spend.
if ok == 1 then
  if amount > 0 then
    for i = 1, n do redis.call('HINCRBY', KEYS[i], 'r', amount) end
  end
  redis.call('HSET', KEYS[n + 1], 'state', 'open', 'amount', amount, 'keys', table.concat(KEYS, ' ', 1, n))
  redis.call('ZADD', KEYS[n + 2], ARGV[3], ARGV[4])
end
return {ok, state}
"""

# KEYS: counters to create; ARGV: per counter its spend from the ledger (whole micro-dollars, then the pico-dollar
# remainder) and its expiry in seconds (0: none).
CREATE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 's', ARGV[3 * i - 2], 'p', ARGV[3 * i - 1], 'r', 0)
    if tonumber(ARGV[3 * i]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
  end
end
return #KEYS
"""

# KEYS: the counters, the hold, the lease set; ARGV: the cost's whole micro-dollars, its pico-dollar remainder
# (0..999,999), request id, how long the settled marker lasts. Spend is s micro-dollars plus p pico-dollars: a
# pico-dollar total would not fit the doubles Lua counts in, these two always do.
# The hold stays as a marker: settled again (a retry, a replayed journal), it adds nothing; released by the reaper,
# or gone, it adds the cost alone. Returns the amount released, or -1 when it was settled already.
SETTLE = """
local n = #KEYS - 2
local hold = KEYS[n + 1]
local state = redis.call('HGET', hold, 'state')
if state == 'settled' then return -1 end
local amount = 0
if state == 'open' or (not state and redis.call('EXISTS', hold) == 1) then
  amount = tonumber(redis.call('HGET', hold, 'amount') or '0')
end
redis.call('DEL', hold)
redis.call('HSET', hold, 'state', 'settled')
redis.call('EXPIRE', hold, ARGV[4])
redis.call('ZREM', KEYS[n + 2], ARGV[3])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 's', ARGV[1])
    if redis.call('HINCRBY', KEYS[i], 'p', ARGV[2]) >= 1000000 then
      redis.call('HINCRBY', KEYS[i], 'p', -1000000)
      redis.call('HINCRBY', KEYS[i], 's', 1)
    end
    if amount > 0 then redis.call('HINCRBY', KEYS[i], 'r', -amount) end
  end
end
return amount
"""

# KEYS: a tenant's lease set; ARGV: now, how many at most, the tenant's hold key prefix, how long the released
# marker lasts. Returns how many it released and how many leases the tenant still has.
REAP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local hold = ARGV[3] .. id
  local state = redis.call('HGET', hold, 'state')
  if state == 'open' or (not state and redis.call('EXISTS', hold) == 1) then
    local amount = tonumber(redis.call('HGET', hold, 'amount') or '0')
    local keys = redis.call('HGET', hold, 'keys')
    if keys and amount > 0 then
      for key in string.gmatch(keys, '%S+') do
        if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, 'r', -amount) end
      end
    end
    redis.call('DEL', hold)
    redis.call('HSET', hold, 'state', 'released')
    redis.call('EXPIRE', hold, ARGV[4])
  end
  redis.call('ZREM', KEYS[1], id)
end
return {#ids, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: the tenant registry; ARGV: tenant id, until when it is registered, as the reaper read it. A tenant left
# without leases is dropped only if no process registered it again since (see RedisBackend.reap).
FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: the tenant registry; ARGV: tenant id, until when. Only ever moves the date later.
REGISTER = """
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# KEYS: a tenant's lease set; ARGV: the new expiry, then request ids. Only holds still open are in the set, and XX
# moves only members already there: a hold settled or released meanwhile is not brought back.
RENEW = """
local moved = 0
for i = 2, #ARGV do moved = moved + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i]) end
return moved
"""

LEGACY_STATE = "return redis.call('HGET', KEYS[1], 'state')"
