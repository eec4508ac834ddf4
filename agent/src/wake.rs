//! Wakes the agent's loop early when the cluster's `master` keys or its
//! lock change, so a fence, a new source or a free lock is acted on in
//! milliseconds instead of at the next tick.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use successover_common::consul::{Consul, Watch};
use successover_common::contract::{ClusterName, Keys};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub fn spawn(
    consul: Consul,
    keys: Keys,
    cluster: ClusterName,
    cancel: CancellationToken,
) -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    for prefix in [
        keys.master_key(&cluster),
        keys.lock_key(&cluster),
        keys.switchover_key(&cluster),
    ] {
        let (consul, notify, cancel) = (consul.clone(), notify.clone(), cancel.clone());
        tokio::spawn(
            async move {
                let mut watch = Watch::prefix(consul, prefix)
                    .with_wait(Duration::from_secs(30))
                    .with_min_interval(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = watch.next() => {
                            if r.is_ok() {
                                notify.notify_one();
                            }
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }
    notify
}
