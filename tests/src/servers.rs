//! What the harness needs to run servers other than ferry's (moto, nginx,
//! postgres): a free port to give them, whether it runs as root (they
//! treat root differently), and a bounded wait for one to accept.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};

use crate::wait_for;

/// A port of 127.0.0.1 that was free a moment ago, for a server that
/// cannot bind port 0 and report it (moto, nginx, postgres).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether this process runs as root (initdb and postgres refuse root;
/// nginx's worker would run as `nobody`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Wait until a server `child` accepts connections on `addr`; if it exits
/// first, panic with its log file `log`.
pub fn wait_accepting(child: &mut Child, addr: SocketAddr, name: &str, log: &Path) {
    wait_for(&format!("{name} to accept connections on {addr}"), || {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{name} exited ({st}): {log}");
        }
        TcpStream::connect(addr).ok()
    });
}
