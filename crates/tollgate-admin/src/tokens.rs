//! Admin tokens, for rotating them: `GET /admin/v1/tokens` lists them
//! (never the token, which the store does not have), `DELETE
//! /admin/v1/tokens/<id>` revokes one. New tokens come from `POST
//! /admin/v1/users/<name>/tokens`; the bootstrap token is rotated by giving
//! a super_admin user a token and revoking the bootstrap one.
//!
//! Super_admins and auditors see every token, a user its own; a super_admin
//! revokes any, a user its own. The last way in as a super_admin — the
//! last `super_admin` token when no user holds the role — is never revoked.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use tollgate_store::{AdminToken, AuditEntry, Membership, StoreError, User};

use crate::api::{AdminApi, ApiError};
use crate::authz::{self, Principal};
use crate::resources_api::Writer;

/// Every admin token and every user, read once per request.
async fn load(api: &AdminApi) -> Result<(Vec<AdminToken>, Vec<User>), ApiError> {
    let store = api.store.clone();
    tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>((store.list_admin_tokens()?, store.list_users()?))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// The tokens `principal` may see, each with its owner's name.
fn visible<'a>(
    principal: &Principal,
    tokens: &'a [AdminToken],
    users: &'a [User],
) -> Vec<(&'a AdminToken, Option<&'a str>)> {
    tokens
        .iter()
        .map(|token| {
            let owner = token
                .user_id
                .and_then(|id| users.iter().find(|u| u.id == id))
                .map(|u| u.name.as_str());
            (token, owner)
        })
        .filter(|(_, user)| {
            principal.reads_everything() || (user.is_some() && *user == principal.user.as_deref())
        })
        .collect()
}

/// `GET /admin/v1/tokens`: `{"items": [{id, name, role, user, created_at, last_used_at}]}`.
pub async fn list(State(api): State<AdminApi>, writer: Writer) -> Result<Json<Value>, ApiError> {
    let (tokens, users) = load(&api).await?;
    let items: Vec<Value> = visible(writer.principal(), &tokens, &users)
        .into_iter()
        .map(|(token, user)| {
            json!({
                "id": token.id,
                "name": token.name,
                "role": token.role,
                "user": user,
                "created_at": rfc3339(token.created_at),
                "last_used_at": token.last_used_at.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /admin/v1/tokens/<id>`: 204; 404 for a token the caller may not
/// see; 409 `last_super_admin` for the last way in as a super_admin.
pub async fn remove(
    State(api): State<AdminApi>,
    writer: Writer,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let principal = writer.principal();
    let (tokens, users) = load(&api).await?;
    let Some((token, user)) = visible(principal, &tokens, &users)
        .into_iter()
        .find(|(t, _)| t.id == id)
    else {
        return Err(ApiError::not_found(format!("no admin token {id}")));
    };
    if !(principal.is_super_admin() || user == principal.user.as_deref()) {
        return Err(authz::forbidden(
            "a user revokes its own tokens; a super_admin any",
        ));
    }
    if token.role == "super_admin" && token.user_id.is_none() {
        let other_token = tokens
            .iter()
            .any(|t| t.id != id && t.role == "super_admin" && t.user_id.is_none());
        let super_user = users.iter().any(|u| {
            u.memberships
                .iter()
                .any(|Membership { role, .. }| role == "super_admin")
                && tokens.iter().any(|t| t.user_id == Some(u.id))
        });
        if !(other_token || super_user) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_super_admin",
                "this is the last way in as a super_admin: give a super_admin user a token first",
            ));
        }
    }
    let audit = AuditEntry {
        actor: writer.actor().name.clone(),
        client_ip: writer.actor().client_ip.clone(),
        action: "delete".into(),
        kind: "tokens".into(),
        name: token.name.clone(),
        diff: json!({ "before": { "id": token.id, "name": token.name, "role": token.role, "user": user }, "after": null }),
    };
    let store = api.store.clone();
    let deleted = tokio::task::spawn_blocking(move || store.delete_admin_token(id, &[audit]))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no admin token {id}")))
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
