//! The container image, which cannot be built here (no engine, no
//! registry): the pieces the `Dockerfile` relies on are checked instead.
//! `.dockerignore` keeps `target/` out of the context, the dependency layer
//! copies every workspace manifest and its stand-ins satisfy cargo, and the
//! `HEALTHCHECK` command exists in the binary and tells a running receiver
//! from nothing.

use std::process::Command;

use ferry_tests::{bin, Receiver};

use super::root;

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("Dockerfile")).unwrap()
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

#[test]
fn dockerignore_keeps_target_and_git_out_of_the_context() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore"))
        .expect(".dockerignore exists beside the Dockerfile");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for dir in ["target", ".git"] {
        assert!(
            lines.iter().any(|l| l.trim_matches('/') == dir),
            ".dockerignore does not exclude {dir}/"
        );
    }
    let df = instructions(&dockerfile());
    assert!(
        !df.iter()
            .any(|i| i == "COPY . ." || i.starts_with("COPY . ")),
        "the whole context is copied: {df:#?}"
    );
}

/// The stage before our sources: every workspace member's manifest is
/// copied (a new member would otherwise fail the image build), and the
/// stand-ins the `RUN` makes satisfy `cargo metadata --locked` on exactly
/// those files.
#[test]
fn the_dependency_layer_copies_every_manifest_and_its_stand_ins_load() {
    let df = instructions(&dockerfile());
    let build = df
        .iter()
        .position(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .expect("a RUN with cargo build");
    let sources = df
        .iter()
        .position(|i| i.starts_with("COPY") && !i.contains("Cargo."))
        .expect("a COPY of sources");
    assert!(
        build < sources,
        "dependencies must build before the sources are copied"
    );
    let copied: Vec<String> = df[..build]
        .iter()
        .filter_map(|i| i.strip_prefix("COPY "))
        .flat_map(|args| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("workspace members");
    let members: Vec<&str> = members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .collect();
    for file in ["Cargo.toml", "Cargo.lock"]
        .into_iter()
        .map(String::from)
        .chain(members.iter().map(|m| format!("{m}/Cargo.toml")))
    {
        assert!(
            copied.contains(&file),
            "{file} is not copied before the dependency build: {copied:?}"
        );
    }
    // Replay that stage: the copied files, then the RUN up to cargo build.
    let stage = tempfile::tempdir().unwrap();
    for f in &copied {
        let to = stage.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(f), &to).unwrap();
    }
    let run = df[build].strip_prefix("RUN ").unwrap();
    let stubs = run.split("&& cargo build").next().unwrap();
    let out = Command::new("sh")
        .arg("-ec")
        .arg(stubs)
        .current_dir(stage.path())
        .output()
        .unwrap();
    ferry_tests::assert_ok(&out, "the stand-ins of the Dockerfile");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(stage.path())
        .output()
        .unwrap();
    ferry_tests::assert_ok(&out, "cargo metadata on the dependency layer");
}

/// `HEALTHCHECK CMD [...]` in exec form: no shell in the way.
fn healthcheck_args() -> Vec<String> {
    let df = instructions(&dockerfile());
    let hc = df
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let json = &hc[hc.find("CMD [").expect("exec form CMD [...]") + 4..];
    let args: Vec<String> = serde_json::from_str(json).expect("a JSON array");
    let installed = df
        .iter()
        .any(|i| i.starts_with("COPY --from=build") && i.ends_with(&args[0]));
    assert!(
        installed,
        "{} is not the binary the image installs",
        args[0]
    );
    args
}

#[test]
fn the_healthcheck_probes_a_running_receiver_and_fails_against_nothing() {
    let args = healthcheck_args();
    assert_eq!(args[1], "healthcheck", "{args:?}");
    let listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
    let probe = |addr: &str| {
        let mut a = args[1..].to_vec();
        a[listen - 1] = addr.to_string();
        Command::new(bin("ferry-receiver"))
            .args(&a)
            .env_remove("FERRY_RECEIVER_CONFIG")
            .output()
            .unwrap()
    };
    let rx = Receiver::start();
    // As in the image: the wildcard address, probed on loopback.
    let out = probe(&format!("0.0.0.0:{}", rx.addr.port()));
    ferry_tests::assert_ok(&out, "healthcheck against a running receiver");
    let url = Command::new(bin("ferry-receiver"))
        .args(["healthcheck", "--url", &rx.url])
        .output()
        .unwrap();
    ferry_tests::assert_ok(&url, "healthcheck --url");
    // Nothing listening: a port that was just free.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let out = probe(&format!("0.0.0.0:{port}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unhealthy"),
        "{out:?}"
    );
    // Something that is not a receiver's /healthz: a 404.
    let out = Command::new(bin("ferry-receiver"))
        .args(["healthcheck", "--url", &format!("{}/nope", rx.url)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = Command::new(bin("ferry-receiver"))
        .args(["healthcheck", "--url", "https://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
