//! The private redis-server every benchmark starts, and the Redis readings they share:
//! command counts from `INFO commandstats`, `used_memory`, the server version.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// A private redis-server for the run, killed on drop.
pub struct BenchRedis {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl BenchRedis {
    pub async fn start(binary: &str) -> anyhow::Result<Self> {
        let port = didit_sandbox::ports::free_port()?;
        let dir =
            std::env::temp_dir().join(format!("kyc-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {binary} (install redis-server)"))?;
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = kyc_worker::queue::connect(&url).await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, url, dir })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn flush(conn: &mut impl redis::aio::ConnectionLike) -> anyhow::Result<()> {
    redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Calls of every command since the last RESETSTAT, minus our own measuring commands.
pub async fn commands_since_reset(
    conn: &mut impl redis::aio::ConnectionLike,
) -> anyhow::Result<u64> {
    Ok(command_calls_since_reset(conn).await?.values().sum())
}

/// Calls per command (scripted ones included) since the last RESETSTAT, minus our own
/// measuring commands.
pub async fn command_calls_since_reset(
    conn: &mut impl redis::aio::ConnectionLike,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut calls = raw_command_calls(conn).await?;
    calls.retain(|name, _| {
        !matches!(
            name.as_str(),
            "info" | "config" | "flushall" | "ping" | "client|setinfo" | "hello" | "client|setname"
        )
    });
    Ok(calls)
}

/// Calls per command (scripted ones included) since the last RESETSTAT, every command.
pub async fn raw_command_calls(
    conn: &mut impl redis::aio::ConnectionLike,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut calls_by_name = BTreeMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let (name, stats) = rest.split_once(':').unwrap_or((rest, ""));
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        calls_by_name.insert(name.to_owned(), calls);
    }
    Ok(calls_by_name)
}

pub async fn used_memory(conn: &mut impl redis::aio::ConnectionLike) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// One byte count of `INFO memory` by name, e.g. `mem_clients_normal` (the buffers of every
/// normal client connection) or `used_memory_dataset` (`used_memory` less the server's
/// overhead: client buffers, scripts, the keyspace's tables).
pub async fn memory_field(
    conn: &mut impl redis::aio::ConnectionLike,
    name: &str,
) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(field, _)| *field == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("INFO memory has no {name}"))
}

pub async fn redis_version(conn: &mut impl redis::aio::ConnectionLike) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned()
}

/// CPU seconds (user + system) redis-server has used since it started.
pub async fn redis_cpu_seconds(conn: &mut impl redis::aio::ConnectionLike) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (Linux, with
/// the kernel's usual 100 ticks a second); `None` elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// CPU seconds (user + system) process `pid` has used; `None` once it is gone or off Linux.
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&pid.to_string())
}

fn cpu_seconds_of(proc_dir: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{proc_dir}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // the first, utime the 12th, stime the 13th.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The host's 1-minute load average from `/proc/loadavg` (runnable threads, ours included).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's resident memory from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resident {
    /// `VmRSS`: resident now.
    pub now: u64,
    /// `VmHWM`: the most it has been resident since it started.
    pub peak: u64,
}

pub fn resident(pid: u32) -> Option<Resident> {
    parse_resident(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_resident(status: &str) -> Option<Resident> {
    let kib = |name: &str| -> Option<u64> {
        let value = status.lines().find_map(|l| l.strip_prefix(name))?;
        value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some(Resident {
        now: kib("VmRSS:")? * 1024,
        peak: kib("VmHWM:")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc_status_in_bytes() {
        let status = "Name:\tkyc-worker\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(
            parse_resident(status),
            Some(Resident {
                now: 10 << 20,
                peak: 20 << 20
            })
        );
        assert_eq!(parse_resident("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        assert!(process_cpu_seconds().is_some());
        let mine = resident(std::process::id()).expect("/proc/<pid>/status");
        assert!(mine.now > 0 && mine.peak >= mine.now, "{mine:?}");
    }
}
