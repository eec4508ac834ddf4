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
/// read_only needs), so if read_only is still waiting the semi-sync source
/// flag goes off and the orphaned commits finish, with nobody to tell, on a
/// server that is not the source. Everything that flag releases must have
/// no client left: not only the sessions waiting for an ACK but those
/// queued behind one at the commit stage (MySQL's group commit parks them
/// there, in no ACK wait of their own), whatever their account, including
/// a connection made after the kill passes. So once read_only is seen
/// waiting for its lock (no new write can start), every connection but
/// ours and read_only's is killed, and only then does the flag go off.
pub async fn fence_local(local: &mut Node, except: &[&str]) -> Result<usize, String> {
    let first = local.kill_client_connections(except).await;
    let mut ro_conn = Node::new(local.config().clone());
    // Connected first, so its id is known before it asks for read_only.
    let ro_id = ro_conn
        .server_info()
        .await
        .map_err(|e| e.to_string())?
        .connection_id;
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
            if let Err(e) = release_orphans(local, ro_id).await {
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

/// How long [`release_orphans`] waits to see read_only waiting for its lock.
const RO_WAIT_SEEN: Duration = Duration::from_secs(5);

/// Ends the orphaned ACK waits that hold `read_only` (connection `ro_id`)
/// up; see [`fence_local`]. Does nothing while read_only is not yet seen
/// waiting for its lock (a write could still start and be told OK once the
/// flag is off), and nothing once it is done.
async fn release_orphans(local: &mut Node, ro_id: u64) -> Result<(), String> {
    let started = std::time::Instant::now();
    loop {
        match local.state_of(ro_id).await.map_err(|e| e.to_string())? {
            None => return Ok(()),
            Some(state) if state.to_ascii_lowercase().contains("lock") => break,
            Some(state) if started.elapsed() >= RO_WAIT_SEEN => {
                return Err(format!(
                    "read_only is not waiting for its lock (state {state:?}): the semi-sync flag stays on"
                ))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    local
        .kill_clients_but(&[ro_id])
        .await
        .map_err(|e| e.to_string())?;
    local
        .set_semi_sync_source(false)
        .await
        .map_err(|e| e.to_string())
}
