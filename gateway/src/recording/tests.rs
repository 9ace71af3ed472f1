//! Recorder and verifier together: what is written reads back, and every kind of edit is caught.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use serde_json::json;

use super::chain::{self, GENESIS, HASH_SUFFIX_LEN, sha256_hex};
use super::*;

type Hook = Box<dyn Fn(&Path)>;

thread_local! {
    /// Run by [`open_locked`] between creating a session's file and locking it.
    static BEFORE_LOCK: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// Makes the next session's start fail, as a full disk would.
    static FAIL_START: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// The process id recorders made on this thread get; set by [`as_earlier_process`].
    static PROCESS_ID: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// What `f` builds records as another process would, one a crash cut off: its sessions are
/// not this process's to refuse to seal.
pub(crate) fn as_earlier_process<T>(f: impl FnOnce() -> T) -> T {
    PROCESS_ID.with(|p| *p.borrow_mut() = Some(format!("earlier-{}", chain::hex(&rand::<4>()))));
    let built = f();
    PROCESS_ID.with(|p| p.borrow_mut().take());
    built
}

fn rand<const N: usize>() -> [u8; N] {
    let mut raw = [0u8; N];
    aws_lc_rs::rand::fill(&mut raw).unwrap();
    raw
}

pub(super) fn process_id_for_new_recorders() -> String {
    PROCESS_ID
        .with(|p| p.borrow().clone())
        .unwrap_or_else(|| process_id().to_string())
}

pub(super) fn before_start(state: &mut State) {
    if FAIL_START.with(|f| f.replace(false)) {
        state.file = Some(fs::OpenOptions::new().append(true).open("/dev/full").unwrap());
    }
}

pub(super) fn before_lock(dir: &Path) {
    BEFORE_LOCK.with(|hook| {
        if let Some(f) = hook.borrow().as_ref() {
            f(dir);
        }
    });
}

/// A sweep that lists the spool while a session is being created never finds its file unlocked,
/// which it would take for a session cut off by a crash (and, in the final sweep, ship at once).
#[test]
fn a_session_file_is_never_seen_unlocked_while_it_is_created() {
    let (_dir, rec) = recorder(RecordingMode::Required);
    let seen_unlocked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = seen_unlocked.clone();
    BEFORE_LOCK.with(|hook| {
        *hook.borrow_mut() = Some(Box::new(move |dir: &Path| {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if is_session_file(&path) && !is_open(&path).unwrap() {
                    seen.lock().unwrap().push(path);
                }
            }
        }));
    });
    let session = rec.start_session(json!({"identity": "agent"}));
    BEFORE_LOCK.with(|hook| hook.borrow_mut().take());
    let session = session.unwrap();
    assert_eq!(*seen_unlocked.lock().unwrap(), Vec::<PathBuf>::new());
    assert!(is_open(session.path()).unwrap());
    let names: Vec<_> = fs::read_dir(session.path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [session.path().file_name().unwrap()],
        "no staging file is left"
    );
    session.close(json!({})).unwrap();
    assert!(verify::verify_file(session.path(), None).is_ok());
}

/// Staging files left by a process that died between creating and renaming one are removed once
/// unlocked and old; nothing else is.
#[test]
fn stale_staging_files_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("20260101T000000Z-{}.jsonl", "a".repeat(32));
    let make = |name: &str, age_secs: u64| {
        let path = dir.path().join(name);
        let f = fs::File::create(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs))
            .unwrap();
        (path, f)
    };
    let (stale, _) = make(&staging_name(&name), 120);
    let (fresh, _) = make(&staging_name(&name.replace('a', "b")), 1);
    let (locked, held) = make(&staging_name(&name.replace('a', "c")), 120);
    held.try_lock().unwrap();
    let (session, _) = make(&name, 120);
    let (foreign, _) = make(".notes.txt.new", 120);
    assert_eq!(remove_stale_staging(dir.path(), std::time::SystemTime::now()), 1);
    assert!(!stale.exists());
    for kept in [&fresh, &locked, &session, &foreign] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
}

fn recorder(mode: RecordingMode) -> (tempfile::TempDir, Recorder) {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::new(dir.path().join("spool"), mode, "team/gw").unwrap();
    (dir, rec)
}

/// A closed session of `n` events: start, `n - 2` requests, end.
fn closed_session(rec: &Recorder, n: usize) -> PathBuf {
    let s = rec.start_session(json!({"identity": "agent"})).unwrap();
    for i in 0..n - 2 {
        s.record("http.request", json!({"i": i, "path": "/v1/x"}))
            .unwrap();
    }
    s.close(json!({"reason": "client closed"})).unwrap();
    s.path().to_path_buf()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn err_at(path: &Path, key: Option<&str>) -> VerifyError {
    verify_file(path, key).expect_err("tampering must be detected")
}

#[test]
fn chain_round_trip() {
    let (d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({"connection": "db"})).unwrap();
    assert!(s.id().len() == 32 && s.id().bytes().all(|b| b.is_ascii_hexdigit()));
    let name = s.path().file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.len() == 17 + 32 + 6 && name.ends_with(&format!("Z-{}.jsonl", s.id())));
    s.record("sql.statement", json!({"duration_us": 17})).unwrap();
    s.close(json!({"reason": "client closed"})).unwrap();
    s.close(json!({"reason": "again"})).unwrap(); // idempotent

    let report = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert_eq!(report.session, s.id());
    assert_eq!((report.events, report.closed, report.signed), (3, true, true));
    let text = lines(s.path());
    let events: Vec<serde_json::Value> = text.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(text[0].starts_with(r#"{"seq":0,"ts":""#));
    assert_eq!(events.len(), 3);
    assert_eq!(
        (&events[0]["type"], &events[0]["prev"]),
        (&json!(START), &json!(GENESIS))
    );
    assert_eq!(
        events[0]["data"],
        json!({"connection": "db", "gateway": "team/gw", "process": process_id(), "key_id": rec.inner.key_id})
    );
    assert_eq!(events[1]["prev"], events[0]["hash"]);
    assert_eq!(events[2]["data"]["reason"], "client closed");
    assert_eq!(report.last_hash, events[2]["hash"]);
    for (i, e) in events.iter().enumerate() {
        assert_eq!((&e["seq"], &e["session"]), (&json!(i), &json!(s.id())));
        assert_eq!(
            e["ts"].as_str().unwrap().len(),
            "2025-01-01T00:00:00.000000Z".len()
        );
    }
    assert_eq!(
        fs::metadata(s.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(d.path().join("spool")).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn an_edited_byte_is_caught_at_its_line() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let path = closed_session(&rec, 5);
    let original = fs::read(&path).unwrap();
    let third = lines(&path)[..2].iter().map(|l| l.len() + 1).sum::<usize>();
    // Every byte of line 3 (data, seq, prev, hash, braces) matters.
    let len = lines(&path)[2].len();
    for offset in [0, 8, 60, 130, len / 2, len - 3, len - 1] {
        let mut bytes = original.clone();
        bytes[third + offset] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let e = err_at(&path, None);
        assert_eq!(e.line, 3, "offset {offset}: {e}");
    }
}

#[test]
fn deleted_reordered_and_inserted_lines_are_caught() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let path = closed_session(&rec, 6);
    let good = lines(&path);

    let mut deleted = good.clone();
    deleted.remove(2);
    write_lines(&path, &deleted);
    assert_eq!(err_at(&path, None).line, 3);

    let mut first_deleted = good.clone();
    first_deleted.remove(0);
    write_lines(&path, &first_deleted);
    assert_eq!(err_at(&path, None).line, 1);

    let mut swapped = good.clone();
    swapped.swap(2, 3);
    write_lines(&path, &swapped);
    assert_eq!(err_at(&path, None).line, 3);

    let mut duplicated = good.clone();
    duplicated.insert(3, good[2].clone());
    write_lines(&path, &duplicated);
    assert_eq!(err_at(&path, None).line, 4);

    // A forged event with a correct hash and the right prev breaks the next line's link.
    let forged = chain::encode(
        2,
        "2025-01-01T00:00:00.000000Z",
        &field(&good[0], "session"),
        "http.request",
        &json!({}),
        &field(&good[1], "hash"),
    )
    .unwrap();
    let mut inserted = good.clone();
    inserted.insert(2, String::from_utf8(forged.line).unwrap().trim_end().to_string());
    write_lines(&path, &inserted);
    assert_eq!(err_at(&path, None).line, 4);

    let mut appended = good.clone();
    appended.push(good[1].clone());
    write_lines(&path, &appended);
    assert_eq!(err_at(&path, None).reason, "event after session.end");
}

/// A string field of an event line.
fn field(line: &str, name: &str) -> String {
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    event[name].as_str().unwrap().to_string()
}

#[test]
fn a_cut_off_file_verifies_up_to_its_last_complete_event() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let path = closed_session(&rec, 5);
    let full = fs::read(&path).unwrap();
    let good = lines(&path);
    let through_four: usize = good[..4].iter().map(|l| l.len() + 1).sum();

    // Mid-line, and with only the newline missing.
    for cut in [through_four + 40, full.len() - 1] {
        fs::write(&path, &full[..cut]).unwrap();
        let r = verify_file(&path, Some(rec.public_key())).unwrap();
        let expected = if cut == full.len() - 1 {
            (5, true, true)
        } else {
            (4, false, false)
        };
        assert_eq!((r.events, r.closed, r.signed), expected, "cut at {cut}");
    }
    fs::write(&path, &full[..through_four]).unwrap();
    let r = verify_file(&path, None).unwrap();
    assert_eq!((r.events, r.closed), (4, false));
    let fourth: serde_json::Value = serde_json::from_str(&good[3]).unwrap();
    assert_eq!(r.last_hash, fourth["hash"]);

    fs::write(&path, &full[..20]).unwrap();
    assert_eq!(err_at(&path, None).line, 1);

    // Nothing is written after session.end, so a partial line there is an edit, not a crash
    // (found by the mutation test below).
    fs::write(&path, [&full[..], b"{\"seq\":5"].concat()).unwrap();
    let e = err_at(&path, Some(rec.public_key()));
    assert_eq!(e.line, 6);
    assert!(e.reason.contains("after session.end"), "{e}");
}

/// A session a crash cut off is closed by the next recorder of its directory with a signed end
/// that says so, its partial last line cut; a closed, a held or an edited file is left as it is.
#[test]
fn cut_off_sessions_are_sealed_by_the_next_recorder() {
    let (_d, old) = as_earlier_process(|| recorder(RecordingMode::Required));
    let closed = closed_session(&old, 4);
    let full = fs::read(&closed).unwrap();
    let through_three: usize = lines(&closed)[..3].iter().map(|l| l.len() + 1).sum();
    let spool = tempfile::tempdir().unwrap();
    let name = |n: u8| {
        let name = closed.file_name().unwrap().to_str().unwrap().to_string();
        spool
            .path()
            .join(format!("{}{:02x}.jsonl", &name[..name.len() - 8], n))
    };
    // Cut mid-line after three events; cut between an event and its newline; closed; edited.
    let (mid_line, no_newline, whole, edited) = (name(1), name(2), name(3), name(4));
    fs::write(&mid_line, &full[..through_three + 25]).unwrap();
    fs::write(&no_newline, &full[..through_three - 1]).unwrap();
    fs::write(&whole, &full).unwrap();
    let mut bytes = full[..through_three].to_vec();
    bytes[through_three / 2] ^= 1;
    fs::write(&edited, &bytes).unwrap();

    // File times lag the clock by a tick: the next process starts later than that.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let rec = Recorder::new(spool.path(), RecordingMode::Required, "team/gw").unwrap();
    let live = rec.start_session(json!({})).unwrap();
    assert_eq!(
        rec.seal_cut_off(),
        Sealed {
            sealed: 2,
            unverifiable: 1
        }
    );
    for (path, dropped) in [(&mid_line, 25), (&no_newline, 0)] {
        let r = verify_file(path, Some(rec.public_key())).unwrap();
        assert_eq!(
            (r.events, r.closed, r.signed, r.recovered),
            (4, true, true, true),
            "{path:?}"
        );
        let end: serde_json::Value = serde_json::from_str(lines(path).last().unwrap()).unwrap();
        assert_eq!(end["data"]["reason"], "cut off");
        assert_eq!(end["data"]["recovery"]["dropped_bytes"], dropped);
        assert_eq!(end["data"]["recovery"]["gateway"], "team/gw");
        assert_eq!(end["data"]["recovery"]["process"], process_id());
        assert_eq!(end["seq"], 3);
        // The start names the key that recorded it; the end, the one that sealed it.
        assert_eq!(
            end["data"]["key_id"],
            key_id(&URL_SAFE_NO_PAD.decode(rec.public_key()).unwrap())
        );
    }
    assert_eq!(fs::read(&whole).unwrap(), full);
    assert_eq!(fs::read(&edited).unwrap(), bytes);
    // The live session is held, so it is not sealed; nor is anything sealed twice.
    assert!(!verify_file(live.path(), None).unwrap().closed);
    assert_eq!(
        rec.seal_cut_off(),
        Sealed {
            sealed: 0,
            unverifiable: 1
        }
    );
    live.close(json!({})).unwrap();
    assert!(verify_file(live.path(), Some(rec.public_key())).unwrap().signed);
}

/// A process closes every session it starts, so one of its own found unclosed lost its end (a
/// failed close, or a cut since): it is not sealed, which would sign what was left. `verify`
/// refuses such a seal all the same, made by a gateway without this check.
#[test]
fn a_process_never_seals_its_own_sessions() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let own = closed_session(&rec, 4);
    let full = fs::read(&own).unwrap();
    let through_three: usize = lines(&own)[..3].iter().map(|l| l.len() + 1).sum();
    fs::write(&own, &full[..through_three]).unwrap();
    assert_eq!(rec.seal_cut_off(), Sealed::default());
    assert_eq!(fs::read(&own).unwrap(), &full[..through_three]);
    assert!(!verify_file(&own, None).unwrap().closed);

    // An earlier process's, cut the same way, is sealed; its seal, edited to name the process
    // that recorded it (rehashed, as a forger would), no longer verifies.
    let (_e, old) = as_earlier_process(|| recorder(RecordingMode::Required));
    let theirs = closed_session(&old, 4);
    let cut = rec.inner.dir.join(theirs.file_name().unwrap());
    fs::write(&cut, &fs::read(&theirs).unwrap()[..through_three]).unwrap();
    // Cut while this recorder ran, the file is not one a crash before it left: not sealed
    // (whoever cut it could have rewritten its start to name another process).
    assert_eq!(rec.seal_cut_off(), Sealed::default());
    // A recorder made after the cut, as the next process's is, seals it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let rec = Recorder::new(rec.inner.dir.clone(), RecordingMode::Required, "team/gw").unwrap();
    assert_eq!(rec.seal_cut_off().sealed, 1);
    assert!(verify_file(&cut, Some(rec.public_key())).unwrap().recovered);
    let mut edited = lines(&cut);
    let start: serde_json::Value = serde_json::from_str(&edited[0]).unwrap();
    let recorder_process = start["data"]["process"].as_str().unwrap().to_string();
    assert_ne!(recorder_process, process_id());
    let end = edited.pop().unwrap();
    let end = end.replace(process_id(), &recorder_process);
    let body = &end[..end.rfind(",\"hash\":\"").unwrap()];
    edited.push(format!("{body},\"hash\":\"{}\"}}", sha256_hex(body.as_bytes())));
    write_lines(&cut, &edited);
    let e = err_at(&cut, None);
    assert_eq!(e.line, 4);
    assert!(e.reason.contains("by the process that recorded it"), "{e}");
}

#[test]
fn closing_signature_binds_the_chain_to_the_key() {
    let (d, rec) = recorder(RecordingMode::Required);
    let path = closed_session(&rec, 4);
    assert!(verify_file(&path, Some(rec.public_key())).unwrap().signed);

    let other = Recorder::new(d.path().join("other"), RecordingMode::Required, "team/gw").unwrap();
    let e = err_at(&path, Some(other.public_key()));
    assert_eq!(e.line, 4);
    assert!(e.reason.contains("another key"), "{e}");
    assert!(err_at(&path, Some("not a key!")).reason.contains("base64url"));

    // A supplied key signs as well as a generated one.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let with = |dir: &str| {
        Recorder::with_key(
            d.path().join(dir),
            RecordingMode::Required,
            "ns/gw",
            pkcs8.as_ref(),
        )
    };
    let (a, b) = (with("a").unwrap(), with("b").unwrap());
    assert!(
        verify_file(&closed_session(&a, 2), Some(b.public_key()))
            .unwrap()
            .signed
    );
    assert!(matches!(
        Recorder::with_key(d.path(), RecordingMode::Required, "", b"junk"),
        Err(RecordingError::Key(_))
    ));

    // Rewriting history and recomputing every hash fools the chain but not the signature.
    let good = lines(&path);
    let mut rewritten = vec![good[0].clone()];
    let mut prev = field(&good[0], "hash");
    for line in &good[1..] {
        let mut e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["type"] == "http.request" {
            e["data"]["path"] = json!("/v1/forged");
        }
        let encoded = chain::encode(
            e["seq"].as_u64().unwrap(),
            e["ts"].as_str().unwrap(),
            e["session"].as_str().unwrap(),
            e["type"].as_str().unwrap(),
            &e["data"],
            &prev,
        )
        .unwrap();
        prev = encoded.hash;
        rewritten.push(String::from_utf8(encoded.line).unwrap().trim_end().to_string());
    }
    write_lines(&path, &rewritten);
    assert!(verify_file(&path, None).is_ok());
    let e = err_at(&path, Some(rec.public_key()));
    assert_eq!((e.line, e.reason.as_str()), (4, "signature does not verify"));
}

fn break_disk(s: &Session) {
    s.break_disk();
}

#[test]
fn required_mode_surfaces_write_failures() {
    let (d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    break_disk(&s);
    let e = s.record("http.request", json!({})).unwrap_err();
    assert!(matches!(e, RecordingError::Write { .. }), "{e}");
    assert!(s.close(json!({})).is_err());
    assert_eq!(rec.failures(), 2);

    // The spool directory replaced by a file: creating a session fails (ENOTDIR, even for root).
    let spool = d.path().join("spool");
    fs::remove_dir_all(&spool).unwrap();
    fs::write(&spool, b"").unwrap();
    let e = rec.start_session(json!({})).unwrap_err();
    assert!(matches!(e, RecordingError::Create { .. }), "{e}");
    assert_eq!(rec.failures(), 3);
}

/// A session whose start cannot be written leaves no file: an empty one would read as tampered
/// evidence, and in BestEffort later events would chain from no start.
#[test]
fn a_start_that_cannot_be_written_leaves_no_file() {
    let session_files = |rec: &Recorder| {
        fs::read_dir(&rec.inner.dir)
            .unwrap()
            .filter(|e| is_session_file(&e.as_ref().unwrap().path()))
            .count()
    };
    let (_d, rec) = recorder(RecordingMode::Required);
    FAIL_START.with(|f| f.set(true));
    assert!(rec.start_session(json!({})).is_err());
    assert_eq!(session_files(&rec), 0);

    let (_d, rec) = recorder(RecordingMode::BestEffort);
    FAIL_START.with(|f| f.set(true));
    let s = rec.start_session(json!({})).unwrap();
    assert_eq!(session_files(&rec), 0);
    s.record("http.request", json!({})).unwrap();
    assert_eq!(rec.failures(), 2);
    assert_eq!(session_files(&rec), 0);
}

#[test]
fn a_file_that_cannot_be_repaired_is_given_up_and_still_verifies() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    s.record("http.request", json!({"n": 1})).unwrap();
    let path = s.path().to_path_buf();
    break_disk(&s);
    assert!(s.record("http.request", json!({})).is_err());
    // /dev/full cannot be truncated back, so nothing more is written after a possible partial line.
    assert!(s.lock().file.is_none());
    assert!(matches!(
        s.record("x", json!({})),
        Err(RecordingError::Unavailable(_))
    ));
    drop(s);
    let r = verify_file(&path, None).unwrap();
    assert_eq!((r.events, r.closed), (2, false));
}

#[test]
fn shutdown_closes_the_sessions_still_open_and_only_those() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let done = closed_session(&rec, 3);
    let open = rec.start_session(json!({})).unwrap();
    open.record("http.request", json!({"path": "/long"})).unwrap();
    let gone = rec.start_session(json!({})).unwrap();
    let gone_path = gone.path().to_path_buf();
    drop(gone);
    let end = json!({"reason": "gateway shutdown"});
    assert_eq!(rec.close_open(&end), 1);
    let last = lines(open.path()).pop().unwrap();
    assert!(
        last.contains(r#""type":"session.end""#) && last.contains("gateway shutdown"),
        "{last}"
    );
    let r = verify_file(open.path(), Some(rec.public_key())).unwrap();
    assert!(r.closed && r.signed);
    // The session's own later events are refused, and dropping it adds nothing.
    assert!(matches!(
        open.record("http.request", json!({})),
        Err(RecordingError::Closed(_))
    ));
    let path = open.path().to_path_buf();
    drop(open);
    assert_eq!(lines(&path).len(), 3);
    assert_eq!(lines(&done).len(), 3);
    assert!(lines(&gone_path).last().unwrap().contains("dropped"));
    assert_eq!(rec.close_open(&end), 0);
}

#[test]
fn best_effort_counts_and_continues() {
    let (d, rec) = recorder(RecordingMode::BestEffort);
    let s = rec.start_session(json!({})).unwrap();
    break_disk(&s);
    s.record("http.request", json!({})).unwrap();
    assert_eq!(rec.failures(), 1);

    let spool = d.path().join("spool");
    fs::remove_dir_all(&spool).unwrap();
    fs::write(&spool, b"").unwrap();
    let lost = rec.start_session(json!({})).unwrap();
    assert_eq!(rec.failures(), 2);
    lost.record("http.request", json!({})).unwrap();
    assert_eq!(rec.failures(), 3);
}

#[test]
fn invalid_or_reserved_kinds_and_closed_sessions_are_refused() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!(null)).unwrap();
    for kind in [
        "",
        "Upper",
        "a b",
        "x\n",
        START,
        END,
        &"k".repeat(MAX_KIND_BYTES + 1),
    ] {
        assert!(
            matches!(s.record(kind, json!({})), Err(RecordingError::InvalidKind)),
            "{kind:?}"
        );
    }
    s.close(json!("done")).unwrap();
    assert!(matches!(
        s.record("late", json!({})),
        Err(RecordingError::Closed(_))
    ));
    let events = lines(s.path());
    assert_eq!(events.len(), 2);
    assert!(events[1].contains(r#""value":"done""#));
}

#[test]
fn drop_closes_the_session() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let path = {
        let s = rec.start_session(json!({})).unwrap();
        s.record("http.request", json!({})).unwrap();
        s.path().to_path_buf()
    };
    let r = verify_file(&path, Some(rec.public_key())).unwrap();
    assert_eq!((r.events, r.closed, r.signed), (3, true, true));
    assert!(lines(&path)[2].contains(r#""reason":"dropped""#));
}

#[test]
fn concurrent_records_keep_one_chain() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    s.record("http.request", json!({"t": t, "i": i, "pad": "x".repeat(i * 37)}))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    s.close(json!({})).unwrap();
    let r = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert_eq!((r.events, r.closed), (802, true));
}

#[test]
fn oversized_events_are_truncated_and_still_verify() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    let body = vec![b'a'; 3 * MAX_EVENT_BYTES];
    s.record(
        "http.response",
        json!({ "body": String::from_utf8(body).unwrap() }),
    )
    .unwrap();
    s.close(json!({})).unwrap();
    let events = lines(s.path());
    assert!(events[1].len() <= MAX_EVENT_BYTES);
    let e: serde_json::Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(e["data"]["truncated"], true);
    assert_eq!(e["data"]["bytes"], 3 * MAX_EVENT_BYTES + r#"{"body":""}"#.len());
    assert_eq!(verify_file(s.path(), None).unwrap().events, 3);
    // And the verifier refuses lines over the limit rather than buffering them.
    let mut long = events.clone();
    long[1] = format!(
        "{}{}",
        "x".repeat(MAX_EVENT_BYTES + 1 - HASH_SUFFIX_LEN),
        &events[1][events[1].len() - HASH_SUFFIX_LEN..]
    );
    write_lines(s.path(), &long);
    assert_eq!(err_at(s.path(), None).line, 2);
    assert_eq!(sha256_hex(b"").len(), 64);
}

#[test]
fn bodies_are_capped() {
    let cap_body = |b: &[u8], max: usize| serde_json::to_value(cap_body(b, max)).unwrap();
    let v = cap_body(b"hello", MAX_RECORDED_BODY);
    assert_eq!(v, json!({"text": "hello", "bytes": 5, "truncated": false}));
    let v = cap_body(b"hello world", 5);
    assert_eq!(v, json!({"text": "hello", "bytes": 11, "truncated": true}));
    // A cut through "é" keeps the text before it rather than switching to base64.
    let v = cap_body("aé".as_bytes(), 2);
    assert_eq!(v, json!({"text": "a", "bytes": 3, "truncated": true}));
    let v = cap_body(&[0xff, 0x00, 0x61], 16);
    assert_eq!(v, json!({"base64": "/wBh", "bytes": 3, "truncated": false}));
    let v = cap_body(&[0x61, 0xff, 0x62, 0x63], 3);
    assert_eq!(v, json!({"base64": "Yf9i", "bytes": 4, "truncated": true}));
    assert_eq!(
        cap_body(b"", 0),
        json!({"text": "", "bytes": 0, "truncated": false})
    );
    // A kept prefix of a longer body says how long the body was, and that it was cut.
    let prefix =
        |b: &[u8], total: usize| serde_json::to_value(super::cap_body(b, 5).of_total(total)).unwrap();
    assert_eq!(
        prefix(b"hello", 11),
        json!({"text": "hello", "bytes": 11, "truncated": true})
    );
    assert_eq!(
        prefix(b"hello", 5),
        json!({"text": "hello", "bytes": 5, "truncated": false})
    );
}

#[test]
fn json_bodies_are_recorded_as_json_only_when_one_value_fits_on_one_line() {
    let as_value = |b: &[u8], max: usize| serde_json::to_value(CappedBody::json(b.into(), max)).unwrap();
    assert_eq!(
        as_value(br#"{"a":[1,"x\ny"]}"#, 64),
        json!({"json": {"a": [1, "x\ny"]}, "bytes": 16, "truncated": false})
    );
    // A raw line break, two values, invalid JSON, or too large: recorded as text.
    for body in [&b"{\"a\":\n1}"[..], b"1 2", b"{\"a\":}", b"[1,2,3,4,5,6,7,8,9]"] {
        let v = as_value(body, 16);
        assert!(v.get("json").is_none(), "{v}");
        assert!(v["text"].is_string(), "{v}");
    }
    // What serde_json's raw value takes but its reader into values refuses, and would make the
    // genuine file fail `verify` from that event on: recorded as text. Their valid relatives
    // stay JSON.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let long = "9".repeat(400);
    for body in [
        r#"{"n":1e400}"#,
        r#"{"n":-2E+999}"#,
        r#""\ud800""#,
        r#"["\uDC00x"]"#,
        long.as_str(),
        deep(120).as_str(),
    ] {
        let v = as_value(body.as_bytes(), 1024);
        assert!(v["text"].is_string(), "{body}: {v}");
    }
    for body in [
        r#"{"n":1e300,"b":true}"#,
        r#""\ud83d\ude00""#,
        "[1.5e-3]",
        deep(90).as_str(),
    ] {
        let v = as_value(body.as_bytes(), 1024);
        assert!(v.get("json").is_some(), "{body}: {v}");
    }
    // Runs of digits at every offset around the limit, seen by the sampling search.
    for pad in 0..160 {
        for (run, long) in [(300, false), (301, true)] {
            let body = format!("[{},{}]", "1".repeat(pad), "9".repeat(run));
            assert_eq!(super::long_digit_run(body.as_bytes()), long, "{pad} {run}");
        }
    }
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    for body in [r#"{"n":1e400}"#, r#""\ud800""#, deep(126).as_str()] {
        s.record(
            "http.request.body",
            CappedBody::json(body.as_bytes().into(), 1024),
        )
        .unwrap();
    }
    s.close(json!({})).unwrap();
    assert!(verify_file(s.path(), Some(rec.public_key())).unwrap().signed);
    // The line stays one valid JSON document with the body inside it.
    let encoded = serde_json::to_string(&CappedBody::json(br#"{"k":"v"}"#.into(), 64)).unwrap();
    assert_eq!(encoded, r#"{"json":{"k":"v"},"bytes":9,"truncated":false}"#);
}

#[test]
fn deferred_events_are_written_in_order_with_the_next_event_and_before_the_end() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    s.record("pg.query", json!({"n": 1})).unwrap();
    s.record_deferred("pg.result", json!({"n": 1})).unwrap();
    assert_eq!(lines(s.path()).len(), 2, "deferred: not written yet");
    s.record("pg.query", json!({"n": 2})).unwrap();
    let l = lines(s.path());
    assert_eq!(l.len(), 4, "written with the next event");
    assert!(l[2].contains("pg.result") && l[3].contains("pg.query"));
    s.record_deferred("pg.result", json!({"n": 2})).unwrap();
    assert!(s.record_deferred("Bad Kind", json!({})).is_err());
    s.close(json!({"reason": "done"})).unwrap();
    let l = lines(s.path());
    assert!(l[4].contains("pg.result") && l[5].contains("session.end"));
    let report = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert_eq!((report.events, report.closed, report.signed), (6, true, true));
    // Many deferred events are written without waiting for another event.
    let s = rec.start_session(json!({})).unwrap();
    for i in 0..MAX_DEFERRED {
        s.record_deferred("pg.result", json!({ "i": i })).unwrap();
    }
    assert_eq!(lines(s.path()).len(), 1 + MAX_DEFERRED);
}

#[test]
fn deferred_events_survive_a_failed_write_for_the_next_one() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    let path = s.path().to_path_buf();
    s.record_deferred("http.request", json!({"n": 1})).unwrap();
    break_disk(&s);
    assert!(s.record("http.response", json!({"n": 1})).is_err());
    // The disk comes back: the next write carries the request deferred before the failure.
    s.lock().file = Some(OpenOptions::new().append(true).open(&path).unwrap());
    s.record("http.response", json!({"n": 2})).unwrap();
    let l = lines(&path);
    assert_eq!(l.len(), 3, "{l:?}");
    assert!(l[1].contains("http.request") && l[2].contains(r#""n":2"#));
    // Bounded: a file that keeps failing does not keep more than MAX_DEFERRED waiting.
    break_disk(&s);
    for i in 0..3 * MAX_DEFERRED {
        let _ = s.record_deferred("http.request", json!({ "i": i }));
    }
    assert!(s.lock().deferred.len() <= MAX_DEFERRED);
    drop(s);
    let r = verify_file(&path, None).unwrap();
    assert_eq!((r.events, r.closed), (3, false));
}

/// Tamper evidence against arbitrary edits: of thousands of mutants of a closed, signed session
/// file (bytes flipped, inserted, deleted, duplicated, lines cut), none verifies as closed and
/// signed unless it is the original, and whatever verifies at all is a prefix of the original
/// events (what a crash mid-write leaves), never other content.
#[test]
fn no_edit_of_a_signed_session_verifies_as_anything_but_a_prefix() {
    let (d, rec) = recorder(RecordingMode::Required);
    let s = rec
        .start_session(json!({"identity": "agent", "peer": "127.0.0.1:1"}))
        .unwrap();
    s.record(
        "http.request",
        json!({"method": "GET", "path": "/api/v1/users/00u1"}),
    )
    .unwrap();
    s.record("decision", json!({"action": "Allow", "rule": "okta/read"}))
        .unwrap();
    s.record(
        "http.response",
        json!({"status": 200, "body": {"json": {"email": "[REDACTED]"}}}),
    )
    .unwrap();
    s.close(json!({"reason": "client closed"})).unwrap();
    let original = fs::read(s.path()).unwrap();
    let mut hashes = Vec::new();
    verify_events(s.path(), Some(rec.public_key()), |e| hashes.push(e.hash.clone())).unwrap();
    let mutant_path = d.path().join("mutant.jsonl");
    let mut verified_prefixes = 0;
    crate::mutate::each_mutant(&[&original], 1_500, |bytes| {
        fs::write(&mutant_path, bytes).unwrap();
        let mut seen = Vec::new();
        if let Ok(report) = verify_events(&mutant_path, Some(rec.public_key()), |e| {
            seen.push(e.hash.clone())
        }) {
            if report.closed || report.signed {
                // The final newline alone may be missing (a crash between the line and it).
                let same = bytes == &original[..] || bytes == &original[..original.len() - 1];
                assert!(same, "an edited file verified as closed");
            }
            assert!(
                hashes.starts_with(&seen),
                "verified events that are not the original's"
            );
            verified_prefixes += usize::from(bytes != &original[..]);
        }
    });
    // Truncation is among the mutations, so some mutants are verified prefixes.
    assert!(verified_prefixes > 0);
}

/// Whoever can write the archive can rewrite the last line and its hash: the signature must
/// still refuse an edited close (its reason, its count of lost events, its time).
#[test]
fn the_closing_signature_covers_the_close_itself() {
    let (d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({"identity": "agent"})).unwrap();
    s.record("decision", json!({"action": "Allow"})).unwrap();
    s.close(json!({"reason": "client closed", "unrecorded_events": 3}))
        .unwrap();
    let original = fs::read_to_string(s.path()).unwrap();
    let report = verify_events(s.path(), Some(rec.public_key()), |_| {}).unwrap();
    assert!(report.closed && report.signed, "{report:?}");
    let (head, end) = original.trim_end().rsplit_once('\n').unwrap();
    // Rehash the edited line as a forger would: SHA-256 of every byte before `,"hash":"`.
    let rehashed = |line: &str| {
        let cut = line.rfind(",\"hash\":\"").unwrap();
        let body = &line[..cut];
        format!(
            "{head}\n{body},\"hash\":\"{}\"}}\n",
            super::chain::sha256_hex(body.as_bytes())
        )
    };
    assert_eq!(rehashed(end), original, "the forger's rehash is faithful");
    let ts = end.split("\"ts\":\"").nth(1).unwrap().split('"').next().unwrap();
    for edited in [
        end.replace(",\"unrecorded_events\":3", ""),
        end.replace("client closed", "server closed"),
        end.replace(ts, "2020-01-01T00:00:00.000000Z"),
    ] {
        assert_ne!(edited, end);
        let path = d.path().join("edited.jsonl");
        fs::write(&path, rehashed(&edited)).unwrap();
        // The chain holds (the line was rehashed); the signature does not.
        assert!(verify_events(&path, None, |_| {}).is_ok(), "{edited}");
        let err = verify_events(&path, Some(rec.public_key()), |_| {}).unwrap_err();
        assert!(err.to_string().contains("signature does not verify"), "{err}");
    }
    // A name repeated in front of the signed one: serde keeps the last (the signature verifies
    // over it), a reader keeping the first would see another reason. Refused before the key.
    let doubled = end.replace(
        "\"reason\":\"client closed\"",
        "\"reason\":\"forged\",\"reason\":\"client closed\"",
    );
    assert_ne!(doubled, end);
    let path = d.path().join("doubled.jsonl");
    fs::write(&path, rehashed(&doubled)).unwrap();
    let err = verify_events(&path, None, |_| {}).unwrap_err();
    assert!(err.to_string().contains("repeats a name"), "{err}");
    // A file signed under v1 (its `prev` alone) is named as such, not as tampered with.
    let prev = end.split("\"prev\":\"").nth(1).unwrap()[..64].to_string();
    let v1 = rec
        .inner
        .key
        .sign(&[chain::SIGNING_CONTEXT_V1, prev.as_bytes()].concat());
    let sig = end
        .split("\"signature\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let old = end.replace(sig, &URL_SAFE_NO_PAD.encode(v1.as_ref()));
    let path = d.path().join("v1.jsonl");
    fs::write(&path, rehashed(&old)).unwrap();
    let err = verify_events(&path, Some(rec.public_key()), |_| {}).unwrap_err();
    assert!(err.to_string().contains("signed under the v1 scheme"), "{err}");
}

/// A body cut through a hidden secret keeps none of it: the scrub looks for the whole secret,
/// so the part before the cut would pass it.
#[test]
fn a_body_cut_through_a_hidden_secret_keeps_none_of_it() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({"identity": "agent"})).unwrap();
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    s.hide(token.as_bytes());
    #[derive(serde::Serialize)]
    struct Body<'a> {
        body: CappedBody<'a>,
    }
    let mut text = "x".repeat(1000);
    text.push_str(token);
    let mut binary = vec![0xff];
    binary.extend_from_slice(text.as_bytes());
    for (cut, body) in [(1020, text.as_bytes()), (1031, &binary[..])] {
        s.record(
            "http.request.body",
            Body {
                body: cap_body(body, cut),
            },
        )
        .unwrap();
    }
    // A body that stopped there (a peer gone mid-stream) is cut likewise.
    for body in [&text.as_bytes()[..1020], &binary[..1031]] {
        s.record(
            "http.response.body",
            Body {
                body: cap_body(body, 4096).unfinished(true),
            },
        )
        .unwrap();
    }
    s.close(json!({"reason": "done"})).unwrap();
    let recorded = fs::read_to_string(s.path()).unwrap();
    assert!(!recorded.contains(&token[..20]), "{recorded}");
    assert!(recorded.contains(&"x".repeat(1000)), "{recorded}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&binary[..1001]);
    assert!(recorded.contains(&b64), "{recorded}");
    let secret = b"eyJhbGciOi";
    assert_eq!(partial_secret_at_end(b"abc-eyJ", secret), 3);
    assert_eq!(partial_secret_at_end(b"abc-eyJhbGciOi", secret), 0);
    assert_eq!(partial_secret_at_end(b"e", secret), 1);
    assert_eq!(partial_secret_at_end(b"", secret), 0);
    // Escaped, and an escape itself cut short.
    assert_eq!(partial_secret_at_end(b"abc-eyJ%68bG", secret), 8);
    assert_eq!(partial_secret_at_end(b"abc-%65yJ&#10", secret), 9);
    assert_eq!(partial_secret_at_end(b"abc-eyJ%6", secret), 5);
    assert_eq!(partial_secret_at_end(b"abc-eyJ%7", secret), 0);
}

/// The agent's token however an event holds it: percent-encoded in a query, as HTML references
/// in a text body, as JSON escapes in a JSON body and (escaped again when encoded) in a text
/// body, in a header, mixed; each is `[REDACTED]`, and the events stay valid JSON that verifies.
#[test]
fn an_escaped_token_is_redacted_however_the_event_holds_it() {
    use crate::masking::secret::SecretFinder;
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({"identity": "agent"})).unwrap();
    // An opaque token with the characters encoders escape.
    let token = "c3Zj+OjAw/Q0FOQVJZ==secret";
    s.hide(token.as_bytes());
    #[derive(serde::Serialize)]
    struct Body<'a> {
        note: &'a str,
        body: CappedBody<'a>,
    }
    let json_body = br#"{"next":"https:\/\/cb?t=c3Zj\u002BOjAw\/Q0FOQVJZ%3D%3Dsecret","n":1}"#;
    let text_body =
        br#"<p>c3Zj&#43;OjAw&sol;Q0FOQVJZ&#x3D;=secret</p> and {"t":"c3Zj\u002bOjAw\/Q0FOQVJZ==secret"}"#;
    s.record(
        "http.request",
        json!({
            "target": "/cb?t=c3Zj%2BOjAw%2FQ0FOQVJZ%3D%3Dsecret",
            "headers": {"x-forwarded-token": "c3Zj&plus;OjAw/Q0FOQVJZ==secret", "x-other": "kept"},
        }),
    )
    .unwrap();
    s.record(
        "http.response.body",
        Body {
            note: "json",
            body: CappedBody::json(Cow::Borrowed(&json_body[..]), 4096),
        },
    )
    .unwrap();
    s.record_deferred(
        "http.response.body",
        Body {
            note: "text",
            body: cap_body(text_body, 4096),
        },
    )
    .unwrap();
    // A raw JSON body's own `\u` escape of `&`, as Go writes it, before HTML escaped twice.
    let go = br#"{"m":"c3Zj\u0026amp;#43;OjAw/Q0FOQVJZ==secret"}"#;
    s.record(
        "http.response.body",
        Body {
            note: "go",
            body: CappedBody::json(Cow::Borrowed(&go[..]), 4096),
        },
    )
    .unwrap();
    // Cut through an escaped spelling: none of its start is kept.
    let cut = br#"{"t":"x c3Zj\u002bOjAw\/Q0F"#;
    s.record(
        "http.request.body",
        Body {
            note: "cut",
            body: cap_body(&cut[..], cut.len() - 1),
        },
    )
    .unwrap();
    s.close(json!({"reason": "done"})).unwrap();

    let report = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert_eq!((report.events, report.closed), (7, true));
    let finder = SecretFinder::new(&[token.as_bytes()]).unwrap();
    let mut seen = Vec::new();
    verify_events(s.path(), None, |e| seen.push(e.data.clone())).unwrap();
    // Every string, decoded, and the raw JSON body's as written: no spelling is left.
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(m) => m.iter().for_each(|(k, v)| {
                out.push(k.clone());
                strings(v, out)
            }),
            _ => {}
        }
    }
    let mut all = Vec::new();
    seen.iter().for_each(|v| strings(v, &mut all));
    let file = fs::read_to_string(s.path()).unwrap();
    all.push(file.clone());
    for text in &all {
        assert!(!finder.found_in(text.as_bytes()), "{text}");
        assert!(!text.contains("c3Zj"), "a spelling's start is left: {text}");
    }
    assert_eq!(seen[1]["target"], "/cb?t=[REDACTED]");
    assert_eq!(seen[1]["headers"]["x-forwarded-token"], "[REDACTED]");
    assert_eq!(seen[1]["headers"]["x-other"], "kept");
    assert_eq!(seen[2]["body"]["json"]["next"], "https://cb?t=[REDACTED]");
    assert_eq!(seen[2]["body"]["json"]["n"], 1);
    assert_eq!(
        seen[3]["body"]["text"],
        r#"<p>[REDACTED]</p> and {"t":"[REDACTED]"}"#
    );
    assert_eq!(seen[4]["body"]["json"]["m"], "[REDACTED]");
    assert_eq!(seen[5]["body"]["text"], r#"{"t":"x "#);
    assert_eq!(seen[5]["body"]["truncated"], true);
}

/// A secret that reads as a number is hidden where it is one too, the number written as a
/// string, so the event stays valid JSON; other values are left alone. A line scrubbed once is
/// what the closing signature covers, even for a secret that `[REDACTED]` would complete again.
#[test]
fn a_hidden_secret_is_redacted_in_strings_and_numbers() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    s.hide(b"1234567890123456");
    s.hide(b"0123456789abcdef[");
    // Found in the encoded event from the `n` of an escaped newline on: not a spelling of it.
    s.hide(b"nsecret-token-value");
    let data = json!({
        "n": 1234567890123456u64, "m": [12345678901234567u64, 7, true, null, -1.5e3],
        "s": "x1234567890123456", "e": "a\tb 1234567890123456",
        "l": "line\nsecret-token-value and nsecret-token-value",
    });
    s.record("note", &data).unwrap();
    s.close(json!({"reason": "0123456789abcdef0123456789abcdef["}))
        .unwrap();
    let report = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert_eq!((report.events, report.closed, report.signed), (3, true, true));
    let mut seen = Vec::new();
    verify_events(s.path(), None, |e| seen.push(e.data.clone())).unwrap();
    assert_eq!(
        seen[1],
        json!({
            "n": "[REDACTED]", "m": ["[REDACTED]", 7, true, null, -1.5e3],
            "s": "x[REDACTED]", "e": "a\tb [REDACTED]",
            "l": "line\nsecret-token-value and [REDACTED]",
        })
    );
    // Replaced, the secret would end in `[REDACTED]` again: the whole value goes.
    assert_eq!(seen[2]["reason"], "[REDACTED]");
}

#[test]
fn hidden_secrets_are_redacted_wherever_they_appear_and_the_file_still_verifies() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({"identity": "agent"})).unwrap();
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    s.hide(token.as_bytes());
    s.hide(token.as_bytes()); // once is enough
    s.hide(b"short"); // too short to hide without mangling ordinary text: ignored
    s.hide(b"has \"quotes\" and \\ escapes in it"); // not written as-is in JSON: ignored
    s.record_deferred(
        "http.request",
        json!({"headers": {"x-token": format!("Bearer {token}")}, "query": format!("t={token}&u={token}")}),
    )
    .unwrap();
    s.record(
        "http.response",
        json!({"body": {"json": {"echo": token}}, "status": 200}),
    )
    .unwrap();
    // A body that is not text is recorded in base64, where the token would not be seen.
    let mut binary = vec![0xff, 0x00];
    binary.extend_from_slice(token.as_bytes());
    binary.push(0xfe);
    // Serialized as the proxy's events are, within the record call (not through `json!`).
    #[derive(serde::Serialize)]
    struct Body<'a> {
        body: CappedBody<'a>,
    }
    s.record(
        "http.request.body",
        Body {
            body: cap_body(&binary, 1024),
        },
    )
    .unwrap();
    s.record_deferred(
        "http.response.body",
        Body {
            body: cap_body(&binary, 1024),
        },
    )
    .unwrap();
    s.close(json!({"reason": "done"})).unwrap();
    let text = fs::read_to_string(s.path()).unwrap();
    assert!(!text.contains(token), "{text}");
    assert_eq!(text.matches("[REDACTED]").count(), 4, "{text}");
    let report = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert_eq!((report.events, report.closed, report.signed), (6, true, true));
    let mut seen = Vec::new();
    verify_events(s.path(), None, |e| seen.push(e.data.clone())).unwrap();
    assert_eq!(seen[1]["query"], "t=[REDACTED]&u=[REDACTED]");
    assert_eq!(seen[2]["body"]["json"]["echo"], "[REDACTED]");
    for event in &seen[3..5] {
        let b64 = event["body"]["base64"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(bytes, b"\xff\x00[REDACTED]\xfe", "{event}");
        assert_eq!(
            event["body"]["bytes"],
            binary.len(),
            "the recorded length is the body's"
        );
    }

    // The last MAX_HIDDEN secrets are kept.
    let s = rec.start_session(json!({})).unwrap();
    let secrets: Vec<String> = (0..=MAX_HIDDEN)
        .map(|i| format!("secret-number-{i:04}-abcdef"))
        .collect();
    for secret in &secrets {
        s.hide(secret.as_bytes());
    }
    s.record("note", json!({"all": secrets})).unwrap();
    let text = fs::read_to_string(s.path()).unwrap();
    assert!(text.contains(&secrets[0]), "the oldest is no longer hidden");
    assert!(secrets[1..].iter().all(|x| !text.contains(x.as_str())), "{text}");
}

#[test]
fn sessions_age_out_after_the_limit() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    assert!(!s.is_old());
    let now = std::time::Instant::now();
    assert!(!s.is_old_at(now + MAX_SESSION_AGE / 2));
    assert!(s.is_old_at(now + MAX_SESSION_AGE));
}

/// `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key inside); its public key by
/// `openssl pkey -pubout`. A test key, used nowhere else.
const OPENSSL_ED25519: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHDTMBYzFEDzt61lQgr0pvavuJ62cTsdwc6NmLbwPnNx\n-----END PRIVATE KEY-----\n";
const OPENSSL_ED25519_PUBLIC: &str = "tWc4mikiJztVNCdKM4jEArFnTBi4uvX49_Y0dec5iSw";
/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`: PKCS#8, not Ed25519.
const OPENSSL_P256: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIow/cx/LCxx41MO9\nl+Hx2Nk9rbsNeLGFqpg5w0E1FIWhRANCAATwMi+0UpgkIpB3VZ16x/Jg+I55BXLw\nQICA0WoUyH8E1QjxijqmQXtjyUczfgJF3ZhVni8ECp88kYaevF82DdRe\n-----END PRIVATE KEY-----\n";

/// A configured signing key: read from the PEM OpenSSL writes, it signs every session of every
/// recorder made with it, so one public key, known ahead, verifies them all.
#[test]
fn a_configured_signing_key_signs_sessions_that_its_public_key_verifies() {
    let (der, public) = signing_key_from_pem(OPENSSL_ED25519.as_bytes()).unwrap();
    assert_eq!(public, OPENSSL_ED25519_PUBLIC);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    // Two recorders, as two replicas or a restart would make.
    for _ in 0..2 {
        let rec = Recorder::with_key(dir.path(), RecordingMode::Required, "ns/gw", &der).unwrap();
        assert_eq!(rec.public_key(), OPENSSL_ED25519_PUBLIC);
        let s = rec.start_session(json!({})).unwrap();
        s.record("http.request", json!({"path": "/x"})).unwrap();
        s.close(json!({})).unwrap();
        files.push(s.path().to_path_buf());
    }
    for f in &files {
        let report = verify_file(f, Some(OPENSSL_ED25519_PUBLIC)).unwrap();
        assert!(report.closed && report.signed, "{report:?}");
    }
    // A process's own key verifies nothing else.
    let other = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
    assert!(verify_file(&files[0], Some(other.public_key())).is_err());

    assert_eq!(
        signing_key_from_pem(OPENSSL_P256.as_bytes()).unwrap_err(),
        "not an Ed25519 private key"
    );
    assert!(signing_key_from_pem(b"MC4CAQAwBQYDK2VwBCIEIHDTMBYz").is_err());
    assert!(signing_key_from_pem(b"").is_err());
}

/// A spool another user may write to is refused (sessions could be removed or planted before
/// they are shipped); the gateway's own loses its group and other bits.
#[test]
fn the_spool_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Recorder::new(&spool, RecordingMode::Required, "team/gw")
        .unwrap_err()
        .to_string();
    assert!(err.contains("anybody may write to it (mode 777)"), "{err}");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o750)).unwrap();
    Recorder::new(&spool, RecordingMode::Required, "team/gw").unwrap();
    let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// Events that never reached the file are counted in the signed end: the unbroken chain of the
/// events that did does not vouch for a session with holes.
#[test]
fn events_lost_to_failed_writes_are_counted_in_the_signed_end() {
    let (_d, rec) = recorder(RecordingMode::BestEffort);
    let s = rec.start_session(json!({})).unwrap();
    s.record("http.request", json!({"n": 1})).unwrap();
    break_disk(&s);
    // Swallowed in BestEffort mode: the first write fails, the second finds no file.
    s.record("http.request", json!({"n": 2})).unwrap();
    s.record("http.request", json!({"n": 3})).unwrap();
    // The disk is back (the file as it was: the failed write was never on it).
    s.lock().file = Some(fs::OpenOptions::new().append(true).open(s.path()).unwrap());
    s.record("http.request", json!({"n": 4})).unwrap();
    s.close(json!({"reason": "client closed"})).unwrap();
    let r = verify_file(s.path(), Some(rec.public_key())).unwrap();
    assert!(r.closed && r.signed, "{r:?}");
    let end = lines(s.path()).pop().unwrap();
    assert!(end.contains("\"unrecorded_events\":2"), "{end}");
}

/// A retired session is closed once the requests still holding it are done, so their events
/// are recorded, not refused; past the limit it is closed all the same.
#[tokio::test]
async fn a_retired_session_is_closed_once_released() {
    let (_d, rec) = recorder(RecordingMode::Required);
    let s = rec.start_session(json!({})).unwrap();
    let held = s.clone();
    let closing = tokio::spawn(close_when_released(
        s,
        json!({"reason": "session age limit"}),
        std::time::Duration::from_secs(60),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // A stream still in flight records its response into it.
    held.record("http.response", json!({"status": 200})).unwrap();
    let path = held.path().to_path_buf();
    drop(held);
    tokio::time::timeout(std::time::Duration::from_secs(5), closing)
        .await
        .expect("closed once released")
        .unwrap();
    let all = lines(&path);
    assert!(all[1].contains("http.response"), "{all:?}");
    assert!(all[2].contains("session age limit"), "{all:?}");

    // Held past the limit: closed anyway, and the holder's later event is refused and counted.
    let s = rec.start_session(json!({})).unwrap();
    let held = s.clone();
    close_when_released(s, json!({}), std::time::Duration::from_millis(200)).await;
    assert!(matches!(
        held.record("http.response", json!({})),
        Err(RecordingError::Closed(_))
    ));
}
