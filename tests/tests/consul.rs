//! The Consul client against a real Consul: locks, blocking queries, txn
//! guarded by a session, and riding out a leader change.

use std::time::Duration;

use successover_common::consul::{
    keep_alive, Consul, ConsulConfig, ConsulError, SessionBehavior, SessionRequest, TxnOp,
    TxnOutcome, Watch,
};
use successover_tests::consul::{ConsulCluster, ConsulDev, ConsulDevOptions};
use successover_tests::wait_until;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// One dev agent for the whole binary; each test uses its own key prefix.
static DEV: OnceCell<ConsulDev> = OnceCell::const_new();

async fn dev() -> &'static ConsulDev {
    DEV.get_or_init(|| async { ConsulDev::start().await }).await
}

async fn client() -> Consul {
    Consul::new(ConsulConfig::new(dev().await.http_addr())).unwrap()
}

fn session_req(name: &str, lock_delay: Duration) -> SessionRequest {
    let mut req = SessionRequest::new(name, Some(Duration::from_secs(10)));
    req.lock_delay = lock_delay;
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_roundtrip_cas_keys_and_delete() {
    let c = client().await;
    let p = "t-kv/";
    assert_eq!(c.kv_get(&format!("{p}missing")).await.unwrap(), None);
    c.kv_put(&format!("{p}a"), "1").await.unwrap();
    c.kv_put(&format!("{p}dir/b"), "2").await.unwrap();
    let a = c.kv_get(&format!("{p}a")).await.unwrap().unwrap();
    assert_eq!(a.value_str(), Some("1"));

    // CAS with a stale index loses; with the current one wins.
    assert!(!c
        .kv_cas(&format!("{p}a"), "x", a.modify_index + 1000)
        .await
        .unwrap());
    assert!(c
        .kv_cas(&format!("{p}a"), "3", a.modify_index)
        .await
        .unwrap());
    assert!(
        !c.kv_cas(&format!("{p}a"), "y", 0).await.unwrap(),
        "cas 0 = create only"
    );
    assert_eq!(
        c.kv_get(&format!("{p}a"))
            .await
            .unwrap()
            .unwrap()
            .value_str(),
        Some("3")
    );

    let all = c.kv_get_recurse(p).await.unwrap();
    let keys: Vec<_> = all.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, vec!["t-kv/a", "t-kv/dir/b"]);
    let top = c.kv_keys(p, Some("/")).await.unwrap();
    assert_eq!(top, vec!["t-kv/a".to_owned(), "t-kv/dir/".to_owned()]);

    c.kv_delete(&format!("{p}a")).await.unwrap();
    assert_eq!(c.kv_get(&format!("{p}a")).await.unwrap(), None);
    c.kv_delete_recurse(p).await.unwrap();
    assert!(c.kv_get_recurse(p).await.unwrap().is_empty());

    // Every request is counted by operation (what the daemons expose as
    // successover_consul_requests_total); a blocking read apart.
    let n = c.requests();
    assert_eq!(n.get("kv get"), Some(&4), "{n:?}");
    assert_eq!(n.get("kv put"), Some(&2), "{n:?}");
    assert_eq!(n.get("kv cas"), Some(&3), "{n:?}");
    assert_eq!(n.get("kv list"), Some(&2), "{n:?}");
    let (index, _) = c.kv_list(p, 0, None).await.unwrap();
    c.kv_put(&format!("{p}c"), "1").await.unwrap();
    c.kv_list(p, index, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(c.requests().get("kv list blocking"), Some(&1));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_race_for_a_lock_and_the_loser_takes_over() {
    let (a, b) = (client().await, client().await);
    let key = "t-lock/c1";
    let sa = a
        .session_create(&session_req("a", Duration::ZERO))
        .await
        .unwrap();
    let sb = b
        .session_create(&session_req("b", Duration::ZERO))
        .await
        .unwrap();

    let (ra, rb) = tokio::join!(a.kv_acquire(key, "a", &sa), b.kv_acquire(key, "b", &sb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one must win: a={ra} b={rb}");
    let (winner, w_sess, loser, l_sess) = if ra {
        (&a, &sa, &b, &sb)
    } else {
        (&b, &sb, &a, &sa)
    };
    assert!(!loser.kv_acquire(key, "again", l_sess).await.unwrap());
    let held = winner.kv_get(key).await.unwrap().unwrap();
    assert_eq!(held.session.as_deref(), Some(w_sess.as_str()));

    winner.session_destroy(w_sess).await.unwrap();
    assert!(matches!(
        winner.session_renew(w_sess).await,
        Err(ConsulError::SessionGone { .. })
    ));
    assert!(
        loser.kv_acquire(key, "took over", l_sess).await.unwrap(),
        "the lock must be free once the holder's session is destroyed"
    );
    assert!(loser.kv_release(key, "released", l_sess).await.unwrap());
    assert_eq!(loser.kv_get(key).await.unwrap().unwrap().session, None);
    loser.session_destroy(l_sess).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_frees_its_lock() {
    let (a, b) = (client().await, client().await);
    let key = "t-expire/c1";
    // Consul's minimum TTL; it invalidates somewhere between TTL and 2×TTL.
    let sa = a
        .session_create(&session_req("a", Duration::ZERO))
        .await
        .unwrap();
    let sb = b
        .session_create(&session_req("b", Duration::ZERO))
        .await
        .unwrap();
    assert!(a.kv_acquire(key, "a", &sa).await.unwrap());

    // b keeps its own session alive while a's runs out.
    let cancel = CancellationToken::new();
    let keeper = {
        let (b, sb, cancel) = (b.clone(), sb.clone(), cancel.clone());
        tokio::spawn(
            async move { keep_alive(&b, &sb, Some(Duration::from_secs(10)), &cancel).await },
        )
    };
    wait_until(Duration::from_secs(45), || async {
        b.kv_acquire(key, "b", &sb).await.unwrap()
    })
    .await
    .expect("a's session never expired");
    assert!(matches!(
        a.session_renew(&sa).await,
        Err(ConsulError::SessionGone { .. })
    ));
    cancel.cancel();
    keeper
        .await
        .unwrap()
        .expect("b's session must have stayed alive");
    b.session_destroy(&sb).await.unwrap();
}

/// What the agents' and renderers' sessions rest on: a session without a
/// TTL lives as long as its liveness check passes, with no renewal, and
/// the holder's watch learns at once when the check lapses and Consul
/// ends it.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_without_a_ttl_lives_on_its_check_and_ends_with_it() {
    let c = client().await;
    let check = "t-nottl-check";
    c.check_register_ttl(check, "t-nottl", Duration::from_secs(3))
        .await
        .unwrap();
    c.check_pass(check).await.unwrap();
    let mut req = SessionRequest::new("t-nottl", None);
    req.behavior = SessionBehavior::Delete;
    req.lock_delay = Duration::ZERO;
    req.node_checks.push(check.into());
    let s = c.session_create(&req).await.unwrap();
    let info = c.session_info(&s).await.unwrap().expect("just created");
    assert_eq!(info.ttl, "", "{info:?}");
    let key = "t-nottl/report";
    assert!(c.kv_acquire(key, "up", &s).await.unwrap());

    let cancel = CancellationToken::new();
    let watcher = {
        let (c, s, cancel) = (c.clone(), s.clone(), cancel.clone());
        tokio::spawn(async move { keep_alive(&c, &s, None, &cancel).await })
    };
    // 20 s of passes and nothing else: longer than Consul's shortest TTL
    // (10 s, invalidated by 20 s at the latest), and the session stays.
    let mut last_pass = std::time::Instant::now();
    for _ in 0..20 {
        c.check_pass(check).await.unwrap();
        last_pass = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(c.session_info(&s).await.unwrap().is_some());
    assert!(
        !watcher.is_finished(),
        "the watch ended with its session alive"
    );
    assert!(c.kv_get(key).await.unwrap().is_some());

    // The passes stop: the check goes critical after its 3 s, Consul ends
    // the session (deleting what it held), and the watch says so.
    let ended = tokio::time::timeout(Duration::from_secs(15), watcher)
        .await
        .expect("the watch did not notice the session end")
        .unwrap();
    assert!(
        matches!(ended, Err(ConsulError::SessionGone { .. })),
        "{ended:?}"
    );
    assert!(
        last_pass.elapsed() >= Duration::from_millis(2500),
        "ended {:?} after the last pass",
        last_pass.elapsed()
    );
    assert!(c.kv_get(key).await.unwrap().is_none());
    cancel.cancel();
    c.check_deregister(check).await.unwrap();
}

/// What the failover cooldown rests on (#13 item 12): a key held by a
/// session with a TTL, no node check and `delete` behaviour, never
/// renewed, stays at least the TTL on Consul's clock and is then deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_by_an_unrenewed_ttl_session_outlives_the_ttl_then_goes() {
    let c = client().await;
    let key = "t-cooldown/last-failover";
    let mut req = SessionRequest::new("cooldown", Some(Duration::from_secs(10)));
    req.behavior = SessionBehavior::Delete;
    req.node_checks = Vec::new();
    req.lock_delay = Duration::ZERO;
    let s = c.session_create(&req).await.unwrap();
    let held = std::time::Instant::now();
    let written = c
        .txn(&[TxnOp::Lock {
            key: key.into(),
            value: b"{}".to_vec(),
            session: s.clone(),
        }])
        .await
        .unwrap();
    assert!(matches!(written, TxnOutcome::Committed(_)), "{written:?}");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let kv = c
        .kv_get(key)
        .await
        .unwrap()
        .expect("still there before the TTL");
    assert_eq!(kv.session.as_deref(), Some(s.as_str()));
    wait_until(Duration::from_secs(45), || async {
        c.kv_get(key).await.unwrap().is_none()
    })
    .await
    .expect("the key outlived twice its session's TTL");
    let gone = held.elapsed();
    assert!(gone >= Duration::from_secs(10), "gone after {gone:?}");
    eprintln!("a key held by a 10 s TTL session went {gone:?} after it was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_session_with_delete_behavior_removes_its_keys() {
    let c = client().await;
    let mut req = session_req("reporter", Duration::ZERO);
    req.behavior = SessionBehavior::Delete;
    let s = c.session_create(&req).await.unwrap();
    assert!(c.kv_acquire("t-del/report", "{}", &s).await.unwrap());
    let info = c.session_info(&s).await.unwrap().unwrap();
    assert_eq!(info.behavior, SessionBehavior::Delete);
    c.session_destroy(&s).await.unwrap();
    assert_eq!(c.kv_get("t-del/report").await.unwrap(), None);
    assert!(c.session_info(&s).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_query_wakes_on_a_key_and_on_a_prefix_change() {
    let c = client().await;
    c.kv_put("t-watch/c1", "db1:3306").await.unwrap();
    let mut key_watch = Watch::prefix(c.clone(), "t-watch/c1").with_wait(Duration::from_secs(30));
    let mut prefix_watch = Watch::prefix(c.clone(), "t-watch/").with_wait(Duration::from_secs(30));
    assert_eq!(
        key_watch.next().await.unwrap()[0].value_str(),
        Some("db1:3306")
    );
    assert_eq!(prefix_watch.next().await.unwrap().len(), 1);

    let writer = {
        let c = c.clone();
        // Not a wait for anything: the changes come while both watches are
        // blocked, which is what this test is about (a change made before
        // the call would return at once, on the index alone).
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.kv_put("t-watch/c1", "db2:3306").await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.kv_put("t-watch/c2", "db9:3306").await.unwrap();
        })
    };
    let started = std::time::Instant::now();
    let changed = tokio::time::timeout(Duration::from_secs(10), key_watch.next())
        .await
        .expect("key watch did not wake")
        .unwrap();
    assert_eq!(changed[0].value_str(), Some("db2:3306"));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "woke by timeout, not by the change"
    );
    // The prefix watch sees the first change, then the new key.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|kv: &successover_common::consul::KvPair| kv.key == "t-watch/c2")
    {
        seen = tokio::time::timeout(Duration::from_secs(10), prefix_watch.next())
            .await
            .expect("prefix watch did not wake")
            .unwrap();
    }
    assert_eq!(seen.len(), 2);
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_txn_guarded_by_check_session_rolls_back_once_the_session_is_gone() {
    let c = client().await;
    let lock = "t-txn/lock/c1";
    let s = c
        .session_create(&session_req("coord", Duration::ZERO))
        .await
        .unwrap();
    assert!(c.kv_acquire(lock, "coord", &s).await.unwrap());

    let guarded = |value: &'static str| {
        vec![
            TxnOp::check_session(lock, s.clone()),
            TxnOp::set("t-txn/master/c1", value),
            TxnOp::set("t-txn/master/c1/port", "3306"),
            TxnOp::delete("t-txn/master/c1/failed"),
        ]
    };
    c.kv_put("t-txn/master/c1/failed", "fenced").await.unwrap();
    let outcome = c.txn(&guarded("db1:3306")).await.unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    assert_eq!(
        c.kv_get("t-txn/master/c1")
            .await
            .unwrap()
            .unwrap()
            .value_str(),
        Some("db1:3306")
    );
    assert_eq!(c.kv_get("t-txn/master/c1/failed").await.unwrap(), None);

    c.kv_put("t-txn/master/c1/failed", "fenced again")
        .await
        .unwrap();
    c.session_destroy(&s).await.unwrap();
    match c.txn(&guarded("db2:3306")).await.unwrap() {
        TxnOutcome::RolledBack(errors) => {
            assert_eq!(errors[0].op_index, 0, "{errors:?}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    // Nothing of the rolled-back txn was applied.
    assert_eq!(
        c.kv_get("t-txn/master/c1")
            .await
            .unwrap()
            .unwrap()
            .value_str(),
        Some("db1:3306")
    );
    assert_eq!(
        c.kv_get("t-txn/master/c1/failed")
            .await
            .unwrap()
            .unwrap()
            .value_str(),
        Some("fenced again")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_request_and_key() {
    // Nothing listens on port 1: the error must say what was attempted.
    let mut cfg = ConsulConfig::new("http://127.0.0.1:1");
    cfg.retry_for = Duration::from_millis(300);
    let c = Consul::new(cfg).unwrap();
    let err = c.kv_get("mysql/master/c1").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("kv get") && text.contains("mysql/master/c1"),
        "{text}"
    );
    assert!(!err.is_retryable() || matches!(err, ConsulError::Unreachable { .. }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_rides_out_a_leader_stop_in_a_three_server_cluster() {
    successover_tests::init_tracing();
    let mut cluster = ConsulCluster::start(3).await;
    let leader = cluster.leader_index().await;
    // Clients talk to their local agent; use a server that is not the leader.
    let follower = (leader + 1) % 3;
    let c = Consul::new(ConsulConfig::new(&cluster.http_addrs()[follower])).unwrap();
    c.kv_put("t-ha/before", "1").await.unwrap();

    let stopped = cluster.stop_leader().await;
    assert_eq!(stopped, leader);
    // Issued right after the stop: the client retries until a new leader
    // is elected instead of failing.
    c.kv_put("t-ha/after", "2")
        .await
        .expect("put across a leader change");
    assert_eq!(
        c.kv_get("t-ha/before").await.unwrap().unwrap().value_str(),
        Some("1")
    );
    let new_leader = cluster.leader_index().await;
    assert_ne!(new_leader, stopped);

    // A watch keeps working across the change too.
    let mut w = Watch::prefix(c.clone(), "t-ha/").with_wait(Duration::from_secs(5));
    assert_eq!(w.next().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acl_token_from_a_file_is_sent_and_never_shown() {
    let token = "4d6a9a3c-5b1e-4c8e-9f3a-7d1f0c2b8e61";
    let agent = ConsulDev::start_with(ConsulDevOptions {
        extra_hcl: Some(format!(
            r#"acl {{
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {{
    initial_management = "{token}"
  }}
}}
"#
        )),
        token: Some(token.to_owned()),
        ..ConsulDevOptions::default()
    })
    .await;

    // Anonymous: denied, and the error names the request and the key.
    let anonymous = Consul::new(ConsulConfig::new(agent.http_addr())).unwrap();
    let err = anonymous.kv_put("t-acl/key", "v").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("kv put t-acl/key"), "{err}");

    // The token from a file, as the daemons read it.
    let dir = successover_tests::Scratch::new("acl-token");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let addr = agent.http_addr();
    let cfg = ConsulConfig::from_lookup(|name| match name {
        "CONSUL_HTTP_ADDR" => Some(addr.clone()),
        "CONSUL_HTTP_TOKEN_FILE" => Some(file.display().to_string()),
        _ => None,
    })
    .unwrap();
    assert!(
        !format!("{cfg:?}").contains(token),
        "the token must not be printable"
    );
    let c = Consul::new(cfg).unwrap();
    c.kv_put("t-acl/key", "v").await.unwrap();
    assert_eq!(
        c.kv_get("t-acl/key").await.unwrap().unwrap().value_str(),
        Some("v")
    );
    assert!(!format!("{c:?}").contains(token), "nor the client");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_ca_and_a_client_certificate() {
    // Certificates made by Consul's own tooling, as an operator would.
    let certs = successover_tests::Scratch::new("consul-tls");
    let consul_bin = successover_tests::bins::consul();
    for args in [
        vec!["tls", "ca", "create"],
        vec!["tls", "cert", "create", "-server", "-dc", "dc1"],
        vec!["tls", "cert", "create", "-client", "-dc", "dc1"],
    ] {
        let out = std::process::Command::new(consul_bin)
            .args(&args)
            .current_dir(certs.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "consul {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let p = |name: &str| certs.path().join(name).display().to_string();
    let https = successover_tests::reserve_port();
    let agent = ConsulDev::start_with(ConsulDevOptions {
        extra_hcl: Some(format!(
            r#"ports {{
  https = {port}
}}
tls {{
  defaults {{
    ca_file = "{ca}"
    cert_file = "{cert}"
    key_file = "{key}"
  }}
  https {{
    verify_incoming = true
  }}
}}
"#,
            port = https.port(),
            ca = p("consul-agent-ca.pem"),
            cert = p("dc1-server-consul-0.pem"),
            key = p("dc1-server-consul-0-key.pem"),
        )),
        ..ConsulDevOptions::default()
    })
    .await;
    let _ = &agent;
    let addr = format!("https://127.0.0.1:{}", https.port());
    let config = |client_cert: bool| {
        let mut cfg = ConsulConfig::new(&addr);
        cfg.retry_for = Duration::from_millis(200);
        cfg.tls.ca_file = Some(p("consul-agent-ca.pem").into());
        if client_cert {
            cfg.tls.client_cert = Some(p("dc1-client-consul-0.pem").into());
            cfg.tls.client_key = Some(p("dc1-client-consul-0-key.pem").into());
        }
        cfg
    };
    let c = Consul::new(config(true)).unwrap();
    c.kv_put("t-tls/key", "over tls").await.unwrap();
    assert_eq!(
        c.kv_get("t-tls/key").await.unwrap().unwrap().value_str(),
        Some("over tls")
    );
    // Without a client certificate the server refuses the handshake.
    let without = Consul::new(config(false)).unwrap();
    let err = without.kv_get("t-tls/key").await.unwrap_err();
    assert!(err.to_string().starts_with("kv get t-tls/key"), "{err}");
    // Half a pair is a configuration error, found before any request.
    let mut half = config(false);
    half.tls.client_cert = Some(p("dc1-client-consul-0.pem").into());
    assert!(matches!(Consul::new(half), Err(ConsulError::Config { .. })));
}
