"""The Lua scripts: every limit decision is one script run on Redis, with Redis's own clock.

Requests per window use a ring of the last ``L`` admission times (a string of fixed-width slots): a
request is admitted when the oldest of the last ``L`` admissions is at least one window old. That is an
exact sliding window: no interval of the window's length ever holds more than ``L`` admissions, and a
burst of ``L`` is admitted at once. (GCRA with a burst of ``L`` admits up to ``2L - 1`` in some window
of that length: the burst, then one more every ``window / L``. The ring keeps GCRA's one-timestamp-per-
cell comparison and its O(1) update, with one cell per allowed request.)

Tokens per window are a token bucket refilled continuously; concurrent streams are leases in a sorted
set scored by expiry; token quotas are reservations held against the ``used`` counters of
:mod:`parley_common.quota` until the real usage settles them.

Every script checks everything first and writes only when the request is admitted, so a refusal changes
nothing. Keys of one user share the hash tag ``{user_id}``. The two global keys (plans revision, usage's
``seeded`` marker) are read in the same script; on Redis Cluster they would need a copy per slot.
"""

from __future__ import annotations

# Shared functions, prepended to each script.
_LIB = r"""
local HDR = 24
local SW = 13

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ring_header(key)
  local h = redis.call('GETRANGE', key, 0, HDR - 1)
  if h == '' then return nil, 0 end
  return tonumber(string.sub(h, 1, 12)), tonumber(string.sub(h, 13, 24))
end

local function ring_slot(key, limit, head, k)
  local i = (head + k) % limit
  local s = redis.call('GETRANGE', key, HDR + i * SW, HDR + i * SW + SW - 1)
  if s == '' then return 0 end
  return tonumber(s)
end

-- Make the ring hold exactly `limit` slots, keeping the newest admissions when the limit changed.
local function ring_prepare(key, limit)
  local old_limit, head = ring_header(key)
  if old_limit == limit then return head end
  local kept = {}
  if old_limit ~= nil and old_limit > 0 then
    local first = math.max(0, old_limit - limit)
    for k = first, old_limit - 1 do
      kept[#kept + 1] = string.format('%013d', ring_slot(key, old_limit, head, k))
    end
  end
  local parts = {string.format('%012d%012d', limit, 0), string.rep('0000000000000', limit - #kept)}
  parts[3] = table.concat(kept)
  redis.call('SET', key, table.concat(parts))
  return 0
end

-- Free slots (admissions older than the window) counted from the oldest: binary search, slots ascend.
local function ring_free(key, limit, head, cutoff)
  local lo, hi = 0, limit
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ring_slot(key, limit, head, mid) <= cutoff then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function ring_admit(key, limit, head, now, window)
  redis.call('SETRANGE', key, HDR + head * SW, string.format('%013d', now))
  redis.call('SETRANGE', key, 12, string.format('%012d', (head + 1) % limit))
  redis.call('PEXPIRE', key, window + 1000)
end

local function bucket_level(key, cap, window, now)
  local v = redis.call('HMGET', key, 't', 'ts')
  if not v[1] then return cap end
  local level = tonumber(v[1]) + (now - tonumber(v[2])) * cap / window
  if level > cap then level = cap end
  return level
end

local function num(v)
  if not v then return 0 end
  return tonumber(v)
end

-- Reservations whose lease ran out (their replica died) give their tokens back.
local function sweep_reservations(reserved, resv, resv_exp, now)
  local dead = redis.call('ZRANGEBYSCORE', resv_exp, '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(dead) do
    local amount = redis.call('HGET', resv, id)
    if amount then
      redis.call('HDEL', resv, id)
      redis.call('DECRBY', reserved, amount)
    end
    redis.call('ZREM', resv_exp, id)
  end
end
"""

# KEYS: 1 plans revision, 2 user revision, 3 seeded, 4 request ring, 5 token bucket, 6 streams, 7 used day,
#       8 used month, 9 reserved, 10 reservations (id → tokens), 11 reservation expiries
# ARGV: 1 plans revision cached ('' skips), 2 user revision cached, 3 deadline ms (0: none), 4 grant id,
#       5 window ms, 6 requests limit (0: none), 7 tokens limit (0: none), 8 token cost,
#       9 streams limit (0: not a stream or none), 10 lease ms, 11 daily quota (-1: none),
#       12 monthly quota (-1: none), 13 check quota (1) or skip it (0)
# Returns {status, now, plans revision, user revision, refused limit, retry ms, requests left, requests reset ms,
#          tokens left, tokens reset ms, streams left, daily left, monthly left, seeded}
# status: 1 admitted, 0 refused, 2 cached plan or user outdated, 3 past deadline, 4 quota counters not seeded
ADMIT = (
    _LIB
    + r"""
local now = now_ms()
local deadline = tonumber(ARGV[3])
if deadline > 0 and now > deadline then return {3, now} end
-- Revisions: the replica's cached copy is stale when Redis knows a newer one. A missing key (Redis lost
-- its data) says nothing; the replica's own cache expiry covers changes made while Redis was away.
local pe = redis.call('GET', KEYS[1]) or ''
local ue = redis.call('GET', KEYS[2]) or ''
if (pe ~= '' and ARGV[1] ~= '' and tonumber(pe) > tonumber(ARGV[1]))
    or (ue ~= '' and ARGV[2] ~= '' and tonumber(ue) > tonumber(ARGV[2])) then
  return {2, now, pe, ue}
end
local grant, window = ARGV[4], tonumber(ARGV[5])
local rpm, tpm, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local streams, lease = tonumber(ARGV[9]), tonumber(ARGV[10])
local daily, monthly, check_quota = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local seeded = redis.call('EXISTS', KEYS[3])

local refused, retry = '', 0
local function refuse(code, ms)
  if refused == '' then refused, retry = code, ms end
end

local head, req_left, req_reset = 0, -1, 0
if rpm > 0 then
  head = ring_prepare(KEYS[4], rpm)
  local free = ring_free(KEYS[4], rpm, head, now - window)
  if free == 0 then
    refuse('requests', ring_slot(KEYS[4], rpm, head, 0) + window - now)
    req_left = 0
  else
    req_left = free - 1
  end
end

local level, tok_left, tok_reset = 0, -1, 0
if tpm > 0 then
  level = bucket_level(KEYS[5], tpm, window, now)
  if level < cost then
    refuse('tokens', math.ceil((cost - level) * window / tpm))
    tok_left = math.floor(level)
  else
    tok_left = math.floor(level - cost)
  end
  tok_reset = math.ceil((tpm - (level - cost)) * window / tpm)
end

local str_left = -1
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  local open = redis.call('ZCARD', KEYS[6])
  if open >= streams then
    refuse('streams', 1000)
    str_left = 0
  else
    str_left = streams - open - 1
  end
end

local day_left, month_left = -1, -1
if check_quota then
  if seeded == 0 then return {4, now, pe, ue} end
  sweep_reservations(KEYS[9], KEYS[10], KEYS[11], now)
  local held = num(redis.call('GET', KEYS[9]))
  if held < 0 then held = 0 end
  local used_day, used_month = num(redis.call('GET', KEYS[7])), num(redis.call('GET', KEYS[8]))
  if daily >= 0 then
    day_left = daily - used_day - held
    if day_left < cost then
      if used_day + cost > daily then refuse('quota_daily', -1) else refuse('quota_daily', 1000) end
    end
  end
  if monthly >= 0 then
    month_left = monthly - used_month - held
    if month_left < cost then
      if used_month + cost > monthly then refuse('quota_monthly', -1) else refuse('quota_monthly', 1000) end
    end
  end
end

if refused ~= '' then
  return {0, now, pe, ue, refused, retry, req_left, req_reset, tok_left, tok_reset, str_left,
          day_left, month_left, seeded}
end

if rpm > 0 then
  ring_admit(KEYS[4], rpm, head, now, window)
  req_reset = window
end
if tpm > 0 then
  redis.call('HSET', KEYS[5], 't', level - cost, 'ts', now)
  redis.call('PEXPIRE', KEYS[5], window * 2)
end
if streams > 0 then
  redis.call('ZADD', KEYS[6], now + lease, grant)
  redis.call('PEXPIRE', KEYS[6], lease + 1000)
end
if check_quota and (daily >= 0 or monthly >= 0) and cost > 0 then
  redis.call('HSET', KEYS[10], grant, cost)
  redis.call('ZADD', KEYS[11], now + lease, grant)
  redis.call('INCRBY', KEYS[9], cost)
  for i = 9, 11 do redis.call('PEXPIRE', KEYS[i], lease * 4) end
  if day_left >= 0 then day_left = day_left - cost end
  if month_left >= 0 then month_left = month_left - cost end
end
return {1, now, pe, ue, '', 0, req_left, req_reset, tok_left, tok_reset, str_left, day_left, month_left,
        seeded}
"""
)

# KEYS: 1 used day, 2 used month, 3 reserved, 4 reservations, 5 reservation expiries, 6 streams,
#       7 token bucket
# ARGV: 1 grant id, 2 actual tokens, 3 token cost charged, 4 tokens limit (0: none), 5 window ms,
#       6 seconds the day counter lives, 7 seconds the month counter lives
# Returns {tokens released from the reservation, tokens given back to the bucket}
SETTLE = (
    _LIB
    + r"""
local now = now_ms()
local grant, actual, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tpm, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local held = redis.call('HGET', KEYS[4], grant)
if held then
  redis.call('HDEL', KEYS[4], grant)
  redis.call('DECRBY', KEYS[3], held)
end
redis.call('ZREM', KEYS[5], grant)
redis.call('ZREM', KEYS[6], grant)
if actual > 0 then
  redis.call('INCRBY', KEYS[1], actual)
  redis.call('INCRBY', KEYS[2], actual)
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
end
local refund = 0
if tpm > 0 and cost > actual and redis.call('EXISTS', KEYS[7]) == 1 then
  local level = bucket_level(KEYS[7], tpm, window, now)
  refund = cost - actual
  level = level + refund
  if level > tpm then level = tpm end
  redis.call('HSET', KEYS[7], 't', level, 'ts', now)
end
return {num(held), refund}
"""
)

# KEYS: 1 streams, 2 reservation expiries, 3 reserved, 4 reservations
# ARGV: 1 grant id, 2 lease ms
# Extends a live request's lease; a lease already expired (and swept) stays gone.
RENEW = (
    _LIB
    + r"""
local now = now_ms()
local until_ms = now + tonumber(ARGV[2])
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', until_ms, ARGV[1])
renewed = renewed + redis.call('ZADD', KEYS[2], 'XX', 'CH', until_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
for i = 2, 4 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) * 4) end
end
return renewed
"""
)

# KEYS: as ADMIT. ARGV: 1 window ms, 2 requests limit, 3 tokens limit, 4 streams limit,
#       5 daily quota, 6 monthly quota
# Returns {now, plans revision, user revision, seeded, requests left, requests reset ms, tokens left,
#          tokens reset ms, streams left, used day, used month, reserved}
PEEK = (
    _LIB
    + r"""
local now = now_ms()
local window = tonumber(ARGV[1])
local rpm, tpm, streams = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local pe = redis.call('GET', KEYS[1]) or ''
local ue = redis.call('GET', KEYS[2]) or ''
local seeded = redis.call('EXISTS', KEYS[3])
local req_left, req_reset = -1, 0
if rpm > 0 then
  local limit, head = ring_header(KEYS[4])
  if limit ~= rpm then
    req_left = rpm
  else
    req_left = ring_free(KEYS[4], rpm, head, now - window)
    local newest = ring_slot(KEYS[4], rpm, head, rpm - 1)
    if newest > 0 then req_reset = math.max(0, newest + window - now) end
  end
end
local tok_left, tok_reset = -1, 0
if tpm > 0 then
  local level = bucket_level(KEYS[5], tpm, window, now)
  tok_left = math.floor(level)
  tok_reset = math.ceil((tpm - level) * window / tpm)
end
local str_left = -1
if streams > 0 then
  str_left = streams - redis.call('ZCOUNT', KEYS[6], '(' .. now, '+inf')
  if str_left < 0 then str_left = 0 end
end
local held = 0
local live = redis.call('ZRANGEBYSCORE', KEYS[11], '(' .. now, '+inf')
if #live > 0 then
  for _, amount in ipairs(redis.call('HMGET', KEYS[10], unpack(live))) do held = held + num(amount) end
end
return {now, pe, ue, seeded, req_left, req_reset, tok_left, tok_reset, str_left,
        num(redis.call('GET', KEYS[7])), num(redis.call('GET', KEYS[8])), held}
"""
)

# KEYS: one request ring per limited subject. ARGV: 1 window ms, then one limit per key.
# All-or-nothing: admitted only when every ring has a free slot. Returns {admitted, retry ms}.
WINDOW = (
    _LIB
    + r"""
local now = now_ms()
local window = tonumber(ARGV[1])
local heads, retry = {}, 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 1])
  heads[i] = ring_prepare(key, limit)
  if ring_free(key, limit, heads[i], now - window) == 0 then
    retry = math.max(retry, ring_slot(key, limit, heads[i], 0) + window - now)
  end
end
if retry > 0 then return {0, retry} end
for i, key in ipairs(KEYS) do ring_admit(key, tonumber(ARGV[i + 1]), heads[i], now, window) end
return {1, 0}
"""
)

# KEYS: 1 a revision key. ARGV: 1 the revision just committed. Keeps the highest value ever published.
PUBLISH_REVISION = r"""
local current = redis.call('GET', KEYS[1])
if not current or tonumber(ARGV[1]) > tonumber(current) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
