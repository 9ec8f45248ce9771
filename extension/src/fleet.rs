//! A connection budget for every environment of a fleet together, kept in PostgreSQL itself,
//! with no proxy.
//!
//! Every connection of the fleet carries `application_name = warmpool:<fleet>`, so the fleet's
//! connections are the rows of `pg_stat_activity` with that mark under the fleet's role. A new
//! connection is admitted before it is used: on it, under an advisory lock that the fleet's
//! environments share (so two of them never both take the last slot), the fleet's connections
//! are counted, and if they are over the budget the longest-idle ones are ended with
//! `pg_terminate_backend`, which a role may do to its own connections:
//! <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADMIN-SIGNAL>.
//!
//! Only a connection idle (state `idle`: outside a transaction, running nothing) for longer
//! than `WARMPOOL_FLEET_STEAL_IDLE_MS` is taken. On classic Lambda that is, nearly always, a
//! connection of an environment that sits frozen between invocations; when it thaws, its check
//! of idle connections finds the connection gone and opens another, under the same rules,
//! before the function's statement runs. The threshold is at least
//! `WARMPOOL_CHECK_AFTER_IDLE_MS`, so a connection idle long enough to be taken is checked
//! before its next use in an environment that was not frozen either.
//!
//! If not enough connections can be taken, none is: the new connection is closed, and the
//! request waits and tries again (see `pool.rs`).

use std::time::Duration;

use crate::backend::{self, Backend, Simple};
use crate::settings::fleet::FleetSettings;

/// The outcome of admitting a new connection.
#[derive(Debug)]
pub enum Admission {
    /// The connection may be used; `taken` were ended to make room for it.
    Admitted {
        /// Connections taken from the fleet.
        taken: Vec<Taken>,
    },
    /// The fleet is at its budget with nothing to take; its connections, this one included.
    Full {
        /// The fleet's connections counted.
        connections: u64,
    },
}

/// A fleet connection ended to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Its server process.
    pub pid: i32,
    /// How long it had been idle.
    pub idle_ms: i64,
}

/// The fleet budget of one environment.
#[derive(Debug, Clone)]
pub struct Fleet {
    settings: FleetSettings,
    admit_sql: String,
    /// The same, for PostgreSQL 14 and later, where `pg_terminate_backend` can wait for the
    /// connection it ends to be gone, so that the slot is free when the new connection is used.
    admit_sql_waiting: String,
}

impl Fleet {
    /// The budget `settings` describe.
    pub fn new(settings: FleetSettings) -> Fleet {
        Fleet {
            admit_sql: admit_sql(&settings, None),
            admit_sql_waiting: admit_sql(&settings, Some(TERMINATE_WAIT)),
            settings,
        }
    }

    /// The fleet's settings.
    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// Admits the new connection `backend` into the fleet's budget, taking idle connections of
    /// the fleet if it is over; `wait` bounds the wait for the fleet's lock.
    pub async fn admit(
        &self,
        backend: &mut Backend,
        wait: Duration,
    ) -> Result<Admission, backend::Error> {
        // The lock wait is bounded by PostgreSQL too, so a waiter gives up even if this task
        // is dropped; and a holder whose environment froze mid-admission (it never commits)
        // loses its session, and with it the lock, after the same time.
        let major = backend
            .parameter("server_version")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = {ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {ms}; {}",
            if major >= 14 {
                &self.admit_sql_waiting
            } else {
                &self.admit_sql
            },
            ms = wait.as_millis().max(1),
        );
        backend.start_query(None, &sql).await?;
        let max = u64::from(self.settings.max_connections);
        let mut connections = 0u64;
        let mut taken = Vec::new();
        loop {
            match backend.read_simple().await? {
                Simple::Row(row) => {
                    let v: Vec<Option<&str>> = backend::query::values(&row)
                        .map(|v| v.and_then(|v| std::str::from_utf8(v).ok()))
                        .collect();
                    let int = |i: usize| -> Option<i64> {
                        v.get(i).copied().flatten().and_then(|s| s.parse().ok())
                    };
                    if let Some(n) = int(0) {
                        connections = u64::try_from(n).unwrap_or(0);
                    }
                    if let (Some(pid), Some(idle_ms)) = (int(1), int(2)) {
                        taken.push(Taken {
                            pid: i32::try_from(pid).unwrap_or(0),
                            idle_ms,
                        });
                    }
                }
                Simple::Done => break,
                Simple::Columns(_) | Simple::Complete(_) => {}
            }
        }
        let over = connections.saturating_sub(max);
        if over > taken.len() as u64 {
            // Nothing was taken: the query takes either all that is needed or none.
            Ok(Admission::Full { connections })
        } else {
            Ok(Admission::Admitted { taken })
        }
    }
}

/// Whether `e` is the admission's wait for the fleet's lock running out: the fleet is busy
/// admitting, which is waited out like a full fleet.
pub fn is_lock_timeout(e: &backend::Error) -> bool {
    e.code() == Some(warmpool::protocol::sqlstate::LOCK_NOT_AVAILABLE)
}

/// The statements that admit a connection, after BEGIN: the fleet's lock, then one query that
/// counts the fleet, ends the longest-idle connections it must (all it needs, or none), and
/// returns the count and what it ended. `pg_stat_activity` is read once per transaction, and
/// only after the lock is held: <https://www.postgresql.org/docs/current/monitoring-stats.html#MONITORING-STATS-VIEWS>.
/// How long the admission waits for each connection it ends to be gone. An idle backend exits
/// at once when told to; past this it is counted as gone anyway.
/// <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADMIN-SIGNAL-TABLE>
const TERMINATE_WAIT: Duration = Duration::from_millis(1000);

fn admit_sql(s: &FleetSettings, wait: Option<Duration>) -> String {
    let terminate = match wait {
        Some(w) => format!("pg_terminate_backend(pid, {})", w.as_millis()),
        None => "pg_terminate_backend(pid)".to_owned(),
    };
    // The name was checked to hold only letters, digits, '-', '_' and '.': it is safe to quote.
    let mark = s.application_name();
    format!(
        "SELECT pg_advisory_xact_lock(hashtext('warmpool:fleet'), hashtext('{mark}')); \
         WITH fleet AS MATERIALIZED ( \
             SELECT pid, state, state_change FROM pg_stat_activity \
             WHERE application_name = '{mark}' AND usename = current_user), \
         idle AS MATERIALIZED ( \
             SELECT pid, state_change FROM fleet \
             WHERE state = 'idle' AND pid <> pg_backend_pid() \
               AND state_change < clock_timestamp() - interval '{steal} milliseconds'), \
         need AS (SELECT (SELECT count(*) FROM fleet) - {max} AS n), \
         taken AS MATERIALIZED ( \
             SELECT pid, state_change FROM idle ORDER BY state_change \
             LIMIT (SELECT CASE WHEN n > 0 AND n <= (SELECT count(*) FROM idle) \
                                THEN n ELSE 0 END FROM need)) \
         SELECT (SELECT count(*) FROM fleet), pid, \
                (extract(epoch FROM clock_timestamp() - state_change) * 1000)::bigint, \
                {terminate} \
         FROM taken \
         UNION ALL SELECT (SELECT count(*) FROM fleet), NULL, NULL, NULL; \
         COMMIT",
        steal = s.steal_idle.as_millis(),
        max = s.max_connections,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admission_names_the_fleet_and_its_budget() {
        let f = Fleet::new(FleetSettings {
            name: "orders".into(),
            max_connections: 10,
            steal_idle: Duration::from_millis(2000),
        });
        assert!(f
            .admit_sql_waiting
            .contains("pg_terminate_backend(pid, 1000)"));
        let sql = &f.admit_sql;
        assert!(sql.contains("pg_terminate_backend(pid) "), "{sql}");
        assert!(
            sql.contains("application_name = 'warmpool:orders'"),
            "{sql}"
        );
        assert!(sql.contains("- 10 AS n"), "{sql}");
        assert!(sql.contains("interval '2000 milliseconds'"), "{sql}");
        assert!(sql.ends_with("COMMIT"), "{sql}");
    }
}
