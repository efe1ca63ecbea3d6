//! `cargo xtask mutants [SCOPE...]`: mutation testing with cargo-mutants
//! (installed from crates.io if missing) as the measure of the unit tests:
//! each mutant of the code is a bug the tests should catch. Scopes: `proto`
//! (the wire contract, whole crate), `agent` (its pure parts: classify,
//! backoff, config resolution), `receiver` (tokens, config); no scope means
//! all three. Prints caught / missed / unviable / timeout per scope, and the
//! missed mutants; docs/RELIABILITY.md keeps the figures and explains each
//! survivor that is equivalent.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run_ok, target_dir};

/// One scope: the package, the files mutated (none: the whole package),
/// and what the tests run per mutant.
struct Scope {
    name: &'static str,
    package: &'static str,
    files: &'static [&'static str],
}

const SCOPES: &[Scope] = &[
    Scope {
        name: "proto",
        package: "ferry-proto",
        files: &[],
    },
    Scope {
        name: "agent",
        package: "ferry-agent",
        files: &[
            "agent/src/classify.rs",
            "agent/src/backoff.rs",
            "agent/src/config.rs",
        ],
    },
    Scope {
        name: "receiver",
        package: "ferry-receiver",
        files: &["receiver/src/tokens.rs", "receiver/src/config.rs"],
    },
];

/// The outcome files cargo-mutants writes, and what they count.
const OUTCOMES: [(&str, &str); 4] = [
    ("caught", "caught.txt"),
    ("missed", "missed.txt"),
    ("unviable", "unviable.txt"),
    ("timeout", "timeout.txt"),
];

pub fn run(args: &[String]) -> Result<ExitCode> {
    let wanted: Vec<&Scope> = if args.is_empty() {
        SCOPES.iter().collect()
    } else {
        args.iter()
            .map(|a| {
                SCOPES
                    .iter()
                    .find(|s| s.name == a)
                    .with_context(|| format!("unknown scope {a:?}: proto, agent or receiver"))
            })
            .collect::<Result<_>>()?
    };
    install()?;
    let mut any_missed = false;
    let mut report = Vec::new();
    for scope in wanted {
        let out = target_dir().join("mutants").join(scope.name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).context("create the mutants output dir")?;
        let mut c = cargo();
        c.args(["mutants", "--no-shuffle", "--package", scope.package])
            .arg("--output")
            .arg(&out);
        for f in scope.files {
            c.args(["--file", f]);
        }
        // Unit tests only: the pure parts are what is mutated, and the
        // end-to-end suite would take minutes per mutant.
        c.arg("--cargo-test-arg=--lib");
        // cargo-mutants exits non-zero when a mutant is missed; the counts
        // below are the verdict.
        let st = c.status().context("spawn cargo mutants")?;
        let dir = out.join("mutants.out");
        let counts: Vec<(&str, usize)> = OUTCOMES
            .iter()
            .map(|(what, file)| (*what, lines(&dir.join(file)).len()))
            .collect();
        if counts.iter().all(|(_, n)| *n == 0) {
            bail!(
                "cargo mutants for {} produced no outcome ({st})",
                scope.name
            );
        }
        let missed = lines(&dir.join("missed.txt"));
        any_missed |= !missed.is_empty();
        let summary: Vec<String> = counts.iter().map(|(w, n)| format!("{w} {n}")).collect();
        report.push(format!("{}: {}", scope.name, summary.join(", ")));
        for m in missed {
            report.push(format!("  missed: {m}"));
        }
    }
    println!("\n################ ferry: mutants ################");
    for l in &report {
        println!("# {l}");
    }
    println!("################################################");
    Ok(if any_missed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// cargo-mutants from crates.io, unless it is already installed.
fn install() -> Result<()> {
    let have = Command::new("cargo")
        .args(["mutants", "--version"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        run_ok(cargo().args(["install", "cargo-mutants", "--locked"]))?;
    }
    Ok(())
}
