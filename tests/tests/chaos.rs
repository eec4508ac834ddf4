//! A short chaos run (docs/chaos.md): random faults against the whole
//! system for about a minute and a half with a fixed seed, every
//! invariant checked after each one, on the servers `SUCCESSOVER_FLAVOUR`
//! picks (`scripts/test.sh` runs it on all three). The long run is
//! `cargo run -p successover-tests --bin successover-chaos -- --minutes 30 --seed 1`.

use std::time::Duration;

use successover_tests::chaos::{self, ChaosOptions};

/// The first deck of this seed opens with kill9, hide, switch, proxycut,
/// partition and leader (11 kinds to a deck, about 8 faults in 90 s): a
/// failover, the semi-sync replica out of sight, and a switch all come up.
const SEED: u64 = 79;

#[tokio::test(flavor = "multi_thread")]
async fn a_short_chaos_run_keeps_every_invariant() {
    let log_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/chaos/test-seed-{SEED}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    let opts = ChaosOptions::new(Duration::from_secs(90), SEED, &log_dir);
    let report = chaos::run(opts).await.expect("chaos run");
    let table = report.table();
    println!("{table}");
    assert!(report.ok(), "violations:\n{table}");
    assert!(report.failovers >= 1, "no failover happened\n{table}");
    assert!(report.switches >= 1, "no switchover happened\n{table}");
    assert!(report.writes_acked > 1000, "writers barely wrote\n{table}");
}
