//! Operator endpoints: `POST /v1/admin/reload` re-reads the mapping file and applies it (online
//! when compatible, else by a background rebuild), answering with the outcome;
//! `POST /v1/admin/rebuild` rebuilds in the background in any case. Only the operator's API token (or no token
//! configured) may call them; a tenant-scoped token gets 403.

use super::{Api, ApiError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value as Json_};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use sync::config::MappingConfig;
use sync::replicator::{ReloadOutcome, ReloadRequest};

/// Where the mapping comes from and where reloads go.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The mapping file (`--config`).
    pub config_path: PathBuf,
    /// The replicator's reload queue.
    pub reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
}

impl Admin {
    /// Reads the mapping file and hands it to the replicator; `Err` names what is wrong with
    /// the file (nothing is sent then). With `wait`, returns the outcome (bounded).
    pub async fn reload(&self, wait: bool, rebuild: bool) -> Result<Option<ReloadOutcome>, String> {
        let path = self.config_path.clone();
        let config = tokio::task::spawn_blocking(move || MappingConfig::load(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = ReloadRequest {
            config: Arc::new(config),
            rebuild,
            reply: wait.then_some(tx),
        };
        self.reloads
            .send(req)
            .await
            .map_err(|_| "the replicator has stopped".to_string())?;
        if !wait {
            return Ok(None);
        }
        // A reload waits for the current batch and a catalog check: seconds at most.
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(outcome)) => Ok(Some(outcome)),
            Ok(Err(_)) => Err("the replicator stopped before applying the reload".into()),
            Err(_) => Err(
                "the reload is queued but not applied within 60 s (the replicator is reconnecting?); see the log"
                    .into(),
            ),
        }
    }
}

/// `POST /v1/admin/reload`.
pub(super) async fn reload(
    State(api): State<Api>,
    access: Option<axum::Extension<super::auth::Access>>,
) -> Result<Json<Json_>, ApiError> {
    reload_or_rebuild(api, access, false).await
}

/// `POST /v1/admin/rebuild`: as a reload, but rebuilds in the background in any case.
pub(super) async fn rebuild(
    State(api): State<Api>,
    access: Option<axum::Extension<super::auth::Access>>,
) -> Result<Json<Json_>, ApiError> {
    reload_or_rebuild(api, access, true).await
}

async fn reload_or_rebuild(
    api: Api,
    access: Option<axum::Extension<super::auth::Access>>,
    rebuild: bool,
) -> Result<Json<Json_>, ApiError> {
    if !matches!(access.as_deref(), None | Some(super::auth::Access::All)) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            json!({"error": "reloading the mapping needs the operator's API token"}),
        ));
    }
    let Some(admin) = api.admin.as_ref() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            json!({"error": "this process has no mapping file to reload"}),
        ));
    };
    match admin.reload(true, rebuild).await {
        Ok(Some(outcome)) => {
            let (word, detail, code) = match &outcome {
                ReloadOutcome::Unchanged => ("unchanged", Json_::Null, StatusCode::OK),
                ReloadOutcome::Applied(c) => ("applied", json!(c), StatusCode::OK),
                ReloadOutcome::Rebuilding(c) => ("rebuilding", json!(c), StatusCode::OK),
                ReloadOutcome::Refused(why) => ("refused", json!(why), StatusCode::CONFLICT),
            };
            let body = json!({"outcome": word, "detail": detail, "message": outcome.to_string()});
            if code.is_success() {
                Ok(Json(body))
            } else {
                Err(ApiError(code, body))
            }
        }
        Ok(None) => Ok(Json(json!({"outcome": "queued"}))),
        Err(e) => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"outcome": "refused", "error": e}),
        )),
    }
}
