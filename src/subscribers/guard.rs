//! Where a subscriber URL may point, enforced on the addresses a connection will actually
//! use: the policy (`domain::is_forbidden`) says which addresses are private, loopback,
//! link-local or a metadata service; this [`reqwest`] DNS resolver ([`GuardedResolver`])
//! drops every such address a name resolves to, so a name that resolves to a private
//! address (or re-resolves to one later, DNS rebinding) is refused at connect time, not only
//! when the settings were read. URLs whose host is an IP literal never reach a resolver;
//! `domain::check_literal` covers them.

use std::{net::SocketAddr, sync::Arc};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::{is_forbidden, Refused};

/// Resolves with the system resolver and keeps only public addresses; a name with none left
/// fails to resolve, so the connection is never made.
#[derive(Debug, Default, Clone)]
pub(crate) struct GuardedResolver;

impl GuardedResolver {
    pub(crate) fn shared() -> Arc<Self> {
        Arc::new(Self)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| !is_forbidden(a.ip()))
                .collect();
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = Box::new(Refused(format!(
                    "{host} resolves only to private, loopback, link-local or reserved addresses (set allow_private = true for a target inside your network)"
                )));
                return Err(refused);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        let name: Name = "localhost".parse().expect("name");
        let result = GuardedResolver.resolve(name).await;
        let error = result.err().expect("localhost is refused");
        assert!(error.to_string().contains("allow_private"), "{error}");
    }
}
