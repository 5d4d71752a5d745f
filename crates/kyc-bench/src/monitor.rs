//! Round trips to Redis, counted with `MONITOR`: every command a client sends is one line
//! of its output, and the calls a script makes are marked `lua` instead of a client address,
//! so the top-level commands are the lines that carry an address. The bench's own
//! measuring connection is left out by its address.
//!
//! `MONITOR` costs redis-server CPU for every line it writes, so a run that counts round
//! trips does not also measure Redis CPU.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    task::JoinHandle,
};

/// Top-level commands seen so far, by lower-case name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundTrips {
    pub by_name: BTreeMap<String, u64>,
}

impl RoundTrips {
    pub fn total(&self) -> u64 {
        self.by_name.values().sum()
    }

    /// What was counted after `earlier` was taken.
    pub fn since(&self, earlier: &RoundTrips) -> RoundTrips {
        RoundTrips {
            by_name: self
                .by_name
                .iter()
                .map(|(name, n)| {
                    let before = earlier.by_name.get(name).copied().unwrap_or(0);
                    (name.clone(), n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// A `MONITOR` connection counting what every client but `ignored` sends; stops when
/// dropped.
pub struct Monitor {
    counts: Arc<Mutex<RoundTrips>>,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Connects to the server of `url` (`redis://host:port`) and starts counting once
    /// `MONITOR` is acknowledged.
    pub async fn start(url: &str, ignored: &str) -> anyhow::Result<Self> {
        let addr = url
            .strip_prefix("redis://")
            .map(|rest| rest.trim_end_matches('/'))
            .with_context(|| format!("{url} is not a redis://host:port URL"))?;
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr} for MONITOR"))?;
        let (read, mut write) = stream.into_split();
        write.write_all(b"MONITOR\r\n").await?;
        let mut lines = BufReader::new(read).lines();
        match lines.next_line().await? {
            Some(ok) if ok == "+OK" => {}
            other => bail!("MONITOR answered {other:?}"),
        }
        let counts: Arc<Mutex<RoundTrips>> = Arc::default();
        let tally = counts.clone();
        let ignored = ignored.to_owned();
        let task = tokio::spawn(async move {
            // The write half stays open for as long as the connection is read.
            let _write = write;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(name) = top_level_command(&line, &ignored) {
                    *tally
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .by_name
                        .entry(name)
                        .or_insert(0) += 1;
                }
            }
        });
        Ok(Self { counts, task })
    }

    pub fn counts(&self) -> RoundTrips {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lower-case command name of a `MONITOR` line sent by a client other than `ignored`;
/// `None` for a script's call (`[0 lua]`), the ignored client or anything else.
/// A line reads `+1700000000.123456 [0 127.0.0.1:50000] "EVALSHA" "…" …`.
fn top_level_command(line: &str, ignored: &str) -> Option<String> {
    let (_, rest) = line.split_once(" [")?;
    let (source, command) = rest.split_once("] ")?;
    let (_, client) = source.split_once(' ')?;
    if client == "lua" || client == ignored {
        return None;
    }
    let name = command.strip_prefix('"')?.split('"').next()?;
    Some(name.to_ascii_lowercase())
}

/// The address (`ip:port`) Redis knows the connection `conn` by, from `CLIENT INFO`.
pub async fn client_addr(conn: &mut impl redis::aio::ConnectionLike) -> anyhow::Result<String> {
    let info: String = redis::cmd("CLIENT").arg("INFO").query_async(conn).await?;
    info.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .map(str::to_owned)
        .context("CLIENT INFO has no addr")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commands_sent_by_other_clients_are_counted() {
        let me = "127.0.0.1:40000";
        assert_eq!(
            top_level_command(
                r#"+1700000000.123456 [0 127.0.0.1:50000] "EVALSHA" "abc" "1" "kyc:x""#,
                me
            ),
            Some("evalsha".to_owned())
        );
        assert_eq!(
            top_level_command(r#"+1700000000.123457 [0 lua] "HSET" "kyc:x" "a" "1""#, me),
            None
        );
        assert_eq!(
            top_level_command(r#"+1700000000.123458 [0 127.0.0.1:40000] "INFO" "cpu""#, me),
            None
        );
        assert_eq!(top_level_command("+OK", me), None);
    }

    #[test]
    fn counts_since_an_earlier_reading_are_the_difference() {
        let earlier = RoundTrips {
            by_name: [("get".to_owned(), 2)].into_iter().collect(),
        };
        let now = RoundTrips {
            by_name: [("get".to_owned(), 5), ("xadd".to_owned(), 1)]
                .into_iter()
                .collect(),
        };
        let since = now.since(&earlier);
        assert_eq!(since.total(), 4);
        assert_eq!(since.by_name["get"], 3);
    }
}
