//! nginx as the load balancer in front of the receiver replicas: round
//! robin over their addresses, request and response buffering off (a body
//! streams through to one replica as the device sends it), no body size
//! limit, HTTP/1.1 to the replicas. Its config, pid, logs and temp paths
//! live in a temp dir; it runs in the foreground and is killed on drop.
//!
//! Retries (`proxy_next_upstream error timeout`): nginx passes a request to
//! the next replica only when it could not connect to one, or when that one
//! failed before nginx sent any of the body. With request buffering off,
//! nginx cannot replay a body it has started to send, so a PUT whose bytes
//! reached a replica is never sent to another one; the device sees a 502
//! and retries itself (SPEC §3: 5xx is transient). A replica's 503 is an
//! answer, passed to the device as it is (`http_503` is not in the list).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{signal_group, wait_for};

/// A running nginx on `127.0.0.1:PORT`.
pub struct Balancer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    access_log: PathBuf,
    error_log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// nginx over `upstreams`, or a loud skip of `test` without nginx.
    pub fn start(test: &str, upstreams: &[SocketAddr]) -> Option<Balancer> {
        if crate::lacks("nginx", test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("nginx dir");
        let port = crate::free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), port, upstreams)).unwrap();
        let error_log = dir.path().join("error.log");
        // -t first: a config error is named here, not as a timeout below.
        let check = Command::new("nginx")
            .arg("-e")
            .arg(&error_log)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("nginx -t");
        crate::assert_ok(&check, "nginx -t");
        let mut child = Command::new("nginx")
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        crate::wait_accepting(&mut child, addr, "nginx", &error_log);
        Some(Balancer {
            addr,
            url: format!("http://{addr}"),
            access_log: dir.path().join("access.log"),
            error_log,
            child,
            _dir: dir,
        })
    }

    /// The replica that answered each request so far, in order, with the
    /// request and nginx's status: `(upstream, "PUT /v1/…", status)`. A
    /// request retried on another replica lists every replica it tried
    /// (`a, b`), as nginx logs it.
    pub fn upstreams_used(&self) -> Vec<(String, String, u16)> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let up = f.next()?.to_string();
                let req = f.next()?.to_string();
                let status = f.next()?.parse().ok()?;
                Some((up, req, status))
            })
            .collect()
    }

    /// [`Balancer::upstreams_used`] once it has at least `n` entries:
    /// nginx logs a request just after its answer is sent, so a client
    /// can read the answer before the line exists.
    pub fn wait_logged(&self, n: usize) -> Vec<(String, String, u16)> {
        wait_for(&format!("{n} requests in nginx's access log"), || {
            let used = self.upstreams_used();
            (used.len() >= n).then_some(used)
        })
    }

    /// What went wrong between nginx and the replicas, from its error log,
    /// except refused connections (a replica down: nginx tries the next
    /// one, and the client sees nothing of it).
    pub fn upstream_trouble(&self) -> Vec<String> {
        self.error_log_text()
            .lines()
            .filter(|l| l.contains("upstream") && !l.contains("(111: Connection refused)"))
            .map(|l| l.split_once(" *").map_or(l, |(_, rest)| rest).to_string())
            .collect()
    }

    pub fn error_log_text(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // Master and worker share the group; SIGKILL to the master alone
        // would leave the worker serving.
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole nginx config. Every path nginx writes is under `dir`.
fn config(dir: &std::path::Path, port: u16, upstreams: &[SocketAddr]) -> String {
    let d = dir.display();
    // Root's nginx would run its worker as `nobody`, which cannot write
    // the temp dir; the test's own user is enough.
    let user = if crate::is_root() { "user root;" } else { "" };
    let servers: String = upstreams
        .iter()
        // max_fails=0: a replica that refused a connection is not marked
        // down, so every request tries the replicas in turn until one
        // connects (a refused connect on loopback costs nothing). With the
        // default marking, a rolling restart faster than fail_timeout marks
        // every replica down at once and nginx answers 502 itself.
        .map(|a| format!("        server {a} max_fails=0;\n"))
        .collect();
    format!(
        "{user}
worker_processes 1;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    log_format upstream \"$upstream_addr\\t$request_method $request_uri\\t$status\";
    access_log {d}/access.log upstream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream ferry {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://ferry;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {tries};
            proxy_connect_timeout 2s;
            proxy_send_timeout 120s;
            proxy_read_timeout 120s;
        }}
    }}
}}
",
        tries = upstreams.len().max(1),
    )
}
