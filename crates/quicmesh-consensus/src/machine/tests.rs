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
fn a_name_stands_for_the_service_registered_with_it() {
    let mut log = Log::new();
    let a = log.open("a@h");
    let b = log.open("b@h");
    let reg = |session, service: &str| Op::RegisterService {
        session,
        name: "billing".into(),
        service: service.into(),
    };
    assert_eq!(log.op("a@h", reg(a, "billing.v2")), Reply::Registered);
    let (grant, service) = log.m.name("billing").expect("registered");
    assert_eq!((&grant.owner, service), (&node("a@h"), "billing.v2"));
    assert_eq!(
        log.op("b@h", reg(b, "other")),
        Reply::Taken { owner: node("a@h") }
    );
    assert_eq!(log.m.name("billing").map(|(_, s)| s), Some("billing.v2"));
    // The owner points it elsewhere; the old op means the name itself.
    assert_eq!(log.op("a@h", reg(a, "billing.v3")), Reply::Registered);
    assert_eq!(log.m.name("billing").map(|(_, s)| s), Some("billing.v3"));
    let plain = Op::Register {
        session: a,
        name: "billing".into(),
    };
    assert_eq!(log.op("a@h", plain), Reply::Registered);
    assert_eq!(log.m.name("billing").map(|(_, s)| s), Some("billing"));
    // Unregistered or ended with its session, the service goes with it.
    assert_eq!(log.op("a@h", reg(a, "billing.v2")), Reply::Registered);
    let unreg = Op::Unregister {
        session: a,
        name: "billing".into(),
    };
    assert_eq!(log.op("a@h", unreg), Reply::Released);
    assert_eq!(log.m.name("billing"), None);
    assert_eq!(log.op("b@h", reg(b, "b.svc")), Reply::Registered);
    assert_eq!(
        log.op("b@h", Op::CloseSession { session: b }),
        Reply::Ended { released: 1 }
    );
    assert_eq!(log.m.name("billing"), None);
    assert!(log.m.services.is_empty(), "{:?}", log.m.services);
}

#[test]
fn a_service_empty_or_too_long_is_refused_by_name() {
    let mut log = Log::new();
    let a = log.open("a@h");
    let reg = |name: &str, service: &str| Op::RegisterService {
        session: a,
        name: name.into(),
        service: service.into(),
    };
    let long = "s".repeat(MAX_KEY + 1);
    assert_eq!(log.op("a@h", reg("n", &long)), Reply::InvalidService);
    assert_eq!(log.op("a@h", reg("n", "")), Reply::InvalidService);
    assert_eq!(log.m.name("n"), None);
    // A bad name is refused as such first.
    assert_eq!(log.op("a@h", reg("", &long)), Reply::Invalid);
    let longest = "s".repeat(MAX_KEY);
    assert_eq!(log.op("a@h", reg("n", &longest)), Reply::Registered);
    assert_eq!(log.m.name("n").map(|(_, s)| s), Some(longest.as_str()));
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

impl Log {
    fn enqueue(&mut self, from: &str, session: SessionId, resource: &str) -> Reply {
        let key = Key::Lock(resource.into());
        self.op(from, Op::Enqueue { session, key })
    }

    fn dequeue(&mut self, from: &str, session: SessionId, resource: &str) -> Reply {
        let key = Key::Lock(resource.into());
        self.op(from, Op::Dequeue { session, key })
    }

    fn release(&mut self, from: &str, session: SessionId, resource: &str) -> Reply {
        let token = self.token(resource).expect("held");
        let resource = resource.into();
        self.op(
            from,
            Op::Release {
                session,
                resource,
                token,
            },
        )
    }

    /// The holder of lock `resource` and its token.
    fn holder_of(&self, resource: &str) -> Option<(SessionId, u64)> {
        let grant = self.m.holder(&Key::Lock(resource.into()))?;
        Some((grant.session, grant.token))
    }

    fn token(&self, resource: &str) -> Option<u64> {
        self.holder_of(resource).map(|(_, t)| t)
    }

    fn waiters(&self, resource: &str) -> Vec<SessionId> {
        self.m.waiters(&Key::Lock(resource.into())).collect()
    }
}

#[test]
fn a_release_grants_the_first_waiter_in_the_same_entry_with_its_index() {
    let mut log = Log::new();
    let (a, b, c) = (log.open("a@h"), log.open("b@h"), log.open("c@h"));
    assert_eq!(log.enqueue("a@h", a, "r"), Reply::Granted { token: 4 });
    let queued = Reply::Queued {
        owner: node("a@h"),
        token: 4,
    };
    assert_eq!(log.enqueue("c@h", c, "r"), queued);
    assert_eq!(log.enqueue("b@h", b, "r"), queued);
    // Asking again keeps the place in line.
    assert_eq!(log.enqueue("c@h", c, "r"), queued);
    assert_eq!(log.waiters("r"), [c, b]);
    // Entry 8 releases a's grant and grants c, first in line, token 8.
    assert_eq!(log.next, 8);
    assert_eq!(log.release("a@h", a, "r"), Reply::Released);
    assert_eq!(log.holder_of("r"), Some((c, 8)));
    assert_eq!(log.enqueue("c@h", c, "r"), Reply::Granted { token: 8 });
    assert_eq!(log.waiters("r"), [b]);
    assert_eq!(log.next, 10);
    assert_eq!(log.release("c@h", c, "r"), Reply::Released);
    assert_eq!(log.holder_of("r"), Some((b, 10)));
    assert!(log.waiters("r").is_empty());
    assert_eq!(log.release("b@h", b, "r"), Reply::Released);
    assert_eq!(log.holder_of("r"), None);
}

#[test]
fn the_expiry_of_the_holder_grants_the_next_waiter() {
    let mut log = Log::new();
    let (a, b) = (log.open("a@h"), log.open("b@h"));
    log.enqueue("a@h", a, "r");
    assert!(matches!(log.enqueue("b@h", b, "r"), Reply::Queued { .. }));
    let at = log.next;
    let expire = Command::Expire {
        session: a,
        renewed: a,
    };
    assert_eq!(log.apply(expire), Reply::Ended { released: 1 });
    assert_eq!(log.holder_of("r"), Some((b, at)));
    // Closing does the same.
    let c = log.open("c@h");
    log.enqueue("c@h", c, "r");
    let at = log.next;
    log.op("b@h", Op::CloseSession { session: b });
    assert_eq!(log.holder_of("r"), Some((c, at)));
}

#[test]
fn the_expiry_of_a_waiter_takes_it_out_of_the_queue() {
    let mut log = Log::new();
    let (a, b, c) = (log.open("a@h"), log.open("b@h"), log.open("c@h"));
    log.enqueue("a@h", a, "r");
    log.enqueue("b@h", b, "r");
    log.enqueue("c@h", c, "r");
    let expire = Command::Expire {
        session: b,
        renewed: b,
    };
    assert_eq!(log.apply(expire), Reply::Ended { released: 0 });
    assert_eq!(log.waiters("r"), [c]);
    log.release("a@h", a, "r");
    assert_eq!(log.holder_of("r").map(|(s, _)| s), Some(c));
    // The last waiter gone, the queue goes too.
    let d = log.open("d@h");
    log.enqueue("d@h", d, "r");
    log.op("d@h", Op::CloseSession { session: d });
    assert!(log.m.queues.is_empty(), "{:?}", log.m.queues);
}

#[test]
fn a_dequeued_waiter_is_not_granted() {
    let mut log = Log::new();
    let (a, b, c) = (log.open("a@h"), log.open("b@h"), log.open("c@h"));
    log.enqueue("a@h", a, "r");
    log.enqueue("b@h", b, "r");
    log.enqueue("c@h", c, "r");
    assert_eq!(log.dequeue("b@h", b, "r"), Reply::Dequeued);
    assert_eq!(log.dequeue("b@h", b, "r"), Reply::NotHeld, "not queued now");
    assert!(log.m.sessions()[&b].waiting.is_empty());
    log.release("a@h", a, "r");
    assert_eq!(log.holder_of("r").map(|(s, _)| s), Some(c));
    assert_eq!(log.dequeue("c@h", c, "r"), Reply::Granted { token: 9 });
    assert_eq!(log.dequeue("b@h", c, "r"), Reply::NotOwner);
}

#[test]
fn a_waiter_granted_before_its_dequeue_keeps_the_grant_to_release_it() {
    let mut log = Log::new();
    let (a, b, c) = (log.open("a@h"), log.open("b@h"), log.open("c@h"));
    log.enqueue("a@h", a, "r");
    log.enqueue("b@h", b, "r");
    log.enqueue("c@h", c, "r");
    log.release("a@h", a, "r");
    let token = log.token("r").expect("granted");
    // b gave up waiting, not knowing: its dequeue names the grant.
    assert_eq!(log.dequeue("b@h", b, "r"), Reply::Granted { token });
    assert_eq!(log.holder_of("r"), Some((b, token)));
    // Released by that token, it goes on down the line.
    assert_eq!(log.release("b@h", b, "r"), Reply::Released);
    assert_eq!(log.holder_of("r").map(|(s, _)| s), Some(c));
}

#[test]
fn queues_are_bounded_per_key_and_per_session() {
    let mut log = Log::new();
    let a = log.open("a@h");
    log.enqueue("a@h", a, "r");
    for i in 0..MAX_WAITERS_PER_KEY {
        let from = format!("n{i}@h");
        let s = log.open(&from);
        assert!(matches!(log.enqueue(&from, s, "r"), Reply::Queued { .. }));
    }
    let late = log.open("late@h");
    assert_eq!(
        log.enqueue("late@h", late, "r"),
        Reply::QueueFull {
            owner: node("a@h"),
            token: 2
        }
    );
    assert!(log.m.sessions()[&late].waiting.is_empty());
    // Waiting counts with holding against the session's bound.
    let b = log.open("b@h");
    for i in 0..MAX_HELD_PER_SESSION - 1 {
        let key = format!("b{i}");
        assert!(matches!(log.enqueue("b@h", b, &key), Reply::Granted { .. }));
    }
    let s = log.open("c@h");
    log.enqueue("c@h", s, "q");
    assert!(matches!(log.enqueue("b@h", b, "q"), Reply::Queued { .. }));
    assert_eq!(log.enqueue("b@h", b, "q2"), Reply::Limit);
    assert_eq!(log.acquire("b@h", b, "free"), Reply::Limit);
}

#[test]
fn names_cannot_be_queued_for_and_an_old_acquire_does_not_queue() {
    let mut log = Log::new();
    let (a, b) = (log.open("a@h"), log.open("b@h"));
    let key = Key::Name("n".into());
    assert_eq!(
        log.op("a@h", Op::Enqueue { session: a, key }),
        Reply::Invalid
    );
    log.enqueue("a@h", a, "r");
    assert!(matches!(log.acquire("b@h", b, "r"), Reply::Held { .. }));
    assert!(log.waiters("r").is_empty());
    // Elections queue as locks do.
    let campaign = |s| Op::Enqueue {
        session: s,
        key: Key::Leader("e".into()),
    };
    assert!(matches!(log.op("a@h", campaign(a)), Reply::Granted { .. }));
    assert!(matches!(log.op("b@h", campaign(b)), Reply::Queued { .. }));
    let term = log.m.holder(&Key::Leader("e".into())).expect("led").token;
    let resign = Op::Resign {
        session: a,
        election: "e".into(),
        term,
    };
    let at = log.next;
    assert_eq!(log.op("a@h", resign), Reply::Released);
    let led = log.m.holder(&Key::Leader("e".into())).expect("led");
    assert_eq!((led.session, led.token), (b, at));
}

#[test]
fn a_requeue_hands_the_lock_on_and_waits_again_in_one_entry() {
    let mut log = Log::new();
    let (a, b) = (log.open("a@h"), log.open("b@h"));
    let Reply::Granted { token } = log.enqueue("a@h", a, "r") else {
        panic!("not granted")
    };
    log.enqueue("b@h", b, "r");
    let key = Key::Lock("r".into());
    let requeue = |session, token| Op::Requeue {
        session,
        key: key.clone(),
        token,
    };
    assert_eq!(log.op("a@h", requeue(a, token + 1)), Reply::NotHeld);
    assert_eq!(log.holder_of("r"), Some((a, token)));
    let at = log.next;
    assert_eq!(
        log.op("a@h", requeue(a, token)),
        Reply::Queued {
            owner: node("b@h"),
            token: at
        }
    );
    assert_eq!(log.holder_of("r"), Some((b, at)));
    assert_eq!(log.waiters("r"), [a]);
    // With no one else in line, the same entry grants it back, anew.
    log.release("b@h", b, "r");
    let Some((holder, token)) = log.holder_of("r") else {
        panic!("not granted")
    };
    assert_eq!(holder, a);
    let at = log.next;
    assert_eq!(
        log.op("a@h", requeue(a, token)),
        Reply::Granted { token: at }
    );
    let name = Op::Requeue {
        session: a,
        key: Key::Name("n".into()),
        token: 0,
    };
    assert_eq!(log.op("a@h", name), Reply::Invalid);
}
