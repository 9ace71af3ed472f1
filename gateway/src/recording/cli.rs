//! `agentgate sessions list|show|replay|verify|public-key`: reading recordings back.
//!
//! Files are untrusted input: strings from them are printed with control characters escaped, so a
//! recording cannot rewrite the operator's terminal.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::verify::{Event, VerifyError, VerifyReport, verify_events, verify_with_keys};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SessionsCommand {
    /// List recorded sessions, oldest first: start, id, identity, connection, events, state.
    List {
        /// Directory of session files.
        #[arg(long)]
        dir: PathBuf,
        /// Only sessions of this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Only sessions on this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only sessions started at or after this time: RFC 3339 (`2026-12-05T04:00:00Z`) or an
        /// age (`90m`, `2h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Only sessions started before this time (RFC 3339 or an age, as for --since).
        #[arg(long)]
        until: Option<String>,
    },
    /// Print a session's events; exit 1 if it does not verify.
    Show {
        /// A session file.
        file: PathBuf,
        /// Base64url Ed25519 public key of the gateway: also check the closing signature, and
        /// exit 1 unless the session is closed and signed by this key.
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
    },
    /// Play a session back as a transcript: each request and its decision, response and body,
    /// each SQL statement, decision and result rows, with the time since the session began.
    /// Exit 1 if it does not verify (what verified up to there is played).
    Replay {
        /// A session file.
        file: PathBuf,
        /// Base64url Ed25519 public key of the gateway: also check the closing signature, and
        /// exit 1 unless the session is closed and signed by this key.
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
        /// Pause between events as they were spaced when recorded, this many times faster
        /// (pauses capped at 5 s); without it, print at once.
        #[arg(long, value_parser = parse_speed)]
        speed: Option<f64>,
    },
    /// Verify session files; exit 1 if any is tampered with (or, with --require-closed, open).
    Verify {
        /// Session files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Base64url Ed25519 public key of the gateway; when given, closing signatures are
        /// checked, and a file without a signed closing event fails (see --allow-open). Several,
        /// separated by commas (the keys of several processes, or before and after a rotation):
        /// each file must be signed by one of them.
        // One key in 64 starts with '-', which is still the value, not an option.
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
        /// Fail a file that has no closing event (signed, with --public-key). A file cut off
        /// mid-session verifies up to its last event, so only a closing event shows that nothing
        /// was removed from its end: archived evidence should be checked with this flag. Implied
        /// by --public-key: only the closing signature covers the events, and an unsigned file is
        /// one anybody who can write the archive could have written.
        #[arg(long)]
        require_closed: bool,
        /// With --public-key, accept files still open (or cut off by a crash) on their hash
        /// chain alone, as sessions in progress: they are reported as not signed.
        #[arg(long, conflicts_with = "require_closed")]
        allow_open: bool,
        /// The files are a whole set (a connection's sessions, a day's archive): fail when a
        /// session continues one that is not among them, or says it is continued by one that is
        /// not (a connection's session is closed and a new one begun every 15 minutes and at
        /// some reloads, each naming the other, so a file removed from the middle shows).
        #[arg(long)]
        require_links: bool,
        /// Fail a file closed by a later gateway process that found it cut off (a crash, a
        /// kill). Such a seal vouches for the file as that process found it: events cut from its
        /// end before then, by a crash or by someone who could write the spool, do not show.
        #[arg(long)]
        reject_recovered: bool,
    },
    /// Print the base64url public key of a signing key (the PKCS#8 PEM that
    /// `recording.signingKeySecretRef` names), for `verify --public-key`.
    PublicKey {
        /// The private key's PEM file; `-` reads standard input.
        file: PathBuf,
    },
}

/// Runs a `sessions` subcommand, printing to stdout.
pub fn run(cmd: SessionsCommand) -> ExitCode {
    let mut out = io::stdout().lock();
    match execute(cmd, &mut out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the command succeeded; `Err` only for output or directory errors.
fn execute(cmd: SessionsCommand, out: &mut impl Write) -> io::Result<bool> {
    match cmd {
        SessionsCommand::List {
            dir,
            identity,
            connection,
            since,
            until,
        } => {
            let now = crate::approval::time::unix_now();
            let bound = |arg: &str, value: Option<String>| match value {
                None => Ok(None),
                Some(v) => time_bound(&v, now)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--{arg}: {e}"))),
            };
            let window = (bound("since", since)?, bound("until", until)?);
            list(&dir, identity.as_deref(), connection.as_deref(), window, out)
        }
        SessionsCommand::Show { file, public_key } => show(&file, public_key.as_deref(), out),
        SessionsCommand::Replay {
            file,
            public_key,
            speed,
        } => replay(&file, public_key.as_deref(), speed, out),
        SessionsCommand::Verify {
            files,
            public_key,
            require_closed,
            allow_open,
            require_links,
            reject_recovered,
        } => {
            let require = Require {
                closed: require_closed || (public_key.is_some() && !allow_open),
                recorded_close: reject_recovered,
            };
            let (verified, sessions) = verify(&files, public_key.as_deref(), require, out)?;
            let linked = !require_links || links(&sessions, out)?;
            Ok(verified && linked)
        }
        SessionsCommand::PublicKey { file } => public_key(&file, out),
    }
}

fn public_key(file: &Path, out: &mut impl Write) -> io::Result<bool> {
    let pem = if file == Path::new("-") {
        let mut pem = Vec::new();
        io::Read::read_to_end(&mut io::stdin().lock(), &mut pem)?;
        pem
    } else {
        std::fs::read(file)?
    };
    match super::signing_key_from_pem(&pem) {
        Ok((_, public)) => writeln!(out, "{public}").map(|()| true),
        // The file's contents are a secret: only the reason is printed.
        Err(why) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", file.display()),
        )),
    }
}

/// The pause for a gap of `micros` between two events played `speed` times faster: capped, and
/// never a panic however small `speed` is.
fn replay_pause(micros: i64, speed: f64) -> std::time::Duration {
    let secs = micros.max(0) as f64 / 1e6 / speed;
    std::time::Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_REPLAY_PAUSE)
        .min(MAX_REPLAY_PAUSE)
}

/// `replay --speed`: a positive, finite factor.
fn parse_speed(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!(
            "{value:?} is not a positive number (1 plays in recorded time, 10 ten times faster)"
        )),
    }
}

/// `--since`/`--until`: an RFC 3339 time, or an age before `now`, in Unix seconds.
fn time_bound(value: &str, now: i64) -> Result<i64, String> {
    if let Some(t) = crate::approval::time::parse_time(value) {
        return Ok(t);
    }
    agentgate_crds::common::parse_duration(value)
        .map(|age| now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX)))
        .map_err(|_| format!("{:?} is neither an RFC 3339 time nor an age like 2h", safe(value)))
}

fn list(
    dir: &Path,
    identity: Option<&str>,
    connection: Option<&str>,
    (since, until): (Option<i64>, Option<i64>),
    out: &mut impl Write,
) -> io::Result<bool> {
    // Session files only, as the recorder names them and never a link or a FIFO (which would
    // hang the listing).
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| super::is_session_file(p))
        .collect();
    // Names start with the UTC start time, so name order is chronological.
    files.sort();
    for file in files {
        let mut start: Option<Event> = None;
        let result = verify_events(&file, None, |e| {
            if start.is_none() {
                start = Some(e.clone());
            }
        });
        let field = |name: &str| {
            let value = start
                .as_ref()
                .and_then(|e| e.data.get(name))
                .and_then(Value::as_str);
            value.unwrap_or("-").to_string()
        };
        let (who, conn) = (field("identity"), field("connection"));
        if identity.is_some_and(|i| i != who) || connection.is_some_and(|c| c != conn) {
            continue;
        }
        if since.is_some() || until.is_some() {
            // A session whose start cannot be read is outside every window.
            let Some(started) = start
                .as_ref()
                .and_then(|e| crate::approval::time::parse_time(&e.ts))
            else {
                continue;
            };
            if since.is_some_and(|t| started < t) || until.is_some_and(|t| started >= t) {
                continue;
            }
        }
        let (ts, id) = match &start {
            Some(e) => (e.ts.as_str(), e.session.as_str()),
            None => ("-", "-"),
        };
        let state = match &result {
            Ok(r) if !names_session(&file, &r.session) => {
                "MISNAMED: the file holds another session".to_string()
            }
            // No key here: the hashes are checked, which anyone who rewrites a file can redo.
            Ok(r) => format!(
                "{} events  {}  chain intact (signature not checked)",
                r.events,
                match (r.closed, r.recovered) {
                    (true, true) => "cut off, sealed later",
                    (true, false) => "closed",
                    (false, _) => "open",
                }
            ),
            Err(e) => format!("TAMPERED {e}"),
        };
        writeln!(
            out,
            "{}  {}  {}  {}  {state}",
            safe(ts),
            safe(id),
            safe(&who),
            safe(&conn)
        )?;
    }
    Ok(true)
}

fn show(file: &Path, public_key: Option<&str>, out: &mut impl Write) -> io::Result<bool> {
    let mut written = Ok(());
    let result = verify_events(file, public_key, |e| {
        if written.is_ok() {
            // serde_json escapes only characters below 0x20: DEL and C1 controls (U+009B is a
            // CSI to many terminals) would pass, so the text goes through `safe` too.
            let data = safe_json(&e.data);
            written = writeln!(out, "{:>6}  {}  {}  {data}", e.seq, safe(&e.ts), safe(&e.kind));
        }
    });
    written?;
    finish(file, public_key, &result, out)
}

/// The last line of `show` and `replay`: the file's verification, and whether it passes (with a
/// key, only a closed file signed by it does).
fn finish(
    file: &Path,
    public_key: Option<&str>,
    result: &Result<VerifyReport, VerifyError>,
    out: &mut impl Write,
) -> io::Result<bool> {
    // What was shown is another session than the file's name says (see `verify`).
    if misnamed(file, result, out)? {
        return Ok(false);
    }
    if public_key.is_some()
        && let Ok(r) = result
        && !r.signed
    {
        writeln!(
            out,
            "INCOMPLETE {}: {} events and no signed closing event; nothing above is vouched for by the key",
            safe(&file.display().to_string()),
            r.events
        )?;
        return Ok(false);
    }
    writeln!(out, "{}", outcome(file, result))?;
    Ok(result.is_ok())
}

/// The longest pause `replay --speed` makes between two events.
const MAX_REPLAY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

fn replay(
    file: &Path,
    public_key: Option<&str>,
    speed: Option<f64>,
    out: &mut impl Write,
) -> io::Result<bool> {
    let micros = |ts: &str| {
        ts.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|t| t.as_microsecond())
    };
    let mut began: Option<i64> = None;
    // The latest time seen: an event stamped earlier (a clock step) neither pauses nor rewinds.
    let mut latest: Option<i64> = None;
    let mut written = Ok(());
    let result = verify_events(file, public_key, |e| {
        if written.is_err() {
            return;
        }
        let at = micros(&e.ts);
        if let (Some(speed), Some(at), Some(last)) = (speed, at, latest)
            && at > last
        {
            std::thread::sleep(replay_pause(at - last, speed));
        }
        if let Some(at) = at {
            began.get_or_insert(at);
            latest = Some(latest.map_or(at, |l| l.max(at)));
        }
        let offset = match (at, began) {
            (Some(t), Some(first)) => (t - first).max(0) as f64 / 1e6,
            _ => 0.0,
        };
        written = transcript(offset, e, out).and_then(|()| out.flush());
    });
    written?;
    finish(file, public_key, &result, out)
}

/// One event of a transcript: what happened, in the words of its protocol.
fn transcript(offset: f64, e: &Event, out: &mut impl Write) -> io::Result<()> {
    let d = &e.data;
    let text = |name: &str| text_field(d, name);
    let number = |name: &str| d.get(name).and_then(Value::as_u64);
    let at = format!("[+{offset:>9.3}s]");
    let pad = " ".repeat(at.len());
    match e.kind.as_str() {
        "session.start" => writeln!(
            out,
            "{at} session {} started: identity {}, connection {}",
            safe(&e.session),
            text("identity").unwrap_or_else(|| "-".into()),
            text("connection").unwrap_or_else(|| "-".into()),
        ),
        "session.end" => writeln!(
            out,
            "{at} session ended{}",
            text("reason").map(|r| format!(": {r}")).unwrap_or_default()
        ),
        "http.request" => {
            let query = text("query").map(|q| format!("?{q}")).unwrap_or_default();
            writeln!(
                out,
                "{at} -> {} {}{query}",
                text("method").unwrap_or_default(),
                text("path").unwrap_or_default()
            )?;
            body(d.get("body"), &pad, out)
        }
        "decision" => writeln!(
            out,
            "{at}    {}{}{}",
            text("action").unwrap_or_default(),
            rule_of(d),
            text("reason").map(|r| format!(": {r}")).unwrap_or_default()
        ),
        "http.response" => {
            let ms = |name: &str| number(name).map(|us| us as f64 / 1e3);
            writeln!(
                out,
                "{at} <- {}{}",
                number("status").unwrap_or_default(),
                match (ms("upstream_us"), ms("total_us")) {
                    (Some(u), Some(t)) => format!(" (upstream {u:.1} ms, total {t:.1} ms)"),
                    _ => String::new(),
                }
            )?;
            body(d.get("body"), &pad, out)
        }
        "http.request.body" | "http.response.body" => body(d.get("body"), &pad, out),
        "pg.query" | "pg.execute" => {
            writeln!(out, "{at} SQL> {}", text("sql").unwrap_or_default())?;
            if let Some(params) = d.get("params").filter(|p| !p.is_null()) {
                writeln!(out, "{pad}      parameters {}", safe_json(params))?;
            }
            for st in d
                .get("statements")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = |name: &str| text_field(st, name);
                writeln!(
                    out,
                    "{pad}      {}{}{}",
                    field("decision").unwrap_or_default(),
                    field("rule").map(|r| format!(" by {r}")).unwrap_or_default(),
                    field("reason").map(|r| format!(": {r}")).unwrap_or_default()
                )?;
            }
            Ok(())
        }
        "pg.result" => {
            if let Some(columns) = d.get("columns").and_then(Value::as_array) {
                writeln!(out, "{pad}      {}", cells(columns))?;
            }
            for row in d.get("data").and_then(Value::as_array).into_iter().flatten() {
                writeln!(
                    out,
                    "{pad}      {}",
                    cells(row.as_array().map_or(&[][..], Vec::as_slice))
                )?;
            }
            let kept = d.get("data").and_then(Value::as_array).map_or(0, Vec::len) as u64;
            let rows = number("rows").unwrap_or(kept);
            writeln!(
                out,
                "{at}    {}{}{}",
                text("tag").unwrap_or_else(|| format!("{rows} rows")),
                if d.get("truncated").and_then(Value::as_bool) == Some(true) {
                    ", capped by a rowLimit"
                } else {
                    ""
                },
                if rows > kept {
                    format!(" ({kept} of {rows} rows recorded)")
                } else {
                    String::new()
                }
            )
        }
        "pg.error" => writeln!(
            out,
            "{at}    ERROR {}: {}",
            text("code").unwrap_or_default(),
            text("message").unwrap_or_default()
        ),
        other => writeln!(out, "{at} {} {}", safe(other), safe_json(d)),
    }
}

/// A recorded value as JSON, escaped for the terminal.
fn safe_json(v: &Value) -> String {
    safe(&serde_json::to_string(v).unwrap_or_default())
}

/// A string member of a recorded object, escaped for the terminal.
fn text_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(safe)
}

fn rule_of(d: &Value) -> String {
    match (text_field(d, "policy"), text_field(d, "rule")) {
        (Some(p), Some(r)) => format!(" by {p}/{r}"),
        (None, Some(r)) => format!(" by {r}"),
        _ => String::new(),
    }
}

/// A recorded body (masked when it was written: `text`, `json`, `base64` or `withheld`, with
/// `bytes` and `truncated`), indented under its event.
fn body(body: Option<&Value>, pad: &str, out: &mut impl Write) -> io::Result<()> {
    let Some(body) = body.filter(|b| !b.is_null()) else {
        return Ok(());
    };
    let bytes = body.get("bytes").and_then(Value::as_u64);
    let text = if let Some(t) = body.get("text").and_then(Value::as_str) {
        t.to_string()
    } else if let Some(j) = body.get("json") {
        serde_json::to_string_pretty(j).unwrap_or_default()
    } else if body.get("base64").is_some() {
        format!("({} bytes, not text: base64 in the record)", bytes.unwrap_or(0))
    } else if let Some(why) = body.get("withheld") {
        format!(
            "(body withheld: {})",
            why.as_str().map_or_else(|| why.to_string(), str::to_string)
        )
    } else {
        serde_json::to_string(body).unwrap_or_default()
    };
    for line in text.lines() {
        writeln!(out, "{pad}      {}", safe(line))?;
    }
    if body.get("truncated").and_then(Value::as_bool) == Some(true) {
        writeln!(
            out,
            "{pad}      (recorded in part; {} bytes in all)",
            bytes.unwrap_or(0)
        )?;
    }
    Ok(())
}

/// Result cells separated by ` | ` (NULL for a null).
fn cells(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".to_string(),
            Value::String(s) => safe(s),
            other => safe(&other.to_string()),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One verified session's links: what its start continues, what its end says continues it, and
/// whether that end was written by a later process that found it cut off.
struct Links {
    continues: Option<String>,
    continued_by: Option<String>,
    recovered: bool,
}

/// What `verify` demands of each file beyond an intact chain (and signature, given a key).
#[derive(Clone, Copy, Default)]
struct Require {
    /// A closing event (`--require-closed`, implied by `--public-key`).
    closed: bool,
    /// A close written by the recording process, not a later one's seal (`--reject-recovered`).
    recorded_close: bool,
}

/// Verifies `files`, saying what each is; `true` when all pass. The links of every file that
/// verifies are kept, by session, for `--require-links`.
fn verify(
    files: &[PathBuf],
    public_key: Option<&str>,
    require: Require,
    out: &mut impl Write,
) -> io::Result<(bool, BTreeMap<String, Links>)> {
    let keys: Vec<&str> = public_key
        .iter()
        .flat_map(|k| k.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    // `--public-key "$KEY"` with the variable unset would check no signature at all.
    if public_key.is_some() && keys.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--public-key names no key",
        ));
    }
    let mut all = true;
    let mut sessions = BTreeMap::new();
    for file in files {
        let (mut continues, mut continued_by) = (None, None);
        let result = verify_with_keys(file, &keys, |e| match e.kind.as_str() {
            super::START => continues = super::verify::text(&e.data, "continues"),
            super::END => continued_by = super::verify::text(&e.data, "continued_by"),
            _ => {}
        });
        if let Ok(r) = &result {
            let links = Links {
                continues,
                continued_by,
                recovered: r.recovered,
            };
            sessions.insert(r.session.clone(), links);
        }
        // A file holds the session its name says: one copied over another's name (an older
        // signed session replacing a newer one) is caught here, as the chain cannot catch it.
        if misnamed(file, &result, out)? {
            all = false;
            continue;
        }
        let incomplete = result
            .as_ref()
            .is_ok_and(|r| !r.closed || (public_key.is_some() && !r.signed));
        if require.closed && incomplete {
            all = false;
            let r = result.as_ref().map_or(0, |r| r.events);
            writeln!(
                out,
                "INCOMPLETE {}: {r} events and no {}closing event; later events may have been removed",
                safe(&file.display().to_string()),
                if public_key.is_some() { "signed " } else { "" },
            )?;
            continue;
        }
        if require.recorded_close && result.as_ref().is_ok_and(|r| r.recovered) {
            all = false;
            writeln!(
                out,
                "RECOVERED {}: cut off, and closed by a later gateway process as it found the file; events cut from its end before then would not show",
                safe(&file.display().to_string()),
            )?;
            continue;
        }
        all &= result.is_ok();
        writeln!(out, "{}", outcome(file, &result))?;
    }
    Ok((all, sessions))
}

/// Checks the continuation links among the sessions `verify` read (see `--require-links`): each
/// link must point to a session among them that points back.
fn links(sessions: &BTreeMap<String, Links>, out: &mut impl Write) -> io::Result<bool> {
    let mut all = true;
    for (id, l) in sessions {
        // Each link must be answered by the other end's link back; a predecessor a crash cut
        // off before its end could name its successor answers by having no successor named.
        let links = [
            (&l.continues, "continues", "not continued by it", true),
            (&l.continued_by, "is continued by", "not its continuation", false),
        ];
        for (other, says, unanswered, backwards) in links {
            let Some(other) = other else { continue };
            let answered = sessions.get(other).is_some_and(|o| {
                let back = if backwards { &o.continued_by } else { &o.continues };
                back.as_ref() == Some(id) || (backwards && o.recovered && back.is_none())
            });
            if answered {
                continue;
            }
            all = false;
            writeln!(
                out,
                "BROKEN LINK: session {} {says} session {}, which is {}",
                safe(id),
                safe(other),
                if sessions.contains_key(other) {
                    unanswered
                } else {
                    "not among the files"
                }
            )?;
        }
    }
    Ok(all)
}

/// Says MISNAMED when `file` verified but holds another session than its name says.
fn misnamed(
    file: &Path,
    result: &Result<VerifyReport, VerifyError>,
    out: &mut impl Write,
) -> io::Result<bool> {
    let Ok(r) = result else { return Ok(false) };
    if names_session(file, &r.session) {
        return Ok(false);
    }
    writeln!(
        out,
        "MISNAMED {}: it holds session {}, whose file is named for it",
        safe(&file.display().to_string()),
        safe(&r.session)
    )?;
    Ok(true)
}

/// Whether the file's name (`<start>-<session id>.jsonl`) names `session`.
fn names_session(file: &Path, session: &str) -> bool {
    file.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once('-'))
        .is_some_and(|(_, id)| id == session)
}

fn outcome(file: &Path, result: &Result<VerifyReport, VerifyError>) -> String {
    let name = safe(&file.display().to_string());
    match result {
        Ok(r) => {
            let state = match (r.closed, r.signed) {
                (true, true) if r.recovered => {
                    "cut off, sealed by a later gateway process; signature verified: it vouches for the file as that process found it"
                }
                (true, true) => "closed, signature verified",
                (true, false) => "closed; hash chain only, signature not checked (pass --public-key)",
                (false, _) => "not closed",
            };
            format!("ok {name} {} events ({state})", r.events)
        }
        Err(e) => format!("TAMPERED {name}: {e}"),
    }
}

/// Escapes control characters.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else if crate::cli::reorders_text(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use agentgate_crds::gateway::RecordingMode;
    use serde_json::json;

    use super::*;
    use crate::recording::{Recorder, verify_file};

    #[derive(clap::Parser, Debug)]
    struct Args {
        #[command(subcommand)]
        command: SessionsCommand,
    }

    /// Archives span processes (each with its key, unless one is configured) and rotations:
    /// `--public-key` takes several, and each file must be signed by one of them.
    #[test]
    fn files_signed_by_any_of_several_keys_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap(),
            Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap(),
        );
        let files: Vec<PathBuf> = [&a, &b]
            .iter()
            .map(|r| {
                let s = r.start_session(json!({})).unwrap();
                s.close(json!({})).unwrap();
                s.path().to_path_buf()
            })
            .collect();
        let check = |keys: String| {
            run_to_string(SessionsCommand::Verify {
                files: files.clone(),
                public_key: Some(keys),
                require_closed: false,
                allow_open: false,
                require_links: false,
                reject_recovered: false,
            })
        };
        let (ok, text) = check(format!("{}, {}", a.public_key(), b.public_key()));
        assert!(ok, "{text}");
        assert_eq!(text.matches("(closed, signature verified)").count(), 2, "{text}");
        let (ok, text) = check(a.public_key().to_string());
        assert!(!ok, "{text}");
        assert!(text.contains("signed by another key"), "{text}");
    }

    /// An empty `--public-key` (a variable left unset) is an error, not a verification without
    /// signatures.
    #[test]
    fn an_empty_public_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
        let s = r.start_session(json!({})).unwrap();
        s.close(json!({})).unwrap();
        for keys in ["", " , "] {
            let err = execute(
                SessionsCommand::Verify {
                    files: vec![s.path().to_path_buf()],
                    public_key: Some(keys.into()),
                    require_closed: false,
                    allow_open: true,
                    require_links: false,
                    reject_recovered: false,
                },
                &mut Vec::new(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("names no key"), "{err}");
        }
    }

    #[test]
    fn a_public_key_may_start_with_a_hyphen() {
        let args = <Args as clap::Parser>::try_parse_from([
            "sessions",
            "verify",
            "--public-key",
            "-Zq3_x",
            "a.jsonl",
        ])
        .unwrap();
        match args.command {
            SessionsCommand::Verify {
                public_key, files, ..
            } => {
                assert_eq!(public_key.as_deref(), Some("-Zq3_x"));
                assert_eq!(files, [PathBuf::from("a.jsonl")]);
            }
            other => panic!("{other:?}"),
        }
    }

    fn run_to_string(cmd: SessionsCommand) -> (bool, String) {
        let mut out = Vec::new();
        let ok = execute(cmd, &mut out).unwrap();
        (ok, String::from_utf8(out).unwrap())
    }

    /// The public key of a signing key's PEM; a file that is not one is an error that does not
    /// quote it.
    #[test]
    fn public_key_prints_the_public_half_of_a_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(
            &file,
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHDTMBYzFEDzt61lQgr0pvavuJ62cTsdwc6NmLbwPnNx\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let (ok, out) = run_to_string(SessionsCommand::PublicKey { file: file.clone() });
        assert!(ok);
        assert_eq!(out, "tWc4mikiJztVNCdKM4jEArFnTBi4uvX49_Y0dec5iSw\n");
        std::fs::write(&file, "MC4CAQAwBQYDK2VwBCIEIHDTMBYz hunter2").unwrap();
        let e = execute(SessionsCommand::PublicKey { file }, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not a PKCS#8 PEM private key"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    /// `list --since/--until` keep the sessions that started inside the window; a bound is an
    /// RFC 3339 time or an age, and anything else is an error.
    #[test]
    fn list_filters_by_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
        let s = rec
            .start_session(json!({"identity": "a", "connection": "c"}))
            .unwrap();
        s.close(json!({})).unwrap();
        let list = |since: Option<&str>, until: Option<&str>| {
            let cmd = SessionsCommand::List {
                dir: dir.path().into(),
                identity: None,
                connection: None,
                since: since.map(Into::into),
                until: until.map(Into::into),
            };
            let mut out = Vec::new();
            execute(cmd, &mut out).map(|_| String::from_utf8(out).unwrap().lines().count())
        };
        assert_eq!(list(Some("1h"), None).unwrap(), 1);
        assert_eq!(
            list(Some("2020-01-01T00:00:00Z"), Some("1h")).unwrap(),
            0,
            "started within the hour"
        );
        assert_eq!(list(None, Some("2999-01-01T00:00:00+02:00")).unwrap(), 1);
        assert_eq!(list(Some("2999-01-01T00:00:00Z"), None).unwrap(), 0);
        let e = list(Some("yesterday\u{1b}[2J"), None).unwrap_err().to_string();
        assert!(
            e.contains("--since") && e.contains("neither an RFC 3339 time nor an age"),
            "{e}"
        );
        assert!(!e.contains('\u{1b}'), "{e}");
        assert_eq!(time_bound("2h", 10_000), Ok(10_000 - 7_200));
    }

    /// `replay` prints each event as its protocol would say it, bodies and result rows
    /// included, with the offset from the session's start; a tampered file plays up to the edit
    /// and fails.
    #[test]
    fn replay_reads_as_a_transcript() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
        let s = rec
            .start_session(json!({"identity": "ci-agent", "connection": "okta"}))
            .unwrap();
        s.record(
            "http.request",
            json!({"request_id": "r1", "method": "GET", "path": "/api/v1/users", "query": "limit=2", "headers": {}}),
        )
        .unwrap();
        s.record(
            "decision",
            json!({"request_id": "r1", "action": "allow", "reason": "", "policy": "p", "rule": "read"}),
        )
        .unwrap();
        s.record(
            "http.response",
            json!({"request_id": "r1", "status": 200, "headers": {}, "upstream_us": 1500, "total_us": 2100,
                   "body": {"json": {"email": "[REDACTED]"}, "bytes": 24, "truncated": false}}),
        )
        .unwrap();
        s.record(
            "pg.query",
            json!({"sql": "SELECT name, email FROM customers", "decision": "allow",
                   "statements": [{"kinds": ["Select"], "tables": ["public.customers"], "functions": [],
                                   "decision": "allow", "rule": "p/read-public", "reason": null}]}),
        )
        .unwrap();
        s.record(
            "pg.result",
            json!({"sql": "SELECT name, email FROM customers", "tag": "SELECT 2", "rows": 2, "truncated": false,
                   "columns": ["name", "email"], "data": [["Ada", "[REDACTED]"], ["Grace", null]], "data_truncated": false}),
        )
        .unwrap();
        s.record("pg.error", json!({"code": "42501", "message": "denied\u{1b}[2J"}))
            .unwrap();
        // A right-to-left override would show this DROP reordered: escaped, as controls are.
        s.record(
            "pg.query",
            json!({"sql": "SELECT 1 /*\u{202E} ,DROP TABLE x */", "decision": {"action": "Allow"}}),
        )
        .unwrap();
        s.close(json!({"reason": "client closed"})).unwrap();

        let (ok, text) = run_to_string(SessionsCommand::Replay {
            file: s.path().into(),
            public_key: None,
            speed: Some(1000.0),
        });
        assert!(ok, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("[+    0.000s] session ")
                && lines[0].ends_with("identity ci-agent, connection okta"),
            "{text}"
        );
        for expected in [
            "] -> GET /api/v1/users?limit=2",
            "]    allow by p/read",
            "] <- 200 (upstream 1.5 ms, total 2.1 ms)",
            "\"email\": \"[REDACTED]\"",
            "] SQL> SELECT name, email FROM customers",
            "      allow by p/read-public",
            "      name | email",
            "      Ada | [REDACTED]",
            "      Grace | NULL",
            "]    SELECT 2",
            "]    ERROR 42501: denied\\u{1b}[2J",
            "SELECT 1 /*\\u{202e} ,DROP TABLE x */",
            "] session ended: client closed",
        ] {
            assert!(text.contains(expected), "{expected:?} missing:\n{text}");
        }
        assert!(lines.last().unwrap().starts_with("ok "), "{text}");
        // With the gateway's key, the closed session's signature is checked too.
        let (ok, text) = run_to_string(SessionsCommand::Replay {
            file: s.path().into(),
            public_key: Some(rec.public_key().to_string()),
            speed: None,
        });
        assert!(ok, "{text}");
        assert!(
            text.trim_end().ends_with("(closed, signature verified)"),
            "{text}"
        );

        // An edited event: played up to it, then refused.
        let edited = std::fs::read_to_string(s.path())
            .unwrap()
            .replace("Grace", "Mallory");
        std::fs::write(s.path(), edited).unwrap();
        let (ok, text) = run_to_string(SessionsCommand::Replay {
            file: s.path().into(),
            public_key: None,
            speed: None,
        });
        assert!(!ok && text.contains("TAMPERED"), "{text}");
        assert!(
            !text.contains("Mallory") && text.contains("SQL> SELECT"),
            "{text}"
        );

        // C1 controls (U+009B is CSI) and DEL reach no terminal, whatever event carries them.
        let t = rec.start_session(json!({"identity": "a\u{9b}2J"})).unwrap();
        t.record("pg.parse", json!({"sql": "\u{9b}2J\u{7f}x"})).unwrap();
        t.record(
            "pg.execute",
            json!({"sql": "SELECT $1", "params": ["\u{9b}H"], "statements": []}),
        )
        .unwrap();
        for cmd in [
            SessionsCommand::Replay {
                file: t.path().into(),
                public_key: None,
                speed: None,
            },
            SessionsCommand::Show {
                file: t.path().into(),
                public_key: None,
            },
        ] {
            let (ok, text) = run_to_string(cmd);
            assert!(ok, "{text}");
            assert!(!text.contains(['\u{9b}', '\u{7f}']), "{text:?}");
            assert!(text.contains("\\u{9b}2J"), "{text}");
        }
        // Open, so nothing signed: with a key, shown and played but not passed.
        for cmd in [
            SessionsCommand::Replay {
                file: t.path().into(),
                public_key: Some(rec.public_key().to_string()),
                speed: None,
            },
            SessionsCommand::Show {
                file: t.path().into(),
                public_key: Some(rec.public_key().to_string()),
            },
        ] {
            let (ok, text) = run_to_string(cmd);
            assert!(!ok, "{text}");
            assert!(
                text.contains("INCOMPLETE") && text.contains("no signed closing event"),
                "{text}"
            );
        }
        assert!(parse_speed("0").is_err() && parse_speed("NaN").is_err() && parse_speed("-1").is_err());
        assert_eq!(parse_speed("2.5"), Ok(2.5));
        assert_eq!(replay_pause(1, 1e-300), MAX_REPLAY_PAUSE);
        assert_eq!(replay_pause(86_400_000_000, 1e-15), MAX_REPLAY_PAUSE);
        assert_eq!(replay_pause(500_000, 2.0), std::time::Duration::from_millis(250));
        assert_eq!(replay_pause(-5, 1.0), std::time::Duration::ZERO);
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::Subcommand;
        SessionsCommand::augment_subcommands(clap::Command::new("sessions")).debug_assert();
    }

    /// A connection's sessions name each other (`continues`, `continued_by`): with
    /// `--require-links`, a file removed from the middle of the set shows.
    #[test]
    fn a_removed_file_breaks_the_links_of_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
        let mut files: Vec<PathBuf> = Vec::new();
        let mut previous: Option<std::sync::Arc<crate::recording::Session>> = None;
        for i in 0..3 {
            let start = match &previous {
                Some(p) => json!({"identity": "a", "continues": p.id()}),
                None => json!({"identity": "a"}),
            };
            let s = rec.start_session(start).unwrap();
            s.record("http.request", json!({"i": i})).unwrap();
            if let Some(p) = previous.take() {
                p.close(json!({"reason": "session age", "continued_by": s.id()}))
                    .unwrap();
            }
            files.push(s.path().to_path_buf());
            previous = Some(s);
        }
        previous
            .unwrap()
            .close(json!({"reason": "client closed"}))
            .unwrap();
        let ids: Vec<String> = files
            .iter()
            .map(|f| verify_file(f, None).unwrap().session)
            .collect();
        let check = |files: Vec<PathBuf>| {
            run_to_string(SessionsCommand::Verify {
                files,
                public_key: Some(rec.public_key().to_string()),
                require_closed: false,
                allow_open: false,
                require_links: true,
                reject_recovered: false,
            })
        };
        let (ok, text) = check(files.clone());
        assert!(ok, "{text}");
        let (ok, text) = check(vec![files[0].clone(), files[2].clone()]);
        assert!(!ok, "{text}");
        assert!(
            text.contains(&format!(
                "BROKEN LINK: session {} is continued by session {}, which is not among the files",
                ids[0], ids[1]
            )) && text.contains(&format!(
                "BROKEN LINK: session {} continues session {}, which is not among the files",
                ids[2], ids[1]
            )),
            "{text}"
        );
        // A predecessor a crash cut off before its end could name its successor, sealed later,
        // answers the successor's link by naming none.
        let crashed = tempfile::tempdir().unwrap();
        let earlier = super::super::tests::as_earlier_process(|| {
            Recorder::new(dir.path().join("earlier"), RecordingMode::Required, "ns/gw").unwrap()
        });
        let first = earlier.start_session(json!({"identity": "a"})).unwrap();
        first.record("http.request", json!({})).unwrap();
        let second = earlier
            .start_session(json!({"identity": "a", "continues": first.id()}))
            .unwrap();
        second.close(json!({"reason": "client closed"})).unwrap();
        let copies: Vec<PathBuf> = [first.path(), second.path()]
            .iter()
            .map(|p| {
                let to = crashed.path().join(p.file_name().unwrap());
                std::fs::copy(p, &to).unwrap();
                to
            })
            .collect();
        // File times lag the clock by a tick: the next process starts later than that.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sealer = Recorder::new(crashed.path(), RecordingMode::Required, "ns/gw").unwrap();
        assert_eq!(sealer.seal_cut_off().sealed, 1);
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: copies.clone(),
            public_key: Some(format!("{},{}", earlier.public_key(), sealer.public_key())),
            require_closed: false,
            allow_open: false,
            require_links: true,
            reject_recovered: false,
        });
        assert!(ok, "{text}");
        // The sealed one fails where only closes written by the recording process are accepted.
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: copies.clone(),
            public_key: Some(format!("{},{}", earlier.public_key(), sealer.public_key())),
            require_closed: false,
            allow_open: false,
            require_links: false,
            reject_recovered: true,
        });
        assert!(!ok, "{text}");
        assert!(
            text.contains(&format!("RECOVERED {}: cut off", copies[0].display()))
                && text.contains(&format!(
                    "ok {} 2 events (closed, signature verified)",
                    copies[1].display()
                )),
            "{text}"
        );
        drop(first);
        // Each file alone still verifies without the flag.
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![files[1].clone()],
            public_key: Some(rec.public_key().to_string()),
            require_closed: false,
            allow_open: false,
            require_links: false,
            reject_recovered: false,
        });
        assert!(ok, "{text}");
    }

    #[test]
    fn list_show_verify() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
        let a = rec
            .start_session(json!({"identity": "agent-a", "connection": "db"}))
            .unwrap();
        a.record("sql.statement", json!({"sql": "select 1"})).unwrap();
        a.close(json!({})).unwrap();
        let b = rec
            .start_session(json!({"identity": "agent\u{1b}[2Jb", "connection": "api"}))
            .unwrap();
        b.record("http.request", json!({})).unwrap();

        let list = |identity: Option<&str>, connection: Option<&str>| {
            run_to_string(SessionsCommand::List {
                dir: dir.path().into(),
                identity: identity.map(Into::into),
                connection: connection.map(Into::into),
                since: None,
                until: None,
            })
            .1
        };
        let all = list(None, None);
        assert_eq!(all.lines().count(), 2, "{all}");
        assert!(
            all.contains(&format!(
                "{}  agent-a  db  3 events  closed  chain intact (signature not checked)",
                a.id()
            )),
            "{all}"
        );
        assert!(
            all.contains("agent\\u{1b}[2Jb  api  2 events  open  chain intact (signature not checked)"),
            "escaped: {all}"
        );
        let only_a = list(Some("agent-a"), None);
        assert_eq!(only_a.lines().count(), 1);
        assert!(only_a.contains(a.id()));
        assert_eq!(list(None, Some("api")).lines().count(), 1);
        assert_eq!(list(Some("agent-a"), Some("api")), "");

        let (ok, shown) = run_to_string(SessionsCommand::Show {
            file: a.path().into(),
            public_key: None,
        });
        assert!(ok);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4, "{shown}");
        assert!(
            lines[1].contains("sql.statement  {\"sql\":\"select 1\"}"),
            "{shown}"
        );
        assert!(lines[3].starts_with("ok "));

        let key = rec.public_key().to_string();
        // With a key, an open file fails unless --allow-open: nothing signed vouches for it.
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![b.path().into()],
            public_key: Some(key.clone()),
            require_closed: false,
            allow_open: false,
            require_links: false,
            reject_recovered: false,
        });
        assert!(!ok, "{text}");
        assert!(text.contains("no signed closing event"), "{text}");
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![a.path().into(), b.path().into()],
            public_key: Some(key.clone()),
            require_closed: false,
            allow_open: true,
            require_links: false,
            reject_recovered: false,
        });
        assert!(ok, "{text}");
        assert!(text.contains(&format!(
            "ok {} 3 events (closed, signature verified)",
            a.path().display()
        )));
        assert!(text.contains(&format!("ok {} 2 events (not closed)", b.path().display())));

        // Archived evidence: an open (or cut-off) file fails when a closing event is required.
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![a.path().into(), b.path().into()],
            public_key: Some(key.clone()),
            require_closed: true,
            allow_open: false,
            require_links: false,
            reject_recovered: false,
        });
        assert!(!ok, "{text}");
        assert!(text.contains(&format!(
            "ok {} 3 events (closed, signature verified)",
            a.path().display()
        )));
        assert!(text.contains(&format!(
            "INCOMPLETE {}: 2 events and no signed closing event",
            b.path().display()
        )));
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![a.path().into()],
            public_key: None,
            require_closed: true,
            allow_open: false,
            require_links: false,
            reject_recovered: false,
        });
        assert!(ok, "{text}");
        assert!(text.contains("hash chain only, signature not checked"), "{text}");

        // A signed session copied over another session's file verifies, but not under that name.
        let swapped = b
            .path()
            .with_file_name("20260101T000000Z-0123456789abcdef0123456789abcdef.jsonl");
        std::fs::copy(a.path(), &swapped).unwrap();
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![swapped.clone()],
            public_key: Some(key.clone()),
            require_closed: true,
            allow_open: false,
            require_links: false,
            reject_recovered: false,
        });
        assert!(!ok, "{text}");
        assert!(
            text.starts_with(&format!(
                "MISNAMED {}: it holds session {}",
                swapped.display(),
                a.id()
            )),
            "{text}"
        );
        // `show` and `replay` say so too, after what they showed; `list` marks it. Files that
        // are not session files (a FIFO would hang the listing) are not listed.
        for command in [
            SessionsCommand::Show {
                file: swapped.clone(),
                public_key: Some(key.clone()),
            },
            SessionsCommand::Replay {
                file: swapped.clone(),
                public_key: Some(key.clone()),
                speed: None,
            },
        ] {
            let (ok, text) = run_to_string(command);
            assert!(!ok, "{text}");
            assert!(
                text.lines().last().unwrap().starts_with(&format!(
                    "MISNAMED {}: it holds session {}",
                    swapped.display(),
                    a.id()
                )),
                "{text}"
            );
        }
        let fifo = dir.path().join("pipe.jsonl");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let listed = list(None, None);
        assert_eq!(listed.lines().count(), 3, "{listed}");
        assert!(
            listed.contains("MISNAMED: the file holds another session"),
            "{listed}"
        );
        std::fs::remove_file(&fifo).unwrap();
        std::fs::remove_file(&swapped).unwrap();

        // One altered file fails the whole command and is named with its line.
        let content = std::fs::read_to_string(a.path()).unwrap();
        std::fs::write(a.path(), content.replace("select 1", "select 2")).unwrap();
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![b.path().into(), a.path().into()],
            public_key: Some(key),
            require_closed: false,
            allow_open: false,
            require_links: false,
            reject_recovered: false,
        });
        assert!(!ok);
        assert!(
            text.contains(&format!("TAMPERED {}: line 2: hash mismatch", a.path().display())),
            "{text}"
        );
        let (ok, shown) = run_to_string(SessionsCommand::Show {
            file: a.path().into(),
            public_key: None,
        });
        assert!(!ok);
        assert_eq!(
            shown.lines().count(),
            2,
            "prints what verified, then the failure: {shown}"
        );
        assert!(list(None, None).contains("TAMPERED line 2"));
    }
}
