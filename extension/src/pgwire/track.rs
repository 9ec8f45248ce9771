//! What a client session has made of its server connection, recorded from what passes through,
//! so that a session whose connection died while it sat idle (a freeze past the server's
//! `idle_session_timeout`, a failover, a restart) can go on on a new connection as if nothing
//! happened; and what, if anything, makes that impossible. All the rules live in this file.
//!
//! Recorded, and replayed on a new connection in this order:
//! - session-level `SET`/`RESET` (never `SET LOCAL`, which ends with its transaction), once
//!   the server has run them and their transaction, if any, has committed;
//! - SQL-level `PREPARE`, once run, until `DEALLOCATE`;
//! - the protocol-level named statements the client prepared (its Parse messages, kept whole),
//!   once the server answered ParseComplete, until Close answered CloseComplete.
//!
//! What cannot be rebuilt blocks the heal, as in PostgreSQL's own `DISCARD ALL` page and RDS
//! Proxy's pinning rules: an open transaction, temporary tables, session advisory locks,
//! `LISTEN`, cursors `WITH HOLD`, `set_config` outside a transaction's scope, and anything this
//! record cannot follow (a savepoint rolled back over a `SET`, more state than it keeps).
//! <https://www.postgresql.org/docs/current/sql-discard.html>

use std::collections::VecDeque;

use bytes::Bytes;

/// The most `SET` and `PREPARE` statements kept; past it the session cannot be healed.
const MAX_SETTINGS: usize = 256;
/// The most protocol-level statements kept, and their bytes.
const MAX_STATEMENTS: usize = 10_000;
const MAX_STATEMENT_BYTES: usize = 16 << 20;
/// The most portals followed at once.
const MAX_PORTALS: usize = 1024;

/// What one SQL statement does to the session, as far as healing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing that outlives its transaction.
    None,
    /// `SET` (session scope) of `name`, or `SET SESSION CHARACTERISTICS …` (`name` empty).
    Set { name: String, sql: String },
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// SQL `PREPARE name`.
    Prepare { name: String, sql: String },
    /// `DEALLOCATE name`, or all of them (`None`).
    Deallocate(Option<String>),
    /// `DISCARD ALL`: the session back to new.
    DiscardAll,
    /// `DISCARD TEMP`.
    DiscardTemp,
    /// `LISTEN`.
    Listen,
    /// `UNLISTEN *`.
    UnlistenAll,
    /// A temporary table, view or sequence.
    CreateTemp,
    /// A session advisory lock.
    AdvisoryLock,
    /// `pg_advisory_unlock_all()`.
    AdvisoryUnlockAll,
    /// A cursor `WITH HOLD`.
    HoldCursor,
    /// `set_config`, whose scope cannot be told from the text.
    SetConfig,
    /// `COMMIT`/`END`, `ROLLBACK`/`ABORT`, `BEGIN`: read from the command tags instead.
    Transaction,
}

/// Splits a simple Query's text into its statements, as PostgreSQL's parser would: on
/// semicolons outside quotes, quoted identifiers, dollar quotes and comments. Empty statements
/// are dropped, as the server drops them.
pub fn statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // E'…' strings take backslash escapes.
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                    }
                    i += 1;
                }
                continue;
            }
            b'$' => {
                // $tag$ … $tag$, where the tag is empty or an identifier.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(end) = tag_end.filter(|&e| b[e] == b'$') {
                    let tag = &b[i..=end];
                    let body = end + 1;
                    match b[body..].windows(tag.len()).position(|w| w == tag) {
                        Some(p) => i = body + p + tag.len() - 1,
                        None => i = b.len(),
                    }
                }
            }
            b';' => {
                push(&mut out, &sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push(&mut out, &sql[start.min(sql.len())..]);
    out
}

fn push<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    if !words(s, 1).is_empty() {
        out.push(s.trim());
    }
}

/// The first `n` words of `sql`, lower-cased, past whitespace and comments.
fn words(sql: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while out.len() < n && i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => {
                let start = i;
                while i < b.len()
                    && !b[i].is_ascii_whitespace()
                    && !matches!(b[i], b'=' | b'(' | b';')
                {
                    i += 1;
                }
                if i == start {
                    // A lone `=` or `(`: a word of its own.
                    i += 1;
                }
                out.push(sql[start..i].to_ascii_lowercase());
            }
        }
    }
    out
}

fn contains(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The session-level functions `sql` calls, in one pass over it: `pg_advisory_unlock_all`
/// first, then a session advisory lock, then `set_config`.
fn functions(sql: &str) -> Option<Effect> {
    let b = sql.as_bytes();
    let at = |i: usize, needle: &str| {
        b.get(i..i + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    let (mut lock, mut set_config) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'p' | b'P' => {
                if at(i, "pg_advisory_unlock_all") {
                    return Some(Effect::AdvisoryUnlockAll);
                }
                lock |= at(i, "pg_advisory_lock") || at(i, "pg_try_advisory_lock");
            }
            b's' | b'S' => set_config |= at(i, "set_config"),
            _ => {}
        }
    }
    if lock {
        Some(Effect::AdvisoryLock)
    } else if set_config {
        Some(Effect::SetConfig)
    } else {
        None
    }
}

/// What `sql`, one statement, does to the session.
pub fn effect(sql: &str) -> Effect {
    // Functions can be called from any statement.
    if let Some(e) = functions(sql) {
        return e;
    }
    let w = words(sql, 5);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["set", "local", ..] | ["set", "transaction", ..] => Effect::None,
        ["set", "session", "characteristics", ..] => Effect::Set {
            name: String::new(),
            sql: sql.to_owned(),
        },
        ["set", "session", "authorization", ..] => Effect::Set {
            name: "session_authorization".into(),
            sql: sql.to_owned(),
        },
        ["set", "session", name, ..] | ["set", name, ..] => Effect::Set {
            name: unquote(name),
            sql: sql.to_owned(),
        },
        ["reset", "all", ..] => Effect::ResetAll,
        ["reset", name, ..] => Effect::Reset(unquote(name)),
        ["prepare", "transaction", ..] => Effect::Transaction,
        ["prepare", name, ..] => Effect::Prepare {
            name: unquote(name),
            sql: sql.to_owned(),
        },
        ["deallocate", "prepare", "all", ..] | ["deallocate", "all", ..] => {
            Effect::Deallocate(None)
        }
        ["deallocate", "prepare", name, ..] | ["deallocate", name, ..] => {
            Effect::Deallocate(Some(unquote(name)))
        }
        ["discard", "all", ..] => Effect::DiscardAll,
        ["discard", "temp" | "temporary", ..] => Effect::DiscardTemp,
        ["listen", ..] => Effect::Listen,
        ["unlisten", "*", ..] => Effect::UnlistenAll,
        // UNLISTEN of one channel may leave others: still listening, as far as this knows.
        ["create", rest @ ..]
            if rest
                .iter()
                .take(3)
                .any(|w| matches!(*w, "temp" | "temporary")) =>
        {
            Effect::CreateTemp
        }
        ["declare", ..] if contains(sql, "with hold") => Effect::HoldCursor,
        ["begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release", ..] => {
            Effect::Transaction
        }
        _ => Effect::None,
    }
}

fn unquote(name: &str) -> String {
    name.trim_matches('"').to_owned()
}

/// A named statement of the client's: its Parse message, whole, and what running it does,
/// read once from its SQL rather than at every Execute.
#[derive(Debug)]
struct Statement {
    name: String,
    parse: Bytes,
    effect: Effect,
}

/// The record of one session.
#[derive(Debug, Default)]
pub struct Track {
    /// `SET` statements to replay, keyed by setting, in the order first made.
    settings: Vec<(String, String)>,
    /// SQL `PREPARE` statements to replay, keyed by name.
    prepares: Vec<(String, String)>,
    /// The client's named statements.
    statements: Vec<Statement>,
    statement_bytes: usize,
    /// What the unnamed statement does, and each portal, for the effects of an Execute.
    unnamed: Option<Effect>,
    portals: Vec<(String, Effect)>,
    /// Parse and Close messages sent whose answer is awaited, in order.
    parses: VecDeque<Option<Statement>>,
    closes: VecDeque<Option<String>>,
    /// Effects of the statements sent since the last ReadyForQuery, in order.
    group: Vec<Effect>,
    group_error: bool,
    group_commit: bool,
    group_rollback: bool,
    /// Effects of a transaction block still open, applied when it commits.
    pending: Vec<Effect>,
    listening: bool,
    temp: bool,
    locks: bool,
    hold: bool,
    /// Why the record cannot be trusted, once it cannot.
    lost: Option<&'static str>,
}

impl Track {
    /// A client message on its way to the server.
    pub fn client_message(&mut self, tag: u8, body: &[u8], whole: &Bytes) {
        match tag {
            b'Q' => {
                if let Some([sql]) = super::messages::cstrs(body) {
                    for s in statements(sql) {
                        self.group.push(effect(s));
                    }
                }
            }
            b'P' => {
                let Some([name, sql]) = super::messages::cstrs(body) else {
                    return;
                };
                let effect = effect(sql);
                if name.is_empty() {
                    self.unnamed = Some(effect);
                    self.parses.push_back(None);
                } else {
                    self.parses.push_back(Some(Statement {
                        name: name.to_owned(),
                        parse: whole.clone(),
                        effect,
                    }));
                }
            }
            b'B' => {
                let Some([portal, statement]) = super::messages::cstrs(body) else {
                    return;
                };
                let effect = if statement.is_empty() {
                    self.unnamed.clone()
                } else {
                    self.statement_effect(statement)
                };
                if let Some(effect) = effect {
                    self.portals.retain(|(p, _)| p != portal);
                    if self.portals.len() < MAX_PORTALS {
                        self.portals.push((portal.to_owned(), effect));
                    } else {
                        self.lose("more open portals than warmpool follows");
                    }
                }
            }
            b'E' => {
                if let Some([portal]) = super::messages::cstrs(body) {
                    if let Some((_, e)) = self.portals.iter().find(|(p, _)| p == portal) {
                        self.group.push(e.clone());
                    }
                }
            }
            b'C' => {
                // Close: 'S' statement or 'P' portal, then the name.
                let Some((&kind, rest)) = body.split_first() else {
                    return;
                };
                let name = super::messages::cstrs(rest).map(|[n]| n.to_owned());
                self.closes
                    .push_back(name.filter(|n| kind == b'S' && !n.is_empty()));
            }
            _ => {}
        }
    }

    /// What the client's statement `name` does: one the server has, or one whose Parse went
    /// out in the same pipeline and is not answered yet (a driver sends Parse, Bind and
    /// Execute together).
    fn statement_effect(&self, name: &str) -> Option<Effect> {
        let pending = self.parses.iter().rev().flatten();
        let s = pending
            .chain(self.statements.iter().rev())
            .find(|s| s.name == name)?;
        Some(s.effect.clone())
    }

    /// A server message on its way to the client.
    pub fn server_message(&mut self, tag: u8, command_tag: Option<&str>, status: Option<u8>) {
        match tag {
            b'1' => {
                if let Some(Some(statement)) = self.parses.pop_front() {
                    self.remember_statement(statement);
                }
            }
            b'3' => {
                if let Some(Some(name)) = self.closes.pop_front() {
                    if let Some(at) = self.statements.iter().position(|s| s.name == name) {
                        let gone = self.statements.remove(at);
                        self.statement_bytes -= gone.parse.len();
                    }
                }
            }
            b'C' => match command_tag {
                Some("COMMIT") => self.group_commit = true,
                Some("ROLLBACK") => self.group_rollback = true,
                _ => {}
            },
            b'E' => self.group_error = true,
            b'Z' => self.ready(status.unwrap_or(b'I')),
            _ => {}
        }
    }

    fn remember_statement(&mut self, statement: Statement) {
        if let Some(at) = self
            .statements
            .iter()
            .position(|s| s.name == statement.name)
        {
            let old = self.statements.remove(at);
            self.statement_bytes -= old.parse.len();
        }
        let bytes = statement.parse.len();
        if self.statements.len() >= MAX_STATEMENTS
            || self.statement_bytes + bytes > MAX_STATEMENT_BYTES
        {
            self.lose("more prepared statements than warmpool keeps to restore");
            return;
        }
        self.statement_bytes += bytes;
        self.statements.push(statement);
    }

    /// A ReadyForQuery: what the request did is settled.
    fn ready(&mut self, status: u8) {
        // Whatever Parse or Close was not answered was skipped after an error.
        self.parses.clear();
        self.closes.clear();
        // Portals end with their transaction: outside one, none is left to follow.
        if status == b'I' {
            self.portals.clear();
        }
        let group = std::mem::take(&mut self.group);
        let (error, commit, rollback) = (
            std::mem::take(&mut self.group_error),
            std::mem::take(&mut self.group_commit),
            std::mem::take(&mut self.group_rollback),
        );
        // A session advisory lock outlives a rollback.
        if group.contains(&Effect::AdvisoryLock) {
            self.locks = true;
        }
        let transactional = |e: &Effect| !matches!(e, Effect::None | Effect::Transaction);
        match status {
            b'T' | b'E' => {
                if rollback && (!self.pending.is_empty() || group.iter().any(transactional)) {
                    // ROLLBACK TO SAVEPOINT: which of the block's changes survived is unknown.
                    self.lose("a savepoint was rolled back over session changes");
                }
                if !error {
                    self.pending.extend(group);
                } else if group.iter().any(transactional) {
                    self.lose("a statement failed in a request that changed session state");
                }
            }
            _ => {
                let pending = std::mem::take(&mut self.pending);
                if error {
                    if commit && (group.iter().any(transactional) || !pending.is_empty()) {
                        self.lose("a request that committed and then failed changed session state");
                    }
                    return;
                }
                if rollback {
                    // The block's changes are gone; what the request ran after it stands.
                    let after = group
                        .iter()
                        .rposition(|e| *e == Effect::Transaction)
                        .map_or(0, |p| p + 1);
                    for e in group.into_iter().skip(after) {
                        self.apply(e);
                    }
                    return;
                }
                for e in pending.into_iter().chain(group) {
                    self.apply(e);
                }
            }
        }
    }

    fn apply(&mut self, e: Effect) {
        match e {
            Effect::None | Effect::Transaction => {}
            Effect::Set { name, sql } => {
                if let Some(s) = self
                    .settings
                    .iter_mut()
                    .find(|(n, _)| *n == name && !n.is_empty())
                {
                    s.1 = sql;
                } else if self.settings.len() < MAX_SETTINGS {
                    self.settings.push((name, sql));
                } else {
                    self.lose("more SET statements than warmpool keeps to restore");
                }
            }
            Effect::Reset(name) => {
                self.settings.retain(|(n, _)| *n != name);
            }
            Effect::ResetAll => self.settings.clear(),
            Effect::Prepare { name, sql } => {
                self.prepares.retain(|(n, _)| *n != name);
                if self.prepares.len() < MAX_SETTINGS {
                    self.prepares.push((name, sql));
                } else {
                    self.lose("more SQL PREPARE statements than warmpool keeps to restore");
                }
            }
            Effect::Deallocate(Some(name)) => self.prepares.retain(|(n, _)| *n != name),
            Effect::Deallocate(None) => {
                self.prepares.clear();
                self.statements.clear();
                self.statement_bytes = 0;
            }
            Effect::DiscardAll => {
                let lost = self.lost;
                *self = Track::default();
                self.lost = lost;
            }
            Effect::DiscardTemp => self.temp = false,
            Effect::Listen => self.listening = true,
            Effect::UnlistenAll => self.listening = false,
            Effect::CreateTemp => self.temp = true,
            Effect::AdvisoryLock => self.locks = true,
            Effect::AdvisoryUnlockAll => self.locks = false,
            Effect::HoldCursor => self.hold = true,
            Effect::SetConfig => self.lose("set_config, whose scope warmpool cannot follow"),
        }
    }

    fn lose(&mut self, why: &'static str) {
        if self.lost.is_none() {
            self.lost = Some(why);
            // Nothing of the record will be used: its memory goes now.
            self.settings = Vec::new();
            self.prepares = Vec::new();
            self.statements = Vec::new();
            self.statement_bytes = 0;
        }
    }

    /// Why the session cannot go on on a new connection, if it cannot: what was lost.
    pub fn unrestorable(&self) -> Option<String> {
        let mut lost = Vec::new();
        if let Some(why) = self.lost {
            lost.push(why);
        }
        if self.temp {
            lost.push("temporary tables");
        }
        if self.locks {
            lost.push("session advisory locks");
        }
        if self.listening {
            lost.push("LISTEN");
        }
        if self.hold {
            lost.push("cursors WITH HOLD");
        }
        (!lost.is_empty()).then(|| lost.join(", "))
    }

    /// The statements that rebuild the session's settings and SQL-level prepared statements,
    /// in order.
    pub fn replay_sql(&self) -> impl Iterator<Item = &str> {
        self.settings
            .iter()
            .chain(&self.prepares)
            .map(|(_, sql)| sql.as_str())
    }

    /// The client's named statements, as the Parse messages that made them.
    pub fn parse_messages(&self) -> impl Iterator<Item = &Bytes> {
        self.statements.iter().map(|s| &s.parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_as_the_server_splits_them() {
        assert_eq!(
            statements("SET a = 1; SELECT ';' ; ; SELECT $x$;$x$ -- ;\n; SELECT \"a;b\""),
            [
                "SET a = 1",
                "SELECT ';'",
                "SELECT $x$;$x$ -- ;",
                "SELECT \"a;b\""
            ]
        );
        assert_eq!(
            statements("/* ; /* ; */ */ SELECT 1"),
            ["/* ; /* ; */ */ SELECT 1"]
        );
        assert_eq!(statements("SELECT E'\\';'; SELECT 2").len(), 2);
        assert!(statements("  ;; -- nothing\n").is_empty());
    }

    #[test]
    fn effects_are_read_from_the_statement() {
        assert!(
            matches!(effect("SET search_path TO app"), Effect::Set { name, .. } if name == "search_path")
        );
        assert!(
            matches!(effect("set session TimeZone = 'UTC'"), Effect::Set { name, .. } if name == "timezone")
        );
        assert!(
            matches!(effect("SET work_mem='64MB'"), Effect::Set { name, .. } if name == "work_mem")
        );
        assert_eq!(effect("SET LOCAL search_path TO app"), Effect::None);
        assert_eq!(
            effect("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Effect::None
        );
        assert_eq!(effect("RESET ALL"), Effect::ResetAll);
        assert_eq!(effect("/* x */ LISTEN jobs"), Effect::Listen);
        assert_eq!(effect("CREATE TEMP TABLE t (a int)"), Effect::CreateTemp);
        assert_eq!(
            effect("create temporary table t (a int)"),
            Effect::CreateTemp
        );
        assert_eq!(effect("SELECT pg_advisory_lock(1)"), Effect::AdvisoryLock);
        assert_eq!(effect("SELECT pg_advisory_xact_lock(1)"), Effect::None);
        assert_eq!(
            effect("select PG_TRY_ADVISORY_LOCK(1)"),
            Effect::AdvisoryLock
        );
        // Whatever else the statement calls, unlocking all comes first, then a lock.
        assert_eq!(
            effect(
                "SELECT set_config('a', 'b', false), pg_advisory_lock(1), pg_advisory_unlock_all()"
            ),
            Effect::AdvisoryUnlockAll
        );
        assert_eq!(
            effect("SELECT set_config('a', 'b', false), pg_advisory_lock(1)"),
            Effect::AdvisoryLock
        );
        assert_eq!(effect("SELECT pg_advisory_lock"), Effect::AdvisoryLock);
        assert_eq!(effect("SELECT 'pg_advisory_loc'"), Effect::None);
        assert_eq!(
            effect("SELECT set_config('a.b', 'c', false)"),
            Effect::SetConfig
        );
        assert_eq!(
            effect("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Effect::HoldCursor
        );
        assert_eq!(effect("DISCARD ALL"), Effect::DiscardAll);
        assert_eq!(effect("SELECT 1"), Effect::None);
    }

    fn query(t: &mut Track, sql: &str) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        t.client_message(b'Q', &body, &Bytes::new());
    }

    fn answer(t: &mut Track, tags: &[&str], error: bool, status: u8) {
        for tag in tags {
            t.server_message(b'C', Some(tag), None);
        }
        if error {
            t.server_message(b'E', None, None);
        }
        t.server_message(b'Z', None, Some(status));
    }

    #[test]
    fn settings_are_kept_once_committed() {
        let mut t = Track::default();
        query(&mut t, "SET search_path TO a; SELECT 1");
        answer(&mut t, &["SET", "SELECT 1"], false, b'I');
        query(&mut t, "SET search_path TO b");
        answer(&mut t, &["SET"], false, b'I');
        assert_eq!(t.replay_sql().collect::<Vec<_>>(), ["SET search_path TO b"]);
        // Rolled back with its implicit transaction.
        query(&mut t, "SET work_mem = '1MB'; SELECT 1/0");
        answer(&mut t, &["SET"], true, b'I');
        // Inside a block that rolls back.
        query(&mut t, "BEGIN; SET statement_timeout = 5");
        answer(&mut t, &["BEGIN", "SET"], false, b'T');
        query(&mut t, "ROLLBACK");
        answer(&mut t, &["ROLLBACK"], false, b'I');
        // Inside a block that commits.
        query(&mut t, "BEGIN");
        answer(&mut t, &["BEGIN"], false, b'T');
        query(&mut t, "SET lock_timeout = 7");
        answer(&mut t, &["SET"], false, b'T');
        query(&mut t, "COMMIT");
        answer(&mut t, &["COMMIT"], false, b'I');
        assert_eq!(
            t.replay_sql().collect::<Vec<_>>(),
            ["SET search_path TO b", "SET lock_timeout = 7"]
        );
        assert_eq!(t.unrestorable(), None);
        query(&mut t, "LISTEN jobs");
        answer(&mut t, &["LISTEN"], false, b'I');
        assert_eq!(t.unrestorable().as_deref(), Some("LISTEN"));
        query(&mut t, "DISCARD ALL");
        answer(&mut t, &["DISCARD ALL"], false, b'I');
        assert_eq!(t.unrestorable(), None);
        assert_eq!(t.replay_sql().count(), 0);
    }

    fn parse_message(name: &str, sql: &str) -> Bytes {
        let mut body = Vec::new();
        for s in [name, sql] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&0u16.to_be_bytes());
        let mut m = vec![b'P'];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        Bytes::from(m)
    }

    #[test]
    fn a_set_run_through_a_named_statement_in_one_pipeline_is_kept() {
        let mut t = Track::default();
        let p = parse_message("S_2", "SET search_path TO app, public");
        t.client_message(b'P', &p[5..], &p);
        t.client_message(b'B', b"\0S_2\0\0\0\0\0\0\0", &Bytes::new());
        t.client_message(b'E', b"\0\0\0\0\0", &Bytes::new());
        t.server_message(b'1', None, None);
        t.server_message(b'2', None, None);
        t.server_message(b'C', Some("SET"), None);
        t.server_message(b'Z', None, Some(b'I'));
        assert_eq!(
            t.replay_sql().collect::<Vec<_>>(),
            ["SET search_path TO app, public"]
        );
    }

    /// Binds and executes the named statement `name`, a `SET`, with the server's answers.
    fn execute_set(t: &mut Track, name: &str) {
        let bind = format!("\0{name}\0\0\0\0\0\0\0");
        t.client_message(b'B', bind.as_bytes(), &Bytes::new());
        t.client_message(b'E', b"\0\0\0\0\0", &Bytes::new());
        t.server_message(b'2', None, None);
        t.server_message(b'C', Some("SET"), None);
        t.server_message(b'Z', None, Some(b'I'));
    }

    #[test]
    fn a_set_prepared_earlier_takes_effect_each_time_it_is_executed() {
        let mut t = Track::default();
        let p = parse_message("S_3", "SET work_mem TO '8MB'");
        t.client_message(b'P', &p[5..], &p);
        t.server_message(b'1', None, None);
        t.server_message(b'Z', None, Some(b'I'));
        assert_eq!(t.replay_sql().count(), 0);
        execute_set(&mut t, "S_3");
        assert_eq!(
            t.replay_sql().collect::<Vec<_>>(),
            ["SET work_mem TO '8MB'"]
        );
        query(&mut t, "RESET work_mem");
        t.server_message(b'C', Some("RESET"), None);
        t.server_message(b'Z', None, Some(b'I'));
        assert_eq!(t.replay_sql().count(), 0);
        // Executed again: kept again, from the statement the server still has.
        execute_set(&mut t, "S_3");
        assert_eq!(
            t.replay_sql().collect::<Vec<_>>(),
            ["SET work_mem TO '8MB'"]
        );
    }

    #[test]
    fn portals_are_forgotten_when_their_transaction_ends() {
        let mut t = Track::default();
        // A session that opens a named portal per request, as cursors do, for ever.
        let parse = parse_message("", "SELECT 1");
        for i in 0..(2 * MAX_PORTALS) {
            t.client_message(b'P', &parse[5..], &parse);
            let bind = format!("c{i}\0\0\0\0\0\0\0\0");
            t.client_message(b'B', bind.as_bytes(), &Bytes::new());
            answer(&mut t, &["SELECT 1"], false, b'I');
        }
        assert!(t.portals.is_empty());
        assert_eq!(t.unrestorable(), None);
    }

    #[test]
    fn named_statements_are_kept_once_the_server_has_them() {
        let mut t = Track::default();
        let (a, b) = (
            parse_message("a", "SELECT 1"),
            parse_message("b", "SELECT x"),
        );
        t.client_message(b'P', &a[5..], &a);
        t.client_message(b'P', &b[5..], &b);
        // a is answered, b fails.
        t.server_message(b'1', None, None);
        t.server_message(b'E', None, None);
        t.server_message(b'Z', None, Some(b'I'));
        assert_eq!(t.parse_messages().collect::<Vec<_>>(), [&a]);
        let close = b"Sa\0";
        t.client_message(b'C', close, &Bytes::new());
        t.server_message(b'3', None, None);
        t.server_message(b'Z', None, Some(b'I'));
        assert_eq!(t.parse_messages().count(), 0);
    }
}
