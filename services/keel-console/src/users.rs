//! Console accounts: the Users page and API, the user's own account page (*My
//! account*), and the role gate every request under `/appliance` passes.

use askama::Template;
use axum::extract::{Form, Path, Request, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use keel_api::{
    NewUser, PasswordChange, Role, TotpConfirm, TotpEnabled, TotpEnrolment, TotpRemove, User,
    UserChange, UserList,
};
use serde::Deserialize;

use crate::app::{self, client_ip, JsonBody, Shared};
use crate::auth::{AuthError, Session};
use crate::error::ApiError;
use crate::web::{form_user, render, MessagePage};

const PAGE: &str = "/appliance/users";
const ACCOUNT_PAGE: &str = "/appliance/account";
const API: &str = "/appliance/api/v1/users";
const ACCOUNT_API: &str = "/appliance/api/v1/account";

/// GET routes that hand out private keys or secrets: refused for roles that may
/// not change anything (an auditor sees everything else). Keep this the one list:
/// certificate exports and the download key are POSTs, which the gate refuses
/// for such roles anyway.
pub fn admin_only_get(path: &str) -> bool {
    const PATHS: &[&str] = &[
        // The failover pre-shared key (base64), in the API and on its page.
        "/appliance/api/v1/failover/psk",
        crate::failover::KEY_PAGE,
    ];
    let path = path.trim_end_matches('/');
    PATHS.contains(&path)
}

/// State-changing requests any logged-in account may make: logging in (as someone
/// else) or out, and its own password and second factor.
fn self_service(path: &str) -> bool {
    matches!(
        path,
        "/appliance/login"
            | "/appliance/api/v1/login"
            | "/appliance/setup"
            | "/appliance/api/v1/setup"
            | "/appliance/logout"
            | "/appliance/api/v1/logout"
            | "/appliance/account/password"
            | "/appliance/api/v1/account/password"
    ) || path.starts_with("/appliance/account/totp")
        || path.starts_with("/appliance/api/v1/account/totp")
        // An auditor's own tokens: tokens.rs caps their role at the owner's and
        // checks ownership itself.
        || path.starts_with("/appliance/account/tokens")
        || path == "/appliance/api/v1/tokens"
        || path.starts_with("/appliance/api/v1/tokens/")
}

/// Refuses every state-changing request of a role that may not change anything,
/// and the secret-revealing GETs of `admin_only_get`. Requests without a session
/// pass: their handlers ask for a login.
pub async fn role_gate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/appliance") {
        return next.run(req).await;
    }
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if (reading && !admin_only_get(path)) || (!reading && self_service(path)) {
        return next.run(req).await;
    }
    let role = match st.session(req.headers()) {
        Some((_, s)) if !s.role.may_change() => s.role,
        _ => return next.run(req).await,
    };
    let message = if reading {
        format!(
            "the {} role cannot see keys or secrets; ask an administrator",
            role.as_str()
        )
    } else {
        format!(
            "the {} role can look but not change anything; ask an administrator",
            role.as_str()
        )
    };
    tracing::warn!(path, role = role.as_str(), "refused by the role gate");
    if path.starts_with("/appliance/api/") {
        ApiError::new(StatusCode::FORBIDDEN, message).into_response()
    } else {
        render(
            StatusCode::FORBIDDEN,
            MessagePage {
                heading: "Not allowed".into(),
                text: format!("This account may not do that: {message}."),
                error: None,
            },
        )
    }
}

fn auth_err(e: AuthError) -> ApiError {
    app::auth_error(e)
}

/// Runs the slow work (password hashes) off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

// ---- JSON API --------------------------------------------------------------------

async fn api_list(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<UserList>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    Ok(Json(UserList {
        users: st.auth.users(),
    }))
}

async fn api_add(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    st.api_session_for_change(&headers)?;
    let user = blocking(move || st.auth.add_user(&body))
        .await?
        .map_err(auth_err)?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn api_change(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UserChange>,
) -> Result<Json<User>, ApiError> {
    let (_, s) = st.api_session_for_change(&headers)?;
    st.auth
        .change_user(&s.user, &name, &body)
        .map(Json)
        .map_err(auth_err)
}

async fn api_delete(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, s) = st.api_session_for_change(&headers)?;
    st.auth.delete_user(&s.user, &name).map_err(auth_err)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The session of an account's own change: a cookie session (an API token does
/// not change its account's credentials).
fn own_session(st: &Shared, headers: &HeaderMap) -> Result<(String, Session), ApiError> {
    let (token, s) = st.api_session_for_change(headers)?;
    if s.via_token {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "an API token cannot change its account's password or second factor; log in",
        ));
    }
    Ok((token, s))
}

async fn api_password(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let (token, s) = own_session(&st, &headers)?;
    let client = client_ip(&ext);
    blocking(move || {
        st.auth.change_password(
            client,
            &token,
            &s.user,
            &body.current_password,
            &body.new_password,
        )
    })
    .await?
    .map_err(auth_err)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_totp_begin(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<TotpEnrolment>, ApiError> {
    let (_, s) = own_session(&st, &headers)?;
    st.auth.totp_begin(&s.user).map(Json).map_err(auth_err)
}

async fn api_totp_confirm(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TotpConfirm>,
) -> Result<Json<TotpEnabled>, ApiError> {
    let (_, s) = own_session(&st, &headers)?;
    let recovery_codes = st
        .auth
        .totp_confirm(&s.user, &body.code)
        .map_err(auth_err)?;
    Ok(Json(TotpEnabled { recovery_codes }))
}

async fn api_totp_remove(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TotpRemove>,
) -> Result<StatusCode, ApiError> {
    let (_, s) = own_session(&st, &headers)?;
    let client = client_ip(&ext);
    blocking(move || st.auth.totp_remove(client, &s.user, &body.password))
        .await?
        .map_err(auth_err)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- HTML: Users -----------------------------------------------------------------

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    me: String,
    may_change: bool,
    users: Vec<User>,
    /// Asked to confirm the deletion of this account (the second press).
    confirm_delete: Option<String>,
    /// What the Add user form held, kept after an error.
    new_name: String,
    new_role: String,
}

#[derive(Default)]
struct UsersOpts {
    error: Option<String>,
    notice: Option<String>,
    confirm_delete: Option<String>,
    new_name: String,
    new_role: String,
}

fn users_page(st: &Shared, s: &Session, status: StatusCode, o: UsersOpts) -> Response {
    render(
        status,
        UsersPage {
            csrf: s.csrf_token.clone(),
            error: o.error,
            notice: o.notice,
            me: s.user.clone(),
            may_change: s.role.may_change(),
            users: st.auth.users(),
            confirm_delete: o.confirm_delete,
            new_name: o.new_name,
            new_role: o.new_role,
        },
    )
}

async fn users_html(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, s)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    users_page(&st, &s, StatusCode::OK, UsersOpts::default())
}

fn error_status(e: &AuthError) -> StatusCode {
    app::auth_error(e.clone()).status
}

#[derive(Deserialize)]
struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
}

async fn add_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<AddForm>,
) -> Response {
    let s = match form_user(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let keep = |error: String| UsersOpts {
        error: Some(error),
        new_name: f.name.clone(),
        new_role: f.role.clone(),
        ..Default::default()
    };
    let role = match f.role.as_str() {
        "administrator" => Role::Administrator,
        "auditor" => Role::Auditor,
        _ => {
            return users_page(
                &st,
                &s,
                StatusCode::UNPROCESSABLE_ENTITY,
                keep("choose a role: administrator or auditor".into()),
            )
        }
    };
    if f.password != f.password2 {
        return users_page(
            &st,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            keep("the two passwords differ".into()),
        );
    }
    let new = NewUser {
        name: f.name.trim().to_owned(),
        role,
        password: f.password.clone(),
    };
    let st2 = st.clone();
    match blocking(move || st2.auth.add_user(&new)).await {
        Ok(Ok(u)) => users_page(
            &st,
            &s,
            StatusCode::OK,
            UsersOpts {
                notice: Some(format!("{} added as {}.", u.name, u.role.as_str())),
                ..Default::default()
            },
        ),
        Ok(Err(e)) => users_page(&st, &s, error_status(&e), keep(e.to_string())),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct UserActionForm {
    #[serde(default)]
    csrf: String,
    /// `disable`, `enable` or `delete`.
    #[serde(default)]
    action: String,
    /// The second press of Delete.
    #[serde(default)]
    confirm: Option<String>,
}

async fn user_action_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<UserActionForm>,
) -> Response {
    let s = match form_user(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let result = match f.action.as_str() {
        "disable" | "enable" => st
            .auth
            .change_user(
                &s.user,
                &name,
                &UserChange {
                    disabled: Some(f.action == "disable"),
                    role: None,
                },
            )
            .map(|u| {
                format!(
                    "{} {}.",
                    u.name,
                    if u.disabled {
                        "disabled; its sessions ended"
                    } else {
                        "enabled"
                    }
                )
            }),
        "delete" if f.confirm.as_deref() != Some("yes") => {
            return users_page(
                &st,
                &s,
                StatusCode::OK,
                UsersOpts {
                    confirm_delete: Some(name),
                    ..Default::default()
                },
            )
        }
        "delete" => st
            .auth
            .delete_user(&s.user, &name)
            .map(|()| format!("{name} deleted; its sessions ended.")),
        _ => Err(AuthError::Refused("unknown action".into())),
    };
    match result {
        Ok(notice) => users_page(
            &st,
            &s,
            StatusCode::OK,
            UsersOpts {
                notice: Some(notice),
                ..Default::default()
            },
        ),
        Err(e) => users_page(
            &st,
            &s,
            error_status(&e),
            UsersOpts {
                error: Some(e.to_string()),
                ..Default::default()
            },
        ),
    }
}

// ---- HTML: My account ------------------------------------------------------------

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    me: String,
    role: &'static str,
    totp: bool,
    /// An enrolment to confirm.
    enrolment: Option<TotpEnrolment>,
    /// Shown once, right after the confirmation.
    recovery_codes: Vec<String>,
}

#[derive(Default)]
struct AccountOpts {
    error: Option<String>,
    notice: Option<String>,
    enrolment: Option<TotpEnrolment>,
    recovery_codes: Vec<String>,
}

fn account_page(st: &Shared, s: &Session, status: StatusCode, o: AccountOpts) -> Response {
    let totp = st.auth.users().iter().any(|u| u.name == s.user && u.totp);
    render(
        status,
        AccountPage {
            csrf: s.csrf_token.clone(),
            error: o.error,
            notice: o.notice,
            me: s.user.clone(),
            role: s.role.as_str(),
            totp,
            enrolment: o.enrolment,
            recovery_codes: o.recovery_codes,
        },
    )
}

async fn account_html(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, s)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    account_page(&st, &s, StatusCode::OK, AccountOpts::default())
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
}

fn account_error(st: &Shared, s: &Session, e: AuthError) -> Response {
    account_page(
        st,
        s,
        error_status(&e),
        AccountOpts {
            error: Some(e.to_string()),
            ..Default::default()
        },
    )
}

async fn password_submit(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let s = match form_user(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    if f.password != f.password2 {
        return account_error(
            &st,
            &s,
            AuthError::WeakPassword("the two new passwords differ".into()),
        );
    }
    let token = app::cookie(&headers, app::SESSION_COOKIE).unwrap_or_default();
    let (st2, user, client) = (st.clone(), s.user.clone(), client_ip(&ext));
    match blocking(move || {
        st2.auth
            .change_password(client, &token, &user, &f.current, &f.password)
    })
    .await
    {
        Ok(Ok(())) => account_page(
            &st,
            &s,
            StatusCode::OK,
            AccountOpts {
                notice: Some("Password changed; other sessions of this account ended.".into()),
                ..Default::default()
            },
        ),
        Ok(Err(e)) => account_error(&st, &s, e),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct TotpForm {
    #[serde(default)]
    csrf: String,
    /// `begin`, `confirm` or `remove`.
    #[serde(default)]
    action: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    password: String,
}

async fn totp_submit(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    Form(f): Form<TotpForm>,
) -> Response {
    let s = match form_user(&st, &headers, &f.csrf) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    match f.action.as_str() {
        "begin" => match st.auth.totp_begin(&s.user) {
            Ok(e) => account_page(
                &st,
                &s,
                StatusCode::OK,
                AccountOpts {
                    enrolment: Some(e),
                    ..Default::default()
                },
            ),
            Err(e) => account_error(&st, &s, e),
        },
        "confirm" => match st.auth.totp_confirm(&s.user, &f.code) {
            Ok(codes) => account_page(
                &st,
                &s,
                StatusCode::OK,
                AccountOpts {
                    notice: Some("Second factor on: logins now ask for a code.".into()),
                    recovery_codes: codes,
                    ..Default::default()
                },
            ),
            Err(e) => account_error(&st, &s, e),
        },
        "remove" => {
            let (st2, user, client) = (st.clone(), s.user.clone(), client_ip(&ext));
            match blocking(move || st2.auth.totp_remove(client, &user, &f.password)).await {
                Ok(Ok(())) => account_page(
                    &st,
                    &s,
                    StatusCode::OK,
                    AccountOpts {
                        notice: Some("Second factor removed.".into()),
                        ..Default::default()
                    },
                ),
                Ok(Err(e)) => account_error(&st, &s, e),
                Err(e) => e.into_response(),
            }
        }
        _ => account_error(&st, &s, AuthError::Refused("unknown action".into())),
    }
}

pub fn router() -> Router<Shared> {
    Router::new()
        .route(API, get(api_list).post(api_add))
        .route(
            &format!("{API}/{{name}}"),
            patch(api_change).delete(api_delete),
        )
        .route(&format!("{ACCOUNT_API}/password"), post(api_password))
        .route(
            &format!("{ACCOUNT_API}/totp"),
            post(api_totp_begin).delete(api_totp_remove),
        )
        .route(
            &format!("{ACCOUNT_API}/totp/confirm"),
            post(api_totp_confirm),
        )
        .route(PAGE, get(users_html))
        .route(&format!("{PAGE}/add"), post(add_submit))
        .route(&format!("{PAGE}/{{name}}"), post(user_action_submit))
        .route(ACCOUNT_PAGE, get(account_html))
        .route(&format!("{ACCOUNT_PAGE}/password"), post(password_submit))
        .route(&format!("{ACCOUNT_PAGE}/totp"), post(totp_submit))
}
