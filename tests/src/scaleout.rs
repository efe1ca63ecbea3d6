//! The scale-out stack (SPEC §7) from real parts: N `ferry-receiver serve`
//! replicas, each with its own data dir, sharing one PostgreSQL database
//! and one S3 bucket (moto), behind nginx. [`Replicas`] is the receivers
//! alone (any shared config, a SQLite one too); [`Stack`] puts the whole
//! thing together for one test.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::{ExitStatus, Output};
use std::time::Duration;

use crate::nginx::Balancer;
use crate::postgres::{PgCluster, TestDb};
use crate::proxy::TcpProxy;
use crate::s3::{S3Object, S3Server};
use crate::Receiver;

/// N receivers started together on one shared configuration.
pub struct Replicas {
    list: Vec<Receiver>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Replicas {
    /// Start `n` replicas at once (in parallel, as an orchestrator starts
    /// them: their migrations race) with `env` shared and `extra[i]` for
    /// replica `i` only.
    pub fn start(n: usize, env: &[(String, String)], extra: &[Vec<(String, String)>]) -> Replicas {
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let list = std::thread::scope(|s| {
            let handles: Vec<_> = dirs
                .iter()
                .enumerate()
                .map(|(i, dir)| {
                    let mut e: Vec<(String, String)> = env.to_vec();
                    e.extend(extra.get(i).cloned().unwrap_or_default());
                    s.spawn(move || {
                        let e: Vec<(&str, &str)> =
                            e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        Receiver::start_in(dir.path(), &e)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        Replicas { list, _dirs: dirs }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, i: usize) -> &Receiver {
        &self.list[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Receiver> {
        self.list.iter()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list.iter().map(|r| r.addr).collect()
    }

    /// `kill -9` of replica `i` (it stays down until [`Replicas::restart`]).
    pub fn kill9(&mut self, i: usize) {
        self.list[i].kill9();
    }

    /// Start replica `i` again on its port (after a kill -9 or a SIGTERM;
    /// a running one is killed first).
    pub fn restart(&mut self, i: usize) {
        self.list[i].restart();
    }

    /// SIGTERM to replica `i`, and its exit status (within `within`).
    pub fn sigterm(&mut self, i: usize, within: Duration) -> ExitStatus {
        self.list[i].sigterm(within)
    }

    /// An admin command on the shared configuration (run as replica 0
    /// runs it; any replica would do).
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.list[0].cli(args)
    }

    pub fn cli_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.list[0].cli_ok(args)
    }
}

/// Where the stack's index lives.
pub enum Database {
    /// A fresh database on the machine's server.
    Shared(TestDb),
    /// A private cluster the test may kill -9.
    Private(PgCluster),
}

impl Database {
    pub fn url(&self) -> String {
        match self {
            Database::Shared(db) => db.url(),
            Database::Private(c) => c.url(),
        }
    }

    /// The private cluster (panics on the shared server).
    pub fn cluster(&mut self) -> &mut PgCluster {
        match self {
            Database::Private(c) => c,
            Database::Shared(_) => panic!("the stack was started without a private cluster"),
        }
    }
}

/// What a test asks of the stack.
pub struct Options {
    pub replicas: usize,
    /// A [`crate::proxy::TcpProxy`] between the replicas and moto, for
    /// bucket outages.
    pub s3_outage: bool,
    /// A private cluster instead of a database on the machine's server.
    pub private_db: bool,
    /// More environment for every replica (collector timings, say).
    pub env: Vec<(String, String)>,
    /// Environment for replica `i` only.
    pub replica_env: Vec<Vec<(String, String)>>,
    /// Replicas that reach moto through a proxy of their own
    /// ([`Stack::s3_proxy`]), to slow or cut that replica alone.
    pub s3_proxied: Vec<usize>,
}

impl Options {
    pub fn replicas(n: usize) -> Options {
        Options {
            replicas: n,
            s3_outage: false,
            private_db: false,
            env: Vec::new(),
            replica_env: Vec::new(),
            s3_proxied: Vec::new(),
        }
    }

    /// Replica `i` reaches moto through a proxy of its own.
    pub fn s3_proxy_for(mut self, i: usize) -> Options {
        self.s3_proxied.push(i);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Options {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn replica_env(mut self, i: usize, k: &str, v: &str) -> Options {
        if self.replica_env.len() <= i {
            self.replica_env.resize(i + 1, Vec::new());
        }
        self.replica_env[i].push((k.into(), v.into()));
        self
    }

    pub fn s3_outage(mut self) -> Options {
        self.s3_outage = true;
        self
    }

    pub fn private_db(mut self) -> Options {
        self.private_db = true;
        self
    }
}

/// The key prefix of the stack's objects in the bucket.
pub const PREFIX: &str = "episodes";

/// Replicas on PostgreSQL and S3 behind nginx. Dropped in field order:
/// the balancer and the replicas before the stores they use.
pub struct Stack {
    pub lb: Balancer,
    pub replicas: Replicas,
    /// The proxies of [`Options::s3_proxy_for`], by replica.
    s3_proxies: Vec<(usize, TcpProxy)>,
    pub s3: S3Server,
    pub db: Database,
}

impl Stack {
    /// The stack, or `None` after a loud skip of `test` when a part is
    /// missing (moto_server, nginx, PostgreSQL, initdb).
    pub fn start(test: &str, opts: Options) -> Option<Stack> {
        // The cheap checks first, so that a skip costs nothing.
        if crate::lacks("nginx", test) {
            return None;
        }
        let db = if opts.private_db {
            Database::Private(PgCluster::start(test)?)
        } else {
            Database::Shared(TestDb::create(test)?)
        };
        let s3 = if opts.s3_outage {
            S3Server::with_outage_proxy(test)?
        } else {
            S3Server::start(test)?
        };
        let mut env = vec![("FERRY_RECEIVER_DATABASE_URL".to_string(), db.url())];
        env.extend(s3.receiver_env(PREFIX));
        // Racing threads of one device land on one replica too: every one
        // gets an upload slot (4 per device by default).
        env.push(("FERRY_RECEIVER_MAX_UPLOADS_PER_DEVICE".into(), "16".into()));
        env.extend(opts.env);
        let mut replica_env = opts.replica_env;
        let mut s3_proxies = Vec::new();
        for i in opts.s3_proxied {
            let proxy = TcpProxy::start(s3.addr);
            if replica_env.len() <= i {
                replica_env.resize(i + 1, Vec::new());
            }
            // Later than the shared endpoint, so it wins.
            replica_env[i].push(("FERRY_RECEIVER_S3_ENDPOINT".into(), proxy.url()));
            s3_proxies.push((i, proxy));
        }
        let replicas = Replicas::start(opts.replicas, &env, &replica_env);
        let lb = Balancer::start(test, &replicas.addrs())?;
        Some(Stack {
            lb,
            replicas,
            s3_proxies,
            s3,
            db,
        })
    }

    /// The proxy between replica `i` and moto ([`Options::s3_proxy_for`]).
    pub fn s3_proxy(&self, i: usize) -> &TcpProxy {
        self.s3_proxies
            .iter()
            .find(|(r, _)| *r == i)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("replica {i} has no S3 proxy of its own"))
    }

    /// `COMMIT_A` allowed as head and a device added; its token.
    pub fn ready_device(&self, name: &str) -> String {
        self.replicas.get(0).ready_device(name)
    }

    pub fn add_device(&self, name: &str) -> String {
        self.replicas.get(0).add_device(name)
    }

    /// The episode objects in the bucket (staging excluded).
    pub fn objects(&self) -> Vec<S3Object> {
        self.s3.objects(PREFIX)
    }

    /// The index as `episodes list --json` shows it: (device, id) →
    /// sha256. Panics if a pair is listed twice.
    pub fn rows(&self) -> BTreeMap<(String, String), String> {
        crate::stored_by_device(self.replicas.get(0))
    }

    /// The balancer's URL, for agents.
    pub fn url(&self) -> &str {
        &self.lb.url
    }

    /// PUT an episode through the balancer.
    pub fn put(&self, token: &str, id: &str, body: &[u8]) -> crate::Response {
        crate::put_episode(
            self.lb.addr,
            token,
            id,
            crate::COMMIT_A,
            &crate::sha256_hex(body),
            body,
        )
    }
}
