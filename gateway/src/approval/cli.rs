//! `agentgate approvals list|show|approve|deny`: deciding through a standalone gateway's admin
//! API. The approver's token comes from `--token` or `AGENTGATE_TOKEN`.
//!
//! Strings from the gateway come from agents (summaries, reasons): they are printed with control
//! characters escaped, so a request cannot rewrite the approver's terminal.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use agentgate_crds::ApprovalRequest;
use agentgate_crds::approval::ApprovalPhase;
use agentgate_crds::policy::GrantType;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{parse_time, unix_now};

/// Environment variable holding the approver's token.
pub const TOKEN_ENV: &str = "AGENTGATE_TOKEN";
/// Longest time one call to the admin API may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Widest operation summary in the table.
const SUMMARY_WIDTH: usize = 60;

/// Arguments of `agentgate approvals`.
#[derive(clap::Args, Clone)]
pub struct ApprovalsArgs {
    /// Address of the gateway's admin listener (host:port).
    #[arg(long, global = true, default_value = crate::cli::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: String,
    /// The approver's OIDC access token (default, and better: the AGENTGATE_TOKEN environment
    /// variable; a command line is readable by every local user in the process list).
    // Opaque tokens may start with '-'.
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

/// Never the token.
impl std::fmt::Debug for ApprovalsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalsArgs")
            .field("admin_addr", &self.admin_addr)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("command", &self.command)
            .finish()
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ApprovalsCommand {
    /// List approval requests, oldest first.
    List {
        /// Only requests waiting for a decision.
        #[arg(long)]
        pending: bool,
    },
    /// Print one approval request as JSON.
    Show {
        /// Name of the ApprovalRequest.
        name: String,
    },
    /// Approve a pending request.
    Approve {
        /// Name of the ApprovalRequest.
        name: String,
        /// Why (for example a ticket number); recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        /// Name of the ApprovalRequest.
        name: String,
        /// Why; recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs an `approvals` subcommand.
pub fn run(args: ApprovalsArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        eprintln!("error: no approver token: pass --token or set {TOKEN_ENV}");
        return ExitCode::FAILURE;
    };
    let mut out = io::stdout().lock();
    match runtime.block_on(execute(&args, &token, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin listener speaks plain HTTP, so the approver's token goes only to this host.
fn loopback_admin_addr(addr: &str) -> Result<String, String> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let host = match addr.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
    };
    if crate::config::compile::is_loopback_host(host) {
        Ok(addr.to_string())
    } else {
        Err(format!(
            "--admin-addr {addr:?} is not a loopback address: the admin listener speaks plain HTTP, and the approver's token would cross the network in clear; reach a remote gateway through a loopback tunnel (ssh -L 9464:127.0.0.1:9464, kubectl port-forward) and pass 127.0.0.1:PORT"
        ))
    }
}

async fn execute(args: &ApprovalsArgs, token: &str, out: &mut impl Write) -> Result<(), String> {
    let client = Client {
        addr: loopback_admin_addr(&args.admin_addr)?,
        token: token.to_string(),
    };
    let write_err = |e: io::Error| format!("cannot write the output: {e}");
    match &args.command {
        ApprovalsCommand::List { pending } => {
            let list = client.call(Method::GET, super::api::PREFIX, None).await?;
            let items: Vec<ApprovalRequest> =
                serde_json::from_value(list.get("items").cloned().unwrap_or_default())
                    .map_err(|e| format!("unexpected answer from the gateway: {e}"))?;
            let items: Vec<_> = items
                .into_iter()
                .filter(|r| !pending || phase(r) == ApprovalPhase::Pending)
                .collect();
            out.write_all(table(&items, unix_now()).as_bytes())
                .map_err(write_err)
        }
        ApprovalsCommand::Show { name } => {
            let v = client
                .call(
                    Method::GET,
                    &format!("{}/{}", super::api::PREFIX, path_segment(name)?),
                    None,
                )
                .await?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            writeln!(out, "{}", escape_controls(&text, true)).map_err(write_err)
        }
        ApprovalsCommand::Approve { name, reason } | ApprovalsCommand::Deny { name, reason } => {
            let verb = if matches!(args.command, ApprovalsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let body = serde_json::json!({ "reason": reason }).to_string();
            let v = client
                .call(
                    Method::POST,
                    &format!("{}/{}/{verb}", super::api::PREFIX, path_segment(name)?),
                    Some(body.into_bytes()),
                )
                .await?;
            let r: ApprovalRequest =
                serde_json::from_value(v).map_err(|e| format!("unexpected answer from the gateway: {e}"))?;
            writeln!(out, "{}", decided_line(&r, verb)).map_err(write_err)
        }
    }
}

/// Names are DNS subdomains; anything else cannot name a request and is refused before sending.
pub(super) fn path_segment(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(name)
    } else {
        Err(format!("{name:?} is not an ApprovalRequest name"))
    }
}

struct Client {
    addr: String,
    token: String,
}

impl Client {
    /// One call; a JSON answer on success, the problem's detail as the error otherwise.
    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Value, String> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| format!("the admin API at {} did not answer in time", self.addr))?
    }

    async fn call_inner(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Value, String> {
        let unreachable =
            |e: &dyn std::fmt::Display| format!("cannot reach the admin API at {}: {e}", self.addr);
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes)
                .map_err(|e| format!("unexpected answer from the gateway: {e}"));
        }
        let detail = super::api::problem_detail(&bytes)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(format!(
            "{} {}: {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            escape_controls(&detail, false)
        ))
    }
}

fn phase(r: &ApprovalRequest) -> ApprovalPhase {
    super::phase(r)
}

pub(super) fn decided_line(r: &ApprovalRequest, verb: &str) -> String {
    let name = r.metadata.name.as_deref().unwrap_or_default();
    let status = r.status.clone().unwrap_or_default();
    let approvals = status.approvals.unwrap_or(0);
    let done = match verb {
        "approve" => "approved",
        "withdraw" => "approval withdrawn",
        _ => "denied",
    };
    let plural = if approvals == 1 { "" } else { "s" };
    match status.phase {
        ApprovalPhase::Pending => format!(
            "{name}: {done}; still Pending ({approvals} approval{plural} so far, more approvers needed)"
        ),
        ApprovalPhase::Approved => {
            let until = status.grant_expires_at.unwrap_or_else(|| "-".into());
            match r.spec.grant.r#type {
                GrantType::Window => format!("{name}: {done}; now Approved, access window until {until}"),
                GrantType::Once => format!(
                    "{name}: {done}; now Approved ({approvals} approval{plural}), usable once until {until}"
                ),
            }
        }
        phase => format!("{name}: {done}; now {phase:?}"),
    }
}

/// The human-readable list.
pub fn table(items: &[ApprovalRequest], now: i64) -> String {
    if items.is_empty() {
        return "No approval requests.\n".into();
    }
    let header = [
        "NAME",
        "PHASE",
        "IDENTITY",
        "CONNECTION",
        "RULE",
        "GRANT",
        "APPROVALS",
        "EXPIRES",
        "AGE",
        "OPERATION",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in items {
        let s = &r.spec;
        let status = r.status.clone().unwrap_or_default();
        let grant = match (s.grant.r#type, &s.grant.duration) {
            (GrantType::Once, _) => "Once".to_string(),
            (GrantType::Window, Some(d)) => format!("Window {}", d.0),
            (GrantType::Window, None) => "Window".to_string(),
        };
        let expires = match status.phase {
            ApprovalPhase::Pending => relative(parse_time(&s.expires_at), now),
            ApprovalPhase::Approved => status
                .grant_expires_at
                .as_deref()
                .map_or_else(|| "-".to_string(), |t| relative(parse_time(t), now)),
            _ => "-".to_string(),
        };
        let age = r
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| human(now - t.0.as_second()));
        rows.push(vec![
            r.metadata.name.clone().unwrap_or_default(),
            format!("{:?}", status.phase),
            s.identity.clone(),
            s.connection.clone(),
            format!("{}/{}", s.policy.name, s.policy.rule),
            grant,
            status.approvals.unwrap_or(0).to_string(),
            expires,
            age,
            truncate(&s.operation.summary, SUMMARY_WIDTH),
        ]);
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(|c| escape_controls(&c, false)).collect())
        .collect();
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `in 9m`, `3m ago`; `-` for an unreadable time.
fn relative(t: Option<i64>, now: i64) -> String {
    match t {
        None => "-".into(),
        Some(t) if t >= now => format!("in {}", human(t - now)),
        Some(t) => format!("{} ago", human(now - t)),
    }
}

/// `45s`, `9m`, `5h`, `3d`.
fn human(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn truncate(s: &str, width: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= width {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Control characters as `\u{..}` escapes (newlines kept when `keep_newlines`).
pub(crate) fn escape_controls(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c.is_control() || crate::cli::reorders_text(c)) && !(keep_newlines && c == '\n') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_a_loopback_admin_listener() {
        for ok in [
            "127.0.0.1:9464",
            "http://127.0.0.1:9464/",
            "localhost:9464",
            "[::1]:9464",
            "127.8.0.1:1",
        ] {
            assert!(loopback_admin_addr(ok).is_ok(), "{ok}");
        }
        assert_eq!(loopback_admin_addr("http://[::1]:9464/").unwrap(), "[::1]:9464");
        for remote in [
            "10.0.0.5:9464",
            "gateway.internal:9464",
            "[2001:db8::1]:9464",
            "0.0.0.0:9464",
        ] {
            let e = loopback_admin_addr(remote).unwrap_err();
            assert!(
                e.contains("not a loopback address") && e.contains("ssh -L"),
                "{remote}: {e}"
            );
        }
    }
    use crate::approval::format_time;

    #[test]
    fn bidirectional_and_invisible_characters_are_shown_escaped() {
        let s = "DELETE FROM t /* \u{202E}ecnanif */ WHERE\u{200B} x\u{2066}\u{FEFF}\n";
        let shown = escape_controls(s, true);
        assert_eq!(
            shown,
            "DELETE FROM t /* \\u{202e}ecnanif */ WHERE\\u{200b} x\\u{2066}\\u{feff}\n"
        );
        // Arabic letter mark, line and paragraph separators, word joiner, soft hyphen, tags.
        let s = "a\u{061C}b\u{2028}c\u{2029}d\u{2060}e\u{00AD}f\u{E0041}";
        assert_eq!(
            escape_controls(s, false),
            "a\\u{61c}b\\u{2028}c\\u{2029}d\\u{2060}e\\u{ad}f\\u{e0041}"
        );
    }
    use agentgate_crds::approval::{ApprovalRequestSpec, OperationKind, OperationSummary, PolicyRuleRef};
    use agentgate_crds::policy::Grant;

    fn request(name: &str, summary: &str, phase: ApprovalPhase, now: i64) -> ApprovalRequest {
        let mut r = ApprovalRequest::new(
            name,
            ApprovalRequestSpec {
                identity: "ci-agent".into(),
                requester: "ci".into(),
                connection: "orders-db".into(),
                operation: OperationSummary {
                    kind: OperationKind::Sql,
                    summary: summary.into(),
                    fingerprint: "ab12cd34".into(),
                    detail: None,
                },
                policy: PolicyRuleRef {
                    name: "orders".into(),
                    rule: "writes".into(),
                    digest: None,
                },
                grant: Grant::default(),
                approvers: None,
                reason: None,
                expires_at: format_time(now + 540),
                decisions: Default::default(),
            },
        );
        r.metadata.creation_timestamp = crate::approval::time::kube_time(now - 60);
        r.status = Some(agentgate_crds::ApprovalRequestStatus {
            phase,
            approvals: Some(0),
            ..Default::default()
        });
        r
    }

    #[test]
    fn the_table_is_aligned_and_escaped() {
        let now = 1_800_000_000;
        let items = vec![
            request(
                "ci-agent-0a1b2c3d",
                "DELETE FROM orders WHERE id = $1",
                ApprovalPhase::Pending,
                now,
            ),
            request(
                "ci-agent-ffffffff",
                "evil\x1b[2Jsummary\nnext",
                ApprovalPhase::Denied,
                now,
            ),
        ];
        let t = table(&items, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("NAME               PHASE    IDENTITY"),
            "{t}"
        );
        assert!(lines[1].contains("Pending  ci-agent  orders-db   orders/writes  Once   0          in 9m    60s  DELETE FROM orders WHERE id = $1"), "{t}");
        assert!(!t.contains('\x1b'), "{t}");
        assert!(lines[2].contains("evil\\u{1b}[2Jsummary next"), "{t}");
        assert_eq!(table(&[], now), "No approval requests.\n");
    }

    #[test]
    fn times_read_well() {
        assert_eq!(human(45), "45s");
        assert_eq!(human(600), "10m");
        assert_eq!(human(3 * 3600), "3h");
        assert_eq!(human(3 * 86_400), "3d");
        assert_eq!(relative(Some(100), 40), "in 60s");
        assert_eq!(relative(Some(40), 100), "60s ago");
        assert_eq!(truncate("a  b\nc", 10), "a b c");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn names_are_checked_before_sending() {
        assert!(path_segment("ci-agent-0a1b2c3d").is_ok());
        assert!(path_segment("../metrics").is_err());
        assert!(path_segment("a/approve").is_err());
    }
}
