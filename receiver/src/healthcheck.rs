//! `ferry-receiver healthcheck`: one `GET /healthz` over plain HTTP/1.1,
//! for a container's `HEALTHCHECK` or a supervisor, so that the image needs
//! no shell, curl or wget. Exit 0 when the receiver answers 200, 1 when it
//! does not (or nothing listens), 2 when the target is not usable.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The whole probe (connect, send, first line of the answer) takes at most
/// this long per attempt; Docker's own `--timeout` defaults to 30 s.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What to probe, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for the `Host` header and the connection.
    pub authority: String,
    /// The request path (`/healthz`).
    pub path: String,
}

/// The target could not be used (exit 2) or the receiver is not healthy
/// (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unhealthy(String),
}

impl Target {
    /// The receiver's listen address: a wildcard (`0.0.0.0`, `[::]`) is
    /// probed on the loopback address of its family.
    pub fn from_listen(addr: SocketAddr) -> Target {
        let ip = match addr.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Target {
            authority: SocketAddr::new(ip, addr.port()).to_string(),
            path: "/healthz".into(),
        }
    }

    /// A base URL (`http://host:port`, optionally with a path prefix);
    /// `/healthz` is appended. Only plain HTTP: the probe carries no TLS
    /// client, and a container probes its own loopback port.
    pub fn from_url(url: &str) -> Result<Target, ProbeError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ProbeError::Usage(format!(
                "--url {url:?}: only http:// URLs can be probed (a receiver that serves TLS: probe it with an HTTPS client)"
            ))
        })?;
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(ProbeError::Usage(format!(
                "--url {url:?}: expected http://HOST:PORT"
            )));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.is_empty() {
            "/healthz".to_string()
        } else {
            format!("/{prefix}/healthz")
        };
        Ok(Target { authority, path })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// GETs the target once; `Ok` on a 200.
pub fn probe(target: &Target, timeout: Duration) -> Result<(), ProbeError> {
    let url = target.url();
    let unhealthy = |what: String| ProbeError::Unhealthy(format!("{url}: {what}"));
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(|e| ProbeError::Usage(format!("{url}: cannot resolve {}: {e}", target.authority)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| match last {
        Some(e) => unhealthy(format!("cannot connect: {e}")),
        None => unhealthy("the name resolves to no address".into()),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| unhealthy(format!("cannot set a timeout: {e}")))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry-receiver-healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unhealthy(format!("cannot send the request: {e}")))?;
    // The status line is all we need; it comes first.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(unhealthy(format!("no answer: {e}"))),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    match line.split_whitespace().nth(1) {
        Some("200") if line.starts_with("HTTP/1.") => Ok(()),
        Some(_) => Err(unhealthy(format!("answered {line:?}"))),
        None if line.is_empty() => Err(unhealthy("closed the connection without an answer".into())),
        None => Err(unhealthy(format!("not an HTTP answer: {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn targets_from_listen_and_url() {
        let t = Target::from_listen("0.0.0.0:8420".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8420");
        let t = Target::from_listen("[::]:8420".parse().unwrap());
        assert_eq!(t.authority, "[::1]:8420");
        let t = Target::from_url("http://rx.example:9000/ferry/").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("rx.example:9000", "/ferry/healthz")
        );
        let t = Target::from_url("http://rx.example").unwrap();
        assert_eq!(t.authority, "rx.example:80");
        let t = Target::from_url("http://[::1]").unwrap();
        assert_eq!(t.authority, "[::1]:80");
        assert!(matches!(
            Target::from_url("https://rx:8420"),
            Err(ProbeError::Usage(_))
        ));
    }

    /// One connection answered with `answer`; returns the request it got.
    fn serve_once(answer: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (addr, h)
    }

    #[test]
    fn only_a_200_is_healthy() {
        let (addr, h) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        probe(&Target::from_listen(addr), TIMEOUT).unwrap();
        assert!(h.join().unwrap().starts_with("GET /healthz HTTP/1.1\r\n"));
        let (addr, _h) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let e = probe(&Target::from_listen(addr), TIMEOUT).unwrap_err();
        assert!(
            matches!(&e, ProbeError::Unhealthy(m) if m.contains("503")),
            "{e}"
        );
        let (addr, _h) = serve_once("");
        assert!(matches!(
            probe(&Target::from_listen(addr), TIMEOUT),
            Err(ProbeError::Unhealthy(_))
        ));
    }
}
