//! `successover plan <cluster>`: the coordinator's failover plan
//! (`plan/<cluster>`, [`FailoverPlan`]): the node a failover would promote
//! if the source died now, or why none would be. Exit 0 when a failover
//! would find a node, 1 when not or when no plan is published (no
//! coordinator yet, or one from before the plan existed), so a patching
//! script can ask before it takes a replica down.
//!
//! `--json`:
//!
//! ```json
//! {"cluster": "c1", "key": "mysql/plan/c1", "plan": <FailoverPlan> | null, "age_ms": 1200 | null}
//! ```

use serde::Serialize;
use successover_common::contract::{ClusterName, FailoverPlan};

use crate::format::{age, clean};
use crate::{ensure_known, now_ms, print_json, Ctx, Exit, Failure};

#[derive(Debug, Serialize)]
struct Doc<'a> {
    cluster: &'a str,
    key: &'a str,
    plan: Option<&'a FailoverPlan>,
    age_ms: Option<u64>,
}

/// The text `plan` prints for a plan read at `now_ms`.
pub fn text(cluster: &ClusterName, plan: Option<&FailoverPlan>, now_ms: u64) -> String {
    let Some(p) = plan else {
        return format!(
            "no failover plan for {cluster}: no coordinator has published one (see `successover status {cluster}`)\n"
        );
    };
    let verdict = match (&p.candidate, p.ready) {
        (Some(c), true) => format!("yes: {} would be promoted", clean(c)),
        _ => "NO: a failover now would promote nobody".to_owned(),
    };
    format!(
        "cluster      {cluster}\nready        {verdict}\nsource       {}\nreason       {}\nwritten      {} ago by {}\n",
        clean(p.source.as_deref().unwrap_or("none published")),
        clean(&p.reason),
        age(now_ms.saturating_sub(p.at_ms)),
        clean(&p.coordinator),
    )
}

pub async fn run(ctx: &Ctx, cluster: &ClusterName) -> Result<Exit, Failure> {
    ensure_known(ctx, cluster).await?;
    let key = ctx.keys.plan_key(cluster);
    let plan = match ctx.consul.kv_get(&key).await? {
        None => None,
        Some(pair) => Some(
            FailoverPlan::parse(pair.value.as_deref().unwrap_or_default())
                .map_err(|e| Failure::failed(format!("{key} is unreadable: {e}")))?,
        ),
    };
    let now = now_ms();
    if ctx.json {
        print_json(&Doc {
            cluster: cluster.as_str(),
            key: &key,
            plan: plan.as_ref(),
            age_ms: plan.as_ref().map(|p| now.saturating_sub(p.at_ms)),
        })?;
    } else {
        print!("{}", text(cluster, plan.as_ref(), now));
    }
    Ok(if plan.is_some_and(|p| p.ready) {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_a_plan() {
        let c1 = ClusterName::parse("c1").unwrap();
        let p = FailoverPlan {
            ready: true,
            source: Some("db1".into()),
            candidate: Some("db2".into()),
            reason: "db2 was the semi-sync replica".into(),
            coordinator: "c1/db3".into(),
            at_ms: 1_000,
        };
        let t = text(&c1, Some(&p), 13_000);
        assert!(t.contains("ready        yes: db2 would be promoted"), "{t}");
        assert!(t.contains("written      12s ago by c1/db3"), "{t}");
        let no = FailoverPlan {
            ready: false,
            candidate: None,
            reason: "possible ACKer db2 (a semi-sync replica) cannot be read\nx".into(),
            ..p
        };
        let t = text(&c1, Some(&no), 13_000);
        assert!(t.contains("NO: a failover now would promote nobody"), "{t}");
        assert!(t.contains("cannot be read\\nx"), "{t}");
        assert!(text(&c1, None, 0).contains("no failover plan for c1"));
    }
}
