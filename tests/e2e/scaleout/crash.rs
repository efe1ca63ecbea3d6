//! Replicas die and restart while real agents ship through nginx: `kill -9`
//! of one replica after another, over and over, and a rolling restart
//! (SIGTERM, start again) of every replica. Nothing acknowledged is lost
//! or duplicated ([`super::fleet::Fleet::assert_delivered`]), with the
//! collector running eagerly all along.

use std::time::{Duration, Instant};

use ferry_tests::scaleout::{Options, Stack};

use super::fleet::Fleet;
use super::{status_counts, EAGER_COLLECTOR};

const REPLICAS: usize = 3;
const DEVICES: usize = 3;

/// The stack with the collector eager, and the fleet's agents running.
fn fleet_on_a_stack(test: &str) -> Option<(Stack, Fleet)> {
    let mut opts = Options::replicas(REPLICAS);
    for (k, v) in EAGER_COLLECTOR {
        opts = opts.env(k, v);
    }
    let stack = Stack::start(test, opts)?;
    stack
        .replicas
        .cli_ok(["commits", "allow", ferry_tests::COMMIT_A, "--head"]);
    let fleet = Fleet::start(&stack, DEVICES);
    Some((stack, fleet))
}

/// xorshift64: reproducible pauses.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn agents_lose_nothing_while_replicas_are_killed_and_restarted_over_and_over() {
    let test = "agents_lose_nothing_while_replicas_are_killed_and_restarted_over_and_over";
    let _load = ferry_tests::heavy();
    let Some((mut stack, mut fleet)) = fleet_on_a_stack(test) else {
        return;
    };
    let started = Instant::now();
    let mut rng = 0x6b11_1e57_u64;
    // Until 12 kills have landed while episodes were pending (at most 30):
    // a kill on an idle stack proves nothing.
    let (mut kills, mut with_work) = (0, 0);
    while with_work < 12 && kills < 30 {
        fleet.add(4);
        std::thread::sleep(Duration::from_millis(20 + next(&mut rng) % 200));
        if fleet.pending() > 0 {
            with_work += 1;
        }
        let victim = kills % REPLICAS;
        stack.replicas.kill9(victim);
        std::thread::sleep(Duration::from_millis(100 + next(&mut rng) % 400));
        stack.replicas.restart(victim);
        kills += 1;
    }
    fleet.finish(Duration::from_secs(90));
    fleet.assert_delivered(&stack);
    assert!(
        with_work >= 12,
        "only {with_work} of {kills} kills landed with work pending"
    );
    eprintln!(
        "kill -9 of replicas: {} episodes from {DEVICES} devices, {kills} kills ({with_work} \
         with work pending), nginx statuses {:?}, {:?}; 0 lost, 0 duplicated; between \
         nginx and the replicas: {:#?}",
        fleet.produced(),
        status_counts(&stack),
        started.elapsed(),
        stack.lb.upstream_trouble()
    );
}

#[test]
fn a_rolling_restart_of_every_replica_under_load_loses_nothing() {
    let test = "a_rolling_restart_of_every_replica_under_load_loses_nothing";
    let _load = ferry_tests::heavy();
    let Some((mut stack, mut fleet)) = fleet_on_a_stack(test) else {
        return;
    };
    let started = Instant::now();
    fleet.add(10);
    // Twice round: every replica is stopped while the others carry the
    // load and started again before the next one goes.
    let mut with_work = 0;
    for round in 0..2 * REPLICAS {
        let i = round % REPLICAS;
        fleet.add(5);
        if fleet.pending() > 0 {
            with_work += 1;
        }
        let st = stack.replicas.sigterm(i, Duration::from_secs(30));
        assert!(st.success(), "replica {i}: exit after SIGTERM: {st}");
        fleet.add(3);
        stack.replicas.restart(i);
        std::thread::sleep(Duration::from_millis(300));
    }
    fleet.finish(Duration::from_secs(90));
    fleet.assert_delivered(&stack);
    assert!(
        with_work >= REPLICAS,
        "only {with_work} restarts landed with work pending"
    );
    eprintln!(
        "rolling restart: {} episodes from {DEVICES} devices over {} restarts ({with_work} with \
         work pending), nginx statuses {:?}, {:?}; 0 lost, 0 duplicated; between nginx and \
         the replicas: {:#?}",
        fleet.produced(),
        2 * REPLICAS,
        status_counts(&stack),
        started.elapsed(),
        stack.lb.upstream_trouble()
    );
}
