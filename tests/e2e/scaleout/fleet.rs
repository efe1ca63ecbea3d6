//! Devices shipping to the scale-out stack: one real `ferry-agent run` per
//! device, pointed at nginx, with work added as the test goes; and the one
//! definition of "everything arrived exactly once" against the bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use ferry_tests::s3::key_sha;
use ferry_tests::scaleout::Stack;
use ferry_tests::{sha256_hex, signal, wait_exit, Spool};

use crate::reliability::{small_episode, start_agent};

use super::assert_rows_have_their_objects;

struct Device {
    name: String,
    spool: Spool,
    agent: Child,
    log: PathBuf,
    ids: Vec<String>,
}

/// Agents shipping through the stack's balancer.
pub(crate) struct Fleet {
    devices: Vec<Device>,
    seed: u64,
    _logs: tempfile::TempDir,
}

impl Fleet {
    /// `n` devices, each registered and running `ferry-agent run`.
    pub(crate) fn start(stack: &Stack, n: usize) -> Fleet {
        let logs = tempfile::tempdir().unwrap();
        let devices = (0..n)
            .map(|d| {
                let name = format!("fleet-{d}");
                let spool = Spool::with_token(stack.url(), &stack.add_device(&name));
                let log = logs.path().join(format!("{name}.log"));
                let agent = start_agent(&spool, &log);
                Device {
                    name,
                    spool,
                    agent,
                    log,
                    ids: Vec::new(),
                }
            })
            .collect();
        Fleet {
            devices,
            seed: 0x5ca1_e007,
            _logs: logs,
        }
    }

    /// `per_device` new small episodes on every device.
    pub(crate) fn add(&mut self, per_device: usize) {
        for dev in &mut self.devices {
            for _ in 0..per_device {
                let id = format!("ep-{:05}", dev.ids.len());
                self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                small_episode(&dev.spool, &id, self.seed >> 11);
                dev.ids.push(id);
            }
        }
    }

    /// Episodes produced and not yet retired, over all devices.
    pub(crate) fn pending(&self) -> usize {
        self.devices
            .iter()
            .map(|d| d.spool.ids_in("episodes").len())
            .sum()
    }

    pub(crate) fn produced(&self) -> usize {
        self.devices.iter().map(|d| d.ids.len()).sum()
    }

    /// Wait until every device has shipped all it has (`within`), then
    /// stop the agents with SIGTERM (a clean exit each).
    pub(crate) fn finish(&mut self, within: Duration) {
        let start = Instant::now();
        while self.pending() > 0 {
            if start.elapsed() > within {
                let logs: Vec<String> = self
                    .devices
                    .iter()
                    .map(|d| {
                        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!("{} (newest first):\n{}", d.name, tail.join("\n"))
                    })
                    .collect();
                panic!(
                    "{} episodes still pending after {within:?}; agent logs:\n{}",
                    self.pending(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for dev in &mut self.devices {
            signal(dev.agent.id(), libc::SIGTERM);
            let st = wait_exit(&mut dev.agent, Duration::from_secs(60));
            assert!(st.success(), "{}: agent exit after SIGTERM: {st}", dev.name);
        }
    }

    /// Everything produced arrived exactly once and intact:
    /// - each device has every episode in `shipped/`, nothing pending,
    ///   quarantined, in conflict or left in `outbox/`;
    /// - the index has exactly one row per shipped episode of each device
    ///   and no other, with the sha256 of a fresh pack of the shipped
    ///   directory;
    /// - that object is in the bucket and, unpacked by the system's zstd
    ///   and tar, is the shipped directory;
    /// - every row has its object, every object hashes to its key.
    pub(crate) fn assert_delivered(&self, stack: &Stack) {
        let rows = assert_rows_have_their_objects(stack);
        let keys: BTreeMap<String, String> = stack
            .objects()
            .into_iter()
            .map(|o| (key_sha(&o.key).to_string(), o.key))
            .collect();
        for dev in &self.devices {
            let spool = &dev.spool;
            let shipped: BTreeSet<String> = spool.ids_in("shipped").into_iter().collect();
            let ids: BTreeSet<String> = dev.ids.iter().cloned().collect();
            assert_eq!(
                shipped, ids,
                "{}: shipped/ differs from what was produced",
                dev.name
            );
            for sub in ["episodes", "quarantine", "conflict", "outbox"] {
                assert_eq!(
                    spool.ids_in(sub),
                    Vec::<String>::new(),
                    "{}: {sub}/",
                    dev.name
                );
            }
            let stored: BTreeSet<String> = rows
                .keys()
                .filter(|(d, _)| d == &dev.name)
                .map(|(_, id)| id.clone())
                .collect();
            assert_eq!(
                stored, ids,
                "{}: rows differ from shipped episodes",
                dev.name
            );
            let unpack = tempfile::tempdir().unwrap();
            for id in &dev.ids {
                let sha = &rows[&(dev.name.clone(), id.clone())];
                let dir = spool.path().join("shipped").join(id);
                assert_eq!(
                    sha,
                    &ferry_tests::pack_sha(&dir),
                    "{}/{id}: sha256",
                    dev.name
                );
                let key = keys
                    .get(sha)
                    .unwrap_or_else(|| panic!("{}/{id}: no object {sha}", dev.name));
                let bytes = stack.s3.get(key).expect("listed object");
                assert_eq!(&sha256_hex(&bytes), sha);
                let archive = unpack.path().join(format!("{id}.tar.zst"));
                std::fs::write(&archive, &bytes).unwrap();
                ferry_tests::assert_archive_is_episode(&archive, &dir, "scaleout fleet");
            }
        }
        assert_eq!(
            rows.len(),
            self.produced(),
            "rows besides the fleet's episodes"
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for dev in &mut self.devices {
            let _ = dev.agent.kill();
            let _ = dev.agent.wait();
        }
    }
}
