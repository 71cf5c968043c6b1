use super::*;
use crate::machine::{Command, Op, Reply};

/// A version 1 snapshot, as the code before lock queues (commit e00fc82)
/// encoded this machine: session 1 of `a@h` (TTL 1000 ms) holding lock
/// `r` (token 2), leadership `e` (term 4) and name `n` (3); session 5 of
/// `b@h`, renewed by entry 6, holding nothing.
const GOLDEN_V1: [u8; 56] = [
    2, 1, 3, 97, 64, 104, 232, 7, 1, 3, 0, 1, 114, 1, 1, 101, 2, 1, 110, 5, 3, 98, 64, 104, 232, 7,
    6, 0, 3, 0, 1, 114, 1, 3, 97, 64, 104, 2, 1, 1, 101, 1, 3, 97, 64, 104, 4, 2, 1, 110, 1, 3, 97,
    64, 104, 3,
];

/// A version 2 snapshot, as the code before names' services (commit
/// 59a02c2) encoded this machine: [`GOLDEN_V1`]'s, with session 5 (`b@h`)
/// waiting for lock `r` (enqueued by entry 7).
const GOLDEN_V2: [u8; 72] = [
    255, 255, 255, 255, 2, 2, 1, 3, 97, 64, 104, 232, 7, 1, 3, 0, 1, 114, 1, 1, 101, 2, 1, 110, 0,
    5, 3, 98, 64, 104, 232, 7, 6, 0, 1, 0, 1, 114, 3, 0, 1, 114, 1, 3, 97, 64, 104, 2, 1, 1, 101,
    1, 3, 97, 64, 104, 4, 2, 1, 110, 1, 3, 97, 64, 104, 3, 1, 0, 1, 114, 1, 5,
];

fn node(s: &str) -> NodeName {
    s.parse().expect("test name")
}

#[test]
fn a_version_1_snapshot_is_read_as_a_machine_with_no_waiters() {
    let mut m = Machine::from_snapshot(&GOLDEN_V1).expect("version 1 is read");
    let a = m.sessions().get(&1).expect("session 1");
    assert_eq!(a.owner, node("a@h"));
    assert_eq!(a.ttl_ms, 1000);
    let held: Vec<Key> = a.held.iter().cloned().collect();
    assert_eq!(
        held,
        [
            Key::Lock("r".into()),
            Key::Leader("e".into()),
            Key::Name("n".into())
        ]
    );
    assert!(a.waiting.is_empty());
    assert_eq!(m.sessions().get(&5).map(|s| s.renewed), Some(6));
    let lock = Key::Lock("r".into());
    assert_eq!(m.holder(&lock).map(|g| g.token), Some(2));
    assert_eq!(m.holder(&Key::Leader("e".into())).map(|g| g.token), Some(4));
    assert_eq!(m.waiters(&lock).count(), 0);
    // It goes on as a machine of today's format: b waits, and a's
    // release hands the lock over.
    let from = node("b@h");
    let enqueue = Op::Enqueue {
        session: 5,
        key: lock.clone(),
    };
    let queued = m.apply(7, &Command::Client { from, op: enqueue });
    assert!(
        matches!(queued, Reply::Queued { token: 2, .. }),
        "{queued:?}"
    );
    let release = Op::Release {
        session: 1,
        resource: "r".into(),
        token: 2,
    };
    let from = node("a@h");
    assert_eq!(
        m.apply(8, &Command::Client { from, op: release }),
        Reply::Released
    );
    assert_eq!(m.holder(&lock).map(|g| (g.session, g.token)), Some((5, 8)));
}

#[test]
fn a_version_2_snapshot_is_read_with_each_name_standing_for_itself() {
    let m = Machine::from_snapshot(&GOLDEN_V2).expect("version 2 is read");
    let lock = Key::Lock("r".into());
    assert_eq!(m.waiters(&lock).collect::<Vec<_>>(), [5]);
    assert_eq!(m.holder(&lock).map(|g| (g.session, g.token)), Some((1, 2)));
    let (grant, service) = m.name("n").expect("name n");
    assert_eq!((grant.session, grant.token, service), (1, 3, "n"));
    assert_eq!(m.sessions().get(&5).map(|s| s.waiting.len()), Some(1));
    // The same machine as version 1 plus the queue.
    let mut from_v1 = Machine::from_snapshot(&GOLDEN_V1).expect("read");
    let enqueue = Op::Enqueue {
        session: 5,
        key: lock,
    };
    let from = node("b@h");
    from_v1.apply(7, &Command::Client { from, op: enqueue });
    assert_eq!(m, from_v1);
    let mut long = GOLDEN_V2.to_vec();
    long.push(0);
    assert!(matches!(
        Machine::from_snapshot(&long),
        Err(SnapshotError::Malformed { version: 2, .. })
    ));
}

#[test]
fn todays_format_round_trips_with_services() {
    let mut m = Machine::from_snapshot(&GOLDEN_V2).expect("read");
    let register = Op::RegisterService {
        session: 5,
        name: "billing".into(),
        service: "billing.v2".into(),
    };
    let from = node("b@h");
    assert_eq!(
        m.apply(8, &Command::Client { from, op: register }),
        Reply::Registered
    );
    let bytes = m.to_snapshot().expect("encode");
    assert_eq!(bytes[..5], [0xFF, 0xFF, 0xFF, 0xFF, 3]);
    let back = Machine::from_snapshot(&bytes).expect("decode");
    assert_eq!(back, m);
    assert_eq!(back.name("billing").map(|(_, s)| s), Some("billing.v2"));
    assert_eq!(back.name("n").map(|(_, s)| s), Some("n"));
}

#[test]
fn todays_format_round_trips_with_its_queues() {
    let mut m = Machine::from_snapshot(&GOLDEN_V1).expect("read");
    let enqueue = Op::Enqueue {
        session: 5,
        key: Key::Lock("r".into()),
    };
    let from = node("b@h");
    m.apply(7, &Command::Client { from, op: enqueue });
    let bytes = m.to_snapshot().expect("encode");
    assert_eq!(bytes[..5], [0xFF, 0xFF, 0xFF, 0xFF, SNAPSHOT_VERSION]);
    let back = Machine::from_snapshot(&bytes).expect("decode");
    assert_eq!(back, m);
    assert_eq!(
        back.waiters(&Key::Lock("r".into())).collect::<Vec<_>>(),
        [5]
    );
}

#[test]
fn an_unknown_version_or_trailing_bytes_are_refused_by_name() {
    let mut bytes = Machine::default().to_snapshot().expect("encode");
    bytes[4] = SNAPSHOT_VERSION + 1;
    assert_eq!(
        Machine::from_snapshot(&bytes),
        Err(SnapshotError::UnknownVersion {
            found: SNAPSHOT_VERSION + 1
        })
    );
    assert!(matches!(
        Machine::from_snapshot(&SNAPSHOT_MAGIC),
        Err(SnapshotError::Malformed { .. })
    ));
    let mut long = GOLDEN_V1.to_vec();
    long.push(0);
    assert!(matches!(
        Machine::from_snapshot(&long),
        Err(SnapshotError::Malformed { version: 1, .. })
    ));
    // Today's encoding without its header is not taken for version 1.
    let mut m = Machine::from_snapshot(&GOLDEN_V1).expect("read");
    let from = node("b@h");
    let enqueue = Op::Enqueue {
        session: 5,
        key: Key::Lock("r".into()),
    };
    m.apply(7, &Command::Client { from, op: enqueue });
    let headless = postcard::to_allocvec(&m).expect("encode");
    assert!(Machine::from_snapshot(&headless).is_err());
}
