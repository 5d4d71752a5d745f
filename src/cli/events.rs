//! `kyc-worker events tail`: the outcome events as consumers see them, from every partition of
//! the stream, without joining a consumer group (an operator's look must not leave entries
//! pending for nobody).
//!
//! Without `--from`/`--since` it prints the latest events, like `tail`; with either it prints
//! everything from that point on, partition by partition merged in publication order. With
//! `--follow` it keeps printing new events, one blocking read per partition on a connection
//! of its own, until interrupted.

use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::sync::mpsc;

use super::CliError;
use crate::{
    domain::rfc3339,
    queue::{now_ms, Connector},
    settings::{parse_duration, Settings},
    store::{merge_events, Store, StoredEvent},
};

/// Entries read per round trip while catching up.
const PAGE: usize = 500;
/// How long one blocking read waits before it is sent again (below the client's response
/// timeout).
const FOLLOW_BLOCK_MS: u64 = 5_000;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print outcome events from every partition: the latest ones, or everything from an
    /// entry id or a time on; --follow keeps printing new ones
    Tail(TailArgs),
}

#[derive(Debug, Args)]
struct TailArgs {
    /// One JSON object per line: every field of the event, plus `id` (the stream entry id)
    /// and `stream`. The default one-line format leaves out `vendor_data` and `data`
    #[arg(long)]
    json: bool,
    /// Keep printing events as they are published, until interrupted
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print from this stream entry id on, inclusive (e.g. 1764694800000-0)
    #[arg(long, value_parser = parse_entry_id, conflicts_with = "since")]
    from: Option<String>,
    /// Print what was published in this last span of time (e.g. 10m, 2h, 7d)
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Without --from or --since: how many of the latest events to print
    #[arg(long, short = 'n', default_value_t = 20)]
    count: usize,
}

/// Where reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// The latest `n` events.
    Latest(usize),
    /// Entry id, inclusive.
    From(String),
}

pub async fn run(args: EventsArgs, settings: &Settings) -> Result<(), CliError> {
    let EventsCommand::Tail(tail) = args.command;
    let start = match (&tail.from, tail.since) {
        (Some(id), _) => Start::From(id.clone()),
        (None, Some(ago)) => {
            let ago = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
            Start::From(format!("{}-0", now_ms().saturating_sub(ago)))
        }
        (None, None) => Start::Latest(tail.count),
    };
    let connector = super::redis(settings).await?;
    let store = store_on(&connector, settings);
    let mut cursors = Vec::new();
    let mut printed = Vec::new();
    for stream in store.event_streams() {
        let (events, cursor) = catch_up(&store, &stream, &start).await?;
        printed.extend(events);
        cursors.push((stream, cursor));
    }
    let mut printed = merge_events(printed);
    if let Start::Latest(n) = start {
        printed.drain(..printed.len().saturating_sub(n));
    }
    for event in &printed {
        print(event, tail.json);
    }
    if tail.follow {
        follow(&connector, settings, cursors, tail.json).await?;
    }
    Ok(())
}

fn store_on(connector: &Connector, settings: &Settings) -> Store {
    Store::new(
        connector.connect(),
        &settings.redis.prefix,
        settings.events.clone(),
    )
}

/// One partition's events from `start`, and the id after which following goes on.
async fn catch_up(
    store: &Store,
    stream: &str,
    start: &Start,
) -> Result<(Vec<StoredEvent>, String), CliError> {
    let read =
        |e| CliError::Failed(anyhow::Error::new(e).context("cannot read the outcome stream"));
    match start {
        Start::Latest(n) => {
            let events = store.last_events(stream, *n).await.map_err(read)?;
            let cursor = events
                .last()
                .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
            Ok((events, cursor))
        }
        Start::From(id) => {
            let mut events = Vec::new();
            let mut from = id.clone();
            loop {
                let page = store.events_from(stream, &from, PAGE).await.map_err(read)?;
                let full = page.len() == PAGE;
                if let Some(last) = page.last() {
                    from = format!("({}", last.id);
                }
                events.extend(page);
                if !full {
                    break;
                }
            }
            let cursor = events.last().map_or_else(|| before(id), |e| e.id.clone());
            Ok((events, cursor))
        }
    }
}

/// Prints new events of every partition as they arrive.
async fn follow(
    connector: &Connector,
    settings: &Settings,
    cursors: Vec<(String, String)>,
    json: bool,
) -> Result<(), CliError> {
    let (tx, mut rx) = mpsc::channel::<Result<StoredEvent, CliError>>(PAGE);
    for (stream, mut cursor) in cursors {
        // A connection per partition: a blocked read holds its connection.
        let store = store_on(connector, settings);
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match store.events_after(&stream, &cursor, FOLLOW_BLOCK_MS).await {
                    Ok(events) => {
                        for event in events {
                            cursor.clone_from(&event.id);
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let e = anyhow::Error::new(e).context("lost the outcome stream");
                        let _ = tx.send(Err(CliError::Failed(e))).await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    while let Some(event) = rx.recv().await {
        print(&event?, json);
    }
    Ok(())
}

fn print(event: &StoredEvent, json: bool) {
    if json {
        let mut object = serde_json::Map::new();
        object.insert("id".into(), event.id.clone().into());
        object.insert("stream".into(), event.stream.clone().into());
        for (k, v) in &event.fields {
            object.insert(k.clone(), v.clone().into());
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!("{}", line(event));
    }
}

/// The one-line form: when, what, which status, for which request and session, decided by
/// whom. Personal data (`vendor_data`, the link in `data`) stays out of it.
fn line(event: &StoredEvent) -> String {
    let field = |name| event.field(name).unwrap_or("-");
    let mut line = format!(
        "{}  {:<37} {:<12} request={} session={}",
        rfc3339(event.published_ms()),
        field("type"),
        field("status"),
        field("request_id"),
        field("session_id"),
    );
    if let Some(by) = event.field("decided_by").filter(|by| !by.is_empty()) {
        line.push_str(" decided_by=");
        line.push_str(by);
    }
    line
}

/// A stream entry id as `--from` takes it: `<ms>` or `<ms>-<seq>`.
fn parse_entry_id(value: &str) -> Result<String, String> {
    let (ms, seq) = value.split_once('-').unwrap_or((value, "0"));
    match (ms.parse::<u64>(), seq.parse::<u64>()) {
        (Ok(ms), Ok(seq)) => Ok(format!("{ms}-{seq}")),
        _ => Err(format!(
            "`{value}` is not a stream entry id: expected <milliseconds>-<sequence>, e.g. 1764694800000-0"
        )),
    }
}

/// The entry id just before `id`: an exclusive cursor for reads that must include `id`.
fn before(id: &str) -> String {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let (ms, seq) = (
        ms.parse::<u64>().unwrap_or(0),
        seq.parse::<u64>().unwrap_or(0),
    );
    match (ms, seq) {
        (0, 0) => "0-0".to_owned(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_checked_and_normalised() {
        assert_eq!(
            parse_entry_id("1764694800000-3").as_deref(),
            Ok("1764694800000-3")
        );
        assert_eq!(
            parse_entry_id("1764694800000").as_deref(),
            Ok("1764694800000-0")
        );
        for bad in ["", "abc", "12-", "-3", "1-2-3", "$"] {
            let error = parse_entry_id(bad).expect_err(bad);
            assert!(error.contains("stream entry id"), "{error}");
        }
    }

    #[test]
    fn the_cursor_before_an_id_excludes_nothing_from_it_on() {
        assert_eq!(before("10-5"), "10-4");
        assert_eq!(before("10-0"), format!("9-{}", u64::MAX));
        assert_eq!(before("0-0"), "0-0");
    }

    #[test]
    fn the_one_line_form_leaves_personal_data_out() {
        let event = StoredEvent {
            id: "1764694800000-0".into(),
            stream: "kyc:events".into(),
            fields: [
                ("type", "kyc.session.decided"),
                ("request_id", "r-1"),
                ("session_id", "s-1"),
                ("vendor_data", "alice@example.org"),
                ("status", "Approved"),
                ("decided_by", "didit"),
                ("data", r#"{"url":"https://verify.didit.me/x"}"#),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        };
        let text = line(&event);
        assert!(text.starts_with("2025-12-02T17:00:00Z"), "{text}");
        assert!(text.contains("kyc.session.decided"));
        assert!(text.contains("Approved"));
        assert!(text.contains("request=r-1 session=s-1 decided_by=didit"));
        assert!(!text.contains("alice"));
        assert!(!text.contains("verify.didit.me"));
    }
}
