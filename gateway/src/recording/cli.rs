//! `agentgate sessions list|show|verify|public-key`: reading recordings back.
//!
//! Files are untrusted input: strings from them are printed with control characters escaped, so a
//! recording cannot rewrite the operator's terminal.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::verify::{Event, VerifyError, VerifyReport, verify_events, verify_file};

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
    },
    /// Print a session's events; exit 1 if it does not verify.
    Show {
        /// A session file.
        file: PathBuf,
    },
    /// Verify session files; exit 1 if any is tampered with (or, with --require-closed, open).
    Verify {
        /// Session files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Base64url Ed25519 public key of the gateway; when given, closing signatures are checked.
        // One key in 64 starts with '-', which is still the value, not an option.
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
        /// Fail a file that has no closing event (signed, with --public-key). A file cut off
        /// mid-session verifies up to its last event, so only a closing event shows that nothing
        /// was removed from its end: archived evidence should be checked with this flag.
        #[arg(long)]
        require_closed: bool,
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
        } => list(&dir, identity.as_deref(), connection.as_deref(), out),
        SessionsCommand::Show { file } => show(&file, out),
        SessionsCommand::Verify {
            files,
            public_key,
            require_closed,
        } => verify(&files, public_key.as_deref(), require_closed, out),
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

fn list(
    dir: &Path,
    identity: Option<&str>,
    connection: Option<&str>,
    out: &mut impl Write,
) -> io::Result<bool> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
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
        let (ts, id) = match &start {
            Some(e) => (e.ts.as_str(), e.session.as_str()),
            None => ("-", "-"),
        };
        let state = match &result {
            // No key here: the hashes are checked, which anyone who rewrites a file can redo.
            Ok(r) => format!(
                "{} events  {}  chain intact (signature not checked)",
                r.events,
                if r.closed { "closed" } else { "open" }
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

fn show(file: &Path, out: &mut impl Write) -> io::Result<bool> {
    let mut written = Ok(());
    let result = verify_events(file, None, |e| {
        if written.is_ok() {
            // serde_json escapes control characters in `data`.
            let data = serde_json::to_string(&e.data).unwrap_or_default();
            written = writeln!(out, "{:>6}  {}  {}  {data}", e.seq, safe(&e.ts), safe(&e.kind));
        }
    });
    written?;
    let ok = result.is_ok();
    writeln!(out, "{}", outcome(file, &result))?;
    Ok(ok)
}

fn verify(
    files: &[PathBuf],
    public_key: Option<&str>,
    require_closed: bool,
    out: &mut impl Write,
) -> io::Result<bool> {
    let mut all = true;
    for file in files {
        let result = verify_file(file, public_key);
        // A file holds the session its name says: one copied over another's name (an older
        // signed session replacing a newer one) is caught here, as the chain cannot catch it.
        if let Ok(r) = &result
            && !names_session(file, &r.session)
        {
            all = false;
            writeln!(
                out,
                "MISNAMED {}: it holds session {}, whose file is named for it",
                safe(&file.display().to_string()),
                safe(&r.session)
            )?;
            continue;
        }
        let incomplete = result
            .as_ref()
            .is_ok_and(|r| !r.closed || (public_key.is_some() && !r.signed));
        if require_closed && incomplete {
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
        all &= result.is_ok();
        writeln!(out, "{}", outcome(file, &result))?;
    }
    Ok(all)
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
    use crate::recording::Recorder;

    #[derive(clap::Parser, Debug)]
    struct Args {
        #[command(subcommand)]
        command: SessionsCommand,
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

    #[test]
    fn clap_definition_is_valid() {
        use clap::Subcommand;
        SessionsCommand::augment_subcommands(clap::Command::new("sessions")).debug_assert();
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
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![a.path().into(), b.path().into()],
            public_key: Some(key.clone()),
            require_closed: false,
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
        std::fs::remove_file(&swapped).unwrap();

        // One altered file fails the whole command and is named with its line.
        let content = std::fs::read_to_string(a.path()).unwrap();
        std::fs::write(a.path(), content.replace("select 1", "select 2")).unwrap();
        let (ok, text) = run_to_string(SessionsCommand::Verify {
            files: vec![b.path().into(), a.path().into()],
            public_key: Some(key),
            require_closed: false,
        });
        assert!(!ok);
        assert!(
            text.contains(&format!("TAMPERED {}: line 2: hash mismatch", a.path().display())),
            "{text}"
        );
        let (ok, shown) = run_to_string(SessionsCommand::Show {
            file: a.path().into(),
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
