//! The cancel keys the endpoint gives its clients. A client's BackendKeyData is the endpoint's
//! own, never the server connection's, which changes when a session moves to a new connection;
//! a CancelRequest with it is forwarded to whichever server connection the session holds then.
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS>

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::CancelToken;

/// The keys of the sessions open now; an entry lives as long as its session.
#[derive(Debug, Default)]
pub struct Keys {
    sessions: Mutex<HashMap<i32, (i32, Option<CancelToken>)>>,
}

impl Keys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Option<CancelToken>)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new key, random and unused, for a session whose server connection `token` cancels.
    pub fn issue(self: &Arc<Self>, token: CancelToken) -> Key {
        let mut sessions = self.lock();
        loop {
            let [a, b] = random();
            // A process id is positive, as PostgreSQL's are.
            let pid = a & i32::MAX;
            if pid != 0 && !sessions.contains_key(&pid) {
                sessions.insert(pid, (b, Some(token)));
                return Key {
                    keys: self.clone(),
                    pid,
                    secret: b,
                };
            }
        }
    }

    /// What a CancelRequest with `pid` and `secret` cancels, if they are a session's.
    pub fn find(&self, pid: i32, secret: &[u8]) -> Option<CancelToken> {
        let sessions = self.lock();
        let (s, token) = sessions.get(&pid)?;
        // Compared in full, as the key came: a shorter or longer secret is not this one.
        (secret == s.to_be_bytes()).then(|| token.clone()).flatten()
    }
}

/// A session's key; dropping it retires the key.
#[derive(Debug)]
pub struct Key {
    keys: Arc<Keys>,
    /// The process id the client was given.
    pub pid: i32,
    /// The secret the client was given.
    pub secret: i32,
}

impl Key {
    /// The session moved to another server connection.
    pub fn update(&self, token: Option<CancelToken>) {
        if let Some(entry) = self.keys.lock().get_mut(&self.pid) {
            entry.1 = token;
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.keys.lock().remove(&self.pid);
    }
}

fn random() -> [i32; 2] {
    let mut b = [0u8; 8];
    // Without randomness a key would be guessable; a failed draw falls back to the clock and
    // the process id, which keeps keys apart if not secret.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b = (t ^ u64::from(std::process::id())).to_be_bytes();
    }
    [
        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    ]
}
