//! `successover switchover <cluster> [--to <node>] [--force]
//! [--skip-catchup] [--max-lag <s>] [--at <time>] [--not-after <time>]
//! [--wait] [--timeout <s>]`, and `successover cancel <cluster>`.
//!
//! Writes a [`SwitchoverRequest`] with a fresh `id` into
//! `switchover/<cluster>` — only if no request is pending there (CAS on
//! index 0), so two operators cannot both ask and have one request
//! silently replace the other. The coordinator consumes the request and
//! records what it did under `history/<cluster>/<entry id>`, copying the
//! request (with its id) into the entry; `--wait` follows that entry.
//!
//! `--json` prints one document when the command finishes:
//!
//! ```json
//! {"cluster": "c1", "key": "mysql/switchover/c1", "id": "cli-1700000000000-4242",
//!  "request": <SwitchoverRequest>,
//!  "result": "done" | "refused" | "aborted" | "failed" | "timeout" | null,  // null without --wait
//!  "entry": <HistoryEntry> | null}                                          // the last seen
//! ```

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use successover_common::consul::{KvPair, Watch};
use successover_common::contract::{ClusterName, ClusterSettings, NodeName};
use successover_common::procedure::{HistoryEntry, SwitchoverRequest};
use tokio::time::Instant;

use crate::format::clean;
use crate::history::{outcome_exit, outcome_line, parse_entry, pending_request, step_line};
use crate::status::render::{kind_word, outcome_word, request_line};
use crate::{ensure_known, error_chain, now_ms, print_json, Ctx, Exit, Failure};

#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    pub cluster: ClusterName,
    /// The node to promote (default: the coordinator picks the best candidate).
    #[arg(long, value_name = "NODE")]
    pub to: Option<NodeName>,
    /// Switch even when the target lags more than the limit.
    #[arg(long)]
    pub force: bool,
    /// Do not wait for the target to apply everything the old source
    /// committed. Needs --force. Can lose acknowledged writes: only for a
    /// source that will not come back.
    #[arg(long)]
    pub skip_catchup: bool,
    /// Lag limit in seconds for this switch (default: the cluster's
    /// max_lag_seconds).
    #[arg(long, value_name = "SECONDS")]
    pub max_lag: Option<u32>,
    /// Schedule the switch: not before this time, RFC 3339 in UTC
    /// (`2026-12-05T02:00:00Z`) or from now (`+30m`). The request waits in
    /// KV until then; `successover cancel` withdraws it.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<u64>,
    /// Not after this time (same forms): a switch that could not start by
    /// then is refused, with nothing changed.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub not_after: Option<u64>,
    /// Follow the switch live until it finishes.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this many seconds (exit 3); with
    /// --at, counted from that time.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, requires = "wait",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// `--at` and `--not-after`: an RFC 3339 time in UTC, or `+<duration>`
/// from now (`+90s`, `+30m`, `+2h`), as Unix milliseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let at = match s.strip_prefix('+') {
        Some(d) => {
            let d = humantime::parse_duration(d)
                .map_err(|e| format!("{s:?}: {e} (a duration like +30m)"))?;
            std::time::SystemTime::now() + d
        }
        None => humantime::parse_rfc3339(s).map_err(|e| {
            format!("{s:?}: {e} (a UTC time like 2026-12-05T02:00:00Z, or +30m from now)")
        })?,
    };
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

/// A request id unique enough for one operator's switches: the clock and
/// our pid. Ids must pass `valid_node_name` (the coordinator checks).
pub fn request_id(now_ms: u64, pid: u32) -> String {
    format!("cli-{now_ms}-{pid}")
}

/// The request these arguments ask for and the value to write, checked by
/// the same parser the coordinator uses, so a request this CLI writes is
/// never refused as malformed.
pub fn build_request(
    args: &SwitchoverArgs,
    id: &str,
) -> Result<(SwitchoverRequest, Vec<u8>), Failure> {
    if args.skip_catchup && !args.force {
        return Err(Failure::usage(
            "--skip-catchup needs --force: skipping the catch-up can lose acknowledged \
             writes, and is only for a source that will not come back",
        ));
    }
    let req = SwitchoverRequest {
        target: args.to.as_ref().map(|n| n.as_str().to_owned()),
        force: args.force,
        max_lag_seconds: args.max_lag,
        skip_catchup: args.skip_catchup,
        id: Some(id.to_owned()),
        not_before_ms: args.at,
        not_after_ms: args.not_after,
    };
    let body = serde_json::to_vec(&req)
        .map_err(|e| Failure::failed(format!("cannot encode the request: {e}")))?;
    SwitchoverRequest::parse(&body)
        .map_err(|e| Failure::usage(format!("the coordinator would refuse this request: {e}")))?;
    Ok((req, body))
}

/// Why a second request is refused, with what is pending and how to get
/// rid of it if it is stale.
pub fn pending_refusal(key: &str, cluster: &ClusterName, existing: Option<&KvPair>) -> String {
    let what = match existing {
        Some(p) => match SwitchoverRequest::parse(p.value.as_deref().unwrap_or_default()) {
            Ok(r) => format!(" ({})", request_line(&r)),
            Err(e) => format!(" (unreadable: {e})"),
        },
        // Taken by the coordinator between our write and our read.
        None => String::new(),
    };
    format!(
        "refused: {key} already holds a pending request{what}. Wait for the coordinator \
         to take it (`successover status {cluster}`, `successover history {cluster}`), \
         or withdraw it with `consul kv delete {key}`"
    )
}

/// The newest history entry the request with `id` started, among `pairs`
/// (a read of the cluster's history prefix, or of one entry's key when
/// `key` is known).
pub fn find_entry(pairs: &[KvPair], id: &str, key: Option<&str>) -> Option<(String, HistoryEntry)> {
    pairs
        .iter()
        .filter(|p| key.is_none_or(|k| p.key == k))
        .filter_map(|p| Some((p.key.clone(), parse_entry(p).ok()?)))
        .filter(|(_, e)| e.request.as_ref().and_then(|r| r.id.as_deref()) == Some(id))
        .max_by_key(|(_, e)| e.started_ms)
}

#[derive(Debug, Serialize)]
struct Doc<'a> {
    cluster: &'a str,
    key: &'a str,
    id: &'a str,
    request: &'a SwitchoverRequest,
    result: Option<&'static str>,
    entry: Option<HistoryEntry>,
}

pub async fn run(ctx: &Ctx, args: &SwitchoverArgs) -> Result<Exit, Failure> {
    let id = request_id(now_ms(), std::process::id());
    let (req, body) = build_request(args, &id)?;
    let cluster = &args.cluster;
    let settings = ensure_known(ctx, cluster).await?;
    if let Some(pair) = settings {
        // Unreadable settings are `status`'s to report; here only the
        // consequence for this request matters.
        if ClusterSettings::parse(pair.value.as_deref().unwrap_or_default())
            .is_ok_and(|s| s.maintenance)
        {
            eprintln!(
                "warning: {cluster} is in maintenance ({}): the coordinator leaves the \
                 request pending until maintenance ends",
                pair.key
            );
        }
    }
    if let Some(to) = &args.to {
        // Only a warning: the agent may be restarting, and the coordinator
        // has the last word (and records it in the history).
        let report_key = ctx.keys.agent_key(cluster, to);
        if ctx.consul.kv_get(&report_key).await?.is_none() {
            eprintln!(
                "warning: no health report at {report_key}: the coordinator refuses a \
                 target whose agent does not report"
            );
        }
    }
    let key = ctx.keys.switchover_key(cluster);
    match ctx.consul.kv_cas(&key, body, 0).await {
        Ok(true) => {}
        Ok(false) => {
            let existing = ctx.consul.kv_get(&key).await?;
            return Err(Failure::failed(pending_refusal(
                &key,
                cluster,
                existing.as_ref(),
            )));
        }
        // A CAS is not retried when its outcome is unknown (a repeat would
        // report a false conflict), so say that it may have landed.
        Err(e) => {
            return Err(Failure::failed(format!(
                "{}; request {id} may have been written anyway: look with `consul kv get {key}`",
                error_chain(&e)
            )))
        }
    }
    let mut doc = Doc {
        cluster: cluster.as_str(),
        key: &key,
        id: &id,
        request: &req,
        result: None,
        entry: None,
    };
    if !ctx.json {
        println!(
            "requested switchover of {cluster} to {}: wrote {key}",
            args.to
                .as_ref()
                .map_or("the best candidate", |n| n.as_str())
        );
        println!("id {id}");
    }
    if !args.wait {
        if ctx.json {
            print_json(&doc)?;
        } else {
            println!(
                "follow it with `successover history {cluster} {id}` \
                 (or `successover history {cluster}`)"
            );
        }
        return Ok(Exit::Ok);
    }
    // A scheduled switch: --timeout counts from its time.
    let until_due = args.at.map_or(0, |at| at.saturating_sub(now_ms()));
    let timeout = Duration::from_secs(args.timeout) + Duration::from_millis(until_due);
    doc.entry = follow(ctx, cluster, &id, timeout).await;
    let exit = doc.entry.as_ref().and_then(|e| outcome_exit(e.outcome));
    doc.result = Some(match (&doc.entry, exit) {
        (Some(e), Some(_)) => outcome_word(e.outcome),
        _ => "timeout",
    });
    if ctx.json {
        print_json(&doc)?;
    }
    match exit {
        Some(exit) => Ok(exit),
        None => {
            let pending = pending_request(ctx, cluster, &id).await.ok().flatten();
            Err(Failure {
                exit: Exit::Timeout,
                message: timeout_message(
                    ctx,
                    cluster,
                    &id,
                    args.timeout,
                    doc.entry.as_ref(),
                    pending.is_some(),
                ),
            })
        }
    }
}

fn timeout_message(
    ctx: &Ctx,
    cluster: &ClusterName,
    id: &str,
    secs: u64,
    entry: Option<&HistoryEntry>,
    pending: bool,
) -> String {
    let key = ctx.keys.switchover_key(cluster);
    match entry {
        Some(e) => format!(
            "timed out after {secs} s with {} {} still {}{}: it may still finish; \
             follow it with `successover history {cluster} {id}`",
            kind_word(e.kind),
            e.id,
            outcome_word(e.outcome),
            e.last_step()
                .map(|s| format!(" (last step {})", clean(&s.name)))
                .unwrap_or_default()
        ),
        None if pending => format!(
            "timed out after {secs} s: request {id} is still pending in {key}: no \
             coordinator has taken it (does an agent hold {}?). It stays pending and may \
             still run; withdraw it with `consul kv delete {key}`",
            ctx.keys.lock_key(cluster)
        ),
        None => format!(
            "timed out after {secs} s: request {id} was taken from {key}, but no history \
             entry names it yet; it may still be running: `successover history {cluster} {id}`"
        ),
    }
}

/// Follows the history entry of request `id` until it finishes or
/// `timeout` passes, printing each new step (text mode). Returns the last
/// version of the entry seen.
async fn follow(
    ctx: &Ctx,
    cluster: &ClusterName,
    id: &str,
    timeout: Duration,
) -> Option<HistoryEntry> {
    let deadline = Instant::now() + timeout;
    let say = |line: String| {
        if !ctx.json {
            println!("{line}");
        }
    };
    // Short blocking queries: the deadline is checked between them, and a
    // lost connection is noticed quickly.
    let wait = Duration::from_secs(5);
    let mut watch =
        Watch::prefix(ctx.consul.clone(), ctx.keys.history_prefix(cluster)).with_wait(wait);
    let mut entry_key: Option<String> = None;
    let mut last: Option<HistoryEntry> = None;
    let mut printed = 0;
    let mut last_error = String::new();
    if !ctx.json {
        println!("waiting up to {} s for the coordinator…", timeout.as_secs());
    }
    loop {
        let pairs = match tokio::time::timeout_at(deadline, watch.next()).await {
            Err(_) => return last,
            Ok(Err(e)) => {
                // The watch backs off by itself; say so once per problem.
                let msg = error_chain(&e);
                if msg != last_error {
                    eprintln!("warning: {msg}; still trying");
                    last_error = msg;
                }
                continue;
            }
            Ok(Ok(pairs)) => pairs,
        };
        let Some((key, entry)) = find_entry(&pairs, id, entry_key.as_deref()) else {
            continue;
        };
        if entry_key.is_none() {
            say(format!(
                "{} {} taken by coordinator {}",
                kind_word(entry.kind),
                clean(&entry.id),
                clean(&entry.coordinator)
            ));
            // From now on only this entry matters: a whole history prefix
            // can be large, and is re-read on every change under it.
            watch = Watch::prefix(ctx.consul.clone(), key.clone()).with_wait(wait);
            entry_key = Some(key);
        }
        for step in entry.steps.iter().skip(printed) {
            say(step_line(step));
        }
        printed = printed.max(entry.steps.len());
        let finished = outcome_exit(entry.outcome).is_some();
        if finished {
            say(outcome_line(&entry));
        }
        last = Some(entry);
        if finished {
            return last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    use crate::status::fixtures::pair;
    use crate::{Cli, Command};

    fn args(cli: &[&str]) -> Result<SwitchoverArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["successover", "switchover"]
                .iter()
                .chain(cli.iter())
                .copied(),
        )?;
        match cli.command {
            Command::Switchover(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_from_arguments() {
        let a = args(&["c1", "--to", "db2"]).unwrap();
        assert!(!a.wait);
        assert_eq!(a.timeout, 120);
        let (r, _) = build_request(&a, "cli-1-2").unwrap();
        assert_eq!(
            r,
            SwitchoverRequest {
                target: Some("db2".into()),
                id: Some("cli-1-2".into()),
                ..SwitchoverRequest::default()
            }
        );
        let (r, body) = build_request(
            &args(&["c1", "--force", "--skip-catchup", "--max-lag", "30"]).unwrap(),
            "cli-1-2",
        )
        .unwrap();
        assert!(r.force && r.skip_catchup);
        assert_eq!(r.target, None);
        assert_eq!(r.max_lag_seconds, Some(30));
        // What is written parses back to the same request.
        assert_eq!(SwitchoverRequest::parse(&body).unwrap(), r);
    }

    #[test]
    fn a_scheduled_request_carries_its_window() {
        let a = args(&[
            "c1",
            "--at",
            "2026-12-05T02:00:00Z",
            "--not-after",
            "2026-12-05T03:00:00Z",
        ])
        .unwrap();
        let (r, body) = build_request(&a, "cli-1-2").unwrap();
        assert_eq!(r.not_before_ms, Some(1_796_436_000_000));
        assert_eq!(r.not_after_ms, Some(1_796_439_600_000));
        assert_eq!(SwitchoverRequest::parse(&body).unwrap(), r);
        assert!(request_line(&r).contains("not before 2026-12-05T02:00:00Z"));
        // Relative to now.
        let soon = parse_time("+30m").unwrap();
        let expected = now_ms() + 30 * 60 * 1000;
        assert!(soon.abs_diff(expected) < 5_000, "{soon} vs {expected}");
        // A window that ends before it starts is refused before it is
        // written, as the coordinator would refuse it.
        let backwards = args(&["c1", "--at", "+2h", "--not-after", "+1h"]).unwrap();
        assert_eq!(
            build_request(&backwards, "cli-1-2").unwrap_err().exit,
            Exit::Usage
        );
        for bad in ["tomorrow", "2026-12-05 02:00", "+soon"] {
            assert_eq!(
                args(&["c1", "--at", bad]).unwrap_err().exit_code(),
                2,
                "{bad}"
            );
        }
    }

    #[test]
    fn skip_catchup_needs_force() {
        let a = args(&["c1", "--to", "db2", "--skip-catchup"]).unwrap();
        let err = build_request(&a, "cli-1-2").unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert!(
            err.message.contains("--skip-catchup needs --force"),
            "{err}"
        );
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["c1", "--timeout", "5"][..],
            &["c1", "--wait", "--timeout", "0"],
            &["c1", "--max-lag", "-1"],
            &["c1", "--to", ""],
            &["c1", "--to", "db2\nserver evil"],
            &["c 1"],
        ] {
            let err = args(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        let a = args(&["c1", "--wait", "--timeout", "5"]).unwrap();
        assert!(a.wait);
        assert_eq!(a.timeout, 5);
    }

    #[test]
    fn ids_are_valid_request_ids() {
        let id = request_id(1_700_000_000_000, 4242);
        assert_eq!(id, "cli-1700000000000-4242");
        let body = json!({"id": id}).to_string();
        assert!(SwitchoverRequest::parse(body.as_bytes()).is_ok());
    }

    #[test]
    fn refusal_names_the_key_and_the_pending_request() {
        let c1 = ClusterName::parse("c1").unwrap();
        let p = pair(
            "mysql/switchover/c1",
            r#"{"target":"db3","id":"cli-9-9","force":true}"#,
        );
        let msg = pending_refusal("mysql/switchover/c1", &c1, Some(&p));
        assert!(
            msg.starts_with(
                "refused: mysql/switchover/c1 already holds a pending request \
                 (target db3, force, id cli-9-9)"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("consul kv delete mysql/switchover/c1"),
            "{msg}"
        );
        let bare = pair("mysql/switchover/c1", "db3");
        assert!(pending_refusal("mysql/switchover/c1", &c1, Some(&bare)).contains("(target db3)"));
    }

    #[test]
    fn finds_the_entry_of_a_request() {
        let entry = |id: &str, request_id: &str, started: u64| {
            json!({
                "id": id, "kind": "switchover", "cluster": "c1", "outcome": "running",
                "reason": "", "from": null, "to": null,
                "request": {"id": request_id}, "coordinator": "db3",
                "started_ms": started, "finished_ms": null
            })
            .to_string()
        };
        let pairs = vec![
            pair("mysql/history/c1/in-progress", "002-switchover"),
            pair(
                "mysql/history/c1/001-switchover",
                &entry("001-switchover", "cli-a", 1),
            ),
            pair(
                "mysql/history/c1/002-switchover",
                &entry("002-switchover", "cli-b", 2),
            ),
            pair("mysql/history/c1/003-broken", "{"),
        ];
        let (key, e) = find_entry(&pairs, "cli-b", None).unwrap();
        assert_eq!(key, "mysql/history/c1/002-switchover");
        assert_eq!(e.id, "002-switchover");
        assert!(find_entry(&pairs, "cli-b", Some("mysql/history/c1/001-switchover")).is_none());
        assert!(find_entry(&pairs, "cli-c", None).is_none());
    }
}

#[derive(Debug, Serialize)]
struct CancelDoc<'a> {
    cluster: &'a str,
    key: &'a str,
    /// Whether a pending request was withdrawn.
    cancelled: bool,
    /// The request withdrawn, or found unreadable (its raw value).
    request: Option<serde_json::Value>,
}

/// `successover cancel <cluster>`: withdraws a pending (or scheduled)
/// switch request, only the one it showed (CAS on its modify index): a
/// request the coordinator took meanwhile is running or done, and `cancel`
/// says so instead.
pub async fn cancel(ctx: &Ctx, cluster: &ClusterName) -> Result<Exit, Failure> {
    ensure_known(ctx, cluster).await?;
    let key = ctx.keys.switchover_key(cluster);
    let Some(pair) = ctx.consul.kv_get(&key).await? else {
        if ctx.json {
            print_json(&CancelDoc {
                cluster: cluster.as_str(),
                key: &key,
                cancelled: false,
                request: None,
            })?;
        } else {
            println!("no switch request is pending for {cluster}");
        }
        return Ok(Exit::Ok);
    };
    let raw = pair.value.as_deref().unwrap_or_default();
    let parsed = SwitchoverRequest::parse(raw);
    let shown = match &parsed {
        Ok(r) => request_line(r),
        Err(e) => format!("unreadable: {e}"),
    };
    if !ctx.consul.kv_delete_cas(&key, pair.modify_index).await? {
        return Err(Failure::failed(format!(
            "the request ({shown}) changed or was taken by the coordinator before it could be \
             withdrawn: see `successover status {cluster}` and `successover history {cluster}`"
        )));
    }
    if ctx.json {
        print_json(&CancelDoc {
            cluster: cluster.as_str(),
            key: &key,
            cancelled: true,
            request: Some(match parsed {
                Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                Err(_) => serde_json::Value::String(String::from_utf8_lossy(raw).into_owned()),
            }),
        })?;
    } else {
        println!(
            "withdrew the switch request for {cluster}: {}",
            clean(&shown)
        );
    }
    Ok(Exit::Ok)
}
