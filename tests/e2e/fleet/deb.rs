//! The Debian packages: `cargo deb` packs the binaries under test (see
//! [`build`]), `lintian` finds no error, and
//! where the test runs as root (CI does) `dpkg -i` installs them: binaries
//! in /usr/bin, units in /lib/systemd/system that `systemd-analyze verify`
//! accepts, the example configurations as conffiles in /etc/ferry/, the
//! `ferry` system user, no service started; a second install (the
//! maintainer scripts again) changes nothing, and a purge removes it all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_tests::{assert_ok, lacks, skip};

use super::root;

const PACKAGES: [&str; 2] = ["ferry-agent", "ferry-receiver"];
const NAME: &str = "fleet::deb::the_packages_build_lint_install_verify_and_purge";

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_ok(&out, what);
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cargo deb --no-build` for each package, from the binaries this test run
/// exercises (the workspace's dev build, which `cargo xtask test` makes
/// first): the packaging is under test here, and a release build of its
/// own would cost a CI run minutes on two cores. `cargo deb` warns that a
/// dev profile is meant for tests only, which this is; `--strip` keeps the
/// packages lintian-clean. Returns the .deb files.
fn build(out: &Path) -> Vec<PathBuf> {
    let cargo = env!("CARGO");
    // target/debug/ferry-agent → target/
    let target = ferry_tests::bin("ferry-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let target = &target;
    let out_dir = out.to_path_buf();
    PACKAGES
        .iter()
        .map(|p| {
            let out = run(
                Command::new(cargo)
                    .args([
                        "deb",
                        "--no-build",
                        "--locked",
                        "--profile",
                        "dev",
                        "--strip",
                        "-p",
                        p,
                        "-o",
                    ])
                    .arg(&out_dir)
                    .env("CARGO_TARGET_DIR", target)
                    .current_dir(root()),
                &format!("cargo deb -p {p}"),
            );
            let path = String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "cargo deb printed no package path: {}",
                text(&out)
            );
            path
        })
        .collect()
}

fn dpkg_status(pkg: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn purge() {
    let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
}

#[test]
fn the_packages_build_lint_install_verify_and_purge() {
    if lacks("cargo-deb", NAME) || lacks("dpkg-deb", NAME) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let debs = build(out.path());
    for deb in &debs {
        let contents = text(&run(
            Command::new("dpkg-deb").arg("--contents").arg(deb),
            "dpkg-deb --contents",
        ));
        let conffiles = text(&run(
            Command::new("dpkg-deb")
                .args(["--info"])
                .arg(deb)
                .arg("conffiles"),
            "conffiles",
        ));
        let pkg = deb
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split('_')
            .next()
            .unwrap()
            .to_string();
        let short = pkg.trim_start_matches("ferry-");
        for path in [
            format!("./usr/bin/{pkg}"),
            format!("./lib/systemd/system/{pkg}.service"),
            format!("./etc/ferry/{short}.toml"),
        ] {
            assert!(
                contents.contains(&path),
                "{path} not in {}:\n{contents}",
                deb.display()
            );
        }
        assert_eq!(
            conffiles.trim(),
            format!("/etc/ferry/{short}.toml"),
            "{}",
            deb.display()
        );
    }
    if !lacks("lintian", NAME) {
        let out = Command::new("lintian")
            .args(["--tag-display-limit", "0"])
            .args(&debs)
            .output()
            .unwrap();
        let said = text(&out);
        let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E: ")).collect();
        assert!(errors.is_empty(), "lintian errors:\n{said}");
        eprintln!("lintian (warnings allowed):\n{said}");
    }
    install_check_purge(&debs);
}

/// `dpkg -i` (twice: the maintainer scripts again), the checks, then a
/// purge; root only.
fn install_check_purge(debs: &[PathBuf]) {
    if unsafe { libc::geteuid() } != 0 {
        skip(
            NAME,
            "installing with dpkg -i needs root (the build and lint above ran)",
        );
        return;
    }
    purge();
    run(Command::new("dpkg").arg("-i").args(debs), "dpkg -i");
    let installed = check_installed();
    // The maintainer scripts again (a reinstall runs prerm upgrade,
    // postinst configure with the old version): same user, same files.
    run(Command::new("dpkg").arg("-i").args(debs), "dpkg -i again");
    assert_eq!(
        check_installed(),
        installed,
        "a reinstall changed the ferry user"
    );
    // The operator edits a conffile: purge still removes it. (Only a
    // comment: agents of other tests running meanwhile read this default
    // path, and must not be steered by it.)
    let mut edited = std::fs::read_to_string("/etc/ferry/agent.toml").unwrap();
    edited.push_str("# edited by the operator\n");
    std::fs::write("/etc/ferry/agent.toml", edited).unwrap();
    run(
        Command::new("dpkg").arg("--purge").args(PACKAGES),
        "dpkg --purge",
    );
    for p in PACKAGES {
        assert!(
            !dpkg_status(p).contains("installed"),
            "{p}: {}",
            dpkg_status(p)
        );
        let short = p.trim_start_matches("ferry-");
        for path in [
            format!("/usr/bin/{p}"),
            format!("/lib/systemd/system/{p}.service"),
            format!("/etc/ferry/{short}.toml"),
        ] {
            assert!(!Path::new(&path).exists(), "{path} left after purge");
        }
    }
}

/// Files, conffiles, the user, verified units and no running service;
/// returns the user's passwd line.
fn check_installed() -> String {
    for p in PACKAGES {
        assert_eq!(dpkg_status(p), "install ok installed", "{p}");
        let short = p.trim_start_matches("ferry-");
        let v = run(
            Command::new(format!("/usr/bin/{p}")).arg("--version"),
            &format!("{p} --version"),
        );
        assert!(text(&v).contains(p), "{}", text(&v));
        let conf = std::fs::read_to_string(format!("/etc/ferry/{short}.toml")).unwrap();
        assert_eq!(
            conf,
            std::fs::read_to_string(root().join(format!("config/{short}.toml"))).unwrap()
        );
    }
    let passwd = text(&run(
        Command::new("getent").args(["passwd", "ferry"]),
        "getent passwd ferry",
    ));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "ferry is not a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    run(
        Command::new("getent").args(["group", "ferry"]),
        "getent group ferry",
    );
    if lacks("systemd-analyze", NAME) {
        return passwd;
    }
    let units: Vec<String> = PACKAGES
        .iter()
        .map(|p| format!("/lib/systemd/system/{p}.service"))
        .collect();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // verify prints problems of the units it was given by their path. The
    // agent's growing restart delay needs systemd 254; older ones say they
    // ignore its two keys, as the unit expects.
    let newer = [
        "Unknown key 'RestartSteps'",
        "Unknown key 'RestartMaxDelaySec'",
    ];
    for u in &units {
        let problems: Vec<&str> = said
            .lines()
            .filter(|l| l.contains(u.as_str()) && !newer.iter().any(|k| l.contains(k)))
            .collect();
        assert!(
            problems.is_empty(),
            "systemd-analyze verify complains about {u}:\n{said}"
        );
    }
    if Path::new("/run/systemd/system").exists() {
        for p in PACKAGES {
            let st = Command::new("systemctl")
                .args(["is-active", p])
                .output()
                .unwrap();
            assert!(!st.status.success(), "{p} started before it was configured");
        }
    }
    passwd
}
