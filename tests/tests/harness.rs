//! Self-tests of the harness against the real services: if these fail, the
//! integration tests built on the harness cannot be trusted either.

use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use successover_tests::haproxy::{self, tcp_listen};
use successover_tests::mariadb::{
    binlog_coordinates, gtid_subtract, gtids_contain, received_gtids, replica_status,
};
use successover_tests::{
    bins, global_var, init_tracing, reserve_port, status_var, wait_until, ConsulCluster, ConsulDev,
    ConsulDevOptions, HaProxy, MariaDb, MariaDbOptions, NetHost, Topology,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn kv_put(client: &reqwest::Client, addr: &str, key: &str, value: &str) -> bool {
    let resp = client
        .put(format!("{addr}/v1/kv/{key}"))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "PUT {key}: {}", resp.status());
    resp.text().await.unwrap().trim() == "true"
}

async fn kv_get(client: &reqwest::Client, addr: &str, key: &str) -> String {
    let resp = client
        .get(format!("{addr}/v1/kv/{key}?raw"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {key}: {}", resp.status());
    resp.text().await.unwrap()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn consul_dev_kv_roundtrip_and_teardown() {
    init_tracing();
    let consul = ConsulDev::start().await;
    let client = http();
    let addr = consul.http_addr();
    assert!(addr.starts_with("http://127.0.0.1:"), "{addr}");
    assert!(kv_put(&client, &addr, "mysql/master/c1", "127.0.0.1:3306").await);
    assert_eq!(
        kv_get(&client, &addr, "mysql/master/c1").await,
        "127.0.0.1:3306"
    );

    let (pid, dir) = (consul.pid(), consul.dir().to_path_buf());
    assert!(pid_alive(pid));
    drop(consul);
    assert!(!pid_alive(pid), "consul pid {pid} survived its ConsulDev");
    assert!(!dir.exists(), "{} survived its ConsulDev", dir.display());
}

#[tokio::test]
async fn consul_cluster_elects_a_new_leader_when_the_leader_dies() {
    init_tracing();
    let mut cluster = ConsulCluster::start(3).await;
    let client = http();
    let old = cluster.leader_index().await;
    assert!(kv_put(&client, &cluster.http_addr(old), "k", "before").await);

    let stopped = cluster.stop_leader().await;
    assert_eq!(stopped, old);
    assert!(!cluster.is_running(old));
    let new = cluster.wait_for_leader().await;
    assert_ne!(new, old, "the killed server cannot be the leader");
    assert!(kv_put(&client, &cluster.http_addr(new), "k", "after").await);
    // The data written under the old leader survived the election.
    assert_eq!(kv_get(&client, &cluster.http_addr(new), "k").await, "after");

    cluster.start_node(old).await;
    assert!(cluster.is_running(old));
    cluster.wait_for_leader().await;
    assert_eq!(kv_get(&client, &cluster.http_addr(old), "k").await, "after");
}

#[tokio::test]
async fn mariadb_replication_and_semi_sync() {
    init_tracing();
    let topology = Topology::source_with_replicas(2).await;
    let source = topology.source();
    let mut conn = source.conn().await.unwrap();
    assert_eq!(global_var(&mut conn, "read_only").await.unwrap(), "0");
    assert_eq!(
        status_var(&mut conn, "Rpl_semi_sync_master_clients")
            .await
            .unwrap(),
        "1"
    );
    assert_eq!(
        status_var(&mut conn, "Rpl_semi_sync_master_status")
            .await
            .unwrap(),
        "ON"
    );

    conn.query_drop("CREATE DATABASE t; CREATE TABLE t.w (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    let yes_before: u64 = status_var(&mut conn, "Rpl_semi_sync_master_yes_tx")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let no_before = status_var(&mut conn, "Rpl_semi_sync_master_no_tx")
        .await
        .unwrap();
    const WRITES: u64 = 5;
    for id in 0..WRITES {
        conn.exec_drop("INSERT INTO t.w (id) VALUES (?)", (id,))
            .await
            .unwrap();
    }
    let yes_after: u64 = status_var(&mut conn, "Rpl_semi_sync_master_yes_tx")
        .await
        .unwrap()
        .parse()
        .unwrap();
    // Each autocommit INSERT returned only after the semi-sync replica
    // acknowledged it.
    assert_eq!(yes_after - yes_before, WRITES);
    assert_eq!(
        status_var(&mut conn, "Rpl_semi_sync_master_no_tx")
            .await
            .unwrap(),
        no_before
    );

    topology
        .wait_replicated(Duration::from_secs(30))
        .await
        .unwrap();
    for (i, replica) in topology.replicas().iter().enumerate() {
        let mut rc = replica.conn().await.unwrap();
        let count: Option<u64> = rc.query_first("SELECT COUNT(*) FROM t.w").await.unwrap();
        assert_eq!(count, Some(WRITES), "{}", replica.name());
        assert_eq!(global_var(&mut rc, "read_only").await.unwrap(), "1");
        assert_eq!(
            global_var(&mut rc, "rpl_semi_sync_master_enabled")
                .await
                .unwrap(),
            "0",
            "{}: only the source may carry the source flag",
            replica.name()
        );
        let semi = status_var(&mut rc, "Rpl_semi_sync_slave_status")
            .await
            .unwrap();
        assert_eq!(
            semi,
            if i == 0 { "ON" } else { "OFF" },
            "{}",
            replica.name()
        );
        let status = replica_status(&mut rc).await.unwrap().unwrap();
        let applied = if replica.flavour().is_mysql() {
            assert_eq!(status["Auto_Position"], "1");
            "gtid_executed"
        } else {
            assert_eq!(status["Using_Gtid"], "Slave_Pos");
            "gtid_slave_pos"
        };
        let source_pos = global_var(&mut conn, "gtid_binlog_pos").await.unwrap();
        assert_eq!(global_var(&mut rc, applied).await.unwrap(), source_pos);
        // What the chaos checks rely on: a replica that received and
        // applied everything holds the source's GTIDs; on MySQL nothing of
        // them is missing from its executed set.
        let (file, end) = binlog_coordinates(&mut conn).await.unwrap();
        assert_eq!(status["Master_Log_File"], file, "{}", replica.name());
        assert_eq!(
            status["Read_Master_Log_Pos"],
            end.to_string(),
            "{}",
            replica.name()
        );
        let mysql = replica.flavour().is_mysql();
        let received = received_gtids(mysql, &status);
        assert!(
            gtids_contain(&mut rc, &received, &source_pos)
                .await
                .unwrap(),
            "{}: received {received:?}, source at {source_pos:?}",
            replica.name()
        );
        if mysql {
            let executed = global_var(&mut rc, "gtid_executed").await.unwrap();
            assert_eq!(
                gtid_subtract(&mut rc, &source_pos, &executed)
                    .await
                    .unwrap(),
                ""
            );
        }
    }
    if source.flavour().is_mysql() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert_eq!(
            gtid_subtract(&mut conn, &format!("{uuid}:1-10"), &format!("{uuid}:1-4"))
                .await
                .unwrap(),
            format!("{uuid}:5-10")
        );
    }
}

async fn server_id_via(port: u16) -> anyhow::Result<u32> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(successover_tests::mariadb::ROOT_USER))
        .pass(Some(successover_tests::mariadb::ROOT_PASSWORD))
        .prefer_socket(false);
    let mut conn = timeout(Duration::from_secs(5), Conn::new(opts)).await??;
    let id: Option<u32> = conn.query_first("SELECT @@server_id").await?;
    conn.disconnect().await?;
    id.ok_or_else(|| anyhow::anyhow!("no server id"))
}

#[tokio::test]
async fn haproxy_forwards_switches_and_reloads() {
    init_tracing();
    let (a, b) = tokio::join!(
        MariaDb::start(MariaDbOptions::new("hp-a", 11)),
        MariaDb::start(MariaDbOptions::new("hp-b", 12)),
    );
    let front = reserve_port();
    let bind: SocketAddr = ([127, 0, 0, 1], front.port()).into();
    let a_addr: SocketAddr = a.addr().parse().unwrap();
    let b_addr: SocketAddr = b.addr().parse().unwrap();
    let proxy = HaProxy::start(&tcp_listen("c1", bind, "db", a_addr)).await;
    assert_eq!(server_id_via(bind.port()).await.unwrap(), 11);

    let info = proxy.admin("show info").await.unwrap();
    assert_eq!(haproxy::info_field(&info, "Name"), Some("HAProxy"));
    let state = proxy.admin("show servers state").await.unwrap();
    assert!(state.contains(" c1 1 db 127.0.0.1 "), "{state}");

    let reply = proxy
        .admin(&format!(
            "set server c1/db addr 127.0.0.1 port {}",
            b.port()
        ))
        .await
        .unwrap();
    assert!(reply.contains("changed"), "{reply}");
    assert_eq!(server_id_via(bind.port()).await.unwrap(), 12);

    // A reload re-reads the file (runtime changes are not persisted), so
    // write the switch into the config first.
    let before = proxy.worker_pids().await.unwrap();
    proxy
        .write_config(&format!(
            "{}\n{}\n{}",
            haproxy::global_section(proxy.admin_socket_path()),
            haproxy::defaults_section(),
            tcp_listen("c1", bind, "db", b_addr)
        ))
        .await
        .unwrap();
    let worker = proxy.reload().await.unwrap();
    assert!(!before.contains(&worker), "{worker} in {before:?}");
    assert_eq!(proxy.worker_pids().await.unwrap(), vec![worker]);
    assert_eq!(server_id_via(bind.port()).await.unwrap(), 12);

    // An invalid file is refused by the check and never reaches HAProxy.
    assert!(proxy
        .write_config("listen broken\n    bind nowhere\n")
        .await
        .is_err());
    assert!(haproxy::check(proxy.cfg_path()).await.is_ok());
    // Written behind the check's back, it makes the reload fail visibly while
    // the running worker keeps serving.
    let good = std::fs::read_to_string(proxy.cfg_path()).unwrap();
    std::fs::write(
        proxy.cfg_path(),
        format!("{good}\nlisten broken\n    bind nowhere\n"),
    )
    .unwrap();
    let err = proxy.reload().await.unwrap_err();
    assert!(format!("{err:#}").contains("failed reload"), "{err:#}");
    assert_eq!(server_id_via(bind.port()).await.unwrap(), 12);
    std::fs::write(proxy.cfg_path(), good).unwrap();
    let worker = proxy.reload().await.unwrap();
    assert_eq!(server_id_via(bind.port()).await.unwrap(), 12);
    let master = proxy.pid();
    drop(proxy);
    assert!(!pid_alive(master), "haproxy master {master} survived");
    assert!(!pid_alive(worker), "haproxy worker {worker} survived");
}

async fn read_greeting(addr: SocketAddr, limit: Duration) -> anyhow::Result<String> {
    let mut stream = timeout(limit, TcpStream::connect(addr)).await??;
    let mut reply = String::new();
    timeout(limit, stream.read_to_string(&mut reply)).await??;
    Ok(reply)
}

#[tokio::test]
async fn net_host_cut_and_heal() {
    init_tracing();
    let h1 = NetHost::create("h1").await;
    let h2 = NetHost::create("h2").await;
    assert_ne!(h1.addr(), h2.addr());
    let port = 7000;
    let dir = tempfile::tempdir().unwrap();
    let mut listener = std::process::Command::new(bins::socat());
    listener
        .arg(format!(
            "TCP-LISTEN:{port},bind={},reuseaddr,fork",
            h1.addr()
        ))
        .arg("SYSTEM:echo pong");
    let _listener = h1
        .spawn("listener", &listener, dir.path().join("socat.log"))
        .await
        .unwrap();
    let target: SocketAddr = (h1.addr(), port).into();
    let probe = Duration::from_secs(1);
    wait_until(Duration::from_secs(10), || async {
        read_greeting(target, probe)
            .await
            .is_ok_and(|r| r.trim() == "pong")
    })
    .await
    .expect("listener inside h1 reachable from the root namespace");

    // Host to host goes through the root namespace.
    let from_h2 = |limit: u32| {
        let mut cmd = h2.run(bins::socat());
        cmd.arg("-T")
            .arg(limit.to_string())
            .arg("-")
            .arg(format!("TCP:{}:{port},connect-timeout={limit}", h1.addr()));
        cmd
    };
    let out = from_h2(2).output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pong",
        "{out:?}"
    );

    h1.cut().await.unwrap();
    assert!(
        read_greeting(target, probe).await.is_err(),
        "h1 reachable while cut"
    );
    let out = from_h2(1).output().await.unwrap();
    assert!(!out.status.success(), "h2 reached h1 while cut: {out:?}");

    h1.heal().await.unwrap();
    wait_until(Duration::from_secs(10), || async {
        read_greeting(target, probe)
            .await
            .is_ok_and(|r| r.trim() == "pong")
    })
    .await
    .expect("h1 reachable again after heal");
    let out = from_h2(2).output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pong",
        "{out:?}"
    );

    let (ns, ifname) = (h1.ns_name().to_string(), h1.host_interface().to_string());
    drop(h1);
    let links = std::process::Command::new(bins::ip())
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&ifname));
    let namespaces = std::process::Command::new(bins::ip())
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ns.as_str())));
}

#[tokio::test]
async fn mariadb_in_a_net_host_survives_cut_stop_and_crash() {
    init_tracing();
    let host = NetHost::create("dbhost").await;
    let mut db = MariaDb::start(MariaDbOptions {
        netns: Some(host.ns_name().to_string()),
        bind_address: host.addr().into(),
        ..MariaDbOptions::new("nsdb", 21)
    })
    .await;
    assert_eq!(db.addr(), format!("{}:{}", host.addr(), db.port()));
    db.exec("CREATE DATABASE t; CREATE TABLE t.w (id INT PRIMARY KEY); INSERT INTO t.w VALUES (1)")
        .await
        .unwrap();
    let short = Duration::from_secs(1);
    let reachable = |db: &MariaDb| {
        let opts = db.opts();
        async move {
            let Ok(Ok(mut conn)) = timeout(short, Conn::new(opts)).await else {
                return false;
            };
            let counted = timeout(
                short,
                conn.query_first::<u64, _>("SELECT COUNT(*) FROM t.w"),
            );
            matches!(counted.await, Ok(Ok(Some(1))))
        }
    };
    assert!(reachable(&db).await);

    host.cut().await.unwrap();
    assert!(!reachable(&db).await, "reachable through a cut link");
    host.heal().await.unwrap();
    wait_until(Duration::from_secs(10), || reachable(&db))
        .await
        .expect("reachable after heal");

    db.sigstop().unwrap();
    assert!(!reachable(&db).await, "a stopped server answered");
    db.sigcont().unwrap();
    wait_until(Duration::from_secs(10), || reachable(&db))
        .await
        .expect("reachable after SIGCONT");

    let old_pid = db.pid().unwrap();
    db.kill9().await;
    assert!(!db.is_running());
    assert!(!pid_alive(old_pid));
    db.start_again().await;
    assert_ne!(db.pid(), Some(old_pid));
    assert!(reachable(&db).await, "committed row lost over kill -9");
}

#[tokio::test]
async fn consul_reachable_from_a_net_host() {
    init_tracing();
    let host = NetHost::create("agenthost").await;
    let consul = ConsulDev::start_with(ConsulDevOptions {
        extra_client_addrs: vec![host.host_side_addr().into()],
        ..ConsulDevOptions::default()
    })
    .await;
    let mut get = host.run(bins::socat());
    get.arg("-T")
        .arg("5")
        .arg("-")
        .arg(format!(
            "TCP:{}:{},connect-timeout=5",
            host.host_side_addr(),
            consul.http_port()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = get.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stdin,
        b"GET /v1/status/leader HTTP/1.0\r\nHost: consul\r\n\r\n",
    )
    .await
    .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.contains("127.0.0.1:"), "{reply}");
}

/// What the server counts when a commit waiting for a semi-sync ACK is
/// killed (the stall release, a switch's kill loop and self-fencing all do
/// this): its client gets no OK, yet MariaDB counts it in `no_tx`, the
/// count the documentation calls commits "not acknowledged by a replica".
/// Only `no_times` (semi-sync switched off) says the source acknowledged
/// commits without an ACK, so that is what the failover evidence and the
/// chaos runner follow.
#[tokio::test]
async fn a_killed_commit_waiting_for_an_ack_is_no_switch_off() {
    let topology = Topology::source_with_replicas(2).await;
    let source = topology.source();
    source
        .exec("CREATE DATABASE killed; CREATE TABLE killed.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    // Nothing can ACK from now on.
    for r in topology.replicas() {
        r.exec("STOP SLAVE IO_THREAD").await.unwrap();
    }
    let mut admin = source.conn().await.unwrap();
    let read = |name: &'static str| {
        let opts = source.opts();
        async move {
            let mut c = Conn::new(opts).await.unwrap();
            let v: u64 = status_var(&mut c, name).await.unwrap().parse().unwrap();
            v
        }
    };
    let (no_tx0, no_times0) = (
        read("Rpl_semi_sync_master_no_tx").await,
        read("Rpl_semi_sync_master_no_times").await,
    );
    let mut writer = source.conn().await.unwrap();
    let id: u64 = writer
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let insert = tokio::spawn(async move {
        writer
            .query_drop("INSERT INTO killed.t VALUES (1)")
            .await
            .map_err(|e| e.to_string())
    });
    timeout(Duration::from_secs(10), async {
        while read("Rpl_semi_sync_master_wait_sessions").await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the commit waits for an ACK");
    admin
        .query_drop(format!("KILL CONNECTION {id}"))
        .await
        .unwrap();
    let answered = timeout(Duration::from_secs(10), insert)
        .await
        .unwrap()
        .unwrap();
    assert!(answered.is_err(), "a killed waiting commit got an OK");
    let (no_tx, no_times) = (
        read("Rpl_semi_sync_master_no_tx").await,
        read("Rpl_semi_sync_master_no_times").await,
    );
    eprintln!(
        "killed waiting commit: no_tx {no_tx0} -> {no_tx}, no_times {no_times0} -> {no_times}"
    );
    assert_eq!(no_times, no_times0, "a kill is no switch-off");
    assert_eq!(
        status_var(&mut admin, "Rpl_semi_sync_master_status")
            .await
            .unwrap(),
        "ON"
    );
}
