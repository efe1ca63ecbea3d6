//! The scale-out stack (SPEC §7) under the small-episode load: replicas on
//! PostgreSQL (the machine's server on 127.0.0.1:5432) and an S3 bucket
//! (`moto_server` on loopback) behind nginx, with one and with two
//! replicas, against the embedded default and against the S3 server alone
//! in the same run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::cases::{ferry_put, hammer, tiny_archive, Bench};
use super::corpus::Corpus;
use super::nginx::{free_port, wait_port};
use super::{percentile, stop_child, Env, Opts, Report, Stats};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// What is missing for this case, if anything.
fn missing() -> Option<String> {
    for tool in ["moto_server", "psql", "nginx"] {
        let found = match tool {
            "nginx" => super::nginx::available(),
            _ => super::have(tool),
        };
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        return Some("no PostgreSQL on 127.0.0.1:5432".into());
    }
    None
}

/// `moto_server` on a free port, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Result<Moto> {
        let port = free_port()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start moto_server")?;
        let m = Moto { child, port };
        wait_port(port, "moto_server", Duration::from_secs(20))?;
        Ok(m)
    }

    fn bucket(&self, name: &str) -> Result<()> {
        let st = Command::new("curl")
            .args(["-sS", "-f", "-o", "/dev/null", "-X", "PUT"])
            .arg(format!("http://127.0.0.1:{}/{name}", self.port))
            .status()?;
        if !st.success() {
            bail!("cannot create bucket {name} on moto");
        }
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

/// A PostgreSQL database for one side, dropped with it.
struct Db(String);

impl Db {
    fn create() -> Result<Db> {
        let name = format!("ferry_bench_{:08x}", std::process::id() ^ rand_u32());
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(Db(name))
    }

    fn url(&self) -> String {
        format!("{PG}/{}", self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn psql(sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([
            &format!("{PG}/postgres"),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// nginx round-robin over the replicas, request buffering off (the
/// receiver must see the body as it arrives), upstream keep-alive on.
struct Balancer {
    child: Child,
    port: u16,
}

impl Balancer {
    fn start(work: &Path, ports: &[u16]) -> Result<Balancer> {
        let dir = work.join("balancer");
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["tmp", "logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let port = free_port()?;
        let servers: String = ports
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p};\n"))
            .collect();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  client_max_body_size 0;
  keepalive_requests 1000000;
  upstream ferry {{
{servers}    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://ferry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
    }}
  }}
}}
"#,
            dir = dir.display(),
        );
        let child = super::nginx::run(&dir, &conf, port)?;
        Ok(Balancer { child, port })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGQUIT, Duration::from_secs(10));
    }
}

type Row = (String, f64, Duration);

/// One side of a round: `clients` devices hammering `port` with `bodies`.
fn run_side(
    name: &str,
    port: u16,
    tokens: Vec<String>,
    bodies: &Arc<Vec<(String, Vec<u8>)>>,
    clients: usize,
) -> Result<Row> {
    let per_client = bodies.len() / clients;
    let (wall, mut lat) = hammer(
        port,
        clients,
        per_client,
        bodies.clone(),
        ferry_put(Arc::new(tokens)),
        &[201],
    )?;
    lat.sort();
    let n = clients * per_client;
    Ok((
        name.into(),
        n as f64 / wall.as_secs_f64(),
        percentile(&lat, 99.0),
    ))
}

/// `replicas` receivers on one fresh database and bucket, behind nginx.
fn scaleout_side(
    env: &Env,
    moto: &Moto,
    round: usize,
    replicas: usize,
    bodies: &Arc<Vec<(String, Vec<u8>)>>,
    clients: usize,
) -> Result<Row> {
    let db = Db::create()?;
    let bucket = format!("ferry-bench-{round}-{replicas}");
    moto.bucket(&bucket)?;
    let vars = [
        ("FERRY_RECEIVER_DATABASE_URL", db.url()),
        (
            "FERRY_RECEIVER_STORAGE_URL",
            format!("s3://{bucket}/episodes"),
        ),
        (
            "FERRY_RECEIVER_S3_ENDPOINT",
            format!("http://127.0.0.1:{}", moto.port),
        ),
        ("FERRY_RECEIVER_S3_REGION", "us-east-1".into()),
        ("FERRY_RECEIVER_MAX_CONCURRENT_UPLOADS", "256".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut rxs = Vec::new();
    for i in 0..replicas {
        rxs.push(Bench::start(env, &format!("so-{replicas}-{i}"), &vars)?);
    }
    let lb = Balancer::start(&env.work, &rxs.iter().map(|r| r.port).collect::<Vec<_>>())?;
    let tokens = (0..clients)
        .map(|c| rxs[0].device(env, &format!("so-dev-{c}")))
        .collect::<Result<Vec<_>>>()?;
    let name = match replicas {
        1 => "scale-out, 1 replica".to_string(),
        n => format!("scale-out, {n} replicas"),
    };
    let row = run_side(&name, lb.port, tokens, bodies, clients);
    drop(lb);
    for mut r in rxs {
        r.stop();
    }
    row
}

pub fn ingest(env: &Env, opts: &Opts, corpus: &Corpus, report: &mut Report) -> Result<()> {
    if let Some(why) = missing() {
        report.note(&format!(
            "**scale-out case SKIPPED**: {why} (pip install \"moto[server]\"; apt-get install nginx-light postgresql-client)."
        ));
        return Ok(());
    }
    let clients = 64;
    let n = (corpus.small_count / 4 / clients).max(4) * clients;
    report.section(
        &format!("scale-out ingest: {n} × 10 KiB episodes, {clients} concurrent devices"),
        "ferry on PostgreSQL (127.0.0.1:5432) + S3 (moto_server on loopback) behind nginx, \
         1 and 2 replicas · baselines: the embedded default (SQLite + local disk, no nginx), \
         and unsigned PUTs of the same bodies straight into moto (the S3 server's own rate).",
    );
    let moto = Moto::start()?;
    moto.bucket("direct")?;
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..opts.reps.clamp(1, 2) {
        let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
            (0..n)
                .map(|i| {
                    let id = format!("so-{round}-{i}");
                    let body = tiny_archive(&id, (round * n + i) as u64 + 7);
                    (id, body)
                })
                .collect(),
        );
        let mut rx = Bench::start(
            env,
            "so-embedded",
            &[("FERRY_RECEIVER_MAX_CONCURRENT_UPLOADS", "256")],
        )?;
        let tokens = (0..clients)
            .map(|c| rx.device(env, &format!("so-dev-{c}")))
            .collect::<Result<Vec<_>>>()?;
        rows.push(run_side(
            "embedded (SQLite + local disk)",
            rx.port,
            tokens,
            &bodies,
            clients,
        )?);
        rx.stop();

        let per_client = n / clients;
        let (wall, mut lat) = hammer(
            moto.port,
            clients,
            per_client,
            bodies.clone(),
            Arc::new(move |_c, _i, id, _b| (format!("/direct/{round}/{id}"), String::new())),
            &[200],
        )?;
        lat.sort();
        rows.push((
            "S3 server alone (moto, PUT)".into(),
            n as f64 / wall.as_secs_f64(),
            percentile(&lat, 99.0),
        ));
        for replicas in [1, 2] {
            rows.push(scaleout_side(
                env, &moto, round, replicas, &bodies, clients,
            )?);
        }
    }
    let mut median = |side: &str| -> f64 {
        let r: Vec<&Row> = rows.iter().filter(|r| r.0 == side).collect();
        let st = Stats::of(&r.iter().map(|r| r.1).collect::<Vec<_>>());
        let p99 = r.iter().map(|r| r.2).max().unwrap_or_default();
        report.row(
            side,
            &format!("{:.0} episodes/s", st.median),
            &format!(
                "{:.0}–{:.0}; p99 {:.1} ms",
                st.min,
                st.max,
                p99.as_secs_f64() * 1e3
            ),
            "",
        );
        st.median
    };
    let embedded = median("embedded (SQLite + local disk)");
    let moto_alone = median("S3 server alone (moto, PUT)");
    let one = median("scale-out, 1 replica");
    let two = median("scale-out, 2 replicas");
    report.ratio(
        "scale-out 1 replica vs the S3 server alone",
        one / moto_alone,
        0.5,
    );
    report.ratio("scale-out 2 replicas vs 1 replica", two / one, 1.0);
    report.note(&format!(
        "scale-out 1 replica vs the embedded default: {:.2}× (no target: another stack, \
         bounded here by the S3 server on loopback)",
        one / embedded
    ));
    Ok(())
}
