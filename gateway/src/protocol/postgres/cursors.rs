//! Which cursor names a session's FETCH and MOVE may read, and under which configuration each was
//! declared. FETCH names only a cursor: where a rowLimit applies, a name the gateway did not see
//! declared may be a cursor that code of the database's own opened over a capped table (a
//! function's refcursor), whose rows nothing counts. So the book errs towards forgetting: a
//! name forgotten too soon only refuses a FETCH; one kept too long lets such a cursor be read.
//!
//! Names are noted when a DECLARE is decided (for what follows it in the same text) and
//! confirmed when the server completes it; they are forgotten when a CLOSE, a transaction's end
//! or code the gateway cannot read is decided (for what follows it) and again when the server
//! answers, since a DECLARE decided before them completes after them.

use std::collections::HashMap;

use super::classify::CursorsEnd;

/// Most names each list keeps; past it the book forgets rather than lose track.
pub const MAX_TRACKED_CURSORS: usize = 1024;

/// See the module documentation. `answering`: the segment of the Query or Sync whose
/// ReadyForQuery answers the message a name was noted for (see `Prepared::segment`).
#[derive(Debug, Default)]
pub struct CursorBook {
    /// Name to the configuration generation it was declared under.
    known: HashMap<String, u64>,
    /// Noted for a DECLARE the server has not completed, with its `answering` segment.
    unconfirmed: Vec<(String, u64)>,
    /// Without `WITH HOLD`, made (or noted) since the transaction began: they end with it.
    ending: Vec<(String, u64)>,
    /// `WITH HOLD`, made in the transaction still open: a rollback undoes them.
    held: Vec<String>,
    held_overflow: bool,
    /// Counts the closes and ends decided; a DECLARE's completion is not taken for a cursor
    /// that one decided after the DECLARE closed.
    epoch: u64,
    closed_at: HashMap<String, u64>,
    /// The last CLOSE ALL, rollback, DISCARD ALL or code that may close anything.
    all_closed_at: u64,
    /// The last commit (which ends cursors without `WITH HOLD`).
    committed_at: u64,
}

impl CursorBook {
    /// The generation `name` was declared under, if it is known.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.known.get(name).copied()
    }

    /// The count of closes and ends decided so far, for [`CursorBook::confirm`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A DECLARE of `name` was decided: known from here for the statements after it in the
    /// same text. A name known already keeps its generation until the server confirms a new
    /// cursor (a DECLARE refused because the name is in use must not pass the old one off as
    /// new).
    pub fn declare(&mut self, name: &str, generation: u64, answering: u64, hold: bool) {
        if !hold && !self.ending.iter().any(|(n, _)| n == name) {
            // One that could not be forgotten at its transaction's end is not known at all.
            if self.ending.len() >= MAX_TRACKED_CURSORS {
                return;
            }
            self.ending.push((name.to_string(), answering));
        }
        if self.known.contains_key(name) || self.unconfirmed.len() >= MAX_TRACKED_CURSORS {
            return;
        }
        self.make_room(name);
        self.known.insert(name.to_string(), generation);
        self.unconfirmed.push((name.to_string(), answering));
    }

    /// The server completed a DECLARE of `name` decided at `epoch` under `generation`: the
    /// cursor exists, unless a close or end decided after the DECLARE has closed it since.
    pub fn confirm(&mut self, name: &str, generation: u64, hold: bool, epoch: u64) {
        self.unconfirmed.retain(|(n, _)| n != name);
        let closed = self.closed_at.get(name).is_some_and(|&e| e > epoch)
            || self.all_closed_at > epoch
            || (!hold && self.committed_at > epoch);
        if closed {
            self.known.remove(name);
            return;
        }
        if hold {
            if self.held.len() < MAX_TRACKED_CURSORS {
                self.held.push(name.to_string());
            } else {
                self.held_overflow = true;
            }
        } else if !self.ending.iter().any(|(n, _)| n == name) {
            if self.ending.len() >= MAX_TRACKED_CURSORS {
                self.known.remove(name);
                return;
            }
            // It has run: the next ReadyForQuery outside a transaction ends it.
            self.ending.push((name.to_string(), 0));
        }
        self.make_room(name);
        self.known.insert(name.to_string(), generation);
    }

    /// Bounded: past the cap every name is forgotten (and read only as unknown).
    fn make_room(&mut self, name: &str) {
        if self.known.len() >= MAX_TRACKED_CURSORS && !self.known.contains_key(name) {
            self.known.clear();
        }
    }

    fn bump(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// A CLOSE of `name` (`""`: CLOSE ALL) was decided, or answered.
    pub fn close(&mut self, name: &str, answered: bool) {
        if name.is_empty() {
            self.forget_all(answered);
            return;
        }
        self.known.remove(name);
        if !answered {
            let e = self.bump();
            if self.closed_at.len() >= MAX_TRACKED_CURSORS && !self.closed_at.contains_key(name) {
                self.closed_at.clear();
                self.all_closed_at = e;
            }
            self.closed_at.insert(name.to_string(), e);
        }
    }

    /// Every cursor may be gone: CLOSE ALL, DISCARD ALL, or code the gateway cannot read (a
    /// function can close a cursor by name and open another under it).
    pub fn forget_all(&mut self, answered: bool) {
        self.known.clear();
        if !answered {
            self.all_closed_at = self.bump();
        }
    }

    /// A statement that ends the transaction's cursors (see [`CursorsEnd`]) was decided
    /// (`answered` false) or answered (a COMMIT of a failed transaction answers ROLLBACK; an
    /// error ends in one). `ROLLBACK TO SAVEPOINT` keeps what was made before the savepoint:
    /// forgetting it too only refuses a FETCH.
    pub fn end(&mut self, end: CursorsEnd, answered: bool) {
        match end {
            CursorsEnd::Discard => self.forget_all(answered),
            CursorsEnd::Commit => {
                for (name, _) in &self.ending {
                    self.known.remove(name);
                }
                if !answered {
                    self.committed_at = self.bump();
                }
            }
            CursorsEnd::Rollback => {
                if self.held_overflow {
                    self.known.clear();
                }
                let names = self.ending.iter().chain(&self.unconfirmed).map(|(n, _)| n);
                for name in names.chain(&self.held) {
                    self.known.remove(name);
                }
                if !answered {
                    self.all_closed_at = self.bump();
                }
            }
        }
        if answered {
            self.ending.clear();
            // Committed, or gone.
            self.held.clear();
            self.held_overflow = false;
        }
    }

    /// DECLAREs that failed, or were skipped after an error, made nothing: forgotten as soon as
    /// the error passes (a client may send its next statement on the error).
    pub fn failed<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if let Some(i) = self.unconfirmed.iter().position(|(n, _)| n == name) {
                self.unconfirmed.swap_remove(i);
                self.known.remove(name);
            }
        }
    }

    /// The ReadyForQuery answering segment `ended`: DECLAREs it answers that the server did not
    /// complete made nothing; outside a transaction (`idle`) the cursors without `WITH HOLD` it
    /// covers have ended, and those with it are committed. Names noted for later segments (a
    /// pipeline) are kept for their own answer.
    pub fn at_ready(&mut self, ended: u64, idle: bool) {
        let known = &mut self.known;
        self.unconfirmed.retain(|(name, answering)| {
            let answered = *answering <= ended;
            if answered {
                known.remove(name);
            }
            !answered
        });
        if idle {
            self.ending.retain(|(name, answering)| {
                let answered = *answering <= ended;
                if answered {
                    known.remove(name);
                }
                !answered
            });
            self.held.clear();
            self.held_overflow = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> CursorBook {
        CursorBook::default()
    }

    /// A DECLARE's completion does not bring back a name closed, committed or rolled back
    /// after the DECLARE was decided; one closed before it is declared anew.
    #[test]
    fn completions_do_not_undo_later_closes() {
        for later in ["close", "commit", "rollback", "all"] {
            let mut b = book();
            let e = b.epoch();
            b.declare("c", 1, 2, false);
            assert_eq!(b.get("c"), Some(1));
            match later {
                "close" => b.close("c", false),
                "commit" => b.end(CursorsEnd::Commit, false),
                "rollback" => b.end(CursorsEnd::Rollback, false),
                _ => b.forget_all(false),
            }
            assert_eq!(b.get("c"), None, "{later}");
            b.confirm("c", 1, false, e);
            assert_eq!(b.get("c"), None, "{later}");
        }
        // Closed first, then declared again: the new cursor stands.
        let mut b = book();
        b.close("c", false);
        let e = b.epoch();
        b.declare("c", 1, 2, false);
        b.confirm("c", 1, false, e);
        assert_eq!(b.get("c"), Some(1));
        // A commit leaves cursors WITH HOLD, and another name's close leaves this one.
        let mut b = book();
        let e = b.epoch();
        b.declare("h", 1, 2, true);
        b.close("other", false);
        b.end(CursorsEnd::Commit, false);
        b.confirm("h", 1, true, e);
        assert_eq!(b.get("h"), Some(1));
    }

    /// Rollbacks undo the cursors made in the transaction, WITH HOLD too; a commit keeps those.
    #[test]
    fn transactions_end_their_cursors() {
        let mut b = book();
        b.confirm("kept", 1, true, 0);
        b.at_ready(1, true);
        b.confirm("h", 1, true, 0);
        b.confirm("t", 1, false, 0);
        b.end(CursorsEnd::Rollback, true);
        assert_eq!((b.get("kept"), b.get("h"), b.get("t")), (Some(1), None, None));
        b.confirm("h", 1, true, 0);
        b.confirm("t", 1, false, 0);
        b.end(CursorsEnd::Commit, true);
        assert_eq!((b.get("kept"), b.get("h"), b.get("t")), (Some(1), Some(1), None));
        // Committed: a later rollback leaves it.
        b.end(CursorsEnd::Rollback, true);
        assert_eq!(b.get("h"), Some(1));
        b.end(CursorsEnd::Discard, true);
        assert_eq!(b.get("kept"), None);
    }

    /// ReadyForQuery forgets what it answers, not what a pipeline noted for later segments.
    #[test]
    fn ready_for_query_settles_only_what_it_answers() {
        let mut b = book();
        b.declare("failed", 1, 3, false);
        b.declare("later", 1, 5, false);
        b.at_ready(3, false);
        assert_eq!((b.get("failed"), b.get("later")), (None, Some(1)));
        b.confirm("later", 1, false, 0);
        b.at_ready(5, false);
        assert_eq!(b.get("later"), Some(1));
        // Outside a transaction, a cursor without WITH HOLD has ended.
        b.at_ready(5, true);
        assert_eq!(b.get("later"), None);
        // Failed DECLAREs are forgotten at their error; confirmed names are not.
        b.declare("x", 1, 7, false);
        b.confirm("y", 1, true, 0);
        b.failed(["x", "y"]);
        assert_eq!((b.get("x"), b.get("y")), (None, Some(1)));
    }

    /// Past the caps the book forgets rather than keeps a name it could not end.
    #[test]
    fn past_the_caps_names_are_forgotten_not_kept() {
        let mut b = book();
        for i in 0..MAX_TRACKED_CURSORS {
            b.declare(&format!("c{i}"), 1, 2, false);
        }
        b.declare("one-more", 1, 2, false);
        assert_eq!(b.get("one-more"), None);
        let mut b = book();
        for i in 0..=MAX_TRACKED_CURSORS {
            b.confirm(&format!("h{i}"), 1, true, 0);
        }
        b.end(CursorsEnd::Rollback, true);
        assert_eq!(b.get("h0"), None);
        assert!(b.known.is_empty());
    }
}
