//! A simulated network: a TCP relay on loopback that holds every chunk it reads for half the
//! round-trip time before writing it on, in each direction, order preserved.
//!
//! `tc netem` is not available on the benchmark's machines, so the delay is added in user space.
//! It adds the propagation delay a network has, not its bandwidth limits or its losses. Each
//! direction of a connection is one task: it reads chunks as they come, stamps each with the
//! time it may leave, and writes them in order once that time has come, so a chunk read while
//! earlier ones wait is not held any longer than its own delay (pipelined statements stay
//! pipelined).
//!
//! tokio's timer has millisecond granularity, too coarse for a quarter-millisecond delay, so the
//! relay waits on a `timerfd` (nanosecond resolution) registered with the runtime instead. It
//! runs on a thread and a one-thread runtime of its own, so the benchmark's own work does not
//! hold back a chunk that is due. Waking that thread once its timer has fired takes time too
//! (tens of microseconds on a small VM, whose idle vCPU must be woken by an interrupt), so the
//! relay sets its timer early by the median of the lateness it has seen so far: the delay it
//! applies centres on the one asked for.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// The most bytes one read takes; a bigger burst becomes several chunks, each delayed alike.
const CHUNK: usize = 64 * 1024;

/// A running relay: connections to `127.0.0.1:port()` reach the target, each chunk delayed by
/// half the round-trip time on its way in each direction. Dropping it closes the listener and
/// every relayed connection.
pub struct Relay {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port and relays every connection it accepts to `target`,
    /// adding `rtt` to each round trip (`rtt / 2` each way). A zero `rtt` relays through the same
    /// path without waiting: what the relay itself costs.
    pub fn start(target: SocketAddr, rtt: Duration) -> io::Result<Relay> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let one_way = rtt / 2;
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("relay: {e}"),
                    };
                    let mut connections = tokio::task::JoinSet::new();
                    let lateness = Arc::new(AtomicU64::new(0));
                    tokio::select! {
                        _ = stopped => {}
                        e = accept(&listener, target, one_way, &lateness, &mut connections) => {
                            eprintln!("relay on port {port} stopped accepting: {e}");
                        }
                    }
                    // Dropping the set aborts every connection's tasks, closing its sockets.
                });
            })?;
        Ok(Relay {
            port,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until the listener fails; returns that error.
async fn accept(
    listener: &TcpListener,
    target: SocketAddr,
    one_way: Duration,
    lateness: &Arc<AtomicU64>,
    connections: &mut tokio::task::JoinSet<()>,
) -> io::Error {
    loop {
        let inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => return e,
        };
        // Finished connections leave the set here, so it does not grow with every connect.
        while connections.try_join_next().is_some() {}
        let lateness = lateness.clone();
        connections.spawn(async move {
            if let Err(e) = relay(inbound, target, one_way, lateness).await {
                // The client sees its connection refused or closed, as it would on a network.
                eprintln!("relay: {e}");
            }
        });
    }
}

/// Relays one connection until both directions have ended.
async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    one_way: Duration,
    lateness: Arc<AtomicU64>,
) -> io::Result<()> {
    let outbound = TcpStream::connect(target).await?;
    // Each chunk goes out when it is due, not when Nagle's algorithm would let it.
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    let up = tokio::spawn(direction(
        from_client,
        to_server,
        one_way,
        Clock::new(lateness.clone())?,
    ));
    let down = tokio::spawn(direction(
        from_server,
        to_client,
        one_way,
        Clock::new(lateness)?,
    ));
    let (up, down) = (up.await?, down.await?);
    up.and(down)
}

/// One direction: reads chunks as they come and writes each on `one_way` after it was read, in
/// order. An end of stream is passed on (as a shutdown of the write side) once every chunk
/// before it has gone out.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    one_way: Duration,
    clock: Clock,
) -> io::Result<()> {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if queue
                .send((Instant::now() + one_way, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        // Dropping the queue's sender tells the writer that the stream has ended.
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            clock.sleep_until(at, one_way).await?;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    let ((), written) = tokio::join!(read, write);
    written
}

/// A `timerfd` registered with the runtime: sleeps with nanosecond resolution, early by the
/// lateness of the wake-ups before.
struct Clock {
    fd: AsyncFd<Timer>,
    /// The median lateness of wake-ups (ns), estimated by every clock of the relay together.
    lateness: Arc<AtomicU64>,
}

/// How far one wake-up moves the median estimate of the lateness (ns).
const LATENESS_STEP_NS: u64 = 2_000;

struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Clock {
    fn new(lateness: Arc<AtomicU64>) -> io::Result<Clock> {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK)?;
        // SAFETY: the `AsyncFd` owns the `Timer`, which owns the timer's file descriptor
        // (`TimerFd` holds an `OwnedFd`), so the descriptor stays open and the same for as long
        // as it is registered, and `as_raw_fd` always returns it.
        let registered = unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) };
        Ok(Clock {
            fd: registered?,
            lateness,
        })
    }

    /// Returns at `at`, as near as the wake-ups allow (at once when it has passed).
    async fn sleep_until(&self, at: Instant, one_way: Duration) -> io::Result<()> {
        // At most half the delay early, so the clock still sleeps and keeps learning.
        let early = Duration::from_nanos(self.lateness.load(Ordering::Relaxed)).min(one_way / 2);
        let target = at.checked_sub(early).unwrap_or(at);
        let mut slept = false;
        loop {
            let left = target.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            slept = true;
            // A relative one-shot: a zero value would disarm the timer, hence the check above.
            self.fd
                .get_ref()
                .0
                .set(
                    Expiration::OneShot(TimeSpec::from_duration(left)),
                    TimerSetTimeFlags::empty(),
                )
                .map_err(io::Error::from)?;
            let mut ready = self.fd.readable().await?;
            // A read of a timer that has not expired would block: poll again.
            let _ = ready.try_io(|t| t.get_ref().0.wait().map_err(io::Error::from));
        }
        if slept {
            // A step towards this wake-up's lateness: the estimate settles on the median, which
            // a wake-up delayed by other work on the machine moves no more than any other.
            let late = Instant::now().saturating_duration_since(target).as_nanos() as u64;
            let estimate = self.lateness.load(Ordering::Relaxed);
            let next = if late > estimate {
                estimate + LATENESS_STEP_NS
            } else {
                estimate.saturating_sub(LATENESS_STEP_NS)
            };
            self.lateness.store(next, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback: every connection gets back what it sends, then a close.
    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        (addr, task)
    }

    /// Many small writes, pipelined, come back whole and in order through a delaying relay, and
    /// a half-close passes through it both ways.
    #[tokio::test]
    async fn relays_bytes_in_order_and_passes_the_close_on() {
        let (addr, server) = echo_server().await;
        let relay = Relay::start(addr, Duration::from_millis(2)).expect("relay");
        let mut client = TcpStream::connect(("127.0.0.1", relay.port()))
            .await
            .expect("connect through the relay");
        let sent: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (mut r, mut w) = client.split();
        let send = async {
            for piece in sent.chunks(37) {
                w.write_all(piece).await.expect("write");
            }
            w.shutdown().await.expect("half-close");
        };
        let mut received = Vec::new();
        let receive = r.read_to_end(&mut received);
        let ((), got) = tokio::join!(send, receive);
        // read_to_end returns only on the end of stream: the echo server saw the client's close
        // through the relay, and its own close came back.
        got.expect("read to the end");
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "bytes reordered or altered by the relay");
        drop(relay);
        server.abort();
    }

    /// A relay with no delay relays too, and after it is dropped its port refuses connections.
    #[tokio::test]
    async fn without_delay_relays_and_stops_on_drop() {
        let (addr, server) = echo_server().await;
        let relay = Relay::start(addr, Duration::ZERO).expect("relay");
        let port = relay.port();
        let mut client = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        client.write_all(b"ping").await.expect("write");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"ping");
        drop(relay);
        // The relayed connection is closed with the relay.
        let mut rest = Vec::new();
        let n = client.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        server.abort();
    }
}
