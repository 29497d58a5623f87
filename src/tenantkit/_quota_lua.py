"""The Lua scripts of the Redis quota backend, and the exact charges they add.

Both scripts read the Redis server's ``TIME``, so app clocks never matter, and
decide or adjust every limit of a request atomically in one call.
"""

from __future__ import annotations

from ._quota_core import MAX_DEBT_US, MAX_LOGGED, PERIOD_SECONDS

US = 1_000_000
PERIOD_US = PERIOD_SECONDS * US

LOGGED_DIGITS = 51
"""Digits of one logged refund: where its charge started (16 and 10), its amount (15 and 10)."""

# MAX_DEBT_US caps how far a TAT runs ahead of now. Lua numbers are doubles, exact for
# integers below 2^53; with this cap every value the scripts compute stays below
# ``now + 2·MAX_DEBT_US < 2^53`` until the year 2200 (``now`` is about 1.7e15 µs in
# 2024, and ``2^53`` is 9.0e15).

# Bucket values: the exact TAT is ``tat + rem/q`` µs (0 <= rem < q), stored as the
# string "<tat>" when rem is 0 and "<tat>.<rem><q>" otherwise, rem and the q it was
# written under as 10 digits each (quotas are 32-bit). A bucket some refund has moved
# back also keeps how far, ``rw + rr/q`` µs (its ``charged`` minus its TAT), as 15
# and 10 more digits, then its refund log, each refund as where its charge started
# (16 and 10 digits) and its amount (15 and 10): "<tat>.<rem><q><rw><rr>[<sw><sr><bw><br>...]"
# (see ``_quota_core.refund``). The digits after the dot are
# integers, not a decimal fraction: the code before exact TATs read buckets with
# tonumber(), and still reads such a value as a TAT within 1 µs of the truth, so a
# rolling upgrade neither resets nor misreads a bucket; the code before this format
# clamps the digits to q - 1 (within 1 µs too; it ignores the refunds). Keys
# written before (a plain integer) are read with rem 0, and "<tat>.<rem>" (a rem
# of other lengths) as then: clamped to q - 1. A remainder written
# under another q (a plan change) is rescaled to the reader's q and rounded up,
# ceil(rem·q/q_old): every boundary a decision compares with is a multiple of 1/q
# µs, so this decides as the exact TAT would, and as the memory backend does.
#
# No product or quotient of large numbers is computed in Lua: Python divides each
# charge ``cost·60e6/q`` µs into whole µs and a remainder in 1/q µs (``divmod``, exact
# on integers), capped at MAX_DEBT_US, and the scripts only add and compare. The
# largest remainder sum, ``2q``, stays exact for any q below 2^52 (quotas are stored
# as 32-bit integers).
_LUA_BUCKETS = """
local function divmod(x, c)
  local d = math.floor(x / c)
  local r = x - d * c
  if r < 0 then d, r = d - 1, r + c elseif r >= c then d, r = d + 1, r - c end
  return d, r
end
-- ceil(a·b/c) for a < c and b below 2^32, exact although a·b may pass 2^53
local function rescale(a, b, c)
  local hi, lo = math.floor(b / 65536), b % 65536
  local d1, r1 = divmod(a * hi, c)
  local d2, r2 = divmod(r1 * 65536 + a * lo, c)
  if r2 > 0 then d2 = d2 + 1 end
  return d1 * 65536 + d2
end
-- a remainder written under q_old, read under q: rounded up, its carry returned apart
local function fit(rem, q, written)
  if written ~= q and written > rem and rem > 0 then rem = rescale(rem, q, written) end
  if rem >= q then
    if written ~= q and rem == q then return 1, 0 end
    rem = q - 1
  end
  if rem < 0 then rem = 0 end
  return 0, rem
end
local function add(tat, rem, q, inc, irem)
  tat, rem = tat + inc, rem + irem
  if rem >= q then tat, rem = tat + 1, rem - q end
  return tat, rem
end
-- the bucket as tat, rem, rw, rr, log: its TAT, how far refunds moved it back and
-- its refund log (as stored: LOGGED digits a refund; empty after a plan change)
local function load(key, q)
  local v = redis.call('GET', key)
  if not v then return 0, 0, 0, 0, '' end
  local dot = string.find(v, '.', 1, true)
  if dot == nil then return tonumber(v) or 0, 0, 0, 0, '' end
  local tat = tonumber(string.sub(v, 1, dot - 1)) or 0
  local rem, written, rw, rr, log = 0, q, 0, 0, ''
  local n = #v - dot
  if n == 20 or (n >= 45 and (n - 45) % LOGGED == 0) then
    rem = tonumber(string.sub(v, dot + 1, dot + 10)) or 0
    written = tonumber(string.sub(v, dot + 11, dot + 20)) or q
    rw = tonumber(string.sub(v, dot + 21, dot + 35)) or 0
    rr = tonumber(string.sub(v, dot + 36, dot + 45)) or 0
    if written == q then log = string.sub(v, dot + 46) end
  else
    rem = tonumber(string.sub(v, dot + 1)) or 0
  end
  local carry
  carry, rem = fit(rem, q, written)
  tat = tat + carry
  carry, rr = fit(rr, q, written)
  return tat, rem, rw + carry, rr, log
end
-- a bucket found full restarts: its TAT at now, charged (tat + r) too if it passed,
-- and an empty log
local function catch_up(tat, rem, rw, rr, log, now, q)
  if tat >= now then return tat, rem, rw, rr, log end
  local s, sr = add(tat - now, rem, q, rw, rr)
  if s < 0 then return now, 0, 0, 0, '' end
  return now, 0, s, sr, ''
end
-- kept until the TAT passes, and charged too unless every refund it could still
-- need is void by then: each refundable admission writes, so ``keep`` (the
-- reservation ttl) after the last write every grant before it is stale
local function store(key, tat, rem, rw, rr, log, now, q, keep)
  local s, sr = add(tat - now, rem, q, rw, rr)
  if s < 0 or (s == 0 and sr == 0) then
    redis.call('DEL', key)
    return
  end
  if tat > now + MAX_DEBT then tat, rem = now + MAX_DEBT, 0 end
  if s > MAX_DEBT then rw, rr, s = now + MAX_DEBT - tat, 0, MAX_DEBT end
  local v = string.format('%.0f', tat)
  if rw > 0 or rr > 0 or log ~= '' then
    v = v .. '.' .. string.format('%010.0f%010.0f%015.0f%010.0f', rem, q, rw, rr) .. log
  elseif rem > 0 then
    v = v .. '.' .. string.format('%010.0f%010.0f', rem, q)
  end
  if s > keep then s = keep end
  if tat - now > s then s = tat - now end
  redis.call('SET', key, v, 'PX', math.ceil(s / 1000) + 1)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
""".replace("MAX_DEBT", str(MAX_DEBT_US)).replace("LOGGED", str(LOGGED_DIGITS))

# KEYS: one bucket per limit. ARGV[1]: window µs, ARGV[2]: the reservation ttl µs; then
# per limit q, the charge (whole
# µs and remainder) and the admission check's charge (the cost, or 1 unit if it is 0).
# Returns {admitted, now µs, then per limit its level (whole µs and remainder) and how
# far refunds moved it back (the same)}: after the charge if admitted, before it (as
# stored) if not.
ACQUIRE_LUA = (
    _LUA_BUCKETS
    + """
local window, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local tats, rems, rws, rrs, logs, stored, qs = {}, {}, {}, {}, {}, {}, {}
local out = {1, now}
for i = 1, #KEYS do
  local a = 5 * i - 2
  local o = 4 * i - 1
  local q = tonumber(ARGV[a])
  local key = KEYS[i]
  local tat, rem, rw, rr, log = tats[key], rems[key], rws[key], rrs[key], logs[key]
  if tat == nil then
    tat, rem, rw, rr, log = load(key, q)
    tat, rem, rw, rr, log = catch_up(tat, rem, rw, rr, log, now, q)
  end
  if stored[key] == nil then stored[key] = {tat - now, rem, rw, rr} end
  out[o], out[o + 1], out[o + 2], out[o + 3] = tat - now, rem, rw, rr
  if q <= 0 then
    out[1] = 0
  else
    local nt, nr = add(tat, rem, q, tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
    if nt > now + window or (nt == now + window and nr > 0) then out[1] = 0 end
    tats[key], rems[key] = add(tat, rem, q, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]))
    rws[key], rrs[key], logs[key], qs[key] = rw, rr, log, q
    out[o], out[o + 1] = tats[key] - now, rems[key]
  end
end
if out[1] == 1 then
  for key, tat in pairs(tats) do
    local was = stored[key]
    if tat ~= was[1] + now or rems[key] ~= was[2] then
      store(key, tat, rems[key], rws[key], rrs[key], logs[key], now, qs[key], keep)
    end
  end
else
  for i = 1, #KEYS do
    local was, o = stored[KEYS[i]], 4 * i - 1
    out[o], out[o + 1], out[o + 2], out[o + 3] = was[1], was[2], was[3], was[4]
  end
end
return out
"""
)

# KEYS: one bucket per limit. ARGV[1]: grant stamp µs, ARGV[2]: ttl µs; then per
# limit q, the sign of the delta, its size (whole µs and remainder) and, for a refund,
# the grant's ``Mark`` (``charged`` after and before the charge; whole µs and remainder
# each). A refund gives back at most what of the charge is still ahead of now, and is
# logged (see ``_quota_core.refund``).
ADJUST_LUA = (
    _LUA_BUCKETS
    + """
local function later(aw, ar, bw, br) return aw > bw or (aw == bw and ar > br) end
-- the refund log as a list of {start whole, rem, amount whole, rem}, by ascending start
local function entries(log)
  local list = {}
  for at = 1, #log, LOGGED do
    list[#list + 1] = {
      tonumber(string.sub(log, at, at + 15)), tonumber(string.sub(log, at + 16, at + 25)),
      tonumber(string.sub(log, at + 26, at + 40)), tonumber(string.sub(log, at + 41, at + 50))}
  end
  return list
end
-- as _quota_core.log_refund: insert the refund, keep those above the newest whose
-- charge starts at or before now (its place plus its refund less rw + rr/q, plus
-- the newer refunds)
local function log_refund(list, sw, sr, bw, br, rw, rr, now, q)
  local at = #list + 1
  while at > 1 and later(list[at - 1][1], list[at - 1][2], sw, sr) do at = at - 1 end
  table.insert(list, at, {sw, sr, bw, br})
  local first, nw, nr = #list + 1, 0, 0
  for j = #list, 1, -1 do
    local e = list[j]
    local ew, er = e[1] - rw, e[2] - rr
    if er < 0 then ew, er = ew - 1, er + q end
    ew, er = add(ew, er, q, nw, nr)
    ew, er = add(ew, er, q, e[3], e[4])
    if not later(ew, er, now, 0) then break end
    first, nw, nr = j, add(nw, nr, q, e[3], e[4])
  end
  local kept = {}
  for j = first, #list do kept[#kept + 1] = list[j] end
  if #kept > MAX_LOGGED then
    -- merge the two closest into the lower place (the first such pair, as min() does)
    local at, gw, gr = 0, 0, 0
    for j = 2, #kept do
      local dw, dr = kept[j][1] - kept[j - 1][1], kept[j][2] - kept[j - 1][2]
      if dr < 0 then dw, dr = dw - 1, dr + q end
      if at == 0 or later(gw, gr, dw, dr) then at, gw, gr = j, dw, dr end
    end
    local low, high = kept[at - 1], kept[at]
    low[3], low[4] = add(low[3], low[4], q, high[3], high[4])
    table.remove(kept, at)
  end
  local out = {}
  for j = 1, #kept do
    local e = kept[j]
    out[j] = string.format('%016.0f%010.0f%015.0f%010.0f', e[1], e[2], e[3], e[4])
  end
  return table.concat(out)
end
local keep = tonumber(ARGV[2])
local fresh = now - tonumber(ARGV[1]) <= keep
for i = 1, #KEYS do
  local a = 8 * i - 5
  local q = tonumber(ARGV[a])
  local sign = tonumber(ARGV[a + 1])
  if q > 0 and sign ~= 0 and (sign > 0 or fresh) then
    local tat, rem, rw, rr, log = load(KEYS[i], q)
    local inc, irem = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    if sign < 0 then
      -- as _quota_core.grant_end: the mark less rw + rr/q, plus the logged refunds
      -- of newer grants (those whose charges started at or after it); then what of
      -- it is ahead of now
      local list = entries(log)
      local mw, mr = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
      local aw, ar = mw - rw, mr - rr
      if ar < 0 then aw, ar = aw - 1, ar + q end
      for _, e in ipairs(list) do
        if not later(mw, mr, e[1], e[2]) then aw, ar = add(aw, ar, q, e[3], e[4]) end
      end
      aw = aw - now
      if aw < inc or (aw == inc and ar < irem) then inc, irem = aw, ar end
      -- an absent bucket is full: nothing of the charge is ahead of now
      if (tat > now or (tat == now and rem > 0)) and (inc > 0 or (inc == 0 and irem > 0)) then
        tat, rem = tat - inc, rem - irem
        if rem < 0 then tat, rem = tat - 1, rem + q end
        rw, rr = add(rw, rr, q, inc, irem)
        local sw, sr = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
        log = log_refund(list, sw, sr, inc, irem, rw, rr, now, q)
        store(KEYS[i], tat, rem, rw, rr, log, now, q, keep)
      end
    else
      tat, rem, rw, rr, log = catch_up(tat, rem, rw, rr, log, now, q)
      tat, rem = add(tat, rem, q, inc, irem)
      store(KEYS[i], tat, rem, rw, rr, log, now, q, keep)
    end
  end
end
return 1
""".replace("MAX_LOGGED", str(MAX_LOGGED)).replace("LOGGED", str(LOGGED_DIGITS))
)


def charge(cost: int, q: int) -> tuple[int, int]:
    """``cost`` units of a limit of ``q`` per minute in µs: whole µs and remainder (1/q µs)."""
    if q <= 0:
        return 0, 0
    whole, rem = divmod(cost * PERIOD_US, q)
    return (whole, rem) if whole < MAX_DEBT_US else (MAX_DEBT_US, 0)
