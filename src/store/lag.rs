//! How far each consumer group of the outcome stream is behind, for
//! `kyc_events_consumer_lag{group}`.
//!
//! Redis reports a group's `lag` itself (`XINFO GROUPS`), but only while no entry after the
//! group's last delivered id was deleted: an erasure deletes the person's events, and from
//! then on Redis answers `nil` until the group has read past the deleted entry. A `nil` read
//! as 0 would show an idle consumer as caught up, so then the entries after the group's
//! last delivered id are counted, inside Redis, a bounded chunk per script call.

use std::{collections::BTreeMap, sync::LazyLock};

use redis::Script;

use super::Store;

/// Entries one script call counts at most, so one call never holds Redis for long.
const COUNT_CHUNK: u64 = 10_000;
/// Entries one `XRANGE` inside the script returns.
const COUNT_PAGE: u64 = 500;

/// Counts entries after an id, up to a bound.
/// KEYS: the stream. ARGV: the id to count after, page size, bound.
/// Returns `{counted, next}`: `next` is the last id counted when the bound stopped the
/// count, or `""` when the stream's end was reached.
static COUNT_AFTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local from, page, bound = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = 0
while n < bound do
  local entries = redis.call('XRANGE', KEYS[1], '(' .. from, '+', 'COUNT', page)
  n = n + #entries
  if #entries < page then return {n, ''} end
  from = entries[#entries][1]
end
return {n, from}
"#,
    )
});

/// One consumer group of one stream as `XINFO GROUPS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupInfo {
    name: String,
    last_delivered_id: String,
    /// `None` when Redis cannot tell (an entry after the group's position was deleted).
    lag: Option<u64>,
}

impl Store {
    /// The streams that make up the outcome stream (its partitions, when it has several).
    pub fn event_streams(&self) -> Vec<String> {
        vec![self.events_key()]
    }

    /// Entries not yet delivered to each consumer group, summed over every stream of the
    /// outcome stream; a group that reads only some partitions counts in those.
    pub(crate) async fn event_consumer_lag(&self) -> super::StoreResult<Vec<(String, u64)>> {
        let mut c = self.conn.clone();
        let mut lags: BTreeMap<String, u64> = BTreeMap::new();
        for stream in self.event_streams() {
            for group in groups(&mut c, &stream).await? {
                let lag = match group.lag {
                    Some(lag) => lag,
                    None => count_after(&mut c, &stream, &group.last_delivered_id).await?,
                };
                *lags.entry(group.name).or_default() += lag;
            }
        }
        Ok(lags.into_iter().collect())
    }
}

/// The consumer groups of `stream` (none when the stream does not exist yet).
async fn groups(
    c: &mut crate::queue::RedisConnection,
    stream: &str,
) -> redis::RedisResult<Vec<GroupInfo>> {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(c)
        .await;
    let reply = match reply {
        Ok(r) => r,
        // No such key: no entry was ever published, so no group can lag.
        Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let redis::Value::Array(groups) = reply else {
        return Ok(Vec::new());
    };
    Ok(groups.into_iter().filter_map(parse_group).collect())
}

fn parse_group(group: redis::Value) -> Option<GroupInfo> {
    let fields: std::collections::HashMap<String, redis::Value> =
        redis::from_redis_value(group).ok()?;
    let text = |k: &str| -> Option<String> {
        fields
            .get(k)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
    };
    Some(GroupInfo {
        name: text("name")?,
        last_delivered_id: text("last-delivered-id").unwrap_or_else(|| "0-0".to_owned()),
        lag: fields
            .get("lag")
            .filter(|v| !matches!(v, redis::Value::Nil))
            .and_then(|v| redis::from_redis_value_ref(v).ok()),
    })
}

/// Every entry of `stream` after `id`, counted a bounded chunk per script call.
async fn count_after(
    c: &mut crate::queue::RedisConnection,
    stream: &str,
    id: &str,
) -> redis::RedisResult<u64> {
    let mut total = 0;
    let mut from = id.to_owned();
    loop {
        let (counted, next): (u64, String) = COUNT_AFTER
            .key(stream)
            .arg(&from)
            .arg(COUNT_PAGE)
            .arg(COUNT_CHUNK)
            .invoke_async(c)
            .await?;
        total += counted;
        if next.is_empty() {
            return Ok(total);
        }
        from = next;
    }
}
