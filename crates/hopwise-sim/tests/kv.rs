//! The key-value store on every node of a simulated PlanetLab network.

mod common;

use hopwise_proto::kv::{EventKind, KvError, KvEvent, OpId};
use hopwise_proto::{Duration, Instant};
use hopwise_sim::{SimConfig, Simulation};

fn at(secs: i64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

/// A routed 50-node network (every node has a route to every other).
fn routed() -> Simulation {
    let mut sim = Simulation::new(common::bundled_planetlab(), &SimConfig::default());
    sim.run_until(at(40));
    sim
}

fn written(sim: &mut Simulation, node: usize, op: OpId) -> Option<Result<u64, KvError>> {
    sim.kv_events(node)
        .into_iter()
        .find_map(|(_, event)| match event {
            KvEvent::Written { op: done, result } if done == op => Some(result),
            _ => None,
        })
}

/// Sub-keys and values.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Runs the simulation in 10 ms steps until `pick` finds the answer it waits for among
/// `node`'s store events (at most 4 s).
fn answer<T>(sim: &mut Simulation, node: usize, mut pick: impl FnMut(KvEvent) -> Option<T>) -> T {
    let until = sim.now() + Duration::from_secs(4);
    while sim.now() < until {
        let step = sim.now() + Duration::from_millis(10);
        sim.run_until(step);
        if let Some(found) = sim.kv_events(node).into_iter().find_map(|(_, e)| pick(e)) {
            return found;
        }
    }
    panic!("no answer from node {node}'s store");
}

fn read(sim: &mut Simulation, node: usize, key: &[u8]) -> Result<Entries, KvError> {
    let op = sim
        .with_kv(node, |kv, now| kv.get(now, key, None))
        .unwrap()
        .unwrap();
    answer(sim, node, |event| match event {
        KvEvent::Read { op: done, result } if done == op => {
            Some(result.map(|entries| entries.into_iter().map(|e| (e.sub, e.value)).collect()))
        }
        _ => None,
    })
}

fn set(
    sim: &mut Simulation,
    node: usize,
    key: &[u8],
    sub: &[u8],
    value: &[u8],
) -> Result<u64, KvError> {
    write(sim, node, key, sub, value, false)
}

/// Sets `sub` of `key` from `node`, ephemeral (alive while its writer is) or not, and waits
/// for the answer.
fn write(
    sim: &mut Simulation,
    node: usize,
    key: &[u8],
    sub: &[u8],
    value: &[u8],
    ephemeral: bool,
) -> Result<u64, KvError> {
    let op = sim
        .with_kv(node, |kv, now| {
            kv.set(now, key, sub, value, None, ephemeral)
        })
        .unwrap()
        .unwrap();
    answer(sim, node, |event| match event {
        KvEvent::Written { op: done, result } if done == op => Some(result),
        _ => None,
    })
}

#[test]
fn a_value_set_on_one_node_is_read_on_every_other() {
    let mut sim = routed();
    set(&mut sim, 3, b"colour", b"n3", b"blue").unwrap();
    for node in 0..sim.len() {
        let entries = read(&mut sim, node, b"colour").unwrap();
        assert_eq!(
            entries,
            vec![(b"n3".to_vec(), b"blue".to_vec())],
            "node {node}"
        );
    }
    let holders = (0..sim.len())
        .filter(|&i| sim.kv(i).unwrap().store().get(b"colour").is_some())
        .count();
    assert_eq!(
        holders, 3,
        "the key is on its three replicas and nowhere else"
    );
}

#[test]
fn only_the_writer_changes_its_entry() {
    let mut sim = routed();
    set(&mut sim, 3, b"k", b"s", b"mine").unwrap();
    assert_eq!(
        set(&mut sim, 4, b"k", b"s", b"theirs"),
        Err(KvError::NotOwner)
    );
    let del = sim
        .with_kv(4, |kv, now| kv.del(now, b"k", b"s"))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now() + Duration::from_secs(1));
    assert_eq!(written(&mut sim, 4, del), Some(Err(KvError::NotOwner)));
    assert_eq!(
        read(&mut sim, 9, b"k").unwrap(),
        vec![(b"s".to_vec(), b"mine".to_vec())]
    );
    set(&mut sim, 3, b"k", b"s", b"changed").unwrap();
    assert_eq!(
        read(&mut sim, 9, b"k").unwrap(),
        vec![(b"s".to_vec(), b"changed".to_vec())]
    );
    let too_long = vec![b'x'; 1_025];
    assert!(matches!(
        sim.with_kv(3, |kv, now| kv.set(now, b"k", b"s", &too_long, None, false))
            .unwrap(),
        Err(KvError::TooLarge { .. })
    ));
}

#[test]
fn a_key_survives_losing_two_of_its_three_replicas_and_is_back_on_three_within_10_s() {
    let mut sim = routed();
    set(&mut sim, 0, b"precious", b"n0", b"data").unwrap();
    let replicas = sim.kv(0).unwrap().replicas_of(b"precious");
    let index: Vec<usize> = replicas
        .iter()
        .map(|id| sim.index_of_id(id).unwrap())
        .collect();
    let reader = (0..sim.len()).find(|i| !index.contains(i)).unwrap();
    sim.stop_node(index[0]);
    sim.stop_node(index[1]);
    let killed = sim.now();
    assert_eq!(
        read(&mut sim, reader, b"precious").unwrap(),
        vec![(b"n0".to_vec(), b"data".to_vec())]
    );
    let mut back_after = None;
    while sim.now() < killed + Duration::from_secs(30) {
        sim.run_until(sim.now() + Duration::from_millis(250));
        let live_holders = (0..sim.len())
            .filter(|&i| {
                sim.kv(i)
                    .is_some_and(|kv| kv.store().get(b"precious").is_some())
            })
            .count();
        if live_holders >= 3 {
            back_after = Some(sim.now() - killed);
            break;
        }
    }
    let back_after = back_after.expect("the key is back on three live replicas");
    eprintln!("back on three live replicas after {back_after:?}");
    assert!(
        back_after <= Duration::from_secs(10),
        "back on three after {back_after:?}"
    );
}

#[test]
fn a_replica_that_leaves_hands_its_keys_to_the_member_taking_its_place() {
    let mut sim = routed();
    let key = b"handed-over";
    let writer = 0;
    set(&mut sim, writer, key, b"sub", b"value").unwrap();
    // Let the write reach all three replicas (W is two).
    sim.run_until(sim.now() + Duration::from_secs(2));
    let holders: Vec<usize> = (0..sim.len())
        .filter(|&i| sim.kv(i).is_some_and(|kv| kv.store().get(key).is_some()))
        .collect();
    assert_eq!(holders.len(), 3, "{holders:?}");
    let leaving = *holders.iter().find(|&&i| i != writer).unwrap();
    sim.with_kv(leaving, |kv, now| kv.leave(now)).unwrap();
    // The runner gives the leaving node's last messages up to a second (LEAVE_LINGER).
    sim.run_until(sim.now() + Duration::from_secs(1));
    // Then every other copy goes at once: the other replicas and the writer, which would
    // otherwise place its own entry again.
    for &node in holders.iter().chain([&writer]) {
        sim.stop_node(node);
    }
    let reader = (0..sim.len()).find(|i| sim.kv(*i).is_some()).unwrap();
    let gone = sim.now();
    let mut entries: Result<Entries, KvError> = Err(KvError::TimedOut);
    while sim.now() < gone + Duration::from_secs(15)
        && !matches!(&entries, Ok(found) if !found.is_empty())
    {
        entries = read(&mut sim, reader, key);
    }
    assert_eq!(
        entries.unwrap(),
        vec![(b"sub".to_vec(), b"value".to_vec())],
        "the entry left with its three replicas"
    );
}

#[test]
fn a_watch_sees_set_del_and_expire_in_version_order() {
    let mut sim = routed();
    let watch = sim
        .with_kv(7, |kv, now| kv.watch(now, b"w"))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now() + Duration::from_secs(1));
    set(&mut sim, 1, b"w", b"a", b"1").unwrap();
    let op = sim
        .with_kv(2, |kv, now| {
            kv.set(now, b"w", b"b", b"2", Some(Duration::from_secs(3)), false)
        })
        .unwrap()
        .unwrap();
    sim.run_until(sim.now() + Duration::from_secs(1));
    assert!(matches!(written(&mut sim, 2, op), Some(Ok(_))));
    let del = sim
        .with_kv(1, |kv, now| kv.del(now, b"w", b"a"))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now() + Duration::from_secs(6));
    assert!(matches!(written(&mut sim, 1, del), Some(Ok(_))));
    let events: Vec<(EventKind, Vec<u8>)> = sim
        .kv_events(7)
        .into_iter()
        .filter_map(|(_, e)| match e {
            KvEvent::Watched {
                watch: w,
                kind,
                entry,
                ..
            } if w == watch => Some((kind, entry.sub)),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            (EventKind::Set, b"a".to_vec()),
            (EventKind::Set, b"b".to_vec()),
            (EventKind::Del, b"a".to_vec()),
            (EventKind::Expire, b"b".to_vec()),
        ]
    );
    assert_eq!(sim.kv(7).unwrap().watched(watch), Some(Vec::new()));
}

#[test]
fn an_ephemeral_entry_expires_within_10_s_of_its_writer_crashing() {
    let mut sim = routed();
    let op = sim
        .with_kv(3, |kv, now| {
            kv.set(now, b"presence", b"n3", b"here", None, true)
        })
        .unwrap()
        .unwrap();
    sim.run_until(sim.now() + Duration::from_secs(1));
    assert!(matches!(written(&mut sim, 3, op), Some(Ok(_))));
    assert_eq!(read(&mut sim, 9, b"presence").unwrap().len(), 1);
    sim.stop_node(3);
    let crashed = sim.now();
    let live_copies = |sim: &Simulation| {
        (0..sim.len())
            .filter_map(|i| sim.kv(i)?.store().get_sub(b"presence", b"n3").cloned())
            .filter(|stored| stored.is_live())
            .count()
    };
    while live_copies(&sim) > 0 {
        assert!(
            sim.now() - crashed <= Duration::from_secs(10),
            "still live 10 s after the crash"
        );
        sim.run_until(sim.now() + Duration::from_millis(100));
    }
    eprintln!(
        "gone from every replica {:?} after its writer crashed",
        sim.now() - crashed
    );
    assert_eq!(read(&mut sim, 9, b"presence").unwrap(), Vec::new());
}

#[test]
fn a_member_writing_10000_entries_a_second_is_refused_and_the_others_keep_working() {
    let mut sim = routed();
    let flooder = 5;
    let flood_started = sim.now();
    let mut ops = Vec::new();
    let mut refused_at_once = 0;
    for step in 0..100 {
        for i in 0..100 {
            let sub = format!("s{step}-{i}");
            match sim
                .with_kv(flooder, |kv, now| {
                    kv.set(now, b"flood", sub.as_bytes(), b"x", None, false)
                })
                .unwrap()
            {
                Ok(op) => ops.push(op),
                Err(error) => {
                    assert_eq!(error, KvError::Busy);
                    refused_at_once += 1;
                }
            }
        }
        sim.run_until(sim.now() + Duration::from_millis(10));
    }
    // Meanwhile another member writes and reads as usual.
    assert!(set(&mut sim, 6, b"calm", b"n6", b"fine").is_ok());
    assert_eq!(
        read(&mut sim, 7, b"calm").unwrap(),
        vec![(b"n6".to_vec(), b"fine".to_vec())]
    );
    sim.run_until(sim.now() + Duration::from_secs(4));
    let results: Vec<Result<u64, KvError>> = sim
        .kv_events(flooder)
        .into_iter()
        .filter_map(|(_, event)| match event {
            KvEvent::Written { result, .. } => Some(result),
            _ => None,
        })
        .collect();
    let limited = results
        .iter()
        .filter(|r| **r == Err(KvError::RateLimited))
        .count();
    let stored = results.iter().filter(|r| r.is_ok()).count();
    eprintln!(
        "{refused_at_once} refused at once (busy), {limited} rate limited, {stored} stored of 10000"
    );
    assert!(
        refused_at_once + limited > 9_000,
        "the flood was mostly refused"
    );
    // No other replica holds more of the flooder's entries than the replicas' rates let in
    // since the flood began (retries of refused writes go on for 3 s; repair then gives each
    // replica what the others took), nor more than a writer's share of a store. The flooder's
    // own copy, if it is a replica, is its own business.
    let most = (0..sim.len())
        .filter(|&i| i != flooder)
        .filter_map(|i| sim.kv(i))
        .map(|kv| kv.store().get(b"flood").map_or(0, |subs| subs.len()))
        .max()
        .unwrap();
    let config = sim.kv(0).unwrap().config().clone();
    let (rate, replicas) = (config.writer_rate, config.replicas as f64);
    let elapsed = (sim.now() - flood_started).as_secs_f64();
    assert!(
        (most as f64) <= replicas * (rate.burst + rate.per_second * elapsed)
            && most <= config.limits.max_entries_per_writer,
        "a replica holds {most} of the flood in {elapsed:.1} s"
    );
}

#[test]
fn a_full_store_refuses_with_a_clear_error_and_stores_nothing_beyond_its_bound() {
    let mut config = SimConfig::default();
    config.kv.limits.max_entries = 20;
    let mut sim = Simulation::new(common::bundled_planetlab(), &config);
    sim.run_until(at(40));
    let mut full = 0;
    for i in 0..40 {
        let sub = format!("s{i}");
        if set(&mut sim, 2, b"one-key", sub.as_bytes(), b"v") == Err(KvError::StoreFull) {
            full += 1;
        }
    }
    assert_eq!(full, 20, "the first 20 fit, the rest are refused");
    let most = (0..sim.len())
        .filter_map(|i| sim.kv(i))
        .map(|kv| kv.store().entries())
        .max()
        .unwrap();
    assert_eq!(most, 20);
}

#[test]
fn entries_written_before_any_route_reach_their_replicas() {
    let mut sim = Simulation::new(
        common::bundled_planetlab().truncated(30),
        &SimConfig::default(),
    );
    // Every node claims a name as soon as it runs, alone in its view.
    let mut claimed = vec![false; sim.len()];
    while claimed.iter().any(|c| !c) {
        sim.run_until(sim.now() + Duration::from_millis(50));
        for (node, done) in claimed.iter_mut().enumerate() {
            if !*done && sim.is_running(node) {
                let key = format!("alias/n{node}");
                sim.with_kv(node, |kv, now| {
                    kv.set(now, key.as_bytes(), b"me", b"", None, true)
                })
                .unwrap()
                .unwrap();
                *done = true;
            }
        }
    }
    sim.run_until(at(45));
    for node in 0..sim.len() {
        let key = format!("alias/n{node}");
        let reader = (node + 7) % sim.len();
        let entries = read(&mut sim, reader, key.as_bytes()).unwrap();
        let holders: Vec<(usize, String)> = (0..sim.len())
            .filter_map(|i| {
                Some((
                    i,
                    format!(
                        "{:?}",
                        sim.kv(i).unwrap().store().get_sub(key.as_bytes(), b"me")?
                    ),
                ))
            })
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "{key} unreadable; held by {holders:?}, replicas {:?}",
            sim.kv(0)
                .unwrap()
                .replicas_of(key.as_bytes())
                .iter()
                .map(|id| sim.index_of_id(id).unwrap())
                .collect::<Vec<_>>()
        );
    }
}

/// A routed network, and the replicas of `key` in node 0's view once a first write of node 0
/// has filled its view of the members.
fn routed_with_replicas_of(key: &[u8]) -> (Simulation, Vec<usize>) {
    let mut sim = routed();
    set(&mut sim, 0, b"other", b"n0", b"").unwrap();
    let replicas = sim
        .kv(0)
        .unwrap()
        .replicas_of(key)
        .iter()
        .map(|id| sim.index_of_id(id).unwrap())
        .collect();
    (sim, replicas)
}

#[test]
fn a_replica_that_missed_a_write_does_not_read_the_entry_as_missing() {
    let (mut sim, replicas) = routed_with_replicas_of(b"claimed");
    let missing = *replicas.iter().find(|index| **index != 0).unwrap();
    let rtt = |a: usize, b: usize| sim.matrix().rtt_ms(a, b).unwrap_or(f64::INFINITY);
    // A reader whose nearest replica is the one that misses the write.
    let reader = (0..sim.len())
        .filter(|node| !replicas.contains(node))
        .filter(|node| {
            let others = replicas.iter().filter(|r| **r != missing);
            others
                .map(|r| rtt(*node, *r))
                .all(|far| rtt(*node, missing) < far)
        })
        .min_by(|a, b| rtt(*a, missing).total_cmp(&rtt(*b, missing)))
        .expect("a reader nearest to that replica");
    // Cut off while the write goes out: the other two acknowledge it, which is enough, and
    // until the writer's next attempt reaches it, it is the one replica without the entry.
    let mut side = vec![false; sim.len()];
    side[missing] = true;
    sim.network_mut().partition(side);
    set(&mut sim, 0, b"claimed", b"n0", b"mine").unwrap();
    sim.network_mut().heal();
    assert!(
        sim.kv(missing).unwrap().store().get(b"claimed").is_none(),
        "the cut-off replica missed the write"
    );
    assert_eq!(
        read(&mut sim, reader, b"claimed"),
        Ok(vec![(b"n0".to_vec(), b"mine".to_vec())])
    );
}

#[test]
fn an_ephemeral_entry_stays_live_on_a_replica_its_writer_does_not_count() {
    let (mut sim, replicas) = routed_with_replicas_of(b"claimed");
    let silent = *replicas.iter().find(|index| **index != 0).unwrap();
    let claim = |sim: &mut Simulation, value: &[u8]| {
        write(sim, 0, b"claimed", b"n0", value, true).unwrap();
    };
    // A replica cut off during a write stays silent until the writer suspects it...
    let mut side = vec![false; sim.len()];
    side[silent] = true;
    sim.network_mut().partition(side);
    claim(&mut sim, b"first");
    sim.run_until(sim.now() + Duration::from_secs(2));
    sim.network_mut().heal();
    // ...so the writer's next write leaves it out (and renews the entry's lease on the others
    // only), while the other nodes still count it among the key's replicas and repair gives
    // it a copy.
    claim(&mut sim, b"mine");
    assert!(
        !sim.kv(0)
            .unwrap()
            .replicas_of(b"claimed")
            .contains(&sim.id_of(silent)),
        "the writer no longer counts the cut-off replica"
    );
    // Well past the lease's lifetime: the writer is alive, so its entry is live everywhere.
    sim.run_until(sim.now() + Duration::from_secs(20));
    for reader in 0..sim.len() {
        assert_eq!(
            read(&mut sim, reader, b"claimed"),
            Ok(vec![(b"n0".to_vec(), b"mine".to_vec())]),
            "read from node {reader}; the silent replica {silent} holds {:?}",
            sim.kv(silent).unwrap().store().get_sub(b"claimed", b"n0")
        );
    }
}
