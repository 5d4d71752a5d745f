//! Lua scripts: each moves a job between structures atomically, so a crash between two
//! commands can neither lose nor duplicate it. Scripts take every key they touch in KEYS
//! (standalone Redis; the same discipline keeps them correct under a proxy).
//!
//! Stream entries carry `j` (the envelope), and may carry `t` (Unix ms the job became due,
//! for lag), `d` (deliveries abandoned by dead processes) and `r` (replayed from the dead
//! set: reset attempts).
//!
//! Scripts that finish a delivery first check that the entry is still pending for the
//! finishing consumer. A delivery another process reclaimed meanwhile is theirs: finishing
//! it here would fork the job (a reschedule here, a run there). The check also makes every
//! finishing script idempotent, so a caller may retry one whose reply was lost.

use std::sync::LazyLock;

use redis::Script;

/// Moves due delayed jobs to the ready stream, at most ARGV[1] per call so one call never
/// blocks Redis for long, whatever the backlog. "Due" is Redis's clock, so processes with
/// skewed clocks agree. When it moved jobs and more wait, it announces the new earliest due
/// time on the wake channel, so other promoters drop their timer for what was just moved.
/// KEYS: delayed, payloads, ready. ARGV: limit, wake channel.
/// Returns {moved, earliest due ms left (-1 when none), Redis now ms}.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due, 2 do
  local id = due[i]
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('XADD', KEYS[3], '*', 'j', job, 't', due[i + 1])
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_ms = -1
if next[2] then next_ms = tonumber(next[2]) end
if #due > 0 and next_ms >= 0 then
  redis.call('PUBLISH', ARGV[2], 'n:' .. next_ms)
end
return {#due / 2, next_ms, now}
"#,
    )
});

/// Schedules a job for a later time. The job id is its slot: scheduling it again moves it,
/// or, with ARGV[4] = 1, moves it only earlier (an earlier run already there wins). A job
/// that becomes the earliest of the queue wakes the promoters (ARGV[5], the wake channel).
/// KEYS: delayed, payloads. ARGV: job id, due_ms, envelope, earlier_only, wake channel.
pub static SCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[4] == '1' then
  local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if current and tonumber(current) <= tonumber(ARGV[2]) then
    return 0
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if not first[2] or tonumber(ARGV[2]) < tonumber(first[2]) then
  redis.call('PUBLISH', ARGV[5], 's:' .. ARGV[2])
end
return 1
"#,
    )
});

/// Runs a slotted job now: takes the slot's scheduled run out of the delayed set and adds
/// the job to the ready stream in one step, so the slot never holds two runs and a webhook
/// does not wait for the next promotion.
/// KEYS: delayed, payloads, ready. ARGV: job id, envelope, now ms.
pub static RUN_NOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'j', ARGV[2], 't', ARGV[3])
return 1
"#,
    )
});

/// Finishes a delivery by scheduling the job's next run. If the slot already holds an
/// earlier run (a webhook asked for "now" while this one ran), that one wins. A run that
/// becomes the earliest of the queue wakes the promoters, as in [`SCHEDULE`].
/// KEYS: delayed, payloads, ready. ARGV: job id, due_ms, envelope, entry id, group, consumer,
/// wake channel.
/// Returns 0 when the entry is not ours any more (nothing written).
pub static RESCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[3], ARGV[5], ARGV[4], ARGV[4], 1)
if not p[1] or p[1][2] ~= ARGV[6] then
  return 0
end
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not current or tonumber(current) > tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  if not first[2] or tonumber(ARGV[2]) < tonumber(first[2]) then
    redis.call('PUBLISH', ARGV[7], 's:' .. ARGV[2])
  end
end
redis.call('XACK', KEYS[3], ARGV[5], ARGV[4])
redis.call('XDEL', KEYS[3], ARGV[4])
return 1
"#,
    )
});

/// Dead-letters a delivery with its reason.
/// KEYS: dead, ready. ARGV: envelope (may be undecodable text), reason, job id, attempts,
/// dead-set max length, entry id, group, consumer.
/// Returns 0 when the entry is not ours any more (nothing written).
pub static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[2], ARGV[7], ARGV[6], ARGV[6], 1)
if not p[1] or p[1][2] ~= ARGV[8] then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'j', ARGV[1], 'reason', ARGV[2], 'id', ARGV[3], 'attempts', ARGV[4])
redis.call('XACK', KEYS[2], ARGV[7], ARGV[6])
redis.call('XDEL', KEYS[2], ARGV[6])
return 1
"#,
    )
});

/// Gives entries back to the queue as fresh entries, so any worker takes them at once:
/// used on shutdown for jobs fetched but not started (ARGV[2] = 0) and for jobs reclaimed
/// from a dead consumer (ARGV[2] = 1, which counts one more abandoned delivery).
/// Only entries still pending for ARGV[3] (this consumer) are moved.
/// KEYS: ready. ARGV: group, count_delivery, consumer, entry ids…
/// Returns the ids moved.
pub static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local moved = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[3] then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if e[1] then
      local f = e[1][2]
      local fields = {}
      local d = 0
      for k = 1, #f, 2 do
        if f[k] == 'd' then
          d = tonumber(f[k + 1])
        else
          fields[#fields + 1] = f[k]
          fields[#fields + 1] = f[k + 1]
        end
      end
      fields[#fields + 1] = 'd'
      fields[#fields + 1] = d + tonumber(ARGV[2])
      redis.call('XADD', KEYS[1], '*', unpack(fields))
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    moved[#moved + 1] = id
  end
end
return moved
"#,
    )
});

/// Keeps this consumer's entries fresh so `XAUTOCLAIM` elsewhere does not take a job that is
/// still running. An entry another consumer has claimed meanwhile is left alone and
/// returned, so the caller knows it lost it.
/// KEYS: ready. ARGV: group, consumer, entry ids… Returns the ids no longer ours.
pub static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
"#,
    )
});

/// Moves one dead job back to the ready stream, marked so its attempts start again.
/// KEYS: dead, ready. ARGV: dead entry id. Returns 1 when it existed.
pub static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not e[1] then
  return 0
end
local f = e[1][2]
for k = 1, #f, 2 do
  if f[k] == 'j' then
    redis.call('XADD', KEYS[2], '*', 'j', f[k + 1], 'r', 1)
  end
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Removes a consumer that holds nothing and has been idle past ARGV[2] ms; checked and
/// done in one step, so a consumer that reads meanwhile is never deleted with its entries.
/// KEYS: ready. ARGV: group, idle_ms, consumer. Returns 1 when removed.
pub static FORGET_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for k = 1, #c, 2 do
    if c[k] == 'name' then name = c[k + 1]
    elseif c[k] == 'pending' then pending = c[k + 1]
    elseif c[k] == 'idle' then idle = c[k + 1] end
  end
  if name == ARGV[3] then
    if pending == 0 and idle > tonumber(ARGV[2]) then
      return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[3]) >= 0 and 1 or 0
    end
    return 0
  end
end
return 0
"#,
    )
});
