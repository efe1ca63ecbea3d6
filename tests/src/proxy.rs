//! A TCP proxy the test controls, for outages of a dependency that must keep
//! its data: [`TcpProxy::cut`] closes the listening socket (new connections
//! are refused at once, as from a host whose service is down) and closes
//! every connection in flight; [`TcpProxy::restore`] listens again on the
//! same port. The server behind it never stops, so an in-memory store such
//! as moto keeps every object across the outage.
//!
//! Why not the alternatives: SIGSTOP of the server leaves its socket
//! accepting into the backlog, so clients hang until their own timeouts
//! instead of failing fast; an iptables REJECT needs root and iptables; a
//! kill loses moto's in-memory data.
//!
//! [`TcpProxy::hold_answers`] delays the answer to chosen requests (by
//! their request line): the server has done the work, the client has not
//! heard of it yet. For S3, a write that is complete in the bucket while
//! the receiver still waits for its answer: a slow network, seen from the
//! receiver, and a window the test holds open from outside.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{wait_for, DEADLINE};

/// How often the accept loop looks at the switch: a cut takes effect within
/// this long.
const POLL: Duration = Duration::from_millis(5);

struct Shared {
    /// Whether the proxy should listen (false: cut).
    up: AtomicBool,
    /// Set on drop: the accept loop ends.
    stop: AtomicBool,
    /// Bumped by the accept loop each time it has dropped (cut) or bound
    /// (restored) its listener, so that `cut` and `restore` can wait for it.
    generation: AtomicU64,
    /// Both ends of every connection in flight, to close them on a cut.
    conns: Mutex<Vec<TcpStream>>,
    /// Connections accepted so far (to show traffic went through).
    accepted: AtomicU64,
    /// Which requests get their answer late, and how late.
    hold: Mutex<Option<(Matcher, Duration)>>,
    /// The request lines whose answers were held.
    held: Mutex<Vec<String>>,
}

/// Chooses requests by their request line (`PUT /bucket/key?query HTTP/1.1`).
type Matcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A proxy from `addr` to `upstream`, stopped when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Listen on a free port of 127.0.0.1 and forward to `upstream`.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            hold: Mutex::new(None),
            held: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, addr, upstream, &s));
        TcpProxy {
            addr,
            upstream,
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Start the outage: once this returns, connecting to [`TcpProxy::addr`]
    /// is refused and every connection that was open is closed.
    pub fn cut(&self) {
        let seen = self.shared.generation.load(Ordering::SeqCst);
        self.shared.up.store(false, Ordering::SeqCst);
        self.wait_generation(seen, "the proxy to close its listener");
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // A child process forked by another test at the wrong moment holds
        // a copy of the listening socket until it execs (std's CLOEXEC acts
        // only at exec), so the port may answer for a few more ms.
        wait_for(
            &format!("{} to refuse connections after the cut", self.addr),
            || {
                match TcpStream::connect(self.addr) {
                    Err(_) => Some(()),
                    // A connect to a port nobody listens on can, rarely, pick
                    // that very port as its source and connect to itself (TCP
                    // simultaneous open); that is not the proxy listening.
                    Ok(s) => (s.local_addr().ok() == s.peer_addr().ok()).then_some(()),
                }
            },
        );
    }

    /// End the outage: listening again on the same port.
    pub fn restore(&self) {
        let seen = self.shared.generation.load(Ordering::SeqCst);
        self.shared.up.store(true, Ordering::SeqCst);
        self.wait_generation(seen, "the proxy to listen again");
    }

    /// From now on, the answer to every request whose request line
    /// `matches` reaches the client `delay` late (the request itself goes
    /// to the server at once). One request per connection is looked at:
    /// the first (moto answers `Connection: close`).
    pub fn hold_answers(
        &self,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
        delay: Duration,
    ) {
        *self.shared.hold.lock().unwrap() = Some((Arc::new(matches), delay));
    }

    /// The request lines whose answers were held so far.
    pub fn held(&self) -> Vec<String> {
        self.shared.held.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn wait_generation(&self, seen: u64, what: &str) {
        let start = Instant::now();
        while self.shared.generation.load(Ordering::SeqCst) == seen {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts while up; drops the listener while cut (so the kernel refuses
/// connections) and binds the same address again when restored.
fn accept_loop(listener: TcpListener, addr: SocketAddr, upstream: SocketAddr, s: &Arc<Shared>) {
    let mut listener = Some(listener);
    if let Some(l) = &listener {
        l.set_nonblocking(true).expect("nonblocking listener");
    }
    while !s.stop.load(Ordering::SeqCst) {
        let up = s.up.load(Ordering::SeqCst);
        match (&listener, up) {
            (Some(_), false) => {
                listener = None;
                s.generation.fetch_add(1, Ordering::SeqCst);
            }
            (None, true) => {
                // std sets SO_REUSEADDR, so the port is ours again at once
                // unless someone else took it meanwhile (then retry).
                if let Ok(l) = TcpListener::bind(addr) {
                    l.set_nonblocking(true).expect("nonblocking listener");
                    listener = Some(l);
                    s.generation.fetch_add(1, Ordering::SeqCst);
                }
            }
            (Some(l), true) => match l.accept() {
                Ok((client, _)) => {
                    s.accepted.fetch_add(1, Ordering::SeqCst);
                    forward(client, upstream, s);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => eprintln!("proxy {addr}: accept: {e}"),
            },
            (None, false) => {}
        }
        std::thread::sleep(POLL);
    }
}

/// Connect to `upstream` and copy both ways on two threads, holding the
/// answer if its request is chosen ([`TcpProxy::hold_answers`]); a failed
/// connect closes the client (as the upstream itself would refuse it).
fn forward(client: TcpStream, upstream: SocketAddr, s: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    {
        let mut conns = s.conns.lock().unwrap();
        // Forget connections that are over, so the list stays short.
        conns.retain(|c| c.peer_addr().is_ok());
        conns.push(client.try_clone().expect("clone client"));
        conns.push(server.try_clone().expect("clone server"));
    }
    // Set by the request side when the answer is to be held, before the
    // request reaches the server (so before its answer can come back).
    let delay: Arc<Mutex<Option<Duration>>> = Arc::default();
    let (d, shared) = (delay.clone(), s.clone());
    let (from, to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        pipe(from, to, |first: &[u8]| {
            let line = String::from_utf8_lossy(first);
            let line = line.lines().next().unwrap_or_default();
            if let Some((matches, late)) = &*shared.hold.lock().unwrap() {
                if matches(line) {
                    *d.lock().unwrap() = Some(*late);
                    shared.held.lock().unwrap().push(line.to_string());
                }
            }
        })
    });
    std::thread::spawn(move || {
        pipe(server, client, |_| {
            if let Some(late) = *delay.lock().unwrap() {
                std::thread::sleep(late);
            }
        })
    });
}

/// Copy `from` to `to` until either ends, calling `first` with the first
/// bytes read before they are passed on.
fn pipe(mut from: TcpStream, mut to: TcpStream, first: impl FnOnce(&[u8])) {
    let mut first = Some(first);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(f) = first.take() {
                    f(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    // Pass the end on: a half-close becomes a half-close, an error closes
    // both directions.
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut refuses at once and closes what was open; a restore serves on
    /// the same port again, from the same server.
    #[test]
    fn a_cut_refuses_connections_and_a_restore_serves_again() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = server.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in server.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while let Ok(1) = c.read(&mut b) {
                        let _ = c.write_all(&b);
                    }
                });
            }
        });
        let proxy = TcpProxy::start(upstream);
        let echo = |c: &mut TcpStream| {
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).map(|_| b[0])
        };
        let mut open = TcpStream::connect(proxy.addr).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(echo(&mut open).unwrap(), b'x');

        proxy.cut();
        let e = TcpStream::connect(proxy.addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert!(echo(&mut open).is_err(), "a connection survived the cut");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(echo(&mut again).unwrap(), b'x');
        assert_eq!(proxy.accepted(), 2);
    }

    /// A chosen request reaches the server at once and its answer comes
    /// late; another request on another connection is not held.
    #[test]
    fn a_held_answer_comes_late_and_only_for_the_chosen_request() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = server.local_addr().unwrap();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for mut c in server.incoming().flatten() {
                let seen_tx = seen_tx.clone();
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    let n = c.read(&mut b).unwrap();
                    let _ = seen_tx.send(Instant::now());
                    let _ = c.write_all(&b[..n]);
                });
            }
        });
        let proxy = TcpProxy::start(upstream);
        proxy.hold_answers(|line| line.starts_with("PUT "), Duration::from_millis(500));
        let ask = |line: &str| {
            let mut c = TcpStream::connect(proxy.addr).unwrap();
            let start = Instant::now();
            c.write_all(format!("{line}\r\n").as_bytes()).unwrap();
            let mut b = [0u8; 64];
            let n = c.read(&mut b).unwrap();
            assert_eq!(&b[..n], format!("{line}\r\n").as_bytes());
            (start, seen_rx.recv().unwrap(), start.elapsed())
        };
        let (start, seen, took) = ask("PUT /b/k HTTP/1.1");
        assert!(
            seen - start < Duration::from_millis(300),
            "the request was held"
        );
        assert!(
            took >= Duration::from_millis(500),
            "the answer came in {took:?}"
        );
        let (_, _, took) = ask("GET /b/k HTTP/1.1");
        assert!(
            took < Duration::from_millis(300),
            "an unchosen answer took {took:?}"
        );
        assert_eq!(proxy.held(), ["PUT /b/k HTTP/1.1"]);
    }
}
