use super::*;

fn node(s: &str) -> NodeName {
    s.parse().expect("test name")
}

/// A machine and the next log index, applying commands as a log would.
struct Log {
    m: Machine,
    next: u64,
}

impl Log {
    fn new() -> Self {
        Self {
            m: Machine::default(),
            next: 1,
        }
    }

    fn apply(&mut self, command: Command) -> Reply {
        let index = self.next;
        self.next += 1;
        self.m.apply(index, &command)
    }

    fn op(&mut self, from: &str, op: Op) -> Reply {
        self.apply(Command::Client {
            from: node(from),
            op,
        })
    }

    fn open(&mut self, from: &str) -> SessionId {
        match self.op(from, Op::OpenSession { ttl_ms: 1000 }) {
            Reply::Opened { session } => session,
            other => panic!("open: {other:?}"),
        }
    }

    fn acquire(&mut self, from: &str, session: SessionId, resource: &str) -> Reply {
        self.op(
            from,
            Op::Acquire {
                session,
                resource: resource.into(),
            },
        )
    }
}

#[test]
fn a_free_lock_is_granted_with_the_index_of_its_entry() {
    let mut log = Log::new();
    let s = log.open("a@h");
    assert_eq!(log.acquire("a@h", s, "r"), Reply::Granted { token: 2 });
    // Asking again is idempotent: same token, no new grant.
    assert_eq!(log.acquire("a@h", s, "r"), Reply::Granted { token: 2 });
}

#[test]
fn a_held_lock_is_refused_to_another_session_until_released() {
    let mut log = Log::new();
    let a = log.open("a@h");
    let b = log.open("b@h");
    let Reply::Granted { token } = log.acquire("a@h", a, "r") else {
        panic!("not granted")
    };
    assert_eq!(
        log.acquire("b@h", b, "r"),
        Reply::Held {
            owner: node("a@h"),
            token
        }
    );
    let release = Op::Release {
        session: a,
        resource: "r".into(),
        token: token + 100,
    };
    assert_eq!(log.op("a@h", release), Reply::NotHeld, "wrong token");
    let release = Op::Release {
        session: a,
        resource: "r".into(),
        token,
    };
    assert_eq!(log.op("a@h", release), Reply::Released);
    match log.acquire("b@h", b, "r") {
        Reply::Granted { token: t } => assert!(t > token, "tokens increase: {t} <= {token}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_node_cannot_use_another_nodes_session() {
    let mut log = Log::new();
    let a = log.open("a@h");
    assert_eq!(log.acquire("b@h", a, "r"), Reply::NotOwner);
    assert_eq!(log.op("b@h", Op::KeepAlive { session: a }), Reply::NotOwner);
    assert_eq!(
        log.op("b@h", Op::CloseSession { session: a }),
        Reply::NotOwner
    );
}

#[test]
fn expiry_releases_everything_and_later_keep_alives_fail() {
    let mut log = Log::new();
    let a = log.open("a@h");
    let b = log.open("b@h");
    log.acquire("a@h", a, "r");
    log.op(
        "a@h",
        Op::Register {
            session: a,
            name: "n".into(),
        },
    );
    log.op(
        "a@h",
        Op::Campaign {
            session: a,
            election: "e".into(),
        },
    );
    assert_eq!(
        log.apply(Command::Expire {
            session: a,
            renewed: a
        }),
        Reply::Ended { released: 3 }
    );
    assert_eq!(
        log.op("a@h", Op::KeepAlive { session: a }),
        Reply::NoSession
    );
    assert!(matches!(log.acquire("b@h", b, "r"), Reply::Granted { .. }));
    let register = Op::Register {
        session: b,
        name: "n".into(),
    };
    assert_eq!(log.op("b@h", register), Reply::Registered);
}

#[test]
fn an_expiry_that_lost_the_race_to_a_keep_alive_is_ignored() {
    let mut log = Log::new();
    let a = log.open("a@h");
    assert_eq!(log.op("a@h", Op::KeepAlive { session: a }), Reply::Renewed);
    // The leader saw only the opening entry (index `a`) before deciding.
    let expire = Command::Expire {
        session: a,
        renewed: a,
    };
    assert_eq!(log.apply(expire), Reply::StillAlive);
    assert!(log.m.sessions().contains_key(&a));
}

#[test]
fn closing_a_session_releases_its_names_and_leaderships() {
    let mut log = Log::new();
    let a = log.open("a@h");
    let b = log.open("b@h");
    let campaign = |s| Op::Campaign {
        session: s,
        election: "e".into(),
    };
    let Reply::Granted { token: term } = log.op("a@h", campaign(a)) else {
        panic!("no term")
    };
    assert!(matches!(log.op("b@h", campaign(b)), Reply::Held { .. }));
    assert_eq!(
        log.op("a@h", Op::CloseSession { session: a }),
        Reply::Ended { released: 1 }
    );
    match log.op("b@h", campaign(b)) {
        Reply::Granted { token } => assert!(token > term),
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_belong_to_one_session() {
    let mut log = Log::new();
    let a = log.open("a@h");
    let b = log.open("b@h");
    let reg = |s| Op::Register {
        session: s,
        name: "svc".into(),
    };
    assert_eq!(log.op("a@h", reg(a)), Reply::Registered);
    assert_eq!(log.op("a@h", reg(a)), Reply::Registered);
    assert_eq!(log.op("b@h", reg(b)), Reply::Taken { owner: node("a@h") });
    let unreg = |s| Op::Unregister {
        session: s,
        name: "svc".into(),
    };
    assert_eq!(log.op("b@h", unreg(b)), Reply::NotHeld);
    assert_eq!(log.op("a@h", unreg(a)), Reply::Released);
    assert_eq!(log.op("b@h", reg(b)), Reply::Registered);
}

#[test]
fn bad_keys_ttls_and_bounds_are_refused() {
    let mut log = Log::new();
    let a = log.open("a@h");
    assert_eq!(log.acquire("a@h", a, ""), Reply::Invalid);
    assert_eq!(
        log.acquire("a@h", a, &"x".repeat(MAX_KEY + 1)),
        Reply::Invalid
    );
    assert_eq!(log.op("a@h", Op::OpenSession { ttl_ms: 1 }), Reply::Invalid);
    for _ in 1..MAX_SESSIONS_PER_NODE {
        log.open("a@h");
    }
    assert_eq!(
        log.op("a@h", Op::OpenSession { ttl_ms: 1000 }),
        Reply::Limit
    );
    for i in 0..MAX_HELD_PER_SESSION {
        assert!(matches!(
            log.acquire("a@h", a, &format!("r{i}")),
            Reply::Granted { .. }
        ));
    }
    assert_eq!(log.acquire("a@h", a, "one-more"), Reply::Limit);
}

#[test]
fn unknown_sessions_get_no_session() {
    let mut log = Log::new();
    assert_eq!(log.acquire("a@h", 42, "r"), Reply::NoSession);
    let expire = Command::Expire {
        session: 42,
        renewed: 1,
    };
    assert_eq!(log.apply(expire), Reply::NoSession);
}

#[test]
fn replicas_applying_the_same_log_agree() {
    let mut one = Log::new();
    let s = one.open("a@h");
    one.acquire("a@h", s, "r");
    let bytes = postcard::to_allocvec(&one.m).expect("encode");
    let two: Machine = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(one.m, two);
}
