//! The browser login of E2B's CLI (`e2b auth login`), against Hutch.
//!
//! With `E2B_DOCS_BASE=<server>/hutch/v1/cli-login`, the CLI opens
//! `<server>/hutch/v1/cli-login/api/cli?next=http://localhost:PORT` in a
//! browser. That page asks for a Hutch API key or access token (there are
//! no user accounts to sign in to); once one is given, the server makes a
//! new access token for the key's team — shaped as a JWT whose payload
//! says it expires in ten years, so that the CLI does not try to refresh
//! it — and sends the browser to the CLI's `next` with E2B's parameters
//! (`email`, `accessToken`, `refreshToken`, `tokenEndpoint`,
//! `revokeEndpoint`, `clientId`). The CLI then asks `GET /teams` with that
//! token and keeps it as its project's key. `next` must be the CLI's own
//! callback on the loopback interface; nothing else is redirected to.
//!
//! `POST /hutch/v1/oauth/token` (`grant_type=refresh_token`) answers with
//! the same token while it is valid; `POST /hutch/v1/oauth/revoke`
//! (`e2b auth logout`) revokes it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use utoipa_axum::routes;

use super::e2b_templates::public_base;
use super::openapi::ApiRouter;
use crate::state::AppState;

/// What the CLI calls the client.
const CLIENT_ID: &str = "hutch";

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(page, sign_in))
        .routes(routes!(token))
        .routes(routes!(revoke))
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct LoginForm {
    /// A key or access token of the team to log in to.
    key: Option<String>,
    /// The CLI's callback on this machine (`http://localhost:PORT/...`).
    next: Option<String>,
}

/// An OAuth token request (RFC 6749, refresh grant).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct TokenForm {
    /// `refresh_token`.
    grant_type: Option<String>,
    /// The token the login gave.
    refresh_token: Option<String>,
}

/// An OAuth token revocation (RFC 7009).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct RevokeForm {
    /// The token to revoke.
    token: Option<String>,
}

/// A refreshed token (RFC 6749): the same token, still valid.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct OAuthToken {
    /// The token.
    access_token: String,
    /// The token again.
    refresh_token: String,
    /// `Bearer`.
    token_type: String,
}

/// An OAuth error (RFC 6749's `error`), with E2B's `code` and `message`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct OAuthError {
    /// `unsupported_grant_type` or `invalid_grant`.
    error: String,
    /// The HTTP status.
    code: u16,
    /// What went wrong.
    message: String,
}

/// `GET …/api/cli`: the form (`next` given), or what became of the login
/// (`state=success|error`, as the CLI's callback sends the browser back).
#[utoipa::path(
    get,
    path = "/hutch/v1/cli-login/api/cli",
    tag = "cli login",
    security(()),
    params(("next" = Option<String>, Query, description = "The CLI's callback on this machine."), ("state" = Option<String>, Query, description = "`success` or `error`: the page the login ends on."), ("email" = Option<String>, Query, description = "Who logged in (with `state=success`)."), ("error" = Option<String>, Query, description = "Why the login failed (with `state=error`).")),
    responses((status = 200, description = "The page.", content_type = "text/html", body = String), (status = 400, description = "A page saying how to start the login.", content_type = "text/html", body = String))
)]
async fn page(Query(q): Query<HashMap<String, String>>) -> Response {
    match q.get("state").map(String::as_str) {
        Some("success") => html(
            StatusCode::OK,
            "Logged in",
            &format!(
                "<p>The E2B CLI is logged in to Hutch as <b>{}</b>. You can close this page.</p>",
                escape(q.get("email").map_or("", String::as_str))
            ),
        ),
        Some("error") => html(
            StatusCode::OK,
            "Login failed",
            &format!(
                "<p>The login failed: {}</p>",
                escape(q.get("error").map_or("", String::as_str))
            ),
        ),
        _ => match q.get("next").filter(|n| loopback_callback(n)) {
            Some(next) => form(next, None),
            None => html(
                StatusCode::BAD_REQUEST,
                "Login",
                "<p>Start the login with <code>e2b auth login</code> (with <code>E2B_DOCS_BASE</code> set to this server's <code>/hutch/v1/cli-login</code>).</p>",
            ),
        },
    }
}

/// `POST …/api/cli` (`key`, `next`): a token for the key's team, handed to
/// the CLI's callback; the form again, saying why, when the key is not
/// valid.
#[utoipa::path(
    post,
    path = "/hutch/v1/cli-login/api/cli",
    tag = "cli login",
    security(()),
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Logged in: to the CLI's callback, with a token.", headers(("location" = String, description = "The callback."))), (status = 200, description = "The page.", content_type = "text/html", body = String), (status = 400, description = "A page saying how to start the login.", content_type = "text/html", body = String))
)]
async fn sign_in(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = f.get("next").map(String::as_str).unwrap_or_default();
    if !loopback_callback(next) {
        return html(
            StatusCode::BAD_REQUEST,
            "Login",
            "<p>The login must come back to the CLI on this machine (<code>next</code> is not a loopback callback).</p>",
        );
    }
    let key = f.get("key").map(|k| k.trim()).unwrap_or_default();
    let caller = match st.keys.caller(key).await {
        Ok(Some(c)) => c,
        Ok(None) => return form(next, Some("That is not a valid API key or access token.")),
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    let team = match crate::teams::of(&st, &caller).await {
        Ok(t) => t,
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    let token = match st
        .keys
        .create_cli_token(&caller.team, "E2B CLI login")
        .await
    {
        Ok(t) => t,
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    let base = public_base(&headers, &uri).unwrap_or_default();
    let mut target = match url::Url::parse(next) {
        Ok(u) => u,
        Err(_) => return form(next, Some("The CLI's callback is not a URL.")),
    };
    target
        .query_pairs_mut()
        .append_pair("email", &format!("{}@hutch", team.name))
        .append_pair("accessToken", &token)
        .append_pair("refreshToken", &token)
        .append_pair("tokenEndpoint", &format!("{base}/hutch/v1/oauth/token"))
        .append_pair("revokeEndpoint", &format!("{base}/hutch/v1/oauth/revoke"))
        .append_pair("clientId", CLIENT_ID);
    tracing::info!(team = %team.name, "E2B CLI logged in");
    Redirect::to(target.as_str()).into_response()
}

/// `POST /hutch/v1/oauth/token` (`grant_type=refresh_token`,
/// `refresh_token`): the same token while it is valid.
#[utoipa::path(
    post,
    path = "/hutch/v1/oauth/token",
    tag = "cli login",
    security(()),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The token, still valid.", body = OAuthToken), (status = 400, description = "An unsupported grant or invalid token.", body = OAuthError))
)]
async fn token(
    State(st): State<Arc<AppState>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let refresh = f
        .get("refresh_token")
        .map(String::as_str)
        .unwrap_or_default();
    let grant = f.get("grant_type").map(String::as_str);
    if grant != Some("refresh_token") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    match st.keys.caller(refresh).await {
        Ok(Some(_)) => Json(OAuthToken {
            access_token: refresh.to_owned(),
            refresh_token: refresh.to_owned(),
            token_type: "Bearer".to_owned(),
        })
        .into_response(),
        Ok(None) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

/// `POST /hutch/v1/oauth/revoke` (`token`): revokes it (RFC 7009: 200
/// whether or not it was valid).
#[utoipa::path(
    post,
    path = "/hutch/v1/oauth/revoke",
    tag = "cli login",
    security(()),
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The token is revoked (or was not valid)."))
)]
async fn revoke(
    State(st): State<Arc<AppState>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let token = f.get("token").map(String::as_str).unwrap_or_default();
    match st.keys.revoke_key(token).await {
        Ok(revoked) => {
            if revoked {
                tracing::info!("E2B CLI logged out: its token is revoked");
            }
            StatusCode::OK.into_response()
        }
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    let message = match error {
        "unsupported_grant_type" => "grant_type must be refresh_token",
        _ => "the refresh token is not valid",
    };
    let body = OAuthError {
        error: error.to_owned(),
        code: status.as_u16(),
        message: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

/// Whether `next` is a callback of a CLI on this machine:
/// `http://localhost:PORT` or `http://127.0.0.1:PORT` (a path allowed).
fn loopback_callback(next: &str) -> bool {
    url::Url::parse(next).is_ok_and(|u| {
        u.scheme() == "http"
            && matches!(u.host_str(), Some("localhost" | "127.0.0.1"))
            && u.port().is_some()
            && u.username().is_empty()
            && u.password().is_none()
    })
}

/// The sign-in form, sending back to `next`, with `problem` above it.
fn form(next: &str, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"problem\">{}</p>", escape(p)))
        .unwrap_or_default();
    html(
        StatusCode::OK,
        "Log the E2B CLI in to Hutch",
        &format!(
            "{problem}<form method=\"post\">\
             <label>Hutch API key or access token <input name=\"key\" type=\"password\" autocomplete=\"off\" required autofocus></label>\
             <input type=\"hidden\" name=\"next\" value=\"{}\">\
             <button type=\"submit\">Log in</button></form>\
             <p>The CLI gets an access token of the key's team (revoked by <code>e2b auth logout</code>).</p>",
            escape(next)
        ),
    )
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
             <style>body{{font-family:sans-serif;max-width:36em;margin:4em auto}}\
             .problem{{color:#b00}}input[type=password]{{display:block;width:100%;margin:.5em 0}}</style>\
             </head><body><h1>{t}</h1>{body}</body></html>",
            t = escape(title)
        )),
    )
        .into_response()
}

/// `s` safe in HTML text and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_callbacks_are_redirected_to() {
        for ok in ["http://localhost:4567", "http://127.0.0.1:8080/cb"] {
            assert!(loopback_callback(ok), "{ok}");
        }
        for bad in [
            "https://localhost:4567",
            "http://localhost",
            "http://evil.example:4567",
            "http://localhost.evil.example:4567",
            "http://user@localhost:4567",
            "javascript:alert(1)",
            "",
        ] {
            assert!(!loopback_callback(bad), "{bad}");
        }
        assert_eq!(escape("\"><x>&'"), "&quot;&gt;&lt;x&gt;&amp;&#39;");
    }
}
