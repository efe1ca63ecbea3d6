use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

keys! {
    /// A directory.
    DIR: PathBuf = "dir" default "/srv" => parse::path;
    /// A duration.
    EVERY: Duration = "every" default "5s" => parse::nonzero_duration;
    /// A level.
    LEVEL: i64 = "level" default "3" => |s| parse::int_in(s, 1, 22);
    /// A size with no default.
    LIMIT: u64 = "limit" => parse::size;
}

fn layers() -> Layers {
    Layers::new("FERRY_TEST_", KEYS)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_apply_and_a_key_without_one_is_none() {
    let l = layers();
    assert_eq!(l.get(&DIR).unwrap(), PathBuf::from("/srv"));
    assert_eq!(l.get(&EVERY).unwrap(), Duration::from_secs(5));
    assert_eq!(l.get(&LEVEL).unwrap(), 3);
    assert_eq!(l.opt(&LIMIT).unwrap(), None);
}

#[test]
fn flags_beat_env_beat_file() {
    let mut l = layers();
    l.merge_toml(
        "dir = \"/file\"\nevery = \"7d\"\nlevel = 5\nlimit = \"512MiB\"",
        Path::new("t.toml"),
    )
    .unwrap();
    l.merge_env(env(&[
        ("FERRY_TEST_DIR", "/env"),
        ("FERRY_TEST_EVERY", "10m"),
        ("FERRY_TEST_CONFIG", "/not/a/key"),
        ("OTHER_DIR", "/other"),
    ]));
    l.set_flag("dir", "/flag");
    assert_eq!(l.get(&DIR).unwrap(), PathBuf::from("/flag"));
    assert_eq!(l.get(&EVERY).unwrap(), Duration::from_secs(600));
    assert_eq!(l.get(&LEVEL).unwrap(), 5);
    assert_eq!(l.opt(&LIMIT).unwrap(), Some(512 << 20));
    assert_eq!(l.raw("dir").unwrap().1, Source::Flag("--dir".into()));
}

#[test]
fn errors_name_the_key_and_where_the_value_came_from() {
    let mut l = layers();
    l.merge_toml("level = 99", Path::new("/etc/x.toml"))
        .unwrap();
    let e = l.get(&LEVEL).unwrap_err().to_string();
    assert!(
        e.contains("`level`") && e.contains("file /etc/x.toml"),
        "{e}"
    );
    l.merge_env(env(&[("FERRY_TEST_EVERY", "soon")]));
    let e = l.get(&EVERY).unwrap_err().to_string();
    assert!(
        e.contains("`every`") && e.contains("environment FERRY_TEST_EVERY"),
        "{e}"
    );
    l.merge_env(env(&[("FERRY_TEST_EVERY", "0s")]));
    assert!(l.get(&EVERY).is_err());
    let e = l
        .clone()
        .merge_toml("levle = 1", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("levle") && e.contains("known keys: dir"), "{e}");
    let e = l
        .merge_toml("dir = [1]", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`dir`") && e.contains("array"), "{e}");
    let e = layers()
        .merge_toml("dir = ", Path::new("broken.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.toml"), "{e}");
    let e = layers()
        .merge_file(Path::new("/nonexistent/ferry.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/ferry.toml"), "{e}");
}

#[test]
fn values_are_trimmed() {
    let mut l = layers();
    l.merge_env(env(&[("FERRY_TEST_LEVEL", " 7 ")]));
    assert_eq!(l.get(&LEVEL).unwrap(), 7);
}

#[test]
fn the_example_check_finds_what_is_wrong() {
    let good =
        "# A directory.\n# dir = \"/srv\"\nevery = \"5s\"\n# level = 3\n\n# limit = \"1GiB\"\n";
    assert_eq!(check_example(good, KEYS), Vec::<String>::new());
    assert_eq!(keys_not_shown(good, KEYS), Vec::<&str>::new());
    let bad = "# Prose = not a key.\ndir = \"/srv\"\nevery = \"often\"\n# lvel = 3\nlimit = [\n";
    let problems = check_example(bad, KEYS);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("line 3: `every`"), "{problems:?}");
    assert!(
        problems[1].contains("`lvel` is no declared key"),
        "{problems:?}"
    );
    assert!(
        problems[2].contains("`limit`: not a TOML value"),
        "{problems:?}"
    );
    assert_eq!(keys_not_shown(bad, KEYS), ["level"]);
}

#[test]
fn the_parsers_read_what_humans_write() {
    assert_eq!(
        parse::duration("7d").unwrap(),
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(
        parse::duration("1h 30m").unwrap(),
        Duration::from_secs(5400)
    );
    assert!(parse::duration("5").is_err());
    assert_eq!(parse::size("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse::size("1000").unwrap(), 1000);
    assert!(parse::size("0").is_err());
    assert_eq!(parse::rate("512KiB/s").unwrap(), 512 << 10);
    assert_eq!(parse::rate("1MiB").unwrap(), 1 << 20);
    assert!(parse::rate("fast").is_err());
    assert_eq!(parse::positive("4").unwrap(), 4);
    assert!(parse::positive("0").is_err());
    assert_eq!(parse::optional_path("").unwrap(), None);
    assert!(parse::path("").is_err());
    assert_eq!(parse::log_format("json").unwrap(), LogFormat::Json);
    let e = parse::log_format("xml").unwrap_err();
    assert!(e.contains("\"human\", \"json\""), "{e}");
}
