//! A Savepoint request: `SAVEPOINT`, `RELEASE SAVEPOINT` or `ROLLBACK TO SAVEPOINT` inside the
//! session's transaction, run as a Batch on the transaction's connection.
//!
//! `ROLLBACK TO SAVEPOINT` is the one statement PostgreSQL accepts in a failed transaction, and
//! it makes the transaction usable again
//! (<https://www.postgresql.org/docs/current/sql-rollback-to.html>), so in a Failed session it
//! runs where anything else is refused with 25P02. If it succeeds the session is in its
//! transaction again; if it fails, the session stays Failed. Whatever PostgreSQL's own state,
//! the session's follows it.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use warmpool::protocol::{sqlstate, Response, Savepoint, SavepointOp, WireError};

use super::{Session, TxState};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn savepoint(&mut self, savepoint: Savepoint) -> io::Result<()> {
        match std::mem::replace(&mut self.tx, TxState::Idle) {
            TxState::Idle => {
                let e = WireError::extension(
                    sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                    "a savepoint can only be used inside a transaction",
                );
                return self.send(&Response::Error(e)).await;
            }
            TxState::Failed {
                conn: Some(conn),
                begun: true,
            } if savepoint.op == SavepointOp::RollbackTo => {
                // Run on the transaction's connection as if it had not failed: `batch` moves
                // the session back to Failed if the rollback fails too.
                self.tx = TxState::Open { conn, begin: None };
            }
            other => self.tx = other,
        }
        self.batch(savepoint.sql()).await
    }
}
