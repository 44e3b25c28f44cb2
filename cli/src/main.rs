//! `kvctl`: the command-line client of the key-value store.
//!
//! Each command is one HTTP request to one node (`--url` / `KV_URL`); any
//! node coordinates any request, so the node asked is a choice of
//! convenience, except for `snapshot` and `restore`, which are about the
//! node asked. Output is for people by default (tables, values as JSON);
//! `--json` prints the node's own JSON answer, errors included, for
//! scripts. The exit code says what happened ([`client::exit`]): success,
//! not found, unavailable, bad input, unauthorized, no connection. Every
//! request is bounded by `--timeout`.

mod client;
mod render;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use client::{Admin, CliError, Client, TlsOptions, encode, exit};

/// The largest value read from a file or stdin (the node's own limit,
/// `KV_VALUE_BYTES_MAX`, is usually far lower and is what counts).
const INPUT_BYTES_MAX: u64 = 64 * 1024 * 1024;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  unexpected failure (an HTTP 5xx other than 503, an answer that is not JSON)
  2  bad input: bad arguments or value, or the node refused the request (400, 405, 409, 413, 415)
  3  not found: the key is missing or deleted (404)
  4  unavailable: HTTP 503 (too few replicas for the consistency level, overloaded, clock skew)
  5  connection failure: the node could not be reached or did not answer within --timeout
  6  unauthorized: client token, admin token or cluster secret missing or wrong (401, 403)

Examples:
  kvctl put username123 mci_admin --string
  kvctl put config '{\"replicas\": 3}'
  kvctl put session:42 '{\"user\": 7}' --ttl 3600
  echo '[1, 2]' | kvctl put list
  kvctl get username123 --url http://127.0.0.1:8002
  kvctl get username123 --json | jq .version
  kvctl cluster
  kvctl members
  KV_CLUSTER_SECRET=... kvctl join node4 http://127.0.0.1:8004 --wait
  KV_ADMIN_TOKEN=... kvctl leave node4 --url https://node1:8001 --ca-cert ca.pem
  kvctl completions bash > /etc/bash_completion.d/kvctl";

/// Command-line client of the key-value store.
#[derive(Parser)]
#[command(name = "kvctl", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// The node to ask: any node coordinates any request.
    #[arg(
        long,
        env = "KV_URL",
        default_value = "http://127.0.0.1:8001",
        global = true
    )]
    url: String,
    /// Client token, sent as `Authorization: Bearer` (when the cluster sets KV_API_TOKEN).
    #[arg(long, env = "KV_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Consistency level of get, put and delete (default: the node's).
    #[arg(long, value_enum, global = true)]
    consistency: Option<Consistency>,
    /// Print the node's JSON answer (errors included) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The cluster secret, for join, leave and resume (sent as x-kv-cluster-secret).
    #[arg(long, env = "KV_CLUSTER_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,
    /// The admin token, for join, leave and resume in place of the secret
    /// (the cluster's KV_ADMIN_TOKEN, sent as x-kv-admin-token).
    #[arg(long, env = "KV_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
    /// PEM file of the CA that signed the nodes' certificates, for an
    /// https:// --url (default: the public Mozilla roots).
    #[arg(long, env = "KV_CA_CERT", value_name = "PEM", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a cluster that asks every client for one
    /// (KV_TLS_CLIENT_AUTH=all); with --key.
    #[arg(
        long = "cert",
        env = "KV_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key",
        global = true
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long = "key",
        env = "KV_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert",
        global = true
    )]
    client_key: Option<PathBuf>,
    /// Seconds one request may take, connecting included.
    #[arg(long, default_value = "10", value_parser = parse_seconds, global = true)]
    timeout: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    One,
    Quorum,
    All,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.001..=3600.0).contains(&secs) {
        return Err("must be between 0.001 and 3600 seconds".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Subcommand)]
enum Command {
    /// Read a key (exit 3 when it is missing or deleted).
    Get {
        key: String,
        /// Print a string value without quotes.
        #[arg(long)]
        raw: bool,
    },
    /// Write a key. The value is JSON, from the argument, --file, or stdin.
    Put {
        key: String,
        /// The value (JSON unless --string). Without it and --file, stdin is read.
        value: Option<String>,
        /// Read the value from a file (`-`: stdin).
        #[arg(long, short, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Take the value as a raw string, not JSON (one trailing newline of stdin is dropped).
        #[arg(long)]
        string: bool,
        /// Expire the value this many seconds after the write (1 to 315360000).
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
    },
    /// Delete a key on every replica (a versioned tombstone).
    Delete { key: String },
    /// Several gets, puts and deletes in one request: `{"ops": [...]}` (or
    /// the bare array) from a file or stdin; one result per operation.
    Batch {
        /// Read the operations from a file (`-` or none: stdin).
        file: Option<PathBuf>,
    },
    /// The cluster's keys in order, one page at a time (or --all pages).
    List {
        /// Only keys that start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only keys at or after this one.
        #[arg(long)]
        start: Option<String>,
        /// Only keys before this one.
        #[arg(long)]
        end: Option<String>,
        /// Keys per page (the node allows up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a previous page: the cursor it named.
        #[arg(long)]
        cursor: Option<String>,
        /// Leave the values out.
        #[arg(long)]
        keys_only: bool,
        /// Follow every page to the end of the range.
        #[arg(long)]
        all: bool,
    },
    /// Follow the changes the asked node stores (server-sent events), one
    /// line each, until interrupted.
    Watch {
        /// Only keys that start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Resume after this event id (the first column a watch printed).
        #[arg(long)]
        last_event_id: Option<String>,
    },
    /// Which nodes own a key, primary first, and their health.
    Route { key: String },
    /// Every node's own view of a key (record, hints, queued jobs), and whether the replicas agree.
    Explain {
        key: String,
        /// Send the newest record to the stale replicas now, and say what each did.
        #[arg(long)]
        repair: bool,
    },
    /// A status table of the nodes, as the node asked sees them.
    Cluster,
    /// The members at the asked node's topology epoch, and the change it drives.
    Members,
    /// A started node (KV_JOIN=1) joins the cluster; needs --admin-token or --secret.
    Join {
        id: String,
        /// The node's base URL, e.g. http://127.0.0.1:8004.
        url: String,
        /// Wait until its share has moved (the change is done).
        #[arg(long)]
        wait: bool,
    },
    /// A member leaves the cluster, its data moving to the others; needs --admin-token or --secret.
    Leave {
        id: String,
        /// Wait until the data has moved (the change is done).
        #[arg(long)]
        wait: bool,
    },
    /// Drive on a change whose driving node is gone; needs --admin-token or --secret.
    Resume {
        /// Wait until the change is done.
        #[arg(long)]
        wait: bool,
    },
    /// Pull the asked node's data from its live peers now (anti-entropy).
    Restore {
        /// Only from this peer.
        #[arg(long)]
        from: Option<String>,
    },
    /// One page of the asked node's own data.
    Snapshot {
        /// Records per page (the node allows up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Where to start: the cursor a previous page named.
        #[arg(long)]
        cursor: Option<String>,
        /// Show each record's version.
        #[arg(long)]
        versions: bool,
        /// Show delete tombstones too.
        #[arg(long)]
        tombstones: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            report(&error, cli.global.json);
            ExitCode::from(error.exit_code())
        }
    }
}

/// Says what went wrong on stderr; with `--json` the node's answer, when
/// there is one, also goes to stdout for the script to read.
fn report(error: &CliError, json: bool) {
    if json && let Some(body) = error.body() {
        // A broken stdout leaves only stderr to tell; nothing more to do.
        let _ = emit(&format!("{body}\n"));
    }
    eprintln!("kvctl: {error}");
    if !json && let Some(body) = error.body() {
        eprint!("{}", render::error_details(body));
    }
}

/// Writes to stdout; a closed pipe (`kvctl snapshot | head`) is not an error.
fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

fn run(cli: &Cli) -> Result<(), CliError> {
    let g = &cli.global;
    if let Command::Completions { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "kvctl", &mut script);
        return emit(&String::from_utf8_lossy(&script));
    }
    let tls = TlsOptions {
        ca: g.ca_cert.clone(),
        identity: g.client_cert.clone().zip(g.client_key.clone()),
    };
    let client = Client::new(&g.url, g.token.clone(), g.timeout, &tls)?;
    let consistency = g
        .consistency
        .map(|c| format!("&consistency={}", c.as_str()))
        .unwrap_or_default();
    // Each command: the request, then how a success is shown.
    let (body, text) = match &cli.command {
        Command::Get { key, raw } => {
            let answer = client.get(&format!("/kv/?key={}{consistency}", encode(key)))?;
            if client::is_not_found(answer.status) && answer.body.get("key").is_some() {
                return Err(CliError::NotFound {
                    key: key.clone(),
                    deleted_at: answer.body["version"].as_str().map(str::to_owned),
                    body: answer.body,
                });
            }
            let body = answer.ok()?;
            let text = render::value(&body, *raw);
            (body, text)
        }
        Command::Put {
            key,
            value,
            file,
            string,
            ttl,
        } => {
            let value = read_value(value.as_deref(), file.as_deref(), *string)?;
            let path = match g.consistency {
                Some(c) => format!("/kv/?consistency={}", c.as_str()),
                None => "/kv/".to_owned(),
            };
            // The node checks the bounds and answers 400 (exit 2) past them.
            let body = match ttl {
                Some(ttl) => json!({"key": key, "value": value, "ttl_s": ttl}),
                None => json!({"key": key, "value": value}),
            };
            let body = client.send(Method::PUT, &path, Some(&body))?.ok()?;
            let text = render::write(&body);
            (body, text)
        }
        Command::Delete { key } => {
            let path = format!("/kv/?key={}{consistency}", encode(key));
            let body = client.send(Method::DELETE, &path, None)?.ok()?;
            let text = render::write(&body);
            (body, text)
        }
        Command::Batch { file } => {
            let stdin = PathBuf::from("-");
            let ops = match read_value(None, Some(file.as_deref().unwrap_or(&stdin)), false)? {
                Value::Array(ops) => json!({ "ops": ops }),
                other => other,
            };
            let path = match g.consistency {
                Some(c) => format!("/kv/batch?consistency={}", c.as_str()),
                None => "/kv/batch".to_owned(),
            };
            let body = client.send(Method::POST, &path, Some(&ops))?.ok()?;
            let text = render::batch(&body);
            (body, text)
        }
        Command::List {
            prefix,
            start,
            end,
            limit,
            cursor,
            keys_only,
            all,
        } => {
            let mut base = format!("/kv/?limit={limit}{consistency}");
            for (name, v) in [("prefix", prefix), ("start", start), ("end", end)] {
                if let Some(v) = v {
                    base.push_str(&format!("&{name}={}", encode(v)));
                }
            }
            if *keys_only {
                base.push_str("&keys_only=true");
            }
            let mut cursor = cursor.clone();
            let mut listed = 0usize;
            let body = loop {
                let path = match &cursor {
                    Some(c) => format!("{base}&cursor={}", encode(c)),
                    None => base.clone(),
                };
                let page = client.get(&path)?.ok()?;
                if !*all {
                    break page;
                }
                // Every page is printed as it comes (JSON: one line per
                // page), so --all holds one page in memory, not the range.
                listed += page["items"].as_array().map_or(0, Vec::len);
                if g.json {
                    emit(&format!("{page}\n"))?;
                } else {
                    emit(&render::listing_rows(&page))?;
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None if g.json => return Ok(()),
                    None => return emit(&format!("{listed} key(s)\n")),
                }
            };
            let text = render::listing(&body);
            (body, text)
        }
        Command::Watch {
            prefix,
            last_event_id,
        } => {
            let mut path = "/kv/watch/?".to_owned();
            if let Some(p) = prefix {
                path.push_str(&format!("prefix={}&", encode(p)));
            }
            if let Some(id) = last_event_id {
                path.push_str(&format!("last_event_id={}", encode(id)));
            }
            return client.follow_events(&path, |event, id, data| {
                let body: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if event == "error" {
                    return Err(CliError::Http {
                        status: 503,
                        code: body["code"].as_str().unwrap_or("error").to_owned(),
                        message: body["message"].as_str().unwrap_or("").to_owned(),
                        body,
                    });
                }
                if g.json {
                    emit(&format!(
                        "{}\n",
                        json!({"id": id, "event": event, "data": body})
                    ))
                } else {
                    emit(&render::watch_line(event, id, &body))
                }
            });
        }
        Command::Route { key } => {
            let body = client
                .get(&format!("/kv/route/?key={}", encode(key)))?
                .ok()?;
            let text = render::route(&body);
            (body, text)
        }
        Command::Explain { key, repair } => {
            let repair = if *repair { "&repair=true" } else { "" };
            let body = client
                .get(&format!("/kv/explain/?key={}{repair}", encode(key)))?
                .ok()?;
            let text = render::explain(&body);
            (body, text)
        }
        Command::Cluster => {
            let body = client.get("/cluster/")?.ok()?;
            let text = render::cluster(&body);
            (body, text)
        }
        Command::Members => {
            let body = client.get("/cluster/members")?.ok()?;
            let text = render::members(&body);
            (body, text)
        }
        Command::Join { wait, .. } | Command::Leave { wait, .. } | Command::Resume { wait } => {
            let credential = match (&g.admin_token, &g.secret) {
                (Some(token), _) => Admin::Token(token),
                (None, Some(secret)) => Admin::Secret(secret),
                (None, None) => {
                    return Err(CliError::Input(
                        "membership changes need --admin-token (KV_ADMIN_TOKEN) or --secret (KV_CLUSTER_SECRET)"
                            .to_owned(),
                    ));
                }
            };
            let (method, path, body) = match &cli.command {
                Command::Join { id, url, .. } => (
                    Method::POST,
                    "/cluster/members".to_owned(),
                    Some(json!({"id": id, "url": url})),
                ),
                Command::Leave { id, .. } => (
                    Method::DELETE,
                    format!("/cluster/members/{}", encode(id)),
                    None,
                ),
                _ => (Method::POST, "/cluster/change/resume".to_owned(), None),
            };
            let started = client
                .send_admin(method, &path, body.as_ref(), credential)?
                .ok()?;
            if !*wait {
                let text = render::change_started(&started);
                (started, text)
            } else {
                let done = wait_for_change(&client)?;
                let text = render::members(&done);
                (done, text)
            }
        }
        Command::Restore { from } => {
            let path = match from {
                Some(peer) => format!("/restore/?from={}", encode(peer)),
                None => "/restore/".to_owned(),
            };
            let body = client.send(Method::POST, &path, None)?.ok()?;
            let text = render::restore(&body);
            (body, text)
        }
        Command::Snapshot {
            limit,
            cursor,
            versions,
            tombstones,
        } => {
            let mut path = format!("/snapshot/?limit={limit}");
            if let Some(cursor) = cursor {
                path.push_str(&format!("&cursor={}", encode(cursor)));
            }
            if *versions {
                path.push_str("&versions=true");
            }
            if *tombstones {
                path.push_str("&tombstones=true");
            }
            let body = client.get(&path)?.ok()?;
            let text = render::snapshot(&body);
            (body, text)
        }
        Command::Completions { .. } => return Ok(()),
    };
    if g.json {
        emit(&format!("{body}\n"))
    } else {
        emit(&text)
    }
}

/// The value of `put`: from the argument, a file, or stdin; JSON unless
/// `string`.
fn read_value(
    arg: Option<&str>,
    file: Option<&std::path::Path>,
    string: bool,
) -> Result<Value, CliError> {
    let (text, source) = match (arg, file) {
        (Some(v), _) => (v.to_owned(), "VALUE"),
        (None, Some(path)) if path.as_os_str() != "-" => {
            let f = std::fs::File::open(path).map_err(|e| {
                CliError::Input(format!("--file {}: cannot open: {e}", path.display()))
            })?;
            (read_bounded(f, &path.display().to_string())?, "--file")
        }
        (None, _) => {
            let stdin = std::io::stdin();
            if file.is_none() && stdin.is_terminal() {
                return Err(CliError::Input(
                    "no value: give VALUE, --file PATH, or pipe it on stdin".to_owned(),
                ));
            }
            let mut text = read_bounded(stdin.lock(), "stdin")?;
            if string {
                // `echo v | kvctl put k --string` means "v", as `$(...)` would.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
            }
            (text, "stdin")
        }
    };
    if string {
        return Ok(Value::String(text));
    }
    serde_json::from_str(&text).map_err(|e| {
        CliError::Input(format!(
            "the value ({source}) is not JSON: {e}; for a raw string use --string, or quote it: '\"text\"'"
        ))
    })
}

fn read_bounded(reader: impl Read, what: &str) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    reader
        .take(INPUT_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Input(format!("{what}: cannot read: {e}")))?;
    if bytes.len() as u64 > INPUT_BYTES_MAX {
        return Err(CliError::Input(format!(
            "{what}: more than {INPUT_BYTES_MAX} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|_| CliError::Input(format!("{what}: not UTF-8 text")))
}

/// Polls `/cluster/members` of the asked node until its change is done
/// (or abandoned: an error). Bounded by [`CHANGE_WAIT_MAX`].
fn wait_for_change(client: &Client) -> Result<Value, CliError> {
    let deadline = std::time::Instant::now() + CHANGE_WAIT_MAX;
    loop {
        let body = client.get("/cluster/members")?.ok()?;
        match body["change"]["state"].as_str() {
            Some("done") => return Ok(body),
            Some("abandoned") => {
                return Err(CliError::Input(format!(
                    "the change was abandoned: {}",
                    body["change"]["error"]
                        .as_str()
                        .unwrap_or("no reason given")
                )));
            }
            _ if std::time::Instant::now() >= deadline => {
                return Err(CliError::Input(format!(
                    "the change is not done after {} s (kvctl members shows where it stands)",
                    CHANGE_WAIT_MAX.as_secs()
                )));
            }
            _ => std::thread::sleep(CHANGE_POLL),
        }
    }
}

/// How long `--wait` follows a membership change, and how often it asks.
const CHANGE_WAIT_MAX: Duration = Duration::from_secs(3600);
const CHANGE_POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn values_are_json_unless_string() {
        assert_eq!(
            read_value(Some("{\"a\": [1]}"), None, false).unwrap(),
            json!({"a": [1]})
        );
        assert_eq!(
            read_value(Some("mci_admin"), None, true).unwrap(),
            json!("mci_admin")
        );
        let err = read_value(Some("mci_admin"), None, false).unwrap_err();
        assert_eq!(err.exit_code(), exit::BAD_INPUT);
        assert!(err.to_string().contains("--string"), "{err}");
    }

    #[test]
    fn a_missing_file_is_bad_input() {
        let err = read_value(None, Some(std::path::Path::new("/no/such/file")), false).unwrap_err();
        assert_eq!(err.exit_code(), exit::BAD_INPUT);
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(parse_seconds("2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("x").is_err());
    }
}
