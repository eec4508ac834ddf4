use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{expect_ok, Consul, ConsulError};

impl Consul {
    /// Registers a node-level TTL check on the local Consul agent. A
    /// session that lists it among its node checks is invalidated as soon
    /// as the check goes critical — within `ttl` of the process dying —
    /// instead of after the session TTL (10 s at least, up to twice that).
    pub async fn check_register_ttl(
        &self,
        id: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<(), ConsulError> {
        const OP: &str = "check register";
        let body = json!({
            "ID": id,
            "Name": name,
            "TTL": format!("{}ms", ttl.as_millis()),
            "Status": "passing",
        });
        let reply = self
            .call(
                OP,
                id,
                Method::PUT,
                "/v1/agent/check/register",
                &[],
                Some(body.to_string().into_bytes()),
                None,
            )
            .await?;
        expect_ok(OP, id, reply).map(|_| ())
    }

    /// Marks a TTL check passing for another `ttl`.
    pub async fn check_pass(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "check pass";
        let reply = self
            .call(
                OP,
                id,
                Method::PUT,
                &format!("/v1/agent/check/pass/{id}"),
                &[],
                None,
                None,
            )
            .await?;
        expect_ok(OP, id, reply).map(|_| ())
    }

    pub async fn check_deregister(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "check deregister";
        let reply = self
            .call(
                OP,
                id,
                Method::PUT,
                &format!("/v1/agent/check/deregister/{id}"),
                &[],
                None,
                None,
            )
            .await?;
        expect_ok(OP, id, reply).map(|_| ())
    }
}
