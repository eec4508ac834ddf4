//! The local sandbox: Consul, three MariaDB servers (source + two replicas,
//! GTID, lossless semi-sync) and HAProxy on this machine, with a writer
//! going through HAProxy. Prints what it built and what the writer saw.
//!
//! `--hold` keeps everything running until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use successover_common::consul::{Consul, ConsulConfig};
use successover_tests::consul::ConsulDev;
use successover_tests::haproxy::{tcp_listen, HaProxy};
use successover_tests::mariadb::{status_var, Topology, ROOT_PASSWORD, ROOT_USER};
use successover_tests::{reserve_port, writer};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hold = std::env::args().any(|a| a == "--hold");
    let write_for = Duration::from_secs(3);

    println!("== starting Consul (dev agent)");
    let consul_agent = ConsulDev::start().await;
    let consul = Consul::new(ConsulConfig::new(consul_agent.http_addr()))?;

    println!("== starting three MariaDB servers: db1 source, db2 semi-sync replica, db3 replica");
    let topo = Topology::source_with_replicas(2).await;
    let source = topo.source();

    let proxy_port = reserve_port();
    let bind: SocketAddr = format!("127.0.0.1:{}", proxy_port.port()).parse()?;
    let source_addr: SocketAddr = source.addr().parse()?;
    println!("== starting HAProxy: cluster c1 on {bind} -> {source_addr}");
    let proxy = HaProxy::start(&tcp_listen("c1", bind, "source", source_addr)).await;

    consul.kv_put("mysql/master/c1", source.addr()).await?;
    consul
        .kv_put(
            "mysql/cluster/c1",
            format!(
                r#"{{"proxy_port": {}, "semi_sync_replicas": 1}}"#,
                proxy_port.port()
            ),
        )
        .await?;

    writer::prepare(&source.url()).await?;
    topo.wait_replicated(Duration::from_secs(30)).await?;
    let mut conn = source.conn().await?;
    let yes_before: u64 = status_var(&mut conn, "Rpl_semi_sync_master_yes_tx")
        .await?
        .parse()?;

    println!("== writing through HAProxy for {write_for:?}");
    let cancel = CancellationToken::new();
    let run = tokio::spawn(writer::run(
        "127.0.0.1".to_owned(),
        proxy_port.port(),
        ROOT_USER.to_owned(),
        ROOT_PASSWORD.to_owned(),
        1,
        Duration::ZERO,
        cancel.clone(),
    ));
    tokio::time::sleep(write_for).await;
    cancel.cancel();
    let log = run.await?;
    topo.wait_replicated(Duration::from_secs(30)).await?;

    let yes_after: u64 = status_var(&mut conn, "Rpl_semi_sync_master_yes_tx")
        .await?
        .parse()?;
    println!(
        "   acknowledged writes: {} ({:.0}/s), failed attempts: {}, longest gap: {:?}",
        log.acked.len(),
        log.acked.len() as f64 / log.elapsed.as_secs_f64(),
        log.failed,
        log.max_gap()
    );
    println!(
        "   semi-sync acknowledged transactions on db1: {}",
        yes_after - yes_before
    );
    let mut lost_total = 0;
    for (i, server) in topo.servers().iter().enumerate() {
        let lost = writer::missing(&server.url(), &log).await?;
        println!("   db{}: {} acknowledged writes missing", i + 1, lost.len());
        lost_total += lost.len();
    }

    if hold {
        println!("\n== sandbox is up (Ctrl-C to stop and clean up)");
        println!("   Consul HTTP   {}", consul_agent.http_addr());
        for (i, server) in topo.servers().iter().enumerate() {
            println!(
                "   db{}          mysql -h127.0.0.1 -P{} -u{ROOT_USER} -p{ROOT_PASSWORD}",
                i + 1,
                server.port()
            );
        }
        println!(
            "   HAProxy c1    mysql -h127.0.0.1 -P{} -u{ROOT_USER} -p{ROOT_PASSWORD}",
            proxy_port.port()
        );
        println!(
            "   HAProxy admin socat - UNIX-CONNECT:{}",
            proxy.admin_socket_path().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(proxy);
    if lost_total > 0 {
        anyhow::bail!("{lost_total} acknowledged writes are missing");
    }
    println!("== done: 0 acknowledged writes lost");
    Ok(())
}
