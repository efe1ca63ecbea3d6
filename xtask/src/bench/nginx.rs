//! nginx as the baseline server: WebDAV `PUT` into a directory, the
//! simplest thing an operator could put in the centre instead of ferry.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running nginx, stopped when dropped.
pub struct Nginx {
    child: Child,
    pub port: u16,
}

/// A free port on 127.0.0.1 (bound and released; fine on a quiet machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn available() -> bool {
    Path::new("/usr/sbin/nginx").exists() || super::have("nginx")
}

impl Nginx {
    pub fn start(work: &Path) -> Result<Nginx> {
        let dir = work.join("nginx");
        super::clear_dir(&dir);
        for d in ["store", "tmp", "logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let port = free_port()?;
        let conf = format!(
            r#"daemon off;
{user}
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  client_max_body_size 0;
  client_body_buffer_size 128k;
  sendfile on;
  # One keep-alive connection per device for the whole run (nginx's default
  # closes it after 1,000 requests).
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location /dav/ {{
      alias {dir}/store/;
      dav_methods PUT;
      create_full_put_path on;
      dav_access user:rw;
    }}
  }}
}}
"#,
            dir = dir.display(),
            // As root, nginx would run its workers as nobody, who cannot
            // write into the bench's directory.
            user = if unsafe { libc::geteuid() } == 0 {
                "user root;"
            } else {
                ""
            },
        );
        let child = run(&dir, &conf, port)?;
        Ok(Nginx { child, port })
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/dav/{name}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: the master stops its workers, then exits. SIGKILL would
        // leave the workers behind.
        super::stop_child(&mut self.child, libc::SIGQUIT, Duration::from_secs(10));
    }
}

/// Writes `conf` to `dir/nginx.conf`, starts nginx in the foreground on it
/// and waits until `port` accepts connections.
pub fn run(dir: &Path, conf: &str, port: u16) -> Result<Child> {
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut child = Command::new(nginx)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start nginx")?;
    if let Err(e) = wait_port(port, "nginx", Duration::from_secs(10)) {
        super::stop_child(&mut child, libc::SIGQUIT, Duration::from_secs(5));
        return Err(e);
    }
    Ok(child)
}

/// Waits until `port` on 127.0.0.1 accepts connections, at most `within`.
pub fn wait_port(port: u16, what: &str, within: Duration) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > within {
            bail!("{what} did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
