//! SMTP notification settings (`EMAIL_*`, the seed's names): present only
//! when `EMAIL_HOST` is set.

use std::time::Duration;

use super::env::{err, parse_bool, parse_or};
use super::{ConfigError, Secret};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS (port 587, the seed's example).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a local sink or relay.
    None,
}

/// SMTP settings; present only when `EMAIL_HOST` is set.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// `EMAIL_HOST`.
    pub host: String,
    /// `EMAIL_PORT` (default 587).
    pub port: u16,
    /// `EMAIL_HOST_USER`.
    pub user: Option<String>,
    /// `EMAIL_HOST_PASSWORD`, or the contents of `EMAIL_HOST_PASSWORD_FILE`.
    pub password: Option<Secret>,
    /// `EMAIL_FROM` (default: the user).
    pub from: String,
    /// `EMAIL_TO`, comma-separated (default: the user).
    pub to: Vec<String>,
    /// `EMAIL_TLS`: `starttls` (default), `tls` (default when the port is 465) or `none`.
    pub tls: TlsMode,
    /// `EMAIL_ON_DELETE` (default on): notify deletes too.
    pub on_delete: bool,
    /// `EMAIL_KEY_PATTERNS`: comma-separated globs; only matching keys notify (default: all).
    pub key_patterns: Vec<String>,
    /// `EMAIL_RATE_PER_MINUTE` (default 60): more writes in a window are summed up in one digest.
    pub rate_per_minute: u64,
    /// `EMAIL_RATE_WINDOW_S` (default 60): the rate window; shorter only for tests and tuning.
    pub rate_window: Duration,
    /// `EMAIL_TIMEOUT_S` (default 10): SMTP connection and command timeout.
    pub timeout: Duration,
    /// `EMAIL_ALERTS` (default on): one e-mail when a node goes down and one when it is back.
    pub alerts: bool,
}

impl EmailConfig {
    pub(super) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<EmailConfig>, ConfigError> {
        let Some(host) = get("EMAIL_HOST") else {
            return Ok(None);
        };
        let port: u16 = parse_or(get, "EMAIL_PORT", 587)?;
        let user = get("EMAIL_HOST_USER");
        let password = match (get("EMAIL_HOST_PASSWORD"), get("EMAIL_HOST_PASSWORD_FILE")) {
            (Some(p), _) => Some(Secret(p)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        "EMAIL_HOST_PASSWORD_FILE",
                        format!("cannot read {path:?}: {}", e.kind()),
                    )
                })?;
                Some(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (None, None) => None,
        };
        let from = get("EMAIL_FROM").or_else(|| user.clone()).ok_or_else(|| {
            err(
                "EMAIL_FROM",
                "set it (or EMAIL_HOST_USER) when EMAIL_HOST is set",
            )
        })?;
        let to: Vec<String> = get("EMAIL_TO")
            .map(|v| {
                v.split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .or_else(|| user.clone().map(|u| vec![u]))
            .unwrap_or_default();
        if to.is_empty() {
            return Err(err(
                "EMAIL_TO",
                "set it (or EMAIL_HOST_USER) when EMAIL_HOST is set",
            ));
        }
        for address in to.iter().chain(std::iter::once(&from)) {
            if !address.contains('@') {
                return Err(err(
                    "EMAIL_TO",
                    format!("{address:?} is not an e-mail address"),
                ));
            }
        }
        let default_tls = if port == 465 { "tls" } else { "starttls" };
        let tls = match get("EMAIL_TLS")
            .unwrap_or_else(|| default_tls.to_owned())
            .to_ascii_lowercase()
            .as_str()
        {
            "starttls" => TlsMode::StartTls,
            "tls" | "ssl" => TlsMode::Tls,
            "none" | "off" => TlsMode::None,
            other => {
                return Err(err(
                    "EMAIL_TLS",
                    format!("must be starttls, tls or none, got {other:?}"),
                ));
            }
        };
        let key_patterns: Vec<String> = get("EMAIL_KEY_PATTERNS")
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let rate_per_minute: u64 = parse_or(get, "EMAIL_RATE_PER_MINUTE", 60)?;
        if rate_per_minute == 0 {
            return Err(err("EMAIL_RATE_PER_MINUTE", "must be at least 1"));
        }
        let window_s: u64 = parse_or(get, "EMAIL_RATE_WINDOW_S", 60)?;
        if !(1..=3600).contains(&window_s) {
            return Err(err("EMAIL_RATE_WINDOW_S", "must be between 1 and 3600"));
        }
        let timeout_s: u64 = parse_or(get, "EMAIL_TIMEOUT_S", 10)?;
        if !(1..=300).contains(&timeout_s) {
            return Err(err("EMAIL_TIMEOUT_S", "must be between 1 and 300"));
        }
        Ok(Some(EmailConfig {
            host,
            port,
            user,
            password,
            from,
            to,
            tls,
            on_delete: parse_bool(get, "EMAIL_ON_DELETE", true)?,
            key_patterns,
            rate_per_minute,
            rate_window: Duration::from_secs(window_s),
            timeout: Duration::from_secs(timeout_s),
            alerts: parse_bool(get, "EMAIL_ALERTS", true)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    #[test]
    fn email_settings_follow_the_seed() {
        assert!(
            config(&[]).unwrap().email.is_none(),
            "not configured: no e-mail"
        );
        let c = config(&[
            ("EMAIL_HOST", "smtp.gmail.com"),
            ("EMAIL_PORT", "587"),
            ("EMAIL_HOST_USER", "your@gmail.com"),
            ("EMAIL_HOST_PASSWORD", "yourpassword"),
        ])
        .unwrap();
        let e = c.email.unwrap();
        assert_eq!((e.port, e.tls), (587, TlsMode::StartTls));
        assert_eq!(e.to, vec!["your@gmail.com".to_owned()]);
        assert_eq!(e.from, "your@gmail.com");
        let shown = format!("{e:?}");
        assert!(!shown.contains("yourpassword"), "{shown}");
        let e = config(&[
            ("EMAIL_HOST", "h"),
            ("EMAIL_PORT", "465"),
            ("EMAIL_FROM", "a@b"),
            ("EMAIL_TO", "c@d, e@f"),
        ])
        .unwrap()
        .email
        .unwrap();
        assert_eq!((e.tls, e.to.len()), (TlsMode::Tls, 2));
        for (vars, var) in [
            (&[("EMAIL_HOST", "h")][..], "EMAIL_FROM"),
            (
                &[
                    ("EMAIL_HOST", "h"),
                    ("EMAIL_FROM", "a@b"),
                    ("EMAIL_TO", "nobody"),
                ][..],
                "EMAIL_TO",
            ),
            (
                &[
                    ("EMAIL_HOST", "h"),
                    ("EMAIL_HOST_USER", "a@b"),
                    ("EMAIL_TLS", "maybe"),
                ][..],
                "EMAIL_TLS",
            ),
            (
                &[
                    ("EMAIL_HOST", "h"),
                    ("EMAIL_HOST_USER", "a@b"),
                    ("EMAIL_HOST_PASSWORD_FILE", "/nonexistent/pw"),
                ][..],
                "EMAIL_HOST_PASSWORD_FILE",
            ),
        ] {
            assert_eq!(config(vars).unwrap_err().var, var);
        }
    }
}
