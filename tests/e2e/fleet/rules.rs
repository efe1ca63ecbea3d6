//! `deploy/prometheus/ferry.rules.yml`: valid rules whose every alert is
//! exercised by `ferry.rules.test.yml`, and whose metric names are the ones
//! the receiver and the agent really export.

use std::process::Command;

use ferry_tests::{assert_ok, lacks};

use super::root;

#[test]
fn the_alerting_rules_pass_promtool_and_their_tests() {
    if lacks(
        "promtool",
        "fleet::rules::the_alerting_rules_pass_promtool_and_their_tests",
    ) {
        return;
    }
    let dir = root().join("deploy/prometheus");
    let mut said = String::new();
    for (what, file) in [
        ("check", "ferry.rules.yml"),
        ("test", "ferry.rules.test.yml"),
    ] {
        let out = Command::new("promtool")
            .args([what, "rules", file])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_ok(&out, &format!("promtool {what} rules {file}"));
        said = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    assert!(said.contains("SUCCESS"), "{said}");
}

/// Every alert has a test, and every `ferry_*` metric a rule names is one
/// that is exported: the receiver's from its code, the agent's from a
/// textfile it wrote (`textfile::NAMES`).
#[test]
fn every_alert_is_tested_and_names_real_metrics() {
    let dir = root().join("deploy/prometheus");
    let rules = std::fs::read_to_string(dir.join("ferry.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("ferry.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for a in &alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alert {a} has no promtool test"
        );
    }
    let receiver_src = std::fs::read_to_string(root().join("receiver/src/metrics.rs")).unwrap();
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(agent) = word.strip_prefix("ferry_agent_") {
            named += 1;
            assert!(
                super::textfile::NAMES.contains(&agent),
                "the rules use ferry_agent_{agent}, which the agent does not write"
            );
        } else if let Some(m) = word.strip_prefix("ferry_") {
            named += 1;
            // prometheus_client adds `_total` to counters.
            let base = m.strip_suffix("_total").unwrap_or(m);
            assert!(
                receiver_src.contains(&format!("\"{base}\"")),
                "the rules use ferry_{m}, which the receiver does not register"
            );
        }
    }
    assert!(named >= 6, "only {named} ferry metric names in the rules");
}
