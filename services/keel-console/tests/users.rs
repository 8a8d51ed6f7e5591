//! Console accounts end to end: the real TLS server on loopback, real HTTPS
//! clients (one per account, each with its own cookies), real argon2 and TOTP.

mod common;

use std::net::IpAddr;
use std::path::Path;

use keel_certs::pinning::FingerprintVerifier;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const AUDITOR_PASSWORD: &str = "an auditor's own phrase";

/// A logged-in (or not yet) browser-like client of one account.
struct As {
    http: reqwest::Client,
    base: String,
    csrf: String,
}

fn client_from(local: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(FingerprintVerifier::record_any().client_config())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ip) = local {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

impl As {
    fn anonymous(base: &str, local: Option<IpAddr>) -> Self {
        As {
            http: client_from(local),
            base: base.to_owned(),
            csrf: String::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-csrf-token", &self.csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn login(
        &mut self,
        user: &str,
        password: &str,
        code: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut body = json!({"username": user, "password": password});
        if let Some(c) = code {
            body["code"] = json!(c);
        }
        let (status, v) = self
            .call(Method::POST, "/appliance/api/v1/login", Some(body))
            .await;
        if status == StatusCode::OK {
            self.csrf = v["csrf_token"].as_str().unwrap().to_owned();
        }
        (status, v)
    }

    async fn form(&self, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .form(&all)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn page(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// A console set up with `admin` (logged in) and its data dir.
async fn start() -> (tempfile::TempDir, common::Served, As) {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("requests")).unwrap();
    let served = common::serve(data.path()).await;
    let mut admin = As::anonymous(&served.base, None);
    admin.csrf = common::set_up(&admin.http, &served.base, data.path()).await;
    (data, served, admin)
}

async fn add(admin: &As, name: &str, role: &str, password: &str) -> (StatusCode, Value) {
    admin
        .call(
            Method::POST,
            "/appliance/api/v1/users",
            Some(json!({"name": name, "role": role, "password": password})),
        )
        .await
}

fn requests(data: &Path) -> usize {
    std::fs::read_dir(data.join("requests")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_policy_and_the_role_gate() {
    let (data, served, admin) = start().await;

    // The policy says which rule failed; nothing is added.
    for (password, says) in [
        ("short one", "too short"),
        ("password1234", "most commonly used"),
        ("carol's very own words", "user name"),
    ] {
        let (status, v) = add(&admin, "carol", "auditor", password).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(error_of(&v).contains(says), "{password}: {v}");
    }
    let (status, v) = add(&admin, "car\u{1b}ol", "auditor", AUDITOR_PASSWORD).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&v).contains("control character"), "{v}");
    let (status, v) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/users",
            Some(json!({"name": "carol", "role": "auditor", "password": AUDITOR_PASSWORD, "admin": true})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field: {v}"
    );
    let (_, v) = admin
        .call(Method::GET, "/appliance/api/v1/users", None)
        .await;
    assert_eq!(v["users"].as_array().unwrap().len(), 1, "{v}");

    let (status, v) = add(&admin, "carol", "auditor", AUDITOR_PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["role"], "auditor");
    let (status, _) = add(&admin, "carol", "auditor", AUDITOR_PASSWORD).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Stored hashed, 0600, and admin.json still holds admin's hash for an older slot.
    let users = std::fs::read_to_string(data.path().join("console/users.json")).unwrap();
    assert!(users.contains("\"carol\"") && users.contains("$argon2id$"));
    assert!(!users.contains(AUDITOR_PASSWORD));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.path().join("console/users.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(data.path().join("console/admin.json").exists());

    let mut carol = As::anonymous(&served.base, None);
    let (status, v) = carol.login("carol", AUDITOR_PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // An auditor sees...
    for path in ["/appliance/api/v1/status", "/appliance/api/v1/users"] {
        let (status, v) = carol.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
    }
    let (status, page) = carol.page("/appliance/users").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<code>carol</code>") && page.contains("<code>admin</code>"));
    assert!(!page.contains("Add user"), "no forms an auditor cannot use");
    // ...but changes nothing, and sees no keys: JSON for the API, a page otherwise.
    let before = requests(data.path());
    for (method, path, body) in [
        (Method::POST, "/appliance/api/v1/system/reboot", None),
        (
            Method::POST,
            "/appliance/api/v1/users",
            Some(json!({"name": "mallory", "role": "administrator", "password": AUDITOR_PASSWORD})),
        ),
        (
            Method::PATCH,
            "/appliance/api/v1/users/admin",
            Some(json!({"disabled": true})),
        ),
        (Method::DELETE, "/appliance/api/v1/users/admin", None),
        (
            Method::POST,
            "/appliance/api/v1/certs/self-signed",
            Some(json!({})),
        ),
        (Method::GET, "/appliance/api/v1/failover/psk", None),
    ] {
        let (status, v) = carol.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert!(error_of(&v).contains("auditor role"), "{path}: {v}");
    }
    let (status, page) = carol.form("/appliance/system/reboot", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        page.contains("auditor role can look but not change anything"),
        "{page}"
    );
    let (status, page) = carol.page("/appliance/security/failover-key").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert_eq!(requests(data.path()), before, "nothing was requested");
    let (_, v) = admin
        .call(Method::GET, "/appliance/api/v1/users", None)
        .await;
    assert_eq!(v["users"].as_array().unwrap().len(), 2);

    // Its own password it may change (self-service passes the gate); logout too.
    let (status, v) = carol
        .call(
            Method::POST,
            "/appliance/api/v1/account/password",
            Some(json!({"current_password": AUDITOR_PASSWORD, "new_password": "a changed auditor phrase"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    // Logging in again (as anyone) is no change the gate stops.
    let (status, v) = carol.login("carol", "a changed auditor phrase", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = carol
        .call(Method::POST, "/appliance/api/v1/logout", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // An administrator may still do all of it (the gate let it through).
    let (status, v) = admin
        .call(Method::GET, "/appliance/api/v1/users", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = admin
        .call(Method::POST, "/appliance/api/v1/system/reboot", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_or_deleting_ends_sessions_and_self_is_refused() {
    let (_data, served, admin) = start().await;
    let (status, v) = add(&admin, "bob", "administrator", "bob has a long phrase").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let mut bob = As::anonymous(&served.base, None);
    assert_eq!(
        bob.login("bob", "bob has a long phrase", None).await.0,
        StatusCode::OK
    );

    // Never yourself.
    let (status, v) = admin
        .call(Method::DELETE, "/appliance/api/v1/users/admin", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&v).contains("your own account"), "{v}");
    let (status, v) = admin
        .call(
            Method::PATCH,
            "/appliance/api/v1/users/admin",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, _) = admin
        .call(Method::DELETE, "/appliance/api/v1/users/nobody", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Disabled: bob's session ends at once, and its login fails like a wrong password.
    let (status, v) = admin
        .call(
            Method::PATCH,
            "/appliance/api/v1/users/bob",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["disabled"], true);
    let (status, _) = bob
        .call(Method::GET, "/appliance/api/v1/status", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = bob.login("bob", "bob has a long phrase", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&v), "wrong user name or password");
    admin
        .call(
            Method::PATCH,
            "/appliance/api/v1/users/bob",
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(
        bob.login("bob", "bob has a long phrase", None).await.0,
        StatusCode::OK
    );

    // Deleted through the page: the first press asks, the second deletes.
    let (status, page) = admin
        .form("/appliance/users/bob", &[("action", "delete")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Really delete bob"), "{page}");
    assert_eq!(
        bob.call(Method::GET, "/appliance/api/v1/status", None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, page) = admin
        .form(
            "/appliance/users/bob",
            &[("action", "delete"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("bob deleted"), "{page}");
    assert_eq!(
        bob.call(Method::GET, "/appliance/api/v1/status", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // The Add user form keeps the name after a refusal and says why.
    let (status, page) = admin
        .form(
            "/appliance/users/add",
            &[
                ("name", "dave"),
                ("role", "auditor"),
                ("password", "dave's long phrase"),
                ("password2", "something else!"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("the two passwords differ") && page.contains("value=\"dave\""),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_password_change_ends_the_other_sessions() {
    let (_data, served, admin) = start().await;
    let mut other = As::anonymous(&served.base, None);
    assert_eq!(
        other.login("admin", common::PASSWORD, None).await.0,
        StatusCode::OK
    );

    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let (status, v) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/account/password",
            Some(change("not it at all", "the next console phrase")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&v).contains("current password is wrong"), "{v}");
    let (status, v) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/account/password",
            Some(change(common::PASSWORD, "my admin phrase")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&v).contains("user name"), "{v}");
    // Without the CSRF token: refused.
    let resp = admin
        .http
        .post(format!("{}/appliance/api/v1/account/password", served.base))
        .json(&change(common::PASSWORD, "the next console phrase"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let (status, v) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/account/password",
            Some(change(common::PASSWORD, "the next console phrase")),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        admin
            .call(Method::GET, "/appliance/api/v1/status", None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        other
            .call(Method::GET, "/appliance/api/v1/status", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        other.login("admin", common::PASSWORD, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        other
            .login("admin", "the next console phrase", None)
            .await
            .0,
        StatusCode::OK
    );
}

fn totp_of(secret: &str) -> totp_rs::Totp {
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .with_account_name("admin")
        .build()
        .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_login_replay_and_recovery_codes() {
    let (_data, served, admin) = start().await;
    let (status, _) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/account/totp/confirm",
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to confirm yet");
    let (status, e) = admin
        .call(Method::POST, "/appliance/api/v1/account/totp", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    let secret = e["secret"].as_str().unwrap().to_owned();
    assert!(
        e["uri"].as_str().unwrap().starts_with("otpauth://totp/"),
        "{e}"
    );
    let t = totp_of(&secret);
    // Not in force before its confirmation.
    let mut other = As::anonymous(&served.base, None);
    assert_eq!(
        other.login("admin", common::PASSWORD, None).await.0,
        StatusCode::OK
    );

    // A wrong code confirms nothing; the right one does.
    let wrong = format!(
        "{:06}",
        (t.generate(now()).to_string().parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let (status, _) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/account/totp/confirm",
            Some(json!({"code": wrong})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let code = t.generate(now()).to_string();
    let (status, v) = admin
        .call(
            Method::POST,
            "/appliance/api/v1/account/totp/confirm",
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let recovery: Vec<String> = v["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let (_, users) = admin
        .call(Method::GET, "/appliance/api/v1/users", None)
        .await;
    assert_eq!(users["users"][0]["totp"], true);

    // The password alone no longer logs in; the code that confirmed is used up.
    let mut fresh = As::anonymous(&served.base, None);
    let (status, v) = fresh.login("admin", common::PASSWORD, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&v).contains("second factor"), "{v}");
    let (status, v) = fresh.login("admin", common::PASSWORD, Some(&code)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "replayed within its window: {v}"
    );
    assert!(error_of(&v).contains("already used"), "{v}");

    // The next step's code (one step of skew is accepted) logs in once.
    let next = t.generate(now() + 30).to_string();
    assert_eq!(
        fresh.login("admin", common::PASSWORD, Some(&next)).await.0,
        StatusCode::OK
    );
    let mut third = As::anonymous(&served.base, None);
    assert_eq!(
        third.login("admin", common::PASSWORD, Some(&next)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A recovery code logs in once, with the wrong password never.
    assert_eq!(
        third
            .login("admin", "a wrong password!", Some(&recovery[0]))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        third
            .login("admin", common::PASSWORD, Some(&recovery[0]))
            .await
            .0,
        StatusCode::OK
    );
    let mut fourth = As::anonymous(&served.base, None);
    assert_eq!(
        fourth
            .login("admin", common::PASSWORD, Some(&recovery[0]))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // The login form asks for the code too.
    let (_, page) = fourth.page("/appliance/").await;
    assert!(page.contains("name=\"code\""));

    // Removal needs the password.
    let (status, _) = admin
        .call(
            Method::DELETE,
            "/appliance/api/v1/account/totp",
            Some(json!({"password": "a wrong password!"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin
        .call(
            Method::DELETE,
            "/appliance/api/v1/account/totp",
            Some(json!({"password": common::PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        fourth.login("admin", common::PASSWORD, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_is_per_account_and_per_source() {
    let (_data, served, admin) = start().await;
    let (status, v) = add(&admin, "erin", "auditor", "the auditor's passphrase").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    // Four sources use up their own budget (5) on erin: erin's budget (20) is gone.
    for i in 2..6u8 {
        let mut c = As::anonymous(&served.base, Some(IpAddr::from([127, 0, 0, i])));
        for _ in 0..auth_max_failures() {
            assert_eq!(
                c.login("erin", "not erin's password", None).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        let (status, v) = c.login("erin", "the auditor's passphrase", None).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert!(error_of(&v).contains("from this address"), "{v}");
    }
    let mut fresh = As::anonymous(&served.base, Some(IpAddr::from([127, 0, 0, 9])));
    let (status, v) = fresh.login("erin", "the auditor's passphrase", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(error_of(&v).contains("on this account"), "{v}");
    // Another account is not locked, from that same fresh source.
    assert_eq!(
        fresh.login("admin", common::PASSWORD, None).await.0,
        StatusCode::OK
    );
}

fn auth_max_failures() -> usize {
    keel_console::auth::MAX_FAILURES
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_takes_a_user_name_and_my_account_works_for_an_auditor() {
    let (_data, served, admin) = start().await;
    let (status, v) = add(&admin, "frank", "auditor", "a long auditor passphrase").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let mut frank = As::anonymous(&served.base, None);
    let (_, login) = frank.page("/appliance/").await;
    assert!(login.contains("name=\"username\"") && login.contains("name=\"code\""));
    frank.csrf = common::csrf_of(&login);
    let (status, page) = frank
        .form(
            "/appliance/login",
            &[("username", "frank"), ("password", "not frank's one")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        page.contains("wrong user name or password") && page.contains("value=\"frank\""),
        "{page}"
    );
    let (status, _) = frank
        .form(
            "/appliance/login",
            &[
                ("username", "frank"),
                ("password", "a long auditor passphrase"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let (status, page) = frank.page("/appliance/account").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<code>frank</code>") && page.contains("auditor"),
        "{page}"
    );
    assert!(page.contains("href=\"/appliance/account/tokens\""));
    frank.csrf = common::csrf_of(&page);
    // The role gate lets an auditor change its own password through the form.
    let (status, page) = frank
        .form(
            "/appliance/account/password",
            &[
                ("current", "a long auditor passphrase"),
                ("password", "the next auditor passphrase"),
                ("password2", "the next auditor passphrase"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Password changed"), "{page}");
    // TOTP enrolment through the page shows the secret and the otpauth URI.
    let (status, page) = frank
        .form("/appliance/account/totp", &[("action", "begin")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("otpauth://totp/") && page.contains("name=\"code\""),
        "{page}"
    );
    let (status, page) = frank
        .form(
            "/appliance/account/totp",
            &[("action", "confirm"), ("code", "000000")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("wrong or already used"), "{page}");
}
