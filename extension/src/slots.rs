//! Session slots: at most `WARMPOOL_MAX_SESSIONS` sessions are served at once.
//!
//! Clients keep their sessions open between requests, so the limit can be reached by sessions
//! that do nothing. When every slot is in use, a new session takes the slot of the session that
//! has been idle longest: it is closed with 57P05, PostgreSQL's `idle_session_timeout` code,
//! which the client already treats as "open another session", exactly as when the idle session
//! timeout closes it. Only a session waiting between requests with no transaction can be taken:
//! one in a transaction holds state the client relies on, and one that has read a request
//! answers it. When none can be taken, the new session waits for a slot, as before, up to the
//! wait timeout.
//!
//! The registry holds one entry per slot in use, so it never holds more than
//! `WARMPOOL_MAX_SESSIONS` entries, however many requests or sessions come and go.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// The session slots.
#[derive(Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    inner: Mutex<Registry>,
    /// Wakes admissions waiting for a slot: a session became idle, kept its slot, or ended.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    sessions: HashMap<u64, Entry>,
    /// Admissions waiting for a slot; sessions only wake them when there are some.
    waiting: usize,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// Tells the session to give up its slot.
    take: watch::Sender<bool>,
}

/// What a session in a slot is doing, as far as taking its slot goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the handshake, serving a request, or in a transaction: never taken.
    Busy,
    /// Waiting for a request, with no transaction, since then.
    Idle(Instant),
    /// Asked to give up its slot to a new session.
    Taken,
}

/// A session's slot: held for the session's life, released when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    taken: watch::Receiver<bool>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slots {
    /// `max` slots, none in use.
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            inner: Mutex::new(Registry::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new session: a free one, else the slot of the longest-idle session, which
    /// is asked to close; `None` if no slot came free within `wait`.
    pub async fn admit(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(self.register(permit));
        }
        let _waiting = Waiting::new(self);
        let deadline = tokio::time::Instant::now() + wait;
        // One place in the semaphore's queue for the whole wait.
        let mut acquire = pin!(self.permits.clone().acquire_owned());
        let mut victim = None;
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            // A slot that came free (the session asked before has closed) goes to this
            // admission before anyone else is asked to close: the semaphore hands a released
            // permit to its queue at once, before the wake-up that brought us here.
            if let Some(permit) = (&mut acquire).now_or_never() {
                return permit.ok().map(|p| self.register(p));
            }
            // Another session is asked to close only once the one asked before has closed (its
            // slot may have gone to an earlier waiter) or has kept its slot to serve a request.
            if !victim.is_some_and(|id| self.is_taken(id)) {
                victim = self.take_longest_idle();
            }
            tokio::select! {
                biased;
                permit = &mut acquire => return permit.ok().map(|p| self.register(p)),
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let (take, taken) = watch::channel(false);
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.sessions.insert(
            id,
            Entry {
                state: State::Busy,
                take,
            },
        );
        Slot {
            slots: self.clone(),
            id,
            taken,
            permit: Some(permit),
        }
    }

    fn is_taken(&self, id: u64) -> bool {
        self.lock()
            .sessions
            .get(&id)
            .is_some_and(|e| e.state == State::Taken)
    }

    /// Asks the session idle longest to give up its slot; its id, if there is one.
    fn take_longest_idle(&self) -> Option<u64> {
        let mut registry = self.lock();
        let (id, since) = registry
            .sessions
            .iter()
            .filter_map(|(id, e)| match e.state {
                State::Idle(since) => Some((*id, since)),
                _ => None,
            })
            .min_by_key(|(_, since)| *since)?;
        let entry = registry.sessions.get_mut(&id)?;
        entry.state = State::Taken;
        entry.take.send_replace(true);
        drop(registry);
        tracing::info!(
            max_sessions = self.max,
            idle_ms = since.elapsed().as_millis() as u64,
            "every session slot is in use (WARMPOOL_MAX_SESSIONS): closing the longest-idle \
             session to make room for a new one"
        );
        Some(id)
    }

    /// Wakes waiting admissions, if any; called with the registry locked.
    fn changed(&self, registry: &Registry) {
        if registry.waiting > 0 {
            self.changed.notify_waiters();
        }
    }
}

impl Slot {
    /// The session waits for its next request with no transaction: its slot may be taken from
    /// now on.
    pub fn idle(&self) {
        let mut registry = self.slots.lock();
        if let Some(e) = registry.sessions.get_mut(&self.id) {
            if e.state == State::Busy {
                e.state = State::Idle(Instant::now());
                self.slots.changed(&registry);
            }
        }
    }

    /// The session has read a request: it keeps its slot, even if it was just asked to give
    /// it up, and the admission that asked looks for another.
    pub fn busy(&self) {
        let mut registry = self.slots.lock();
        if let Some(e) = registry.sessions.get_mut(&self.id) {
            if e.state == State::Taken {
                e.take.send_replace(false);
                e.state = State::Busy;
                self.slots.changed(&registry);
            } else {
                e.state = State::Busy;
            }
        }
    }

    /// Resolves once a new session has taken this session's slot: the session must then close.
    ///
    /// Cancel safe.
    pub async fn taken(&mut self) {
        if self.taken.wait_for(|t| *t).await.is_err() {
            // The registry entry lives as long as this slot, so the sender is never dropped
            // first; if it were, the slot could not be taken.
            std::future::pending::<()>().await;
        }
    }

    /// `WARMPOOL_MAX_SESSIONS`, for the message the closed session gets.
    pub fn max_sessions(&self) -> usize {
        self.slots.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The slot is free before waiting admissions are woken, so one of them finds it.
        drop(self.permit.take());
        let mut registry = self.slots.lock();
        registry.sessions.remove(&self.id);
        self.slots.changed(&registry);
    }
}

/// Counts an admission as waiting for as long as it exists.
struct Waiting<'a>(&'a Slots);

impl<'a> Waiting<'a> {
    fn new(slots: &'a Slots) -> Waiting<'a> {
        slots.lock().waiting += 1;
        Waiting(slots)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_full_house_gives_the_longest_idle_slot_to_a_new_session() {
        let slots = Slots::new(3);
        let mut a = slots.admit(WAIT).await.unwrap();
        let b = slots.admit(WAIT).await.unwrap();
        let c = slots.admit(WAIT).await.unwrap();
        a.idle();
        b.idle();
        // c is busy: serving a request, or in a transaction.
        let admitting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit(WAIT).await.map(|_| ()) }
        });
        // a, idle longest, is asked to give up its slot; b is not.
        tokio::time::timeout(WAIT, a.taken()).await.unwrap();
        assert!(!*b.taken.borrow());
        assert!(!*c.taken.borrow());
        drop(a);
        assert!(admitting.await.unwrap().is_some());
        drop((b, c));
        assert_eq!(slots.lock().sessions.len(), 0);
    }

    #[tokio::test]
    async fn a_session_that_reads_a_request_keeps_its_slot_and_the_next_idle_one_goes() {
        let slots = Slots::new(2);
        let mut a = slots.admit(WAIT).await.unwrap();
        let mut b = slots.admit(WAIT).await.unwrap();
        a.idle();
        b.idle();
        let admitting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit(WAIT).await.map(|_| ()) }
        });
        tokio::time::timeout(WAIT, a.taken()).await.unwrap();
        // A request arrived on a just as it was asked: it keeps its slot, b is asked instead.
        a.busy();
        tokio::time::timeout(WAIT, b.taken()).await.unwrap();
        assert!(!*a.taken.borrow());
        drop(b);
        assert!(admitting.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn with_no_idle_session_a_new_one_waits_and_times_out() {
        let slots = Slots::new(1);
        let a = slots.admit(WAIT).await.unwrap();
        assert!(slots.admit(Duration::from_millis(20)).await.is_none());
        // It becomes idle while a new session waits: its slot is taken then.
        let admitting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit(WAIT).await.map(|_| ()) }
        });
        // The waiter is registered before a goes idle, so the change wakes it.
        while slots.lock().waiting == 0 {
            tokio::task::yield_now().await;
        }
        let mut a = a;
        a.idle();
        tokio::time::timeout(WAIT, a.taken()).await.unwrap();
        drop(a);
        assert!(admitting.await.unwrap().is_some());
        assert_eq!(slots.lock().waiting, 0);
    }
}
