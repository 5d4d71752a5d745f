//! Lua scripts: each moves a job between structures atomically, so a crash between two
//! commands can neither lose nor duplicate it. Scripts take every key they touch in KEYS
//! (standalone Redis; the same discipline keeps them correct under a proxy).

use std::sync::LazyLock;

use redis::Script;

/// Moves due delayed jobs to the ready stream, at most ARGV[2] per call so one call never
/// blocks Redis for long, whatever the backlog.
/// KEYS: delayed, payloads, ready. ARGV: now_ms, limit. Returns the number moved.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('XADD', KEYS[3], '*', 'j', job)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"#,
    )
});

/// Schedules a job (new, or a retry replacing a running entry) for a later time. With an
/// entry id it also finishes that entry in the same step.
/// KEYS: delayed, payloads, ready. ARGV: job id, due_ms, envelope, [entry id, group].
pub static SCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[4] then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[4])
  redis.call('XDEL', KEYS[3], ARGV[4])
end
return 1
"#,
    )
});

/// Dead-letters a job, finishing its ready entry if it has one.
/// KEYS: dead, ready. ARGV: envelope (may be undecodable text), reason, job id, attempts,
/// dead-set max length, [entry id, group].
pub static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'j', ARGV[1], 'reason', ARGV[2], 'id', ARGV[3], 'attempts', ARGV[4])
if ARGV[6] then
  redis.call('XACK', KEYS[2], ARGV[7], ARGV[6])
  redis.call('XDEL', KEYS[2], ARGV[6])
end
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
      local job, d = nil, 0
      for k = 1, #f, 2 do
        if f[k] == 'j' then job = f[k+1] elseif f[k] == 'd' then d = tonumber(f[k+1]) end
      end
      if job then
        redis.call('XADD', KEYS[1], '*', 'j', job, 'd', d + tonumber(ARGV[2]))
      end
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    moved[#moved+1] = id
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
    lost[#lost+1] = id
  end
end
return lost
"#,
    )
});
