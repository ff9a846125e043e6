"""The circuit breaker's Redis scripts and key names (see proxy/breaker.py).

Per deployment: a state hash, a sorted set of recent failure times and the probe claim, all tagged
``{breaker:<id>}`` so that each script touches one slot (Redis Cluster); the index of the deployments that are not
closed is one key of its own, and no script touches it together with a deployment's keys.
"""

from __future__ import annotations

INDEX = "tg:{breakers}:open"  # deployment id -> "reopen time|failures|trips", for the deployments not closed

# KEYS: state, failure times, probe claim. ARGV: now, window, failures to trip, cool-down, a unique member, state ttl.
# Returns {code, reopen time, failures, trips}: 0 still closed, 1 open already, 2 reopened (the probe failed), 3 tripped.
# Times travel as strings: Redis turns a Lua number into an integer reply.
FAIL = """
local now = tonumber(ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'until', 'failures', 'trips')
if s[1] then
  local trips = tonumber(s[3] or '1')
  if now < tonumber(s[1]) then return {1, s[1], tonumber(s[2] or '0'), trips} end
  local reopen = tostring(now + tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], 'until', reopen, 'trips', trips + 1)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('DEL', KEYS[3])
  return {2, reopen, tonumber(s[2] or '0'), trips + 1}
end
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. tostring(now - tonumber(ARGV[2])))
redis.call('EXPIRE', KEYS[2], ARGV[2])
local n = redis.call('ZCARD', KEYS[2])
if n < tonumber(ARGV[3]) then return {0, '0', n, 0} end
local reopen = tostring(now + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'until', reopen, 'failures', n, 'trips', 1)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('DEL', KEYS[2], KEYS[3])
return {3, reopen, n, 1}
"""

# KEYS: state, failure times, probe claim. ARGV: now. {0} closed already, {1, ...} still open (kept), {2} closed now.
SUCCEED = """
local s = redis.call('HMGET', KEYS[1], 'until', 'failures', 'trips')
if not s[1] then return {0} end
if tonumber(ARGV[1]) < tonumber(s[1]) then return {1, s[1], tonumber(s[2] or '0'), tonumber(s[3] or '1')} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {2}
"""

# KEYS: state, probe claim. ARGV: now, claim milliseconds, claimant.
# {0} closed, {1, ...} still open, {2, ...} another process holds the probe, {3, ...} this one does now.
CLAIM = """
local s = redis.call('HMGET', KEYS[1], 'until', 'failures', 'trips')
if not s[1] then return {0} end
local state = {s[1], tonumber(s[2] or '0'), tonumber(s[3] or '1')}
if tonumber(ARGV[1]) < tonumber(s[1]) then return {1, state[1], state[2], state[3]} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return {3, state[1], state[2], state[3]} end
return {2, state[1], state[2], state[3]}
"""

INDEX_READ = "return redis.call('HGETALL', KEYS[1])"
INDEX_SET = "return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])"
# Drop the entry only if it still names the opening this process saw close (another may have tripped it since).
INDEX_DROP = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, #ARGV[2] + 1) == ARGV[2] .. '|' then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def keys(deployment_id: int) -> list[str]:
    """The deployment's state hash, failure times and probe claim: one hash tag, so one Cluster slot."""
    tag = f"tg:{{breaker:{deployment_id}}}"
    return [f"{tag}:state", f"{tag}:fails", f"{tag}:probe"]
