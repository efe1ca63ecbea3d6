//! Start-up: ready at once whatever is stored or left over (Never again §4),
//! left-over temporary files swept after READY while health keeps
//! answering, and JSON logs on stderr when asked for.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{bin, sample_archive, temp_files, Receiver, COMMIT_A};

use super::expect;

const LEFT_OVER: usize = 20_000;

#[test]
fn incident4_sweep_runs_after_ready_and_health_keeps_answering() {
    let _load = ferry_tests::gap_sensitive();
    let data = tempfile::tempdir().unwrap();
    let tmp = data.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for i in 0..LEFT_OVER {
        std::fs::write(tmp.join(format!("crash-{i}.part")), b"partial upload").unwrap();
    }
    // Not ours: never touched by the sweep.
    std::fs::write(tmp.join("operator-notes.txt"), b"keep me").unwrap();

    let start = Instant::now();
    let rx = Receiver::start_in(data.path(), &[]);
    let ready = start.elapsed();
    // Left-overs are still there at READY: the sweep runs after it, not
    // before (a receiver that swept first would also be "ready at once"
    // here, and pass everything below).
    let at_ready = temp_files(&rx).len();
    assert!(
        at_ready > 1,
        "no left-over of {LEFT_OVER} at READY: swept before it"
    );
    assert!(ready < Duration::from_secs(20), "start-up took {ready:?}");
    // Health answers promptly while the sweep runs.
    for _ in 0..5 {
        let t = Instant::now();
        let r = rx.request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    // Uploads work during the sweep and their temp files are not swept.
    let token = rx.ready_device("dev");
    let body = sample_archive("during-sweep", 1);
    expect(
        &rx.put(&token, "during-sweep", COMMIT_A, &body),
        201,
        "stored",
    );
    ferry_tests::wait_for("the sweep to finish", || {
        (temp_files(&rx) == ["operator-notes.txt"]).then_some(())
    });
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

#[test]
fn json_logs_on_stderr_and_one_line_on_stdout() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("ferry-receiver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("FERRY_RECEIVER_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );
    ferry_tests::signal(child.id(), libc::SIGTERM);
    let status = ferry_tests::wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "stdout has only the listening line");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let lines: Vec<_> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let j: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(j["level"].is_string(), "{l}");
    }
}
