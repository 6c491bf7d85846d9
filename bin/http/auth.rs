//! Who may read what. The operator's API token (`--api-token`) reads everything. Signed
//! tenant-scoped tokens (JWT: HS256 with a shared secret, or RS256/ES256 with a public key)
//! name in a claim (`tenants` by default) the tenants a client — a browser, say — may read;
//! such a request is answered only inside those tenants: its `tenant` parameter must be one
//! of them (a token for one tenant has it filled in), so every query, path, traversal and
//! component is restricted to it by the handlers' one tenant filter; node lookups outside it
//! are 404, `/metrics` is 403 and `/v1/status` shows positions only.
//!
//! Tokens come in `Authorization: Bearer …` or, for clients that cannot set headers (a
//! browser's `EventSource`), an `access_token` query parameter. A token never appears in a
//! log line or an error.
//!
//! Not for: answering queries (the handlers) or issuing tokens.

use super::{Api, ApiError};
use anyhow::{anyhow, Context};
use axum::http::{HeaderMap, StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What a request may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything (the operator's token, or no auth configured).
    All,
    /// Only these tenants (values as text).
    Tenants(Arc<[String]>),
}

/// How signed tokens are checked.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    claim: String,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// Where signed tokens' keys and rules come from (flags).
#[derive(Debug, Default)]
pub struct JwtSettings<'a> {
    pub hs256_secret_file: Option<&'a Path>,
    pub public_key_file: Option<&'a Path>,
    pub claim: &'a str,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

impl Jwt {
    /// The checker the settings describe, or `None` when no key is configured.
    pub fn load(s: &JwtSettings<'_>) -> anyhow::Result<Option<Jwt>> {
        let (key, algorithms) = match (s.hs256_secret_file, s.public_key_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(anyhow!(
                    "--jwt-hs256-secret-file and --jwt-public-key-file are exclusive: configure one"
                ))
            }
            (Some(f), None) => {
                let secret =
                    std::fs::read(f).with_context(|| format!("reading the JWT secret file {}", f.display()))?;
                let secret = secret.trim_ascii();
                if secret.len() < 32 {
                    return Err(anyhow!(
                        "the JWT secret in {} is {} bytes; use at least 32 random bytes (e.g. `openssl rand -hex 32`)",
                        f.display(),
                        secret.len()
                    ));
                }
                (DecodingKey::from_secret(secret), vec![Algorithm::HS256])
            }
            (None, Some(f)) => {
                let pem =
                    std::fs::read(f).with_context(|| format!("reading the JWT public key file {}", f.display()))?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, vec![Algorithm::RS256])
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, vec![Algorithm::ES256])
                } else {
                    return Err(anyhow!(
                        "{} holds no RSA or EC (P-256) public key in PEM form (-----BEGIN PUBLIC KEY-----)",
                        f.display()
                    ));
                }
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 5;
        match s.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = s.issuer {
            validation.set_issuer(&[i]);
        }
        Ok(Some(Jwt {
            key,
            validation,
            claim: s.claim.to_string(),
        }))
    }

    /// The tenants a valid token grants.
    fn check(&self, token: &str) -> Result<Arc<[String]>, String> {
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        let tenants: Vec<String> = match data.claims.get(&self.claim) {
            Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
            Some(v) => text(v).into_iter().collect(),
            None => Vec::new(),
        };
        if tenants.is_empty() {
            return Err(format!("the token names no tenant in its {:?} claim", self.claim));
        }
        Ok(tenants.into())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unauthorized(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, json!({"error": msg.to_string()}))
}

fn forbidden(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, json!({"error": msg.to_string()}))
}

/// A query string's parameters, decoded exactly as the handlers' `Query` extractor decodes
/// them (names too: `%74enant` is `tenant`), or `None` if it does not parse.
fn params(query: Option<&str>) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.unwrap_or("")).ok()
}

/// The bearer token of a request, from the header or the `access_token` parameter.
fn bearer(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| {
            params(query)?
                .into_iter()
                .find_map(|(k, v)| (k == "access_token").then_some(v))
        })
}

impl Api {
    /// What the request's token allows (401 when it allows nothing).
    pub(super) fn access(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Access, ApiError> {
        if self.token.is_none() && self.jwt.is_none() {
            return Ok(Access::All);
        }
        let Some(given) = bearer(headers, query) else {
            return Err(unauthorized(
                "missing bearer token (send Authorization: Bearer <token>, or access_token= where headers cannot be set)",
            ));
        };
        if self.token.as_deref().is_some_and(|t| t == given) {
            return Ok(Access::All);
        }
        match &self.jwt {
            Some(jwt) if given.matches('.').count() == 2 => {
                jwt.check(&given).map(Access::Tenants).map_err(unauthorized)
            }
            _ => Err(unauthorized("wrong bearer token")),
        }
    }
}

/// For a tenant-scoped request, checks (or fills in) its `tenant` parameter and returns the
/// URI the handlers see: its query rebuilt from the decoded parameters, with exactly the one
/// tenant checked (so no other spelling of a parameter can reach a handler). `/metrics` is
/// refused; `/v1/status` answers positions only (its handler reads the access).
pub(super) fn restrict(uri: &Uri, tenants: &[String]) -> Result<Uri, ApiError> {
    let path = uri.path();
    if path == "/metrics" {
        return Err(forbidden("metrics need the operator's API token"));
    }
    let Some(mut pairs) = params(uri.query()) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": "the query string does not parse"}),
        ));
    };
    let asked: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "tenant")
        .map(|(_, v)| v.clone())
        .collect();
    let tenant = match asked.as_slice() {
        [t] if tenants.contains(t) => t.clone(),
        [t] => return Err(forbidden(format!("this token does not read tenant {t:?}"))),
        [] if tenants.len() == 1 => tenants[0].clone(),
        [] => {
            return Err(forbidden(format!(
                "this token reads {} tenants: pass tenant= (one of them)",
                tenants.len()
            )))
        }
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                json!({"error": "parameter tenant: given more than once", "parameter": "tenant"}),
            ))
        }
    };
    pairs.retain(|(k, _)| k != "tenant" && k != "access_token");
    if path != "/v1/status" {
        pairs.push(("tenant".into(), tenant));
    }
    let query = serde_urlencoded::to_string(&pairs).map_err(|_| forbidden("cannot scope this request"))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        format!("{path}?{query}")
            .parse()
            .map_err(|_| forbidden("cannot scope this request"))?,
    );
    Uri::from_parts(parts).map_err(|_| forbidden("cannot scope this request"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn exp() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    #[test]
    fn es256_tokens_are_checked_with_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let public = dir.path().join("pub.pem");
        std::fs::write(&public, kp.public_key_pem()).unwrap();
        let jwt = Jwt::load(&JwtSettings {
            public_key_file: Some(&public),
            claim: "orgs",
            audience: Some("graphsync"),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let sign = |claims: Value| encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        let ok = sign(json!({"orgs": 7, "aud": "graphsync", "exp": exp()}));
        assert_eq!(&*jwt.check(&ok).unwrap(), ["7".to_string()]);
        assert!(jwt
            .check(&sign(json!({"orgs": 7, "aud": "other", "exp": exp()})))
            .is_err());
        // An HS256 token signed with the public key as a secret (algorithm confusion) fails.
        let confused = encode(
            &Header::default(),
            &json!({"orgs": 7, "aud": "graphsync", "exp": exp()}),
            &EncodingKey::from_secret(kp.public_key_pem().as_bytes()),
        )
        .unwrap();
        assert!(jwt.check(&confused).is_err());
        // Garbage never panics.
        for bad in ["", "a.b.c", "...", "eyJ.eyJ.sig"] {
            assert!(jwt.check(bad).is_err());
        }
    }

    #[test]
    fn bad_key_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny").unwrap();
        let e = Jwt::load(&JwtSettings {
            hs256_secret_file: Some(&short),
            claim: "tenants",
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        let e = Jwt::load(&JwtSettings {
            public_key_file: Some(&short),
            claim: "tenants",
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("no RSA or EC"), "{e}");
        assert!(Jwt::load(&JwtSettings::default()).unwrap().is_none());
    }

    #[test]
    fn a_single_tenant_is_filled_in_and_others_refused() {
        let t: Vec<String> = vec!["a b".into()];
        let u: Uri = "/v1/neighbors?node=User:1".parse().unwrap();
        assert_eq!(restrict(&u, &t).unwrap().query(), Some("node=User%3A1&tenant=a+b"));
        let u: Uri = "/v1/subgraph?tenant=a+b&access_token=x.y.z".parse().unwrap();
        assert_eq!(restrict(&u, &t).unwrap().query(), Some("tenant=a+b"));
        let u: Uri = "/v1/subgraph?tenant=c".parse().unwrap();
        assert_eq!(restrict(&u, &t).unwrap_err().0, StatusCode::FORBIDDEN);
        // Every spelling of the name counts: the handlers decode names too.
        for q in [
            "tenant=a+b&tenant=c",
            "tenant=a+b&%74enant=c",
            "%74enant=a%20b&tenant=c",
        ] {
            let u: Uri = format!("/v1/subgraph?{q}").parse().unwrap();
            assert_eq!(restrict(&u, &t).unwrap_err().0, StatusCode::BAD_REQUEST, "{q}");
        }
        let u: Uri = "/v1/subgraph?%74enant=c".parse().unwrap();
        assert_eq!(restrict(&u, &t).unwrap_err().0, StatusCode::FORBIDDEN);
        let u: Uri = "/metrics".parse().unwrap();
        assert_eq!(restrict(&u, &t).unwrap_err().0, StatusCode::FORBIDDEN);
    }
}
