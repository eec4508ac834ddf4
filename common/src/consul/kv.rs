use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{decode, expect_ok, key_path, status_error, Consul, ConsulError};

/// One KV entry with its value already base64-decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub flags: u64,
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
}

impl KvPair {
    /// The value as UTF-8 text; `None` for an absent or non-UTF-8 value.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPair {
    key: String,
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    session: Option<String>,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
}

impl RawPair {
    fn decode(self, op: &'static str) -> Result<KvPair, ConsulError> {
        let value = match self.value {
            Some(b64) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| ConsulError::Decode {
                        op,
                        target: self.key.clone(),
                        source: Box::new(e),
                    })?,
            ),
            None => None,
        };
        Ok(KvPair {
            key: self.key,
            value,
            flags: self.flags,
            session: self.session,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
        })
    }
}

pub(crate) fn decode_pairs(
    op: &'static str,
    target: &str,
    body: &[u8],
) -> Result<Vec<KvPair>, ConsulError> {
    let raw: Vec<RawPair> = decode(op, target, body)?;
    raw.into_iter().map(|p| p.decode(op)).collect()
}

fn expect_bool(op: &'static str, target: &str, body: &[u8]) -> Result<bool, ConsulError> {
    decode(op, target, body)
}

impl Consul {
    /// One key, or `None` when it does not exist.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvPair>, ConsulError> {
        const OP: &str = "kv get";
        let reply = self
            .call(OP, key, Method::GET, &key_path(key), &[], None, None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let reply = expect_ok(OP, key, reply)?;
        Ok(decode_pairs(OP, key, &reply.body)?.into_iter().next())
    }

    /// Every key under `prefix` (empty when there is none).
    pub async fn kv_get_recurse(&self, prefix: &str) -> Result<Vec<KvPair>, ConsulError> {
        Ok(self.kv_list(prefix, 0, None).await?.1)
    }

    /// A recursive read that can block: with `index > 0` Consul holds the
    /// request until something under the prefix changes past `index` or
    /// `wait` passes. Returns the new `X-Consul-Index` with the pairs.
    pub async fn kv_list(
        &self,
        prefix: &str,
        index: u64,
        wait: Option<Duration>,
    ) -> Result<(u64, Vec<KvPair>), ConsulError> {
        const OP: &str = "kv list";
        let mut query = vec![("recurse", String::new())];
        let timeout = self.blocking(&mut query, index, wait);
        let reply = self
            .call(
                OP,
                prefix,
                Method::GET,
                &key_path(prefix),
                &query,
                None,
                timeout,
            )
            .await?;
        let index = reply.index.unwrap_or(0);
        if reply.status == StatusCode::NOT_FOUND {
            return Ok((index, Vec::new()));
        }
        let reply = expect_ok(OP, prefix, reply)?;
        Ok((index, decode_pairs(OP, prefix, &reply.body)?))
    }

    /// Key names under `prefix`; with a separator, only one level deep
    /// (sub-trees come back as `prefix/child/`).
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<Vec<String>, ConsulError> {
        const OP: &str = "kv keys";
        let mut query = vec![("keys", String::new())];
        if let Some(sep) = separator {
            query.push(("separator", sep.to_owned()));
        }
        let reply = self
            .call(
                OP,
                prefix,
                Method::GET,
                &key_path(prefix),
                &query,
                None,
                None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let reply = expect_ok(OP, prefix, reply)?;
        decode(OP, prefix, &reply.body)
    }

    pub async fn kv_put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), ConsulError> {
        const OP: &str = "kv put";
        let reply = self
            .call(
                OP,
                key,
                Method::PUT,
                &key_path(key),
                &[],
                Some(value.into()),
                None,
            )
            .await?;
        let reply = expect_ok(OP, key, reply)?;
        if expect_bool(OP, key, &reply.body)? {
            Ok(())
        } else {
            Err(status_error(OP, key, &reply))
        }
    }

    /// Check-and-set: writes only if the key's modify index is still
    /// `index` (0 = only if the key does not exist). `Ok(false)` when
    /// someone else changed it first.
    pub async fn kv_cas(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        index: u64,
    ) -> Result<bool, ConsulError> {
        const OP: &str = "kv cas";
        let reply = self
            .call(
                OP,
                key,
                Method::PUT,
                &key_path(key),
                &[("cas", index.to_string())],
                Some(value.into()),
                None,
            )
            .await?;
        let reply = expect_ok(OP, key, reply)?;
        expect_bool(OP, key, &reply.body)
    }

    pub async fn kv_delete(&self, key: &str) -> Result<(), ConsulError> {
        self.delete("kv delete", key, &[]).await.map(|_| ())
    }

    pub async fn kv_delete_recurse(&self, prefix: &str) -> Result<(), ConsulError> {
        self.delete("kv delete recurse", prefix, &[("recurse", String::new())])
            .await
            .map(|_| ())
    }

    /// Deletes only if the modify index is still `index`.
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool, ConsulError> {
        self.delete("kv delete cas", key, &[("cas", index.to_string())])
            .await
    }

    async fn delete(
        &self,
        op: &'static str,
        key: &str,
        query: &[(&str, String)],
    ) -> Result<bool, ConsulError> {
        let reply = self
            .call(op, key, Method::DELETE, &key_path(key), query, None, None)
            .await?;
        let reply = expect_ok(op, key, reply)?;
        expect_bool(op, key, &reply.body)
    }

    /// Takes the lock on `key` for `session`; `Ok(false)` when another
    /// session holds it or the key is still in its lock-delay.
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.lock_op("kv acquire", "acquire", key, value.into(), session)
            .await
    }

    /// Releases the lock if `session` holds it; the value stays.
    pub async fn kv_release(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.lock_op("kv release", "release", key, value.into(), session)
            .await
    }

    async fn lock_op(
        &self,
        op: &'static str,
        verb: &'static str,
        key: &str,
        value: Vec<u8>,
        session: &str,
    ) -> Result<bool, ConsulError> {
        let reply = self
            .call(
                op,
                key,
                Method::PUT,
                &key_path(key),
                &[(verb, session.to_owned())],
                Some(value),
                None,
            )
            .await?;
        let reply = expect_ok(op, key, reply)?;
        expect_bool(op, key, &reply.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_consul_kv_json() {
        let body = br#"[{"LockIndex":1,"Key":"mysql/master/c1","Flags":0,"Value":"MTI3LjAuMC4xOjMzMDY=","Session":"abc","CreateIndex":10,"ModifyIndex":12},
                        {"LockIndex":0,"Key":"mysql/master/","Flags":0,"Value":null,"CreateIndex":5,"ModifyIndex":5}]"#;
        let pairs = decode_pairs("kv list", "mysql/", body).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].value_str(), Some("127.0.0.1:3306"));
        assert_eq!(pairs[0].session.as_deref(), Some("abc"));
        assert_eq!(pairs[0].modify_index, 12);
        assert_eq!(pairs[1].value, None);
    }

    #[test]
    fn bad_base64_names_the_key() {
        let body = br#"[{"Key":"mysql/master/c1","Value":"!!!","CreateIndex":1,"ModifyIndex":1}]"#;
        let err = decode_pairs("kv list", "mysql/", body).unwrap_err();
        assert!(err.to_string().contains("mysql/master/c1"), "{err}");
    }
}
