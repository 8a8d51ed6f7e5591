//! Console accounts: the Users page and API, the user's own account page (*My
//! account*), and the role gate every request under `/appliance` passes.

use askama::Template;
use axum::extract::{Form, Path, Request, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use keel_api::{
    NewUser, PasswordChange, Role, TotpConfirm, TotpEnabled, TotpEnrolment, TotpRemove, User,
    UserChange, UserList,
};
use serde::Deserialize;

use crate::app::{self, client_ip, JsonBody, Shared};
use crate::auth::{AuthError, Session};
use crate::error::ApiError;
use crate::openapi::{routes, OpenApiRouter};
use crate::web::{form_user, render, MessagePage};

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

#[utoipa::path(get, path = "/appliance/api/v1/users", tag = "users",
    operation_id = "users_api_list",
    summary = "Users: the console accounts",
    responses((status = 200, body = UserList), (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn api_list(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<UserList>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    Ok(Json(UserList {
        users: st.auth.users(),
    }))
}

#[utoipa::path(post, path = "/appliance/api/v1/users", tag = "users",
    operation_id = "users_api_add",
    summary = "Add a user",
    request_body = NewUser,
    responses((status = 201, body = User), (status = 401), (status = 403),
        (status = 409, description = "The name exists"),
        (status = 422, description = "Bad name or weak password (says which rule)")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
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

#[utoipa::path(patch, path = "/appliance/api/v1/users/{name}", tag = "users",
    operation_id = "users_api_change",
    summary = "Disable, enable or change the role of a user",
    description = "Disabling ends the account's sessions. Not for yourself or the last \
        enabled administrator (409).",
    params(("name" = String, Path, description = "The account's name")),
    request_body = UserChange,
    responses((status = 200, body = User), (status = 401), (status = 403),
        (status = 404, description = "No such account"),
        (status = 409, description = "Yourself, or the last enabled administrator")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
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

#[utoipa::path(delete, path = "/appliance/api/v1/users/{name}", tag = "users",
    operation_id = "users_api_delete",
    summary = "Delete a user (its sessions end)",
    params(("name" = String, Path, description = "The account's name")),
    responses((status = 204), (status = 401), (status = 403),
        (status = 404, description = "No such account"),
        (status = 409, description = "Yourself, or the last enabled administrator")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
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

#[utoipa::path(post, path = "/appliance/api/v1/account/password", tag = "account",
    operation_id = "users_api_password",
    summary = "My account: change my password (other sessions of the account end)",
    description = "Any role, but a logged-in session only: an API token gets 403.",
    request_body = PasswordChange,
    responses((status = 204), (status = 401), (status = 403),
        (status = 409, description = "The current password is wrong"),
        (status = 422, description = "The new password is weak (names the rule)"),
        (status = 429, description = "Too many wrong current passwords")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
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

#[utoipa::path(post, path = "/appliance/api/v1/account/totp", tag = "account",
    operation_id = "users_api_totp_begin",
    summary = "My account: begin a second factor (TOTP), not in force until confirmed",
    description = "Any role, but a logged-in session only: an API token gets 403.",
    responses((status = 200, body = TotpEnrolment), (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_totp_begin(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<TotpEnrolment>, ApiError> {
    let (_, s) = own_session(&st, &headers)?;
    st.auth.totp_begin(&s.user).map(Json).map_err(auth_err)
}

#[utoipa::path(post, path = "/appliance/api/v1/account/totp/confirm", tag = "account",
    operation_id = "users_api_totp_confirm",
    summary = "My account: confirm the second factor with a code; the recovery codes, shown once",
    description = "Any role, but a logged-in session only: an API token gets 403.",
    request_body = TotpConfirm,
    responses((status = 200, body = TotpEnabled),
        (status = 401, description = "No session, or a wrong code"), (status = 403),
        (status = 409, description = "No enrolment begun")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
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

#[utoipa::path(delete, path = "/appliance/api/v1/account/totp", tag = "account",
    operation_id = "users_api_totp_remove",
    summary = "My account: remove the second factor (needs the password)",
    description = "Any role, but a logged-in session only: an API token gets 403.",
    request_body = TotpRemove,
    responses((status = 204), (status = 401), (status = 403),
        (status = 409, description = "The password is wrong"),
        (status = 429, description = "Too many wrong passwords")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
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

#[utoipa::path(get, path = "/appliance/users", tag = "pages",
    operation_id = "users_users_html",
    summary = "Users",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn users_html(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, s)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    users_page(&st, &s, StatusCode::OK, UsersOpts::default())
}

fn error_status(e: &AuthError) -> StatusCode {
    app::auth_error(e.clone()).status
}

#[derive(Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/appliance/users/add", tag = "forms",
    operation_id = "users_add_submit",
    summary = "Users: Add user",
    request_body(content = AddForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 409, description = "The name exists", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason and the form as sent", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
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

#[derive(Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/appliance/users/{name}", tag = "forms",
    operation_id = "users_user_action_submit",
    summary = "Users: Disable, Enable or Delete a user",
    description = "Delete asks first: the page comes back with a confirmation, and only the \
        second press (`confirm=yes`) deletes.",
    params(("name" = String, Path, description = "The account's name")),
    request_body(content = UserActionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome or the confirmation", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 404, description = "No such account", content_type = "text/html", body = String),
        (status = 409, description = "Yourself, or the last enabled administrator", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
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

#[utoipa::path(get, path = "/appliance/account", tag = "pages",
    operation_id = "users_account_html",
    summary = "My account",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn account_html(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, s)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    account_page(&st, &s, StatusCode::OK, AccountOpts::default())
}

#[derive(Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/appliance/account/password", tag = "forms",
    operation_id = "users_password_submit",
    summary = "My account: Change password",
    request_body(content = PasswordForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site"),
        (status = 409, description = "The current password is wrong", content_type = "text/html", body = String),
        (status = 422, description = "The new passwords differ or are weak", content_type = "text/html", body = String),
        (status = 429, description = "Too many wrong current passwords", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
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

#[derive(Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/appliance/account/totp", tag = "forms",
    operation_id = "users_totp_submit",
    summary = "My account: Second factor (begin, confirm with a code, or remove)",
    request_body(content = TotpForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page: the enrolment, the recovery codes once, or the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 401, description = "Wrong code", content_type = "text/html", body = String),
        (status = 403, description = "Form expired or from another site"),
        (status = 409, description = "Nothing begun, or the password is wrong", content_type = "text/html", body = String),
        (status = 429, description = "Too many wrong passwords", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
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

/// The users and account routes, full paths (merged into the console's router).
pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(api_list, api_add))
        .routes(routes!(api_change, api_delete))
        .routes(routes!(api_password))
        .routes(routes!(api_totp_begin, api_totp_remove))
        .routes(routes!(api_totp_confirm))
        .routes(routes!(users_html))
        .routes(routes!(add_submit))
        .routes(routes!(user_action_submit))
        .routes(routes!(account_html))
        .routes(routes!(password_submit))
        .routes(routes!(totp_submit))
}
