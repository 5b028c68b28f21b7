//! A fault-injecting TCP relay for tests: listens on a loopback address and forwards every
//! connection to a target, byte for byte, until told to partition.
//!
//! ```text
//!   client ──▶ relay.addr() ──(pump thread per direction)──▶ target
//! ```
//!
//! `partition()` models a network partition, not a crash: bytes stop moving in both
//! directions on existing connections, and new connections are accepted and held without
//! being forwarded. Nothing is closed and nothing is reset, so each side sees only silence
//! (as when TCP keeps retransmitting into a partition). `heal()` resumes: held bytes and
//! held connections go through, in order, as TCP would deliver them once the network is back.
//! At most one read buffer per direction is held in the relay; beyond that the kernel's
//! socket buffers fill and the sender blocks, which is TCP flow control.
//!
//! Bytes a pump had already read when `partition()` was called may still be delivered, like
//! packets already on the wire. Standard library threads only; `Drop` closes everything.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::cluster::free_addr;

/// Bytes moved per read.
const CHUNK_BYTES: usize = 64 * 1024;
/// How long the relay waits to connect to its target before dropping the client connection.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    partitioned: bool,
    stopped: bool,
    /// Every socket the relay holds, so `Drop` can unblock the pump threads.
    sockets: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    /// Blocks while partitioned; returns false once the relay is stopped.
    fn wait_connected(&self) -> bool {
        let mut state = self.state.lock().expect("relay lock");
        while state.partitioned && !state.stopped {
            state = self.changed.wait(state).expect("relay lock");
        }
        !state.stopped
    }

    /// Remembers a socket for `Drop`; returns false (and closes it) when already stopped.
    fn track(&self, stream: &TcpStream) -> bool {
        let mut state = self.state.lock().expect("relay lock");
        if state.stopped {
            let _ = stream.shutdown(Shutdown::Both);
            return false;
        }
        if let Ok(clone) = stream.try_clone() {
            state.sockets.push(clone);
        }
        true
    }

    fn set_partitioned(&self, partitioned: bool) {
        self.state.lock().expect("relay lock").partitioned = partitioned;
        self.changed.notify_all();
    }
}

pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on a free loopback address that forwards to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let addr = free_addr();
        let listener = TcpListener::bind(addr).expect("bind the relay");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else {
                        // Out of descriptors or similar: do not spin.
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    if !shared.track(&client) {
                        return;
                    }
                    let shared = shared.clone();
                    thread::spawn(move || relay_connection(client, target, shared));
                }
            })
        };
        Relay {
            addr,
            target,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops moving bytes in both directions and holds new connections.
    pub fn partition(&self) {
        self.shared.set_partitioned(true);
    }

    /// Resumes forwarding, held bytes and held connections included.
    pub fn heal(&self) {
        self.shared.set_partitioned(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let sockets = {
            let mut state = self.shared.state.lock().expect("relay lock");
            state.stopped = true;
            std::mem::take(&mut state.sockets)
        };
        self.shared.changed.notify_all();
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wake the acceptor, which then sees `stopped` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Forwards one accepted connection once the relay is connected.
fn relay_connection(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    // A connection accepted during a partition is held here, open, until heal().
    if !shared.wait_connected() {
        return;
    }
    let Ok(server) = TcpStream::connect_timeout(&target, TARGET_CONNECT_TIMEOUT) else {
        // The target is down: the client sees the connection close, as with a refused one.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if !shared.track(&server) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    let upstream = {
        let shared = shared.clone();
        thread::spawn(move || pump(client_read, server, &shared))
    };
    pump(server_read, client, &shared);
    let _ = upstream.join();
}

/// Copies `from` to `to` while the relay is connected; passes an end of stream on as a
/// half-close, and an error as a close of both sockets.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let read = from.read(&mut buf);
        // Bytes (and an end of stream or a reset) read during a partition wait here,
        // undelivered, until heal().
        if !shared.wait_connected() {
            break;
        }
        match read {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
