//! Classes 3 and 4: a producer that keeps changing an episode while the
//! agent packs it, to leak another file into the archive or to have a
//! torn file shipped.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::{exit_within, noise, pack_sha, stored, Receiver, Spool, COMMIT_A};

use super::{contains, secret, unzstd};
use crate::agent::small;

/// Swap `data.bin` between a regular file, a symlink to `secret` and a
/// FIFO, each by an atomic rename, until `stop`.
fn swapper(dir: &Path, secret: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (dir, secret) = (dir.to_owned(), secret.to_owned());
    std::thread::spawn(move || {
        let (data, tmp) = (dir.join("data.bin"), dir.join(".swap"));
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&tmp);
            match i % 3 {
                // Smaller than the secret: read through the symlink, the secret
                // fills the size the walk saw.
                0 => std::fs::write(&tmp, vec![b'A'; 100]).unwrap(),
                1 => symlink(&secret, &tmp).unwrap(),
                _ => {
                    let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
                    // SAFETY: a valid NUL-terminated path.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                }
            }
            std::fs::rename(&tmp, &data).unwrap();
            i += 1;
            std::thread::sleep(Duration::from_micros(200 + i % 7 * 100));
        }
    })
}

/// Class 3. The walk checked an entry with `lstat`, then the pack opened it
/// by name, following symlinks: a file swapped for a symlink to a secret in
/// between put the secret's bytes into the archive (4 of 60 tries), and a
/// FIFO swapped in blocked the pack. Now every entry is opened below a
/// directory descriptor with `O_NOFOLLOW|O_NONBLOCK` and must be the inode
/// the walk saw: the secret never appears, and no pack hangs.
#[test]
fn a_file_swapped_for_a_symlink_while_packed_never_leaks_its_target() {
    if ferry_tests::lacks(
        "zstd",
        "a_file_swapped_for_a_symlink_while_packed_never_leaks_its_target",
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (secret_path, marker) = secret(work.path(), "shadow");
    let dir = work.path().join("swap");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..200 {
        std::fs::write(dir.join(format!("sub/f{i:03}")), noise(i, 2048)).unwrap();
    }
    std::fs::write(dir.join("data.bin"), vec![b'A'; 100]).unwrap();
    std::fs::write(dir.join("done.marker"), b"").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapping = swapper(&dir, &secret_path, stop.clone());
    let (mut packed, mut refused) = (0, 0);
    let t0 = Instant::now();
    for n in 0..150 {
        let out = work.path().join(format!("o{n}.tar.zst"));
        let mut child = std::process::Command::new(ferry_tests::bin("ferry-agent"))
            .arg("pack")
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let status = exit_within(&mut child, Duration::from_secs(20), "pack", &|| {
            "a pack blocked (a FIFO swapped in?)".into()
        });
        if !status.success() {
            refused += 1;
            continue;
        }
        packed += 1;
        let bytes = unzstd(&out);
        assert!(!bytes.is_empty(), "undecodable archive {n}");
        assert!(
            !contains(&bytes, &marker[..64]),
            "try {n}: the secret's bytes are in the archive ({packed} packed, {refused} refused so far)"
        );
        std::fs::remove_file(&out).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    swapping.join().unwrap();
    eprintln!(
        "150 packs under swapping in {:?}: {packed} consistent archives, {refused} refused as changed",
        t0.elapsed()
    );
}

/// Class 4. A file that grew while packed was cut at its `stat` size and
/// shipped so; a later pack gives another digest (a 409 waiting to
/// happen). Now a change seen during the pack (size, mtime, ctime of each
/// file after reading it; each directory's after the last file) makes the
/// episode not ready for this pass, without a strike and without packing
/// in a hot loop; what ships is the episode as it finally is.
#[test]
fn a_file_changing_while_packed_is_never_shipped_torn() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-grow");
    let dir = small(&spool, "grow", 1);
    let big = dir.join("big.bin");
    std::fs::write(&big, noise(9, 48 << 20)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (big, stop) = (big.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
            let t0 = Instant::now();
            let mut k = 0;
            while t0.elapsed() < Duration::from_secs(4) && !stop.load(Ordering::Relaxed) {
                f.write_all(&noise(100 + k, 64 << 10)).unwrap();
                k += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("agent.log");
    let mut child = spool
        .agent("drain")
        .args(["--timeout", "120s"])
        .env("FERRY_AGENT_SCAN_INTERVAL", "300ms")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let status = exit_within(&mut child, Duration::from_secs(90), "drain", &read_log);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(status.success(), "{status}: {}", read_log());
    let final_sha = pack_sha(&spool.path().join("shipped/grow"));
    assert_eq!(
        stored(&rx).get("grow"),
        Some(&final_sha),
        "the shipped archive is not the episode as it finally is; log:\n{}",
        read_log()
    );
    let l = read_log();
    let passes = l.matches("changed while being packed").count();
    assert!(passes >= 1, "the change was never seen: {l}");
    // About one pass per scan interval while the writer runs (4 s).
    assert!(passes <= 30, "{passes} passes: packing in a hot loop: {l}");
}
