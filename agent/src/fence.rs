//! Fencing the local server: what an agent does when its own server is
//! writable but must not be (DESIGN.md rule 8), whether it learned that
//! from KV or from being cut off ([`crate::isolation`]).

use std::time::Duration;

use tracing::Instrument as _;

use crate::mysql::Node;

/// Kills client connections (except `except`'s), sets `read_only`, kills
/// again. Returns how many connections it killed.
///
/// `SET GLOBAL read_only=1` waits behind commits that wait for an ACK,
/// which on a woken or isolated old source never comes. So the clients are
/// killed first, then read_only is asked on a connection of its own (new
/// commits queue behind it), then the clients are killed again, so none of
/// them can be told OK any more. On MariaDB that ends their waits. MySQL
/// keeps a killed session's thread waiting (it holds the commit lock
/// read_only needs), so if read_only is still waiting, every session
/// waiting for an ACK is killed whatever its account and the semi-sync
/// source flag goes off: the orphaned commits finish, with nobody to tell,
/// on a server that is not the source.
pub async fn fence_local(local: &mut Node, except: &[&str]) -> Result<usize, String> {
    let first = local.kill_client_connections(except).await;
    let mut ro_conn = Node::new(local.config().clone());
    let ro = tokio::spawn(
        async move {
            let r = ro_conn.set_read_only(true).await;
            ro_conn.close().await;
            r
        }
        .in_current_span(),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = local.kill_client_connections(except).await;
    let settle = tokio::time::sleep(Duration::from_millis(500));
    tokio::pin!(ro);
    let ok_ro = tokio::select! {
        r = &mut ro => r,
        _ = settle => {
            // The kills above spare the agents' accounts: a session of
            // theirs (a DBA's, or a test's) still waiting would be told OK
            // by the flag going off, for a commit no replica has.
            let released = match local.kill_ack_waiters(&[]).await {
                Ok(_) => local.set_semi_sync_source(false).await,
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                tracing::warn!(error = %e, "cannot release commits waiting on a fenced server");
            }
            ro.await
        }
    };
    match ok_ro {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.to_string()),
    }
    let third = local
        .kill_client_connections(except)
        .await
        .map_err(|e| e.to_string())?;
    Ok(third.len() + first.as_ref().map_or(0, Vec::len) + second.as_ref().map_or(0, Vec::len))
}
