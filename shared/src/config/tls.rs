//! TLS settings, and the rustls configurations they make.
//!
//! - `KV_TLS_CERT` + `KV_TLS_KEY` (PEM files, both or neither): the node's
//!   certificate chain and private key. With them the API serves HTTPS only,
//!   on `KV_LISTEN`, and its URL in `KV_PEERS` is `https://`.
//! - `KV_TLS_CA` (PEM file): the certificate authorities this node trusts
//!   for `https://` peers, and for client certificates under mutual TLS.
//!   Unset: the Mozilla roots (a private CA then fails, as it should).
//! - `KV_TLS_CLIENT_AUTH` (`off` by default): `internal` asks every
//!   connection for a certificate signed by `KV_TLS_CA` and requires one on
//!   `/internal/*` (node-to-node) requests, on top of the cluster secret;
//!   clients of the public API may still come without one. `all` requires
//!   one on every connection. Nodes present their own `KV_TLS_CERT` to
//!   their peers whenever it is not `off`.
//! - `REDIS_URL=rediss://...` speaks TLS to Redis; `KV_REDIS_TLS_CA` names
//!   the CA that signed Redis' certificate (default: the system's roots),
//!   `KV_REDIS_TLS_CERT` + `KV_REDIS_TLS_KEY` a client certificate for a
//!   Redis that asks for one (`tls-auth-clients yes`).
//!
//! Files are read once, at start: a missing or unreadable file, or one
//! holding no certificate or key, stops the process with one line naming
//! the variable. Rotating a certificate means restarting the process.
//!
//! Every configuration uses rustls' `ring` provider (TLS 1.2 and 1.3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;
use super::env::err;

/// `KV_TLS_CLIENT_AUTH`: which connections must present a certificate
/// signed by `KV_TLS_CA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None (the cluster secret alone authenticates nodes).
    Off,
    /// Node-to-node requests (`/internal/*`); the public API is open to
    /// clients without one.
    Internal,
    /// Every connection.
    All,
}

/// The node's TLS settings: paths, read by [`TlsSettings::server_config`]
/// and [`TlsSettings::client_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `KV_TLS_CERT` and `KV_TLS_KEY`.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `KV_TLS_CA`.
    pub ca: Option<PathBuf>,
    /// `KV_TLS_CLIENT_AUTH`.
    pub client_auth: ClientAuth,
}

/// The Redis connection's TLS settings (used with `rediss://` only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTlsSettings {
    /// `KV_REDIS_TLS_CA`.
    pub ca: Option<PathBuf>,
    /// `KV_REDIS_TLS_CERT` and `KV_REDIS_TLS_KEY`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Both of a certificate/key pair of variables, or neither.
fn identity(
    get: &impl Fn(&str) -> Option<String>,
    cert_var: &'static str,
    key_var: &'static str,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (get(cert_var), get(key_var)) {
        (Some(cert), Some(key)) => Ok(Some((cert.into(), key.into()))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(err(key_var, format!("must be set with {cert_var}"))),
        (None, Some(_)) => Err(err(cert_var, format!("must be set with {key_var}"))),
    }
}

impl TlsSettings {
    pub(super) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let identity = identity(get, "KV_TLS_CERT", "KV_TLS_KEY")?;
        let ca = get("KV_TLS_CA").map(PathBuf::from);
        let client_auth = match get("KV_TLS_CLIENT_AUTH")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("off") => ClientAuth::Off,
            Some("internal") => ClientAuth::Internal,
            Some("all") => ClientAuth::All,
            Some(other) => {
                return Err(err(
                    "KV_TLS_CLIENT_AUTH",
                    format!("must be off, internal or all, got {other:?}"),
                ));
            }
        };
        if client_auth != ClientAuth::Off {
            if identity.is_none() {
                return Err(err(
                    "KV_TLS_CLIENT_AUTH",
                    "needs KV_TLS_CERT and KV_TLS_KEY (the node serves TLS and presents its certificate to peers)",
                ));
            }
            if ca.is_none() {
                return Err(err(
                    "KV_TLS_CLIENT_AUTH",
                    "needs KV_TLS_CA (the authority client certificates must be signed by)",
                ));
            }
        }
        Ok(TlsSettings {
            identity,
            ca,
            client_auth,
        })
    }

    /// True when the API serves HTTPS.
    pub fn serves_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// The API's server configuration; `None` without a certificate.
    pub fn server_config(&self) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
        let Some((cert, key)) = &self.identity else {
            return Ok(None);
        };
        let chain = read_certs("KV_TLS_CERT", cert)?;
        let key = read_key("KV_TLS_KEY", key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(VERSIONS)
            .map_err(|e| err("KV_TLS_CERT", e.to_string()))?;
        let builder = match (self.client_auth, &self.ca) {
            (ClientAuth::Off, _) | (_, None) => builder.with_no_client_auth(),
            (mode, Some(ca)) => {
                let roots = Arc::new(read_roots("KV_TLS_CA", ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = if mode == ClientAuth::Internal {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| err("KV_TLS_CA", e.to_string()))?,
                )
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| err("KV_TLS_KEY", format!("does not fit KV_TLS_CERT: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// The peer client's configuration: trusts `KV_TLS_CA` (or the Mozilla
    /// roots), and presents the node's certificate under mutual TLS.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ConfigError> {
        let roots = match &self.ca {
            Some(ca) => read_roots("KV_TLS_CA", ca)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| err("KV_TLS_CA", e.to_string()))?
            .with_root_certificates(roots);
        // No ALPN here: the HTTPS connector sets it (and refuses a preset one).
        let config = match (&self.identity, self.client_auth) {
            (Some((cert, key)), ClientAuth::Internal | ClientAuth::All) => builder
                .with_client_auth_cert(
                    read_certs("KV_TLS_CERT", cert)?,
                    read_key("KV_TLS_KEY", key)?,
                )
                .map_err(|e| err("KV_TLS_KEY", format!("does not fit KV_TLS_CERT: {e}")))?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

impl RedisTlsSettings {
    pub(super) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(RedisTlsSettings {
            ca: get("KV_REDIS_TLS_CA").map(PathBuf::from),
            identity: identity(get, "KV_REDIS_TLS_CERT", "KV_REDIS_TLS_KEY")?,
        })
    }

    /// The PEM files for the redis client, read now (checked to hold a
    /// certificate or key, so a wrong file fails here and not at the first
    /// reconnect).
    pub fn certificates(&self) -> Result<redis::TlsCertificates, ConfigError> {
        let root_cert = match &self.ca {
            Some(ca) => {
                read_roots("KV_REDIS_TLS_CA", ca)?;
                Some(read_file("KV_REDIS_TLS_CA", ca)?)
            }
            None => None,
        };
        let client_tls = match &self.identity {
            Some((cert, key)) => {
                read_certs("KV_REDIS_TLS_CERT", cert)?;
                read_key("KV_REDIS_TLS_KEY", key)?;
                Some(redis::ClientTlsConfig {
                    client_cert: read_file("KV_REDIS_TLS_CERT", cert)?,
                    client_key: read_file("KV_REDIS_TLS_KEY", key)?,
                })
            }
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

const VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider of every configuration.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process-wide default provider, for the configurations
/// other crates build themselves (the Redis client's). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_file(var: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| err(var, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(var: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                var,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            var,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(var: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_file(var, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        err(
            var,
            format!("{}: no PEM private key in it: {e}", path.display()),
        )
    })
}

fn read_roots(var: &'static str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(var, path)? {
        roots.add(cert).map_err(|e| {
            err(
                var,
                format!("{}: not a CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<TlsSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TlsSettings::from_lookup(&|name: &str| map.get(name).cloned())
    }

    #[test]
    fn certificate_and_key_come_together() {
        assert!(!settings(&[]).unwrap().serves_tls());
        assert!(
            settings(&[("KV_TLS_CERT", "c"), ("KV_TLS_KEY", "k")])
                .unwrap()
                .serves_tls()
        );
        assert_eq!(
            settings(&[("KV_TLS_CERT", "c")]).unwrap_err().var,
            "KV_TLS_KEY"
        );
        assert_eq!(
            settings(&[("KV_TLS_KEY", "k")]).unwrap_err().var,
            "KV_TLS_CERT"
        );
    }

    #[test]
    fn mutual_tls_needs_a_certificate_and_a_ca() {
        let both = [("KV_TLS_CERT", "c"), ("KV_TLS_KEY", "k")];
        let e = settings(&[both[0], both[1], ("KV_TLS_CLIENT_AUTH", "internal")]).unwrap_err();
        assert!(e.message.contains("KV_TLS_CA"), "{e}");
        let e = settings(&[("KV_TLS_CA", "ca"), ("KV_TLS_CLIENT_AUTH", "all")]).unwrap_err();
        assert!(e.message.contains("KV_TLS_CERT"), "{e}");
        let ok = settings(&[
            both[0],
            both[1],
            ("KV_TLS_CA", "ca"),
            ("KV_TLS_CLIENT_AUTH", "ALL"),
        ])
        .unwrap();
        assert_eq!(ok.client_auth, ClientAuth::All);
        assert_eq!(
            settings(&[("KV_TLS_CLIENT_AUTH", "maybe")])
                .unwrap_err()
                .var,
            "KV_TLS_CLIENT_AUTH"
        );
    }

    #[test]
    fn a_missing_or_wrong_file_names_its_variable() {
        let s = settings(&[
            ("KV_TLS_CERT", "/nonexistent/cert.pem"),
            ("KV_TLS_KEY", "/nonexistent/key.pem"),
        ])
        .unwrap();
        let e = s.server_config().unwrap_err();
        assert_eq!(e.var, "KV_TLS_CERT");
        assert!(e.message.contains("/nonexistent/cert.pem"), "{e}");

        let dir = std::env::temp_dir().join(format!("kv-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let s = settings(&[("KV_TLS_CA", empty.to_str().unwrap())]).unwrap();
        let e = s.client_config().unwrap_err();
        assert_eq!(e.var, "KV_TLS_CA");
        assert!(e.message.contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_ca_the_client_trusts_the_public_roots() {
        let config = settings(&[]).unwrap().client_config().unwrap();
        assert!(config.alpn_protocols.is_empty(), "the connector sets ALPN");
        assert!(!config.client_auth_cert_resolver.has_certs());
    }
}
