//! `cargo xtask mutants [SCOPE[:FILE,...]...]`: mutation testing with
//! cargo-mutants (installed from crates.io if missing) as the measure of the
//! unit tests: each mutant of the code is a bug the tests should catch.
//! Scopes: `proto` (the wire contract, whole crate), `agent` (its pure
//! parts: classify, backoff, config resolution), `receiver` (tokens,
//! config); no scope means all three; `agent:classify,backoff` restricts a
//! scope to those files. Prints caught / missed / unviable / timeout per
//! scope, and the missed mutants; fails if one was missed that is not in
//! [`EQUIVALENT`] (docs/RELIABILITY.md explains each of those).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::{cargo, target_dir};

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

/// Surviving mutants that are equivalent to the code (no test can tell
/// them apart), as cargo-mutants names them without the line and column.
/// docs/RELIABILITY.md says why for each.
const EQUIVALENT: &[&str] = &[
    // The 408 | 429 arm and the final `_` arm give the same Backoff: the
    // 4xx quarantine arm's ranges are written to leave 408 and 429 out.
    "proto/src/action.rs: delete match arm 408 | 429 in decide",
    // Pushing the gate out to the instant it already holds changes nothing.
    "agent/src/backoff.rs: replace > with >= in Gate::fail",
    // `is_disk_full` is true only for a Write error, and the next arm maps
    // every Write error to DiskFull too: the guard names the case, it does
    // not change the outcome.
    "agent/src/classify.rs: replace match guard e.is_disk_full() with false in pack",
];

/// Whether a missed mutant (`FILE:LINE:COL: WHAT`) is a known equivalent.
fn is_equivalent(missed: &str) -> bool {
    let mut parts = missed.splitn(4, ':');
    let (file, what) = (parts.next().unwrap_or(""), parts.nth(2).unwrap_or(""));
    EQUIVALENT.contains(&format!("{file}:{what}").as_str())
}

/// The outcome files cargo-mutants writes, and what they count.
const OUTCOMES: [(&str, &str); 4] = [
    ("caught", "caught.txt"),
    ("missed", "missed.txt"),
    ("unviable", "unviable.txt"),
    ("timeout", "timeout.txt"),
];

pub fn run(args: &[String]) -> Result<ExitCode> {
    let all: Vec<String> = SCOPES.iter().map(|s| s.name.to_string()).collect();
    let mut wanted: Vec<(&Scope, Vec<String>)> = Vec::new();
    for a in if args.is_empty() { &all[..] } else { args } {
        let (name, only) = a.split_once(':').unwrap_or((a, ""));
        let scope = SCOPES
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("unknown scope {name:?}: proto, agent or receiver"))?;
        let mut files: Vec<String> = scope.files.iter().map(|f| f.to_string()).collect();
        if !only.is_empty() {
            let stems: Vec<&str> = only.split(',').collect();
            files.retain(|f| stems.iter().any(|s| f.ends_with(&format!("/{s}.rs"))));
            if files.is_empty() {
                bail!("{a}: no file of scope {name} matches");
            }
        }
        wanted.push((scope, files));
    }
    crate::install_cargo_tool("mutants")?;
    let mut any_missed = false;
    let mut report = Vec::new();
    for (scope, files) in wanted {
        let out = target_dir().join("mutants").join(scope.name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).context("create the mutants output dir")?;
        let mut c = cargo();
        // A floor under the timeout cargo-mutants derives from the baseline:
        // on a busy machine the derived 20 s made slow-but-passing runs time out.
        c.args(["mutants", "--no-shuffle", "--minimum-test-timeout=60"])
            .args(["--package", scope.package])
            .arg("--output")
            .arg(&out);
        for f in &files {
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
        any_missed |= missed.iter().any(|m| !is_equivalent(m));
        let summary: Vec<String> = counts.iter().map(|(w, n)| format!("{w} {n}")).collect();
        report.push(format!("{}: {}", scope.name, summary.join(", ")));
        for m in missed {
            let note = if is_equivalent(&m) {
                " (equivalent)"
            } else {
                ""
            };
            report.push(format!("  missed{note}: {m}"));
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_known_equivalent_is_recognised_whatever_its_line() {
        assert!(super::is_equivalent(
            "proto/src/action.rs:124:13: delete match arm 408 | 429 in decide"
        ));
        assert!(super::is_equivalent(
            "proto/src/action.rs:130:9: delete match arm 408 | 429 in decide"
        ));
        assert!(!super::is_equivalent(
            "proto/src/action.rs:124:13: delete match arm 409 in decide"
        ));
        assert!(!super::is_equivalent(
            "proto/src/lib.rs:24:5: replace episode_path -> String with String::new()"
        ));
    }
}
