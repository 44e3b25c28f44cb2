//! The HTTP side of `kvctl`: one blocking request per command to one node,
//! every request bounded by the `--timeout`, and the [`CliError`] that maps
//! what went wrong to an exit code.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::Client as Http;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The largest answer read from a node (a snapshot page is bounded by the
/// node at 8 MiB of records; this only keeps a broken peer from filling memory).
pub const ANSWER_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// What went wrong, grouped by what the caller should do; each group has
/// its own exit code (see `EXIT_CODES` in main.rs).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the value given is not usable.
    #[error("{0}")]
    Input(String),
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} did not answer within {timeout_ms} ms (--timeout)")]
    Timeout { url: String, timeout_ms: u128 },
    #[error("{url} answered HTTP {status} with something that is not JSON")]
    NotJson { url: String, status: u16 },
    /// A read of a missing or deleted key (404 with `{"key", "value": null}`).
    #[error("{key}: not found{}", deleted_at.as_deref().map(|v| format!(" (deleted, version {v})")).unwrap_or_default())]
    NotFound {
        key: String,
        deleted_at: Option<String>,
        body: Value,
    },
    /// Any other answer that is not a success: the node's own error object.
    #[error("{} (HTTP {status} {code}): {message}", status_meaning(*status))]
    Http {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

/// Exit codes, one per kind of outcome. Documented in `kvctl --help` and
/// README; scripts rely on them, so they never change meaning.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const UNAVAILABLE: u8 = 4;
    pub const CONNECTION: u8 = 5;
    pub const UNAUTHORIZED: u8 = 6;
}

fn status_meaning(status: u16) -> &'static str {
    match status {
        401 | 403 => "unauthorized",
        404 => "not found",
        503 => "unavailable",
        400..=499 => "refused",
        _ => "failed",
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) => exit::BAD_INPUT,
            CliError::Connect { .. } | CliError::Timeout { .. } => exit::CONNECTION,
            CliError::NotFound { .. } => exit::NOT_FOUND,
            CliError::Http { status, .. } => match status {
                401 | 403 => exit::UNAUTHORIZED,
                404 => exit::NOT_FOUND,
                503 => exit::UNAVAILABLE,
                400..=499 => exit::BAD_INPUT,
                _ => exit::FAILURE,
            },
            CliError::NotJson { .. } | CliError::Output(_) => exit::FAILURE,
        }
    }

    /// The node's answer, when there is one (printed as is with `--json`).
    pub fn body(&self) -> Option<&Value> {
        match self {
            CliError::NotFound { body, .. } | CliError::Http { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// A node's answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The body of a success, or the node's error as a [`CliError`].
    pub fn ok(self) -> Result<Value, CliError> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let error = &self.body["error"];
        let text = |field: &str| error[field].as_str().unwrap_or("").to_owned();
        Err(CliError::Http {
            status: self.status,
            code: match text("code") {
                c if c.is_empty() => "error".to_owned(),
                c => c,
            },
            message: text("message"),
            body: self.body,
        })
    }
}

/// What `https://` needs: the CA to trust (`--ca-cert`; default: the
/// Mozilla roots) and a client certificate (`--cert`, `--key`) for a
/// cluster that asks every client for one (`KV_TLS_CLIENT_AUTH=all`).
#[derive(Debug, Default, Clone)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsOptions {
    /// The rustls configuration (ring provider), files read now.
    fn client_config(&self) -> Result<rustls::ClientConfig, CliError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |flag: &str, path: &PathBuf| {
            CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CliError::Input(format!("{flag} {}: {e}", path.display())))
        };
        let roots = match &self.ca {
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(certs("--ca-cert", ca)?);
                if added == 0 {
                    return Err(CliError::Input(format!(
                        "--ca-cert {}: holds no usable CA certificate",
                        ca.display()
                    )));
                }
                roots
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::Input(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| CliError::Input(format!("--key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(certs("--cert", cert)?, key)
                    .map_err(|e| CliError::Input(format!("--cert/--key: {e}")))
            }
        }
    }
}

/// The credential of a membership request.
pub enum Admin<'a> {
    /// `KV_ADMIN_TOKEN`, sent as `x-kv-admin-token`.
    Token(&'a str),
    /// The cluster secret, sent as `x-kv-cluster-secret`.
    Secret(&'a str),
}

/// One node's HTTP API.
pub struct Client {
    http: Http,
    base: String,
    token: Option<String>,
    timeout: Duration,
    tls: rustls::ClientConfig,
}

/// An HTTP client with the TLS configuration, bounded by `timeout` (none:
/// only connecting is bounded).
fn http_client(
    tls: &rustls::ClientConfig,
    timeout: Option<Duration>,
    connect: Duration,
) -> Result<Http, CliError> {
    Http::builder()
        .timeout(timeout)
        .connect_timeout(connect)
        .no_proxy()
        .tls_backend_preconfigured(tls.clone())
        .build()
        .map_err(|e| CliError::Input(format!("cannot build the HTTP client: {e}")))
}

impl Client {
    /// `base` is `http://host:port` or `https://host:port` (a trailing `/`
    /// is dropped).
    pub fn new(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        tls: &TlsOptions,
    ) -> Result<Client, CliError> {
        let base = base.trim_end_matches('/').to_owned();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if rest.is_none_or(str::is_empty) {
            return Err(CliError::Input(format!(
                "--url / KV_URL must be http://host:port or https://host:port, got {base:?}"
            )));
        }
        let tls = tls.client_config()?;
        let http = http_client(&tls, Some(timeout), timeout.min(Duration::from_secs(3)))?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
            timeout,
            tls,
        })
    }

    /// Sends one request (`path` holds the query, already encoded) and
    /// reads the JSON answer, whatever its status.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.answer(request)
    }

    /// Sends a built request and reads the JSON answer, whatever its status.
    fn answer(&self, request: reqwest::blocking::RequestBuilder) -> Result<Answer, CliError> {
        let response = request.send().map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        response
            .take(ANSWER_BYTES_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::Connect {
                url: self.base.clone(),
                reason: format!("the answer broke off: {e}"),
            })?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| CliError::NotJson {
            url: self.base.clone(),
            status: status.as_u16(),
        })?;
        Ok(Answer {
            status: status.as_u16(),
            body,
        })
    }

    pub fn get(&self, path: &str) -> Result<Answer, CliError> {
        self.send(Method::GET, path, None)
    }

    /// A membership request: sent with the admin token or the cluster
    /// secret, the credentials a node takes for it.
    pub fn send_admin(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        credential: Admin<'_>,
    ) -> Result<Answer, CliError> {
        let url = format!("{}{path}", self.base);
        let (header, value) = match credential {
            Admin::Token(token) => ("x-kv-admin-token", token),
            Admin::Secret(secret) => ("x-kv-cluster-secret", secret),
        };
        let mut request = self.http.request(method, &url).header(header, value);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.answer(request)
    }

    /// Follows a stream of server-sent events (`path` as in [`Client::send`]),
    /// calling `each(event, id, data)` for every event until the stream ends
    /// or `each` fails. Only connecting is bounded by `--timeout`: the
    /// stream itself does not end on its own.
    pub fn follow_events(
        &self,
        path: &str,
        mut each: impl FnMut(&str, Option<&str>, &str) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let http = http_client(&self.tls, None, self.timeout.min(Duration::from_secs(3)))?;
        let mut request = http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        if status != StatusCode::OK.as_u16() {
            let mut bytes = Vec::new();
            let _ = response.take(ANSWER_BYTES_MAX).read_to_end(&mut bytes);
            let body = serde_json::from_slice(&bytes).map_err(|_| CliError::NotJson {
                url: self.base.clone(),
                status,
            })?;
            return Answer { status, body }.ok().map(|_| ());
        }
        let (mut event, mut id, mut data) = ("message".to_owned(), None::<String>, String::new());
        for line in BufReader::new(response).lines() {
            let line = line.map_err(|e| CliError::Connect {
                url: self.base.clone(),
                reason: format!("the stream broke off: {e}"),
            })?;
            if line.is_empty() {
                if !data.is_empty() {
                    each(&event, id.as_deref(), &data)?;
                }
                (event, data) = ("message".to_owned(), String::new());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        Ok(())
    }

    fn transport_error(&self, e: &reqwest::Error) -> CliError {
        if e.is_timeout() {
            return CliError::Timeout {
                url: self.base.clone(),
                timeout_ms: self.timeout.as_millis(),
            };
        }
        // The innermost cause says most ("Connection refused").
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        CliError::Connect {
            url: self.base.clone(),
            reason,
        }
    }
}

/// Whether a status is the 404 of a read.
pub fn is_not_found(status: u16) -> bool {
    status == StatusCode::NOT_FOUND.as_u16()
}

/// Percent-encodes a query or path value (everything but unreserved bytes).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(encode("a-b_c.d~1"), "a-b_c.d~1");
        assert_eq!(encode("a b/c?d&e=ü"), "a%20b%2Fc%3Fd%26e%3D%C3%BC");
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let code = |status: u16| {
            Answer {
                status,
                body: json!({"error": {"code": "x", "message": "m"}}),
            }
            .ok()
            .unwrap_err()
            .exit_code()
        };
        assert_eq!(code(400), exit::BAD_INPUT);
        assert_eq!(code(413), exit::BAD_INPUT);
        assert_eq!(code(401), exit::UNAUTHORIZED);
        assert_eq!(code(403), exit::UNAUTHORIZED);
        assert_eq!(code(404), exit::NOT_FOUND);
        assert_eq!(code(503), exit::UNAVAILABLE);
        assert_eq!(code(500), exit::FAILURE);
        assert!(
            Answer {
                status: 200,
                body: json!({})
            }
            .ok()
            .is_ok()
        );
    }

    #[test]
    fn only_http_and_https_urls_are_taken() {
        let t = Duration::from_secs(1);
        let tls = TlsOptions::default();
        assert!(Client::new("http://127.0.0.1:8001/", None, t, &tls).is_ok());
        assert!(Client::new("https://node1.example:8001", None, t, &tls).is_ok());
        for bad in ["ftp://x:1", "127.0.0.1:8001", "http://", "https://"] {
            assert_eq!(
                Client::new(bad, None, t, &tls).err().map(|e| e.exit_code()),
                Some(exit::BAD_INPUT),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_bad_input() {
        let t = Duration::from_secs(1);
        let missing = TlsOptions {
            ca: Some("/nonexistent/ca.pem".into()),
            identity: None,
        };
        let e = Client::new("https://x:1", None, t, &missing).err().unwrap();
        assert_eq!(e.exit_code(), exit::BAD_INPUT);
        assert!(e.to_string().contains("--ca-cert"), "{e}");
        let empty = std::env::temp_dir().join(format!("kvctl-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "nothing\n").unwrap();
        let e = Client::new(
            "https://x:1",
            None,
            t,
            &TlsOptions {
                ca: Some(empty.clone()),
                identity: None,
            },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("no usable CA"), "{e}");
        let _ = std::fs::remove_file(empty);
    }
}
