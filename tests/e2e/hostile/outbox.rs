//! Class 5: the outbox. A tarball left there is shipped without packing the
//! episode again, so whatever sits under `outbox/<id>.tar.zst` was
//! uploaded as the episode: a symlink's target (`/etc/shadow` was PUT), or
//! any `.zst` (stored with 201).

use std::os::unix::fs::symlink;

use ferry_tests::{pack_sha, stored, Receiver, Spool, COMMIT_A};

use super::secret;
use crate::agent::small;

/// Only a regular file the agent made is shipped: a symlink (to a secret),
/// a hard link to it, an unrelated zstd file and the archive of another
/// episode are each removed (the name, never the target) and the episode
/// packed again; what the receiver stores is each episode's own archive.
#[test]
fn outbox_symlinks_links_and_foreign_files_are_never_shipped() {
    if ferry_tests::lacks(
        "zstd",
        "outbox_symlinks_links_and_foreign_files_are_never_shipped",
    ) {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-outbox");
    let ids = ["via-symlink", "via-hardlink", "plain-zstd", "other-episode"];
    for (i, id) in ids.iter().enumerate() {
        small(&spool, id, i as u64);
    }
    let (shadow, bytes) = secret(spool.path(), "shadow");
    let outbox = |id: &str| spool.path().join("outbox").join(format!("{id}.tar.zst"));
    symlink(&shadow, outbox("via-symlink")).unwrap();
    std::fs::hard_link(&shadow, outbox("via-hardlink")).unwrap();
    let z = std::process::Command::new("sh")
        .arg("-c")
        .arg("echo not an episode | zstd -q -c > \"$1\"")
        .arg("sh")
        .arg(outbox("plain-zstd"))
        .status()
        .unwrap();
    assert!(z.success());
    let elsewhere = tempfile::tempdir().unwrap();
    let other = ferry_tests::make_episode(elsewhere.path(), "someone-else", Some(COMMIT_A), &[]);
    let made = std::process::Command::new(ferry_tests::bin("ferry-agent"))
        .arg("pack")
        .arg(&other)
        .arg("-o")
        .arg(outbox("other-episode"))
        .output()
        .unwrap();
    assert!(made.status.success());

    let out = spool.drain("60s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let mut all = ids.map(String::from).to_vec();
    all.sort();
    assert_eq!(
        spool.ids_in("shipped"),
        all,
        "not all shipped (the receiver refused what it was sent?): {err}"
    );
    let got = stored(&rx);
    for id in ids {
        let want = pack_sha(&spool.path().join("shipped").join(id));
        assert_eq!(
            got.get(id),
            Some(&want),
            "{id} shipped something else: {err}"
        );
    }
    assert_eq!(
        std::fs::read(&shadow).unwrap(),
        bytes,
        "the secret was touched"
    );
    assert!(
        err.matches("is not a tarball the agent made").count() >= ids.len(),
        "{err}"
    );
}
