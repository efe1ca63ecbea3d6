//! PostgreSQL for the tests: [`TestDb`], a fresh database per test on the
//! machine's server (`postgres://postgres@127.0.0.1:5432`), dropped
//! afterwards; and [`PgCluster`], a private cluster (`initdb` + `postgres`
//! on a free port in a temp dir) that a test may `kill -9` and start again
//! with its data. Without a server, `psql` or the binaries, the tests say
//! SKIPPED loudly.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{wait_for, DEADLINE};

/// The machine's server.
pub const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database created for one test on [`SERVER`] and dropped with it.
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// A fresh database, or a loud skip of `test` (and `None`) without a
    /// reachable server or `psql`.
    pub fn create(test: &str) -> Option<TestDb> {
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            crate::skip(test, "SKIPPED (no PostgreSQL on 127.0.0.1:5432)");
            return None;
        }
        if !crate::have("psql") {
            crate::skip(
                test,
                "SKIPPED (no PostgreSQL on 127.0.0.1:5432): psql is not installed",
            );
            return None;
        }
        let name = format!("ferry_test_{:016x}", rand::random::<u64>());
        if !psql(SERVER, &format!("CREATE DATABASE {name}")) {
            crate::skip(
                test,
                "SKIPPED (no PostgreSQL on 127.0.0.1:5432): CREATE DATABASE failed",
            );
            return None;
        }
        Some(TestDb { name })
    }

    pub fn url(&self) -> String {
        format!("{SERVER}/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        psql(
            SERVER,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Run one statement with `psql` on the `postgres` database of `server`;
/// whether it succeeded (its error is printed).
pub fn psql(server: &str, sql: &str) -> bool {
    Command::new("psql")
        .args([
            &format!("{server}/postgres"),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()
        .map(|o| {
            if !o.status.success() {
                eprintln!("psql {sql}: {}", String::from_utf8_lossy(&o.stderr));
            }
            o.status.success()
        })
        .unwrap_or(false)
}

/// The directory with `initdb`, `postgres` and `pg_ctl`: the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off PATH), else the
/// directory on PATH that has `initdb`.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

/// The uid and gid of the `postgres` user, from `id`.
fn postgres_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A private PostgreSQL cluster on a free port of 127.0.0.1, owned by this
/// value: the postmaster is a child of the test (so `kill -9` reaps it and
/// the lock file it leaves is stale at once), stopped when dropped.
/// As root, initdb and postgres run as the `postgres` user (they refuse
/// root), in a temp dir that user owns.
pub struct PgCluster {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    postmaster: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PgCluster {
    /// initdb, start, and create the database `ferry`; or a loud skip of
    /// `test` (and `None`) when the binaries or the `postgres` user (as
    /// root) are missing.
    pub fn start(test: &str) -> Option<PgCluster> {
        let Some(bin) = pg_bin_dir() else {
            crate::skip(
                test,
                "initdb is not installed (no /usr/lib/postgresql/*/bin)",
            );
            return None;
        };
        if crate::lacks("psql", test) {
            return None;
        }
        let user = if crate::is_root() {
            let Some(u) = postgres_user() else {
                crate::skip(
                    test,
                    "running as root and there is no `postgres` user to run initdb as",
                );
                return None;
            };
            Some(u)
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("cluster dir");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.path().display()));
        }
        let mut c = PgCluster {
            port: crate::free_port(),
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            bin,
            user,
            postmaster: None,
            _dir: dir,
        };
        c.initdb();
        c.spawn_until_up();
        assert!(
            psql(&c.server(), "CREATE DATABASE ferry"),
            "CREATE DATABASE ferry on the private cluster: {}",
            c.log_text()
        );
        Some(c)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            // std drops the supplementary groups of root when it sets uid.
            cmd.uid(uid).gid(gid);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        crate::assert_ok(&out, "initdb");
        // Settings in the file, so that every start (and restart) has them.
        // fsync is off: a kill -9 of the postmaster loses nothing the
        // kernel holds, and the 2-core test machine is spared the syncs.
        let sock = self.data.parent().unwrap();
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 100\n",
            self.port,
            sock.display()
        );
        let path = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
    }

    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub fn server(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The URL of the database `ferry` for the receiver.
    pub fn url(&self) -> String {
        format!("{}/ferry", self.server())
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// The server's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start the postmaster until it accepts connections; a start that
    /// fails (the backends of a killed postmaster still hold its shared
    /// memory for a moment) is retried until [`DEADLINE`].
    fn spawn_until_up(&mut self) {
        let start = Instant::now();
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("postgres log");
            let mut child = self
                .command("postgres")
                .arg("-D")
                .arg(&self.data)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn postgres");
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if self.accepts_queries() {
                    break true;
                }
                if start.elapsed() > DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("postgres did not come up: {}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if up {
                self.postmaster = Some(child);
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "postgres did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether a query succeeds now (not merely a TCP connect: during
    /// recovery the port is open but connections are refused).
    pub fn accepts_queries(&self) -> bool {
        TcpStream::connect(self.addr()).is_ok() && psql(&self.server(), "SELECT 1")
    }

    /// `kill -9` of the postmaster, reaped; returns once the port refuses
    /// connections.
    pub fn kill_9(&mut self) {
        let mut pm = self.postmaster.take().expect("the postmaster is running");
        crate::signal(pm.id(), libc::SIGKILL);
        let _ = pm.wait();
        wait_for("the killed postmaster's port to refuse connections", || {
            TcpStream::connect(self.addr()).is_err().then_some(())
        });
    }

    /// Start again on the same data and port (crash recovery runs first).
    pub fn restart(&mut self) {
        assert!(self.postmaster.is_none(), "restart of a running cluster");
        self.spawn_until_up();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut pm) = self.postmaster.take() {
            // SIGQUIT: immediate shutdown, the backends go with it.
            crate::signal(pm.id(), libc::SIGQUIT);
            if pm.try_wait().ok().flatten().is_none() {
                let deadline = Duration::from_secs(10);
                let start = Instant::now();
                while pm.try_wait().ok().flatten().is_none() && start.elapsed() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = pm.kill();
                let _ = pm.wait();
            }
        }
    }
}
