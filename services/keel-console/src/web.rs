//! The HTML console: server-rendered pages, plain forms, no scripts.
//! Forms carry a CSRF token: the session's once logged in, before that a
//! double-submit token in a `keel_pre` cookie.

use crate::openapi::{routes, OpenApiRouter};
use askama::Template;
use axum::extract::{Form, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::app::{self, AppState, PowerAction, Shared};
use crate::auth::{random_hex, AuthError, Session};

const PRE_COOKIE: &str = "keel_pre";

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    csrf: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    error: Option<String>,
    /// The user name typed, kept after an error.
    username: String,
    /// The `admin` account waits for its password: link the setup form.
    setup_pending: bool,
    /// The account has a second factor: the code field gets the focus.
    ask_code: bool,
}

/// Which page a visitor without a session sees.
enum Pre {
    Setup,
    Login {
        username: String,
        setup_pending: bool,
        ask_code: bool,
    },
}

impl Pre {
    fn login(st: &AppState) -> Self {
        Pre::Login {
            username: String::new(),
            setup_pending: st.auth.setup_required(),
            ask_code: false,
        }
    }
}

#[derive(Template)]
#[template(path = "basics.html")]
struct BasicsPage {
    csrf: String,
    error: Option<String>,
    s: keel_api::Status,
    uptime: String,
    boot: Option<crate::boot::BootView>,
    certs: Option<crate::certs::BasicsCerts>,
    time: crate::time::TimeView,
    /// The last update's outcome, when keel-update has one.
    update: Option<crate::update::OutcomeLine>,
    /// "Backup of <peer>" when this node is a failover backup.
    backup_of: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub(crate) struct MessagePage {
    pub heading: String,
    pub text: String,
    pub error: Option<String>,
}

pub(crate) fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => crate::error::ApiError::internal(e).into_response(),
    }
}

/// A page shown before login, with the browser's double-submit token (a fresh one
/// if it has none, so two open tabs keep working).
fn pre_session_page(
    headers: &HeaderMap,
    status: StatusCode,
    pre: Pre,
    error: Option<String>,
) -> Response {
    let csrf = app::cookie(headers, PRE_COOKIE)
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| random_hex(16));
    let mut resp = match pre {
        Pre::Setup => render(
            status,
            SetupPage {
                csrf: csrf.clone(),
                error,
            },
        ),
        Pre::Login {
            username,
            setup_pending,
            ask_code,
        } => render(
            status,
            LoginPage {
                csrf: csrf.clone(),
                error,
                username,
                setup_pending,
                ask_code,
            },
        ),
    };
    let cookie = format!("{PRE_COOKIE}={csrf}; Path=/appliance; Secure; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn pre_csrf_ok(headers: &HeaderMap, presented: &str) -> bool {
    app::same_origin(headers)
        && !presented.is_empty()
        && app::cookie(headers, PRE_COOKIE).as_deref() == Some(presented)
}

fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d} d {h} h {m} min")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min {} s", secs % 60)
    }
}

#[utoipa::path(get, path = "/appliance/", tag = "pages",
    summary = "Status › Basics (the login or setup form without a session)",
    description = "Public: without a session it is the login form, or the setup form while \
        no account can log in yet; both set the `keel_pre` cookie their form's CSRF field \
        must match.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn index(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if st.auth.nobody_can_log_in() {
        return pre_session_page(&headers, StatusCode::OK, Pre::Setup, None);
    }
    match st.session(&headers) {
        Some((_, session)) => basics(&st, session.csrf_token, None).await,
        None => pre_session_page(&headers, StatusCode::OK, Pre::login(&st), None),
    }
}

/// `/appliance` without the slash: the same page.
#[utoipa::path(get, path = "/appliance", tag = "pages",
    summary = "Status › Basics (the same as /appliance/)",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn index_bare(st: State<Shared>, headers: HeaderMap) -> Response {
    index(st, headers).await
}

/// The setup form while `admin` waits for its password (other accounts may log
/// in meanwhile, so `/appliance/` shows the login).
#[utoipa::path(get, path = "/appliance/setup", tag = "pages",
    summary = "First setup: the admin password",
    description = "Public, while the `admin` account waits for its password (with the setup \
        code from the local console).",
    responses((status = 200, description = "The setup form", content_type = "text/html", body = String),
        (status = 303, description = "Set up already: to the console")))]
async fn setup_html(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if !st.auth.setup_required() {
        return Redirect::to("/appliance/").into_response();
    }
    pre_session_page(&headers, StatusCode::OK, Pre::Setup, None)
}

async fn basics(st: &AppState, csrf: String, error: Option<String>) -> Response {
    let (time, update, backup_of) = tokio::join!(
        crate::time::basics_view(),
        crate::update::basics_line(),
        crate::failover::managed_by()
    );
    let s = st.status();
    let uptime = human_duration(s.uptime_seconds);
    render(
        StatusCode::OK,
        BasicsPage {
            csrf,
            error,
            boot: crate::boot::view(s.boot.as_ref()),
            s,
            uptime,
            certs: crate::certs::basics_view(st),
            time,
            update,
            backup_of,
        },
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SetupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    setup_code: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
}

fn status_of(e: &AuthError) -> StatusCode {
    app::auth_error(e.clone()).status
}

fn logged_in(token: &str) -> Response {
    let mut resp = Redirect::to("/appliance/").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, app::session_cookie(token));
    resp
}

#[utoipa::path(post, path = "/appliance/setup", tag = "forms",
    summary = "First setup: Set password",
    description = "Public. The `csrf` field must match the `keel_pre` cookie the form came \
        with; the setup code is rate-limited like a login.",
    request_body(content = SetupForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Set up and logged in (session cookie), or set up already: to the console"),
        (status = 401, description = "The form again: wrong setup code", content_type = "text/html", body = String),
        (status = 403, description = "The form again: expired or from another site", content_type = "text/html", body = String),
        (status = 422, description = "The form again: the passwords differ or the password is too weak", content_type = "text/html", body = String),
        (status = 429, description = "The form again: too many attempts", content_type = "text/html", body = String)))]
async fn setup_submit(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Response {
    if !pre_csrf_ok(&headers, &form.csrf) {
        return pre_session_page(
            &headers,
            StatusCode::FORBIDDEN,
            Pre::Setup,
            Some("The form expired or came from another site; please try again.".into()),
        );
    }
    if form.password != form.password2 {
        return pre_session_page(
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Pre::Setup,
            Some("The two passwords differ.".into()),
        );
    }
    let client = app::client_ip(&ext);
    let st2 = st.clone();
    let result = tokio::task::spawn_blocking(move || {
        st2.auth.setup(client, &form.setup_code, &form.password)
    })
    .await;
    match result {
        Ok(Ok((token, _))) => logged_in(&token),
        Ok(Err(AuthError::AlreadySetUp)) => Redirect::to("/appliance/").into_response(),
        Ok(Err(e)) => pre_session_page(&headers, status_of(&e), Pre::Setup, Some(e.to_string())),
        Err(e) => crate::error::ApiError::internal(e).into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// Authenticator or recovery code; empty for an account without one.
    #[serde(default)]
    code: String,
}

#[utoipa::path(post, path = "/appliance/login", tag = "forms",
    summary = "Log in",
    description = "Public. The `csrf` field must match the `keel_pre` cookie the form came \
        with. Rate-limited per account and per source address.",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Logged in (session cookie): to the console"),
        (status = 401, description = "The form again: wrong name, password or code, or the code is needed", content_type = "text/html", body = String),
        (status = 403, description = "The form again: expired or from another site", content_type = "text/html", body = String),
        (status = 409, description = "The form again: no account has a password yet (first setup)", content_type = "text/html", body = String),
        (status = 429, description = "The form again: too many attempts", content_type = "text/html", body = String)))]
async fn login_submit(
    State(st): State<Shared>,
    ext: Extensions,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !pre_csrf_ok(&headers, &form.csrf) {
        return pre_session_page(
            &headers,
            StatusCode::FORBIDDEN,
            Pre::login(&st),
            Some("The form expired or came from another site; please try again.".into()),
        );
    }
    let client = app::client_ip(&ext);
    let st2 = st.clone();
    let username = form.username.trim().to_owned();
    crate::audit::attempted(&ext, &username);
    let user = username.clone();
    let result = tokio::task::spawn_blocking(move || {
        let code = Some(form.code.as_str()).filter(|c| !c.trim().is_empty());
        st2.auth
            .login_with_code(client, &user, &form.password, code)
    })
    .await;
    match result {
        Ok(Ok((token, _))) => logged_in(&token),
        Ok(Err(e)) => {
            let pre = Pre::Login {
                ask_code: matches!(e, AuthError::CodeRequired | AuthError::WrongCode),
                setup_pending: st.auth.setup_required(),
                username,
            };
            pre_session_page(&headers, status_of(&e), pre, Some(e.to_string()))
        }
        Err(e) => crate::error::ApiError::internal(e).into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The session token behind a state-changing form, or the page to show instead.
pub(crate) fn form_session(
    st: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<String, Box<Response>> {
    checked_form(st, headers, csrf).map(|(token, _)| token)
}

/// The session (its user and role) behind a state-changing form, or the page to
/// show instead.
pub(crate) fn form_user(
    st: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Session, Box<Response>> {
    checked_form(st, headers, csrf).map(|(_, session)| session)
}

fn checked_form(
    st: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(String, Session), Box<Response>> {
    let Some((token, session)) = st.session(headers) else {
        return Err(Box::new(Redirect::to("/appliance/").into_response()));
    };
    if !session.form_csrf_matches(csrf) || !app::same_origin(headers) {
        return Err(Box::new(render(
            StatusCode::FORBIDDEN,
            MessagePage {
                heading: "Request refused".into(),
                text: "The form expired or came from another site; nothing was changed.".into(),
                error: None,
            },
        )));
    }
    Ok((token, session))
}

#[utoipa::path(post, path = "/appliance/logout", tag = "forms",
    summary = "Log out",
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Session ended (or none): to the login page"),
        (status = 403, description = "Form expired or from another site", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn logout_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    match form_session(&st, &headers, &form.csrf) {
        Ok(token) => {
            st.auth.logout(&token);
            Redirect::to("/appliance/").into_response()
        }
        Err(resp) => *resp,
    }
}

async fn power_submit(
    st: Shared,
    headers: HeaderMap,
    form: CsrfForm,
    action: PowerAction,
) -> Response {
    if let Err(resp) = form_session(&st, &headers, &form.csrf) {
        return *resp;
    }
    if let Err(e) = st.request_power(action) {
        return e.into_response();
    }
    let (heading, text) = match action {
        PowerAction::Poweroff => (
            "Shutting down",
            "The appliance is powering off. It can be unplugged once its power light is off.",
        ),
        PowerAction::Reboot => (
            "Restarting",
            "The appliance is restarting. Reload this page in a minute.",
        ),
        PowerAction::FactoryReset => (
            "Resetting to factory defaults",
            "The appliance restarts, erases its configuration and keys, and comes back \
             as a new appliance with DHCP and a new setup code on its local console.",
        ),
        PowerAction::FactoryResetPoweroff => (
            "Resetting and shutting down",
            "The appliance restarts, erases its configuration and keys, and powers off. \
             It is then ready to ship.",
        ),
    };
    render(
        StatusCode::ACCEPTED,
        MessagePage {
            heading: heading.into(),
            text: text.into(),
            error: None,
        },
    )
}

/// The step between a click on *Restart* or *Shut down* and the act: a page that
/// says what happens, with a form that carries the CSRF token and `confirm=yes`.
#[derive(Template)]
#[template(path = "power_confirm.html")]
struct PowerConfirmPage {
    csrf: String,
    error: Option<String>,
    heading: &'static str,
    text: &'static str,
    action: &'static str,
    button: &'static str,
}

fn power_confirm_page(csrf: String, action: PowerAction) -> Response {
    let (heading, text, path, button) = match action {
        PowerAction::Reboot => (
            "Restart the appliance?",
            "Every console session ends and the services stop while it restarts. \
             The console is back in about a minute.",
            "/appliance/system/reboot",
            "Restart now",
        ),
        _ => (
            "Shut down the appliance?",
            "Every console session ends and the appliance stays off until someone \
             switches it on at the device (or its virtual machine is started again).",
            "/appliance/system/shutdown",
            "Shut down now",
        ),
    };
    render(
        StatusCode::OK,
        PowerConfirmPage {
            csrf,
            error: None,
            heading,
            text,
            action: path,
            button,
        },
    )
}

/// GET of a power action: the confirmation page.
async fn power_ask(st: Shared, headers: HeaderMap, action: PowerAction) -> Response {
    match st.session(&headers) {
        Some((_, session)) => power_confirm_page(session.csrf_token, action),
        None => Redirect::to("/appliance/").into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct PowerForm {
    #[serde(default)]
    csrf: String,
    /// `yes` from the confirmation page; without it nothing happens yet.
    #[serde(default)]
    confirm: String,
}

async fn power_form(
    st: Shared,
    headers: HeaderMap,
    form: PowerForm,
    action: PowerAction,
) -> Response {
    if form.confirm != "yes" {
        return match form_session(&st, &headers, &form.csrf) {
            Ok(_) => power_ask(st, headers, action).await,
            Err(resp) => *resp,
        };
    }
    power_submit(st, headers, CsrfForm { csrf: form.csrf }, action).await
}

#[utoipa::path(get, path = "/appliance/system/shutdown", tag = "pages",
    summary = "Shut down the appliance? (the confirmation page)",
    responses((status = 200, description = "The confirmation page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn shutdown_ask(State(st): State<Shared>, headers: HeaderMap) -> Response {
    power_ask(st, headers, PowerAction::Poweroff).await
}

#[utoipa::path(get, path = "/appliance/system/reboot", tag = "pages",
    summary = "Restart the appliance? (the confirmation page)",
    responses((status = 200, description = "The confirmation page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn reboot_ask(State(st): State<Shared>, headers: HeaderMap) -> Response {
    power_ask(st, headers, PowerAction::Reboot).await
}

#[utoipa::path(post, path = "/appliance/system/shutdown", tag = "forms",
    summary = "Status › Basics: Shut down",
    description = "Second press: without `confirm=yes` it answers the confirmation page and \
        nothing happens; with it the appliance powers off.",
    request_body(content = PowerForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The confirmation page (no `confirm=yes`)", content_type = "text/html", body = String),
        (status = 202, description = "Shutting down", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn shutdown_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<PowerForm>,
) -> Response {
    power_form(st, headers, form, PowerAction::Poweroff).await
}

#[utoipa::path(post, path = "/appliance/system/reboot", tag = "forms",
    summary = "Status › Basics: Restart",
    description = "Second press: without `confirm=yes` it answers the confirmation page and \
        nothing happens; with it the appliance restarts.",
    request_body(content = PowerForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The confirmation page (no `confirm=yes`)", content_type = "text/html", body = String),
        (status = 202, description = "Restarting", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn reboot_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<PowerForm>,
) -> Response {
    power_form(st, headers, form, PowerAction::Reboot).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ResetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    power_off: Option<String>,
}

#[utoipa::path(post, path = "/appliance/system/factory-reset", tag = "forms",
    summary = "Status › Basics: Reset to factory defaults",
    description = "`confirm` must be `RESET`; `power_off` (a checkbox) powers off after the \
        reset instead of starting as a new appliance.",
    request_body(content = ResetForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 202, description = "Resetting", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String),
        (status = 422, description = "Status › Basics, saying `RESET` was not typed", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn reset_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ResetForm>,
) -> Response {
    let request = app::FactoryResetRequest {
        confirm: form.confirm.trim().to_owned(),
        power_off: form.power_off.is_some(),
    };
    match request.action() {
        Ok(action) => power_submit(st, headers, CsrfForm { csrf: form.csrf }, action).await,
        Err(e) => match form_session(&st, &headers, &form.csrf) {
            Ok(_) => {
                let csrf = st
                    .session(&headers)
                    .map(|(_, s)| s.csrf_token)
                    .unwrap_or_default();
                let mut resp = basics(&st, csrf, Some(e.message)).await;
                *resp.status_mut() = e.status;
                resp
            }
            Err(resp) => *resp,
        },
    }
}

pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(index_bare))
        .routes(routes!(index))
        .routes(routes!(setup_html, setup_submit))
        .routes(routes!(login_submit))
        .routes(routes!(logout_submit))
        .routes(routes!(shutdown_ask, shutdown_submit))
        .routes(routes!(reboot_ask, reboot_submit))
        .routes(routes!(reset_submit))
}
