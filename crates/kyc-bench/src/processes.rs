//! Real `kyc-worker run` child processes: the `kyc-worker` binary built beside `kyc-bench`, configured
//! only through `KYC__…` environment variables, killed and reaped when dropped, so an error
//! anywhere in the bench never leaves one running.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::server::{pid_cpu_seconds, resident, Resident};

/// How long a child may take to answer `/readyz`.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The `kyc-worker` binary of the same build: cargo puts every binary of the workspace in one
/// directory, so it sits beside this one.
fn worker_binary() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("cannot find the kyc-bench binary")?;
    let worker = bench.with_file_name(format!("kyc-worker{}", std::env::consts::EXE_SUFFIX));
    if !worker.is_file() {
        bail!(
            "{} not found: build it beside kyc-bench (`cargo build --release --bin kyc-worker`)",
            worker.display()
        );
    }
    Ok(worker)
}

pub struct WorkerProcess {
    child: Child,
    port: u16,
}

impl WorkerProcess {
    /// Starts `kyc-worker run` with exactly `env` as its settings: inherited `KYC…` variables
    /// are removed, and it runs in the temp directory so no `config/{KYC_ENV}.toml` overlay is
    /// picked up. Its errors go to the bench's stderr.
    pub fn spawn(env: &[(String, String)], port: u16) -> anyhow::Result<Self> {
        Self::spawn_binary(&worker_binary()?, env, port)
    }

    /// [`WorkerProcess::spawn`] of another build of `kyc-worker` (e.g. one to compare with).
    pub fn spawn_binary(
        exe: &std::path::Path,
        env: &[(String, String)],
        port: u16,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(exe);
        command
            .arg("run")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KYC") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} run", exe.display()))?;
        Ok(Self { child, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `GET /readyz` (Redis reachable, HTTP serving) until it answers 200.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("kyc-worker run exited before it was ready: {status}");
            }
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "kyc-worker run on port {} not ready after {READY_LIMIT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        pid_cpu_seconds(self.pid())
    }

    pub fn resident(&self) -> Option<Resident> {
        resident(self.pid())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Established TCP connections on this host whose remote end is `127.0.0.1:port` (from
/// `/proc/net/tcp`): the HTTP requests the fleet has open at the sandbox.
pub fn connections_to(port: u16) -> anyhow::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
    Ok(count_connections(&table, port))
}

fn count_connections(table: &str, port: u16) -> usize {
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(2);
            // rem_address, then st (01 = ESTABLISHED)
            fields.next() == Some(remote.as_str()) && fields.next() == Some("01")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_established_connections_to_the_port_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:9C40 0100007F:1F90 01 00000000:00000000\n\
            1: 0100007F:9C41 0100007F:1F90 06 00000000:00000000\n\
            2: 0100007F:1F90 0100007F:9C40 01 00000000:00000000\n\
            3: 0100007F:9C42 0100007F:1F90 01 00000000:00000000\n";
        assert_eq!(count_connections(table, 0x1F90), 2);
    }
}
