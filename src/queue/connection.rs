//! The one way the fleet connects to Redis, whatever the topology.
//!
//! Why one factory: TLS (a private CA, a client certificate), ACL credentials and Sentinel
//! discovery must apply to every connection the process opens — the shared multiplexed one
//! of the queue, store and rate limiter, the dedicated blocking ones of the fetchers and the
//! intake reader, and the promoter's wake-up subscription ([`Connector::pubsub`]) — and a failure must say which setting is at fault. A [`Connector`] is
//! built once from `[redis]`; it reads and checks the TLS files up front (a missing or
//! unparsable file is a setting error before any network traffic) and hands out
//! [`RedisConnection`]s.
//!
//! A [`RedisConnection`] is lazy: making one does no I/O, so a process starts while Redis is
//! down and connects when it comes back. In sentinel mode it asks the sentinels for the
//! master, checks with `ROLE` that the node really is the master, and forgets it on any error
//! that may mean the master moved (a dropped connection, `READONLY`, `MASTERDOWN`): the next
//! command asks the sentinels again, so a failover is followed without a restart. Commands
//! that fail during the gap return their error; callers already retry (jobs back off, fetchers
//! wait, readiness goes red).
//!
//! [`Connector::check`] tells the two kinds of failure apart: a deterministic one (wrong
//! password, untrusted certificate, unknown master name) is a [`SettingsError`] naming the key
//! to fix, and the process exits 2; an unreachable host is [`ConnectError::Unreachable`],
//! retried with backoff while `/readyz` is red.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub},
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, RedisFuture, RedisResult, ServerErrorKind, TlsCertificates,
    Value,
};
use secrecy::ExposeSecret;

use crate::settings::{RedisMode, RedisNode, RedisSettings, SettingsError};

/// How long one connection attempt may take (TCP, TLS and the handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than any script we run and than a blocking read (`queue.fetch_block` < 10 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A sentinel answers from memory: a slow one is skipped for the next.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why Redis cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Retrying will not help: a setting is wrong (names the key, never its value).
    #[error(transparent)]
    Setting(#[from] SettingsError),
    /// No node answered, or the master is moving: retry with backoff.
    #[error("cannot connect to Redis at {hosts}: {source}")]
    Unreachable { hosts: String, source: RedisError },
}

impl ConnectError {
    /// `true` for an outage, `false` for a setting to fix.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Builds every Redis connection of a process from the `[redis]` settings. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<Topology>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("hosts", &self.hosts())
            .finish()
    }
}

enum Topology {
    Standalone {
        client: Client,
        /// The key to name when the server refuses the credentials.
        credentials_key: &'static str,
        hosts: String,
    },
    Sentinel {
        sentinels: Vec<(RedisNode, Client)>,
        master_name: String,
        /// Credentials and TLS of the data nodes, applied to the address a sentinel names.
        data: RedisConnectionInfo,
        tls: Option<TlsCertificates>,
        use_tls: bool,
        credentials_key: &'static str,
        hosts: String,
    },
}

/// Which side of a sentinel deployment an error came from, to name the right key.
#[derive(Clone, Copy)]
enum Side {
    Data,
    Sentinel,
}

impl Connector {
    /// Reads the TLS files and prepares the topology; no network traffic.
    pub fn new(settings: &RedisSettings) -> Result<Self, SettingsError> {
        let tls = certificates(settings)?;
        let topology = match settings.mode {
            RedisMode::Standalone => {
                let mut info = settings
                    .url()
                    .into_connection_info()
                    .map_err(|e| SettingsError::new("redis.url", e.to_string()))?;
                let url_has_credentials = info.redis_settings().password().is_some();
                let mut redis = info.redis_settings().clone();
                if let Some(user) = &settings.username {
                    redis = redis.set_username(user);
                }
                if let Some(password) = &settings.password {
                    redis = redis.set_password(password.expose_secret());
                }
                info = info.set_redis_settings(redis);
                let hosts = describe(info.addr());
                let client = match tls {
                    Some(certs) => Client::build_with_tls(info, certs),
                    None => Client::open(info),
                }
                .map_err(|e| SettingsError::new("redis.url", e.to_string()))?;
                Topology::Standalone {
                    client,
                    credentials_key: if settings.password.is_none() && url_has_credentials {
                        "redis.url"
                    } else {
                        "redis.password"
                    },
                    hosts,
                }
            }
            RedisMode::Sentinel => {
                let mut sentinel_auth = RedisConnectionInfo::default();
                if let Some(user) = &settings.sentinel_username {
                    sentinel_auth = sentinel_auth.set_username(user);
                }
                if let Some(password) = &settings.sentinel_password {
                    sentinel_auth = sentinel_auth.set_password(password.expose_secret());
                }
                let sentinels = settings
                    .nodes
                    .iter()
                    .map(|node| {
                        let client =
                            node_client(node, sentinel_auth.clone(), settings.tls, tls.as_ref())
                                .map_err(|e| SettingsError::new("redis.nodes", e.to_string()))?;
                        Ok((node.clone(), client))
                    })
                    .collect::<Result<Vec<_>, SettingsError>>()?;
                let mut data = RedisConnectionInfo::default();
                if let Some(user) = &settings.username {
                    data = data.set_username(user);
                }
                if let Some(password) = &settings.password {
                    data = data.set_password(password.expose_secret());
                }
                let hosts = format!(
                    "sentinels {} (master \"{}\")",
                    settings
                        .nodes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    settings.sentinel_master
                );
                Topology::Sentinel {
                    sentinels,
                    master_name: settings.sentinel_master.clone(),
                    data,
                    tls,
                    use_tls: settings.tls,
                    credentials_key: "redis.password",
                    hosts,
                }
            }
        };
        Ok(Self {
            inner: Arc::new(topology),
        })
    }

    /// A standalone connector for one URL (tests, benchmarks, tools).
    pub fn from_url(url: &str) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let hosts = describe(client.get_connection_info().addr());
        Ok(Self {
            inner: Arc::new(Topology::Standalone {
                client,
                credentials_key: "redis.url",
                hosts,
            }),
        })
    }

    /// Where Redis is, for logs: hosts and ports, never credentials.
    pub fn hosts(&self) -> &str {
        match &*self.inner {
            Topology::Standalone { hosts, .. } | Topology::Sentinel { hosts, .. } => hosts,
        }
    }

    /// A new lazy connection: no I/O until its first command.
    pub fn connect(&self) -> RedisConnection {
        RedisConnection {
            shared: Arc::new(Shared {
                connector: self.clone(),
                current: Mutex::new(None),
                resolving: tokio::sync::Mutex::new(()),
                last_resolve_error: Mutex::new(None),
            }),
        }
    }

    /// One attempt to reach the (master) node and authenticate: `Ok` when Redis answers.
    pub async fn check(&self) -> Result<(), ConnectError> {
        let mut conn = self.connect();
        let result: RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(match conn.take_resolve_error() {
                Some(error) => error,
                None => self.classify(e, Side::Data),
            }),
        }
    }

    /// Waits until Redis answers, retrying an outage with backoff and warning every 30 s
    /// (hosts only); returns the first deterministic error.
    pub async fn wait_until_reachable(&self) -> Result<(), SettingsError> {
        let mut delay = Duration::from_millis(200);
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            match self.check().await {
                Ok(()) => {
                    if last_warning.is_some() {
                        tracing::info!(hosts = %self.hosts(), "redis reachable");
                    }
                    return Ok(());
                }
                Err(ConnectError::Setting(e)) => return Err(e),
                Err(ConnectError::Unreachable { hosts, source }) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= OUTAGE_WARNING_EVERY) {
                        tracing::warn!(%hosts, error = %source, "redis unreachable; retrying (readiness is red until it answers)");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Sorts an error of a data node or a sentinel into a setting to fix or an outage.
    fn classify(&self, error: RedisError, side: Side) -> ConnectError {
        let (credentials_key, user_key, tls_key) = match (&*self.inner, side) {
            (
                Topology::Standalone {
                    credentials_key, ..
                },
                _,
            ) => (*credentials_key, "redis.username", "redis.url"),
            (
                Topology::Sentinel {
                    credentials_key, ..
                },
                Side::Data,
            ) => (*credentials_key, "redis.username", "redis.tls"),
            (Topology::Sentinel { .. }, Side::Sentinel) => (
                "redis.sentinel_password",
                "redis.sentinel_username",
                "redis.tls",
            ),
        };
        let text = error.to_string();
        let lower = text.to_lowercase();
        let setting =
            |key: &str, reason: String| ConnectError::Setting(SettingsError::new(key, reason));
        if error.kind() == ErrorKind::AuthenticationFailed
            || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
            || lower.contains("wrongpass")
            || lower.contains("noauth")
        {
            return setting(
                credentials_key,
                "Redis refused the credentials (WRONGPASS/NOAUTH): check the user and password"
                    .into(),
            );
        }
        if error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) || lower.contains("noperm") {
            return setting(
                user_key,
                format!("the ACL user may not run a command the fleet needs (see docs/redis.md): {text}"),
            );
        }
        if lower.contains("invalid peer certificate") || lower.contains("unknownissuer") {
            return setting(
                "redis.tls_ca_file",
                format!("the server's TLS certificate is not trusted: {text}"),
            );
        }
        if lower.contains("certificaterequired") || lower.contains("certificate required") {
            return setting(
                "redis.tls_cert_file",
                "the server requires a client certificate (mutual TLS)".into(),
            );
        }
        if lower.contains("alert received")
            && (lower.contains("badcertificate")
                || lower.contains("unknownca")
                || lower.contains("decrypterror"))
        {
            return setting(
                "redis.tls_cert_file",
                format!("the server refused the client certificate: {text}"),
            );
        }
        if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
            return setting(
                tls_key,
                format!("TLS is on but the server does not speak TLS there: {text}"),
            );
        }
        ConnectError::Unreachable {
            hosts: self.hosts().to_owned(),
            source: error,
        }
    }

    /// A pub/sub connection to the (master) node, for subscribers: the same client as every
    /// other connection (TLS, credentials), and in sentinel mode the master the sentinels
    /// name now, checked with `ROLE`. Not reconnected by itself: a subscriber notices a
    /// broken subscription (its stream ends or a `PING` fails) and asks again, which follows
    /// a failover to the new master.
    pub async fn pubsub(&self) -> Result<PubSub, ConnectError> {
        let (client, node) = self.master_client().await?;
        if let Some(node) = &node {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| self.classify(e, Side::Data))?;
            self.check_master(&mut conn, node).await?;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(self.classify(e, Side::Data)),
            Err(_) => Err(ConnectError::Unreachable {
                hosts: self.hosts().to_owned(),
                source: RedisError::from((ErrorKind::Io, "pub/sub connection timed out")),
            }),
        }
    }

    /// The standalone server's connection (lazy), or the master the sentinels name, connected
    /// and checked with `ROLE`.
    async fn resolve_master(&self) -> Result<ConnectionManager, ConnectError> {
        let (client, node) = self.master_client().await?;
        let mut manager = manager(client).map_err(|e| self.classify(e, Side::Data))?;
        if let Some(node) = node {
            self.check_master(&mut manager, &node).await?;
            tracing::info!(master = %node, "redis master found through sentinel");
        }
        Ok(manager)
    }

    /// The standalone server's client, or the client of the node the sentinels name as the
    /// master with that node (not yet checked: see [`Connector::check_master`]).
    async fn master_client(&self) -> Result<(Client, Option<RedisNode>), ConnectError> {
        let (sentinels, master_name, data, tls, use_tls) = match &*self.inner {
            Topology::Standalone { client, .. } => return Ok((client.clone(), None)),
            Topology::Sentinel {
                sentinels,
                master_name,
                data,
                tls,
                use_tls,
                ..
            } => (sentinels, master_name, data, tls, use_tls),
        };
        let mut unknown = 0usize;
        let mut last_error = None;
        let mut address = None;
        for (node, client) in sentinels {
            match ask_sentinel(client, master_name).await {
                Ok(Some(found)) => {
                    address = Some(found);
                    break;
                }
                Ok(None) => unknown += 1,
                Err(e) => match self.classify(e, Side::Sentinel) {
                    ConnectError::Setting(s) => return Err(ConnectError::Setting(s)),
                    ConnectError::Unreachable { source, .. } => {
                        if source.code() == Some("ERR")
                            && source.to_string().contains("unknown command")
                        {
                            return Err(ConnectError::Setting(SettingsError::new(
                                "redis.nodes",
                                format!("{node} is not a sentinel"),
                            )));
                        }
                        last_error = Some(source);
                    }
                },
            }
        }
        let Some((host, port)) = address else {
            if unknown > 0 {
                return Err(ConnectError::Setting(SettingsError::new(
                    "redis.sentinel_master",
                    format!("no sentinel at redis.nodes monitors a master named \"{master_name}\""),
                )));
            }
            return Err(ConnectError::Unreachable {
                hosts: self.hosts().to_owned(),
                source: last_error
                    .unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no sentinel answered"))),
            });
        };
        let node = RedisNode { host, port };
        let client = node_client(&node, data.clone(), *use_tls, tls.as_ref())
            .map_err(|e| self.classify(e, Side::Data))?;
        Ok((client, Some(node)))
    }

    /// Checks with `ROLE` that `node`, named by the sentinels, really is the master (during a
    /// failover a sentinel may name a node that is still a replica).
    async fn check_master(
        &self,
        conn: &mut impl ConnectionLike,
        node: &RedisNode,
    ) -> Result<(), ConnectError> {
        let role: redis::Role = redis::cmd("ROLE")
            .query_async(conn)
            .await
            .map_err(|e| self.classify(e, Side::Data))?;
        if !matches!(role, redis::Role::Primary { .. }) {
            return Err(ConnectError::Unreachable {
                hosts: self.hosts().to_owned(),
                source: RedisError::from((
                    ErrorKind::Server(ServerErrorKind::MasterDown),
                    "the node the sentinels name is not a master yet (failover in progress)",
                    node.to_string(),
                )),
            });
        }
        Ok(())
    }
}

/// How often an outage is repeated in the logs.
pub const OUTAGE_WARNING_EVERY: Duration = Duration::from_secs(30);

/// `SENTINEL GET-MASTER-ADDR-BY-NAME`: `None` when this sentinel does not know the name.
async fn ask_sentinel(client: &Client, name: &str) -> RedisResult<Option<(String, u16)>> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query_async(&mut conn)
        .await?;
    Ok(reply)
}

/// A client for one node, with TLS when asked and the given credentials.
fn node_client(
    node: &RedisNode,
    auth: RedisConnectionInfo,
    use_tls: bool,
    certs: Option<&TlsCertificates>,
) -> RedisResult<Client> {
    let addr = if use_tls {
        ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(node.host.clone(), node.port)
    };
    let info: ConnectionInfo = addr.into_connection_info()?.set_redis_settings(auth);
    match certs {
        Some(certs) if use_tls => Client::build_with_tls(info, certs.clone()),
        _ => Client::open(info),
    }
}

/// A reconnecting connection to one node; connects on its first command.
fn manager(client: Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client, config)
}

fn describe(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "redis".to_owned(),
    }
}

/// Reads and checks the CA bundle and the client certificate and key named by the settings.
fn certificates(settings: &RedisSettings) -> Result<Option<TlsCertificates>, SettingsError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| SettingsError::new(key, format!("cannot read {}: {e}", path.display())))
    };
    let certs = |key: &str, path: &std::path::Path| -> Result<Vec<u8>, SettingsError> {
        let pem = read(key, path)?;
        let parsed = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SettingsError::new(key, format!("{} is not PEM: {e}", path.display())))?;
        if parsed.is_empty() {
            return Err(SettingsError::new(
                key,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(pem)
    };
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(certs("redis.tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => {
            let client_cert = certs("redis.tls_cert_file", cert)?;
            let client_key = read("redis.tls_key_file", key)?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                SettingsError::new(
                    "redis.tls_key_file",
                    format!("{} holds no PEM private key: {e}", key.display()),
                )
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A Redis connection that follows the master: one multiplexed connection shared by clones,
/// reconnected by itself, re-resolved through the sentinels when the master may have moved.
#[derive(Clone)]
pub struct RedisConnection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("hosts", &self.shared.connector.hosts())
            .finish()
    }
}

struct Shared {
    connector: Connector,
    current: Mutex<Option<Current>>,
    /// One resolution at a time; the others wait for its result.
    resolving: tokio::sync::Mutex<()>,
    /// The error of the last failed resolution, for [`Connector::check`].
    last_resolve_error: Mutex<Option<ConnectError>>,
}

#[derive(Clone)]
struct Current {
    manager: ConnectionManager,
    generation: u64,
}

impl RedisConnection {
    /// The connector this connection was made by (for dedicated connections of its own).
    pub fn connector(&self) -> &Connector {
        &self.shared.connector
    }

    fn current(&self) -> Option<Current> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn take_resolve_error(&self) -> Option<ConnectError> {
        self.shared
            .last_resolve_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The master's connection, asking the sentinels first when it is not known.
    async fn master(&self) -> RedisResult<Current> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _one_at_a_time = self.shared.resolving.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        match self.shared.connector.resolve_master().await {
            Ok(manager) => {
                let mut slot = self
                    .shared
                    .current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let generation = slot.as_ref().map_or(0, |c| c.generation) + 1;
                let current = Current {
                    manager,
                    generation,
                };
                *slot = Some(current.clone());
                Ok(current)
            }
            Err(error) => {
                let redis_error = match &error {
                    ConnectError::Unreachable { source, .. } => source.clone(),
                    ConnectError::Setting(s) => RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "redis settings",
                        s.to_string(),
                    )),
                };
                *self
                    .shared
                    .last_resolve_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(error);
                Err(redis_error)
            }
        }
    }

    /// After an error that may mean the master moved, forget it (sentinel mode only), so
    /// the next command asks the sentinels again.
    fn after_error(&self, error: &RedisError, generation: u64) {
        if !matches!(&*self.shared.connector.inner, Topology::Sentinel { .. }) {
            return;
        }
        let moved = error.is_io_error()
            || error.is_unrecoverable_error()
            || error.is_timeout()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || matches!(
                error.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            )
            || matches!(error.code(), Some("READONLY" | "MASTERDOWN"));
        if !moved {
            return;
        }
        let mut slot = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            tracing::debug!(error = %error, "redis master may have moved; asking the sentinels again");
            *slot = None;
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut current = self.master().await?;
            let result = current.manager.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.after_error(e, current.generation);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut current = self.master().await?;
            let result = current
                .manager
                .req_packed_commands(cmd, offset, count)
                .await;
            if let Err(e) = &result {
                self.after_error(e, current.generation);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Redis's `maxmemory_policy`, read from `INFO memory` (managed services often refuse
/// `CONFIG GET`). `None` when the reply does not carry it.
pub async fn eviction_policy(conn: &mut RedisConnection) -> RedisResult<Option<String>> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(parse_eviction_policy(&info))
}

fn parse_eviction_policy(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("maxmemory_policy:"))
        .map(|policy| policy.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn settings(vars: &[(&str, &str)]) -> RedisSettings {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(&crate::settings::Sources {
            config_dir: Some(std::path::PathBuf::from("/nonexistent")),
            env: Some(env),
        })
        .expect("valid settings")
        .redis
    }

    #[test]
    fn the_eviction_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1000\r\nmaxmemory_policy:allkeys-lru\r\nmem_fragmentation_ratio:1.2\r\n";
        assert_eq!(parse_eviction_policy(info).as_deref(), Some("allkeys-lru"));
        assert_eq!(parse_eviction_policy("# Memory\r\n"), None);
    }

    #[test]
    fn a_missing_or_unparsable_tls_file_names_its_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let missing = dir.path().join("missing.pem");
        let cases = [
            ("KYC__REDIS__TLS_CA_FILE", &missing, "cannot read"),
            ("KYC__REDIS__TLS_CA_FILE", &garbage, "no PEM certificate"),
        ];
        for (key, path, reason) in cases {
            let s = settings(&[
                ("KYC__REDIS__URL", "rediss://127.0.0.1:6380"),
                (key, path.to_str().expect("utf-8 path")),
            ]);
            let err = Connector::new(&s).expect_err(key);
            assert_eq!(err.key, key);
            assert!(err.reason.contains(reason), "{err}");
        }
        let s = settings(&[
            ("KYC__REDIS__URL", "rediss://127.0.0.1:6380"),
            (
                "KYC__REDIS__TLS_CERT_FILE",
                garbage.to_str().expect("utf-8"),
            ),
            ("KYC__REDIS__TLS_KEY_FILE", garbage.to_str().expect("utf-8")),
        ]);
        let err = Connector::new(&s).expect_err("bad client cert");
        assert_eq!(err.key, "KYC__REDIS__TLS_CERT_FILE");
    }

    #[test]
    fn hosts_never_carry_the_password() {
        let s = settings(&[
            ("KYC__REDIS__URL", "redis://fleet:hunter2@10.1.2.3:6380"),
            ("KYC__REDIS__PASSWORD", "other-secret"),
        ]);
        let connector = Connector::new(&s).expect("connector");
        assert_eq!(connector.hosts(), "10.1.2.3:6380");
        assert!(!format!("{connector:?}").contains("hunter2"));
        let s = settings(&[
            ("KYC__REDIS__MODE", "sentinel"),
            ("KYC__REDIS__NODES", "10.0.0.1:26379,10.0.0.2:26379"),
            ("KYC__REDIS__SENTINEL_MASTER", "kyc"),
            ("KYC__REDIS__SENTINEL_PASSWORD", "sentinel-secret"),
        ]);
        let connector = Connector::new(&s).expect("connector");
        assert_eq!(
            connector.hosts(),
            "sentinels 10.0.0.1:26379,10.0.0.2:26379 (master \"kyc\")"
        );
    }

    #[test]
    fn credentials_errors_name_the_key_that_holds_them() {
        let refused = || {
            RedisError::from((
                ErrorKind::AuthenticationFailed,
                "Password authentication failed",
            ))
        };
        let in_url = Connector::new(&settings(&[("KYC__REDIS__URL", "redis://u:p@127.0.0.1:1")]))
            .expect("connector");
        match in_url.classify(refused(), Side::Data) {
            ConnectError::Setting(e) => assert_eq!(e.key, "KYC__REDIS__URL"),
            other => panic!("{other:?}"),
        }
        let separate = Connector::new(&settings(&[("KYC__REDIS__PASSWORD", "p")])).expect("c");
        match separate.classify(refused(), Side::Data) {
            ConnectError::Setting(e) => assert_eq!(e.key, "KYC__REDIS__PASSWORD"),
            other => panic!("{other:?}"),
        }
        let refused_io =
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(separate.classify(refused_io, Side::Data).is_retryable());
    }
}
