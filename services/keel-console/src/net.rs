//! Networking: `/appliance/api/v1/net/...` and the *Networking › IP configuration*,
//! *NTP servers* and *Hostname & DNS* pages. keel-netd (CAP_NET_ADMIN) validates
//! and applies; the console forwards.
//!
//! Commit-confirm: a change is applied at once and reverted unless confirmed in the
//! window. netd accepts the confirmation only from the front end that made the
//! change (`owner`); for the console that is any logged-in session, not the very
//! session: a browser moved to the new address has no cookie there (cookies are
//! per host) and logs in again, and confirming from there is the proof that the
//! new address works.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use keel_api::{AddressMode, NetConfig, NetPending, NetState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::{self, JsonBody, Shared};
use crate::error::ApiError;
use crate::local_service::LocalService;
use crate::openapi::{routes, OpenApiRouter};

/// Who netd records as the maker of console changes.
pub const OWNER: &str = "console";

/// Applying touches the kernel only (ms); listing links is one netlink dump.
const CALL_LIMIT: Duration = Duration::from_secs(15);

// netd's refusals (400 naming the field, 422, 409, 403) pass through; the
// console's body is the configuration itself, so paths drop `config.`.
static NETD: LocalService = LocalService::new(
    "netd",
    "network service unavailable",
    |_| "no answer from keel-netd".to_owned(),
    |m| m.strip_prefix("config.").unwrap_or(m),
);

pub fn set_socket(path: PathBuf) {
    NETD.set_socket(path);
}

async fn call<B: Serialize, R: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<R, ApiError> {
    NETD.call(method, path, body, CALL_LIMIT).await
}

/// The addresses netd's running configuration marks *shared* (failover), with
/// their interface, in the configuration's order.
pub async fn shared_addresses() -> Result<Vec<(String, ipnetwork::IpNetwork)>, ApiError> {
    let s: NetState = call::<(), _>("GET", "/state", None).await?;
    Ok(s.running
        .interfaces
        .iter()
        .filter_map(|i| i.shared_address.map(|a| (i.name.clone(), a)))
        .collect())
}

async fn propose(config: Value, confirm_seconds: Option<u64>) -> Result<NetPending, ApiError> {
    let body = json!({"config": config, "owner": OWNER, "confirm_seconds": confirm_seconds});
    call("PUT", "/config", Some(&body)).await
}

#[utoipa::path(get, path = "/appliance/api/v1/net/config", tag = "net",
    summary = "Networking: the running, confirmed and pending configuration and the ports",
    responses((status = 200, body = NetState),
        (status = 401, description = "No session or token"),
        (status = 503, description = "keel-netd not answering")),
    security(("session" = []), ("token" = [])))]
async fn api_state(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<NetState>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/state", None).await.map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PutQuery {
    /// Seconds to confirm the change in (netd's default, 120, when absent).
    confirm_seconds: Option<u64>,
}

#[utoipa::path(put, path = "/appliance/api/v1/net/config", tag = "net",
    summary = "Change the network configuration (commit-confirm)",
    description = "Commit-confirm: the configuration is applied at once and put back unless \
        POST /appliance/api/v1/net/confirm follows within the window. Any console session or \
        token may confirm, not only this one: a client moved to a new address logs in again \
        there. One change at a time (409 while one waits).",
    params(PutQuery),
    request_body = NetConfig,
    responses((status = 202, description = "Applied, waiting for confirmation", body = NetPending),
        (status = 400, description = "Not JSON"),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 409, description = "A change is waiting for confirmation already"),
        (status = 422, description = "The configuration is invalid (the field is named)"),
        (status = 500, description = "Applying failed; the previous configuration is back"),
        (status = 503, description = "keel-netd not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_put(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<PutQuery>,
    JsonBody(config): JsonBody<Value>,
) -> Result<(StatusCode, Json<NetPending>), ApiError> {
    st.api_session_for_change(&headers)?;
    let p = propose(config, q.confirm_seconds).await?;
    Ok((StatusCode::ACCEPTED, Json(p)))
}

#[utoipa::path(get, path = "/appliance/api/v1/net/pending", tag = "net",
    summary = "The change waiting for confirmation, if any (null when none)",
    responses((status = 200, body = Option<NetPending>),
        (status = 401, description = "No session or token"),
        (status = 503, description = "keel-netd not answering")),
    security(("session" = []), ("token" = [])))]
async fn api_pending(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Option<NetPending>>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/pending", None).await.map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/net/confirm", tag = "net",
    summary = "Keep the pending network change",
    responses((status = 200, description = "Confirmed and saved", body = NetState),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, a role that may not change anything, or the change was made through keelctl"),
        (status = 409, description = "No change is waiting for confirmation"),
        (status = 503, description = "keel-netd not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_confirm(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<NetState>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("POST", "/confirm", Some(&json!({"owner": OWNER})))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/net/cancel", tag = "net",
    summary = "Put the previous network configuration back now",
    responses((status = 200, description = "Reverted", body = NetState),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, a role that may not change anything, or the change was made through keelctl"),
        (status = 409, description = "No change is waiting for confirmation"),
        (status = 503, description = "keel-netd not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_cancel(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<NetState>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("POST", "/cancel", Some(&json!({"owner": OWNER})))
        .await
        .map(Json)
}

// ---- HTML -----------------------------------------------------------------------

/// One interface row of the form.
pub struct IfaceRow {
    pub k: usize,
    pub name: String,
    pub mac: String,
    pub enabled: bool,
    pub dhcp: bool,
    pub addresses: String,
    pub mtu: String,
    pub shared: String,
    /// What the kernel has on it now.
    pub live: String,
    /// A VLAN's parent and ID (both empty for a port).
    pub vlan_parent: String,
    pub vlan_id: String,
    /// A refusal about this interface, shown in its fieldset.
    pub problem: String,
}

impl IfaceRow {
    pub fn is_vlan(&self) -> bool {
        !self.vlan_parent.is_empty()
    }
}

/// The *Add a VLAN* part of the form, as submitted (empty on a fresh page).
#[derive(Default)]
pub struct NewVlan {
    pub parent: String,
    pub id: String,
    pub name: String,
    pub dhcp: bool,
    pub addresses: String,
    pub mtu: String,
}

/// A port a new VLAN can go on.
pub struct ParentOption {
    pub name: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "net_ip.html")]
struct IpPage {
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    unavailable: Option<String>,
    pending: Option<NetPending>,
    rows: Vec<IfaceRow>,
    new_vlan: NewVlan,
    parents: Vec<ParentOption>,
    hostname: String,
    gateway4: String,
    gateway6: String,
    routes: String,
    dns_servers: String,
    dns_search: String,
    ntp_servers: String,
    /// Refusals by form field (`gateway4`, `newvlan`, ...), shown beside it.
    problems: HashMap<String, String>,
    /// In force now, learned or configured: `10.0.2.2 on eth0 (DHCP)`.
    gateways_now: Vec<String>,
    /// DNS servers DHCP handed out: `10.0.2.3 on eth0 (DHCP)`.
    dns_now: Vec<String>,
}

impl IpPage {
    fn problem(&self, key: &str) -> &str {
        self.problems.get(key).map(String::as_str).unwrap_or("")
    }

    /// Puts each part of a refusal beside the input it is about; what fits no
    /// input stays at the top of the page.
    fn place(&mut self, msg: String) {
        let mut labels: Vec<(String, String)> = self
            .rows
            .iter()
            .map(|r| (r.name.clone(), format!("if{}", r.k)))
            .collect();
        let new_name = if self.new_vlan.name.is_empty() {
            format!("{}.{}", self.new_vlan.parent, self.new_vlan.id)
        } else {
            self.new_vlan.name.clone()
        };
        labels.push((new_name, "newvlan".into()));
        let (mut problems, rest) = place(&msg, &labels);
        for r in &mut self.rows {
            if let Some(p) = problems.remove(&format!("if{}", r.k)) {
                r.problem = p;
            }
        }
        self.problems = problems;
        self.error = rest;
    }
}

/// What netd (`keel_netd::fields::subject`) and this module's form parsing begin
/// a refusal with, and the form field it is about.
const FIELD_LABELS: &[(&str, &str)] = &[
    ("NTP servers", "ntp_servers"),
    ("DNS servers", "dns_servers"),
    ("DNS search domains", "dns_search"),
    ("hostname", "hostname"),
    ("default gateway IPv4", "gateway4"),
    ("default gateway IPv6", "gateway6"),
    ("static route", "routes"),
    ("static routes", "routes"),
    ("new VLAN", "newvlan"),
];

/// Splits a refusal (parts joined by `; `) by the field each part is about:
/// `extra` (label, field) pairs first (interface names), then `FIELD_LABELS`.
/// Parts about no known field are returned joined, for the top of the page.
fn place(msg: &str, extra: &[(String, String)]) -> (HashMap<String, String>, Option<String>) {
    let mut placed: HashMap<String, String> = HashMap::new();
    let mut rest: Vec<&str> = Vec::new();
    for part in msg.split("; ") {
        let key = extra
            .iter()
            .map(|(l, k)| (l.as_str(), k.as_str()))
            .chain(FIELD_LABELS.iter().copied())
            .find(|(label, _)| {
                part.strip_prefix(label)
                    .is_some_and(|r| r.starts_with([':', ' ', ',']))
            })
            .map(|(_, k)| k);
        match key {
            Some(k) => {
                let e = placed.entry(k.to_owned()).or_default();
                if !e.is_empty() {
                    e.push_str("; ");
                }
                e.push_str(part);
            }
            None => rest.push(part),
        }
    }
    let rest = (!rest.is_empty()).then(|| rest.join("; "));
    (placed, rest)
}

fn render(status: StatusCode, page: IpPage) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

fn join<T: ToString>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn page_from(csrf: String, s: &NetState) -> IpPage {
    let c = &s.running;
    let live = |name: &str| {
        s.links
            .iter()
            .find(|l| l.name == name)
            .map(|l| {
                format!(
                    "{} {}",
                    if l.up { "up" } else { "down" },
                    l.addresses.join(" ")
                )
            })
            .unwrap_or_else(|| "not present".into())
    };
    let mut rows: Vec<IfaceRow> = c
        .interfaces
        .iter()
        .map(|i| IfaceRow {
            k: 0,
            name: i.name.clone(),
            mac: i.mac.clone().unwrap_or_default(),
            enabled: i.enabled,
            dhcp: i.mode == AddressMode::Dhcp,
            addresses: join(&i.addresses, "\n"),
            mtu: i.mtu.map(|m| m.to_string()).unwrap_or_default(),
            shared: i.shared_address.map(|a| a.to_string()).unwrap_or_default(),
            live: live(&i.name),
            vlan_parent: vlan_of(c, &i.name)
                .map(|v| v.parent.clone())
                .unwrap_or_default(),
            vlan_id: vlan_of(c, &i.name)
                .map(|v| v.id.to_string())
                .unwrap_or_default(),
            problem: String::new(),
        })
        .collect();
    // Wired ports the configuration does not name yet (they get DHCP meanwhile).
    for l in s.links.iter().filter(|l| l.wired) {
        if !rows.iter().any(|r| r.name == l.name) {
            rows.push(IfaceRow {
                k: 0,
                name: l.name.clone(),
                mac: String::new(),
                enabled: true,
                dhcp: true,
                addresses: String::new(),
                mtu: String::new(),
                shared: String::new(),
                live: live(&l.name),
                vlan_parent: String::new(),
                vlan_id: String::new(),
                problem: String::new(),
            });
        }
    }
    for (k, r) in rows.iter_mut().enumerate() {
        r.k = k;
    }
    let new_vlan = NewVlan::default();
    let parents = parent_options(&rows, &new_vlan.parent);
    IpPage {
        csrf,
        error: None,
        notice: None,
        unavailable: None,
        pending: s.pending.clone(),
        rows,
        new_vlan,
        parents,
        hostname: c.hostname.clone(),
        gateway4: c.gateway4.map(|g| g.to_string()).unwrap_or_default(),
        gateway6: c.gateway6.map(|g| g.to_string()).unwrap_or_default(),
        routes: c
            .routes
            .iter()
            .map(|r| {
                let mut line = format!("{} via {}", r.destination, r.gateway);
                if let Some(i) = &r.interface {
                    line.push_str(&format!(" dev {i}"));
                }
                if let Some(m) = r.metric {
                    line.push_str(&format!(" metric {m}"));
                }
                line
            })
            .collect::<Vec<_>>()
            .join("\n"),
        dns_servers: join(&c.dns.servers, " "),
        dns_search: c.dns.search.join(" "),
        ntp_servers: c.ntp_servers.join("\n"),
        problems: HashMap::new(),
        gateways_now: s
            .learned
            .gateways
            .iter()
            .map(|g| {
                let from = match g.source.as_str() {
                    "dhcp" => "DHCP",
                    "ra" => "router advertisement",
                    "config" => "this configuration",
                    _ => "set outside this configuration",
                };
                format!("{} on {} ({from})", g.gateway, g.interface)
            })
            .collect(),
        dns_now: s
            .learned
            .dns
            .iter()
            .flat_map(|d| {
                d.servers
                    .iter()
                    .map(move |a| format!("{a} on {} (DHCP)", d.interface))
            })
            .collect(),
    }
}

fn vlan_of<'a>(c: &'a NetConfig, name: &str) -> Option<&'a keel_api::VlanConfig> {
    c.vlans.iter().find(|v| v.link_name() == name)
}

/// The ports on the page, for the new VLAN's parent (VLANs do not stack).
fn parent_options(rows: &[IfaceRow], chosen: &str) -> Vec<ParentOption> {
    rows.iter()
        .filter(|r| !r.is_vlan())
        .map(|r| ParentOption {
            name: r.name.clone(),
            selected: r.name == chosen,
        })
        .collect()
}

fn empty_page(csrf: String, why: String) -> IpPage {
    let mut p = page_from(
        csrf,
        &NetState {
            running: NetConfig::default(),
            confirmed: NetConfig::default(),
            source: String::new(),
            pending: None,
            links: Vec::new(),
            learned: Default::default(),
        },
    );
    p.unavailable = Some(why);
    p
}

#[utoipa::path(get, path = "/appliance/network/ip", tag = "pages",
    summary = "Networking › IP configuration",
    responses((status = 200, description = "The page (saying so when keel-netd is not answering)", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn ip_page(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    match call::<(), NetState>("GET", "/state", None).await {
        Ok(s) => render(StatusCode::OK, page_from(session.csrf_token, &s)),
        Err(e) => render(StatusCode::OK, empty_page(session.csrf_token, e.message)),
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `DEST via GATEWAY [dev IFACE] [metric N]` per line.
fn parse_routes(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "static routes, line {}: {:?} is not \"DESTINATION via GATEWAY [dev INTERFACE] [metric N]\"",
                n + 1,
                line.trim()
            )
        };
        if w.len() < 3 || w[1] != "via" {
            return Err(bad());
        }
        let mut r = json!({"destination": w[0], "gateway": w[2]});
        let mut rest = w[3..].chunks(2);
        for pair in rest.by_ref() {
            match pair {
                ["dev", i] => r["interface"] = json!(i),
                ["metric", m] => r["metric"] = json!(m.parse::<u32>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// One interface of the form (row `if{k}_...` or the new VLAN's `newvlan_...`).
fn interface_from_form(
    get: &dyn Fn(&str) -> String,
    prefix: &str,
    name: &str,
    enabled: bool,
) -> Result<Value, String> {
    let mut i = json!({
        "name": name,
        "enabled": enabled,
        "mode": if get(&format!("{prefix}_mode")) == "static" { "static" } else { "dhcp" },
        "addresses": words(&get(&format!("{prefix}_addresses"))),
    });
    let mac = get(&format!("{prefix}_mac"));
    if !mac.is_empty() {
        i["mac"] = json!(mac);
    }
    let mtu = get(&format!("{prefix}_mtu"));
    if !mtu.is_empty() {
        let m: u32 = mtu
            .parse()
            .map_err(|_| format!("{name}: MTU {mtu:?} is not a number"))?;
        i["mtu"] = json!(m);
    }
    let shared = get(&format!("{prefix}_shared"));
    if !shared.is_empty() {
        i["shared_address"] = json!(shared);
    }
    Ok(i)
}

/// A VLAN entry; its name only when it is not the default `<parent>.<id>`.
fn vlan_json(parent: &str, id: &str, name: &str, what: &str) -> Result<Value, String> {
    // A number here; netd checks the range (1–4094) and names the field.
    let n: u32 = id
        .parse()
        .map_err(|_| format!("{what}: VLAN ID {id:?} is not a number"))?;
    let mut v = json!({"parent": parent, "id": n});
    if !name.is_empty() && name != format!("{parent}.{id}") {
        v["name"] = json!(name);
    }
    Ok(v)
}

/// The configuration a submitted form describes, as JSON for netd to check.
fn config_from_form(f: &HashMap<String, String>) -> Result<Value, String> {
    let get = |k: &str| f.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let mut interfaces = Vec::new();
    let mut vlans = Vec::new();
    for k in 0..64 {
        let name = get(&format!("if{k}_name"));
        if name.is_empty() {
            break;
        }
        let parent = get(&format!("if{k}_vlan_parent"));
        if !parent.is_empty() {
            if f.contains_key(&format!("if{k}_remove")) {
                continue;
            }
            vlans.push(vlan_json(
                &parent,
                &get(&format!("if{k}_vlan_id")),
                &name,
                &name,
            )?);
        }
        let enabled = f.contains_key(&format!("if{k}_enabled"));
        interfaces.push(interface_from_form(
            &get,
            &format!("if{k}"),
            &name,
            enabled,
        )?);
    }
    // Add a VLAN: a new link and its interface entry, enabled.
    let id = get("newvlan_id");
    if !id.is_empty() {
        let parent = get("newvlan_parent");
        if parent.is_empty() {
            return Err("new VLAN: choose the port it goes on".into());
        }
        let v = vlan_json(&parent, &id, &get("newvlan_name"), "new VLAN")?;
        let name = match v.get("name") {
            Some(n) => n.as_str().unwrap_or_default().to_owned(),
            None => format!("{parent}.{id}"),
        };
        interfaces.push(interface_from_form(&get, "newvlan", &name, true)?);
        vlans.push(v);
    }
    let opt = |k: &str| {
        let v = get(k);
        if v.is_empty() {
            Value::Null
        } else {
            json!(v)
        }
    };
    let mut config = json!({
        "interfaces": interfaces,
        "gateway4": opt("gateway4"),
        "gateway6": opt("gateway6"),
        "routes": parse_routes(&get("routes"))?,
        "dns": {"servers": words(&get("dns_servers")), "search": words(&get("dns_search"))},
        "hostname": get("hostname"),
        "ntp_servers": words(&get("ntp_servers")),
    });
    if !vlans.is_empty() {
        config["vlans"] = json!(vlans);
    }
    Ok(config)
}

/// The form as submitted, with the refusal beside the fields at fault.
fn page_from_form(csrf: String, f: &HashMap<String, String>, error: String) -> IpPage {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for k in 0..64 {
        let name = get(&format!("if{k}_name"));
        if name.is_empty() {
            break;
        }
        rows.push(IfaceRow {
            k,
            name,
            mac: get(&format!("if{k}_mac")),
            enabled: f.contains_key(&format!("if{k}_enabled")),
            dhcp: get(&format!("if{k}_mode")) != "static",
            addresses: get(&format!("if{k}_addresses")),
            mtu: get(&format!("if{k}_mtu")),
            shared: get(&format!("if{k}_shared")),
            live: String::new(),
            vlan_parent: get(&format!("if{k}_vlan_parent")),
            vlan_id: get(&format!("if{k}_vlan_id")),
            problem: String::new(),
        });
    }
    let new_vlan = NewVlan {
        parent: get("newvlan_parent"),
        id: get("newvlan_id"),
        name: get("newvlan_name"),
        dhcp: get("newvlan_mode") == "dhcp",
        addresses: get("newvlan_addresses"),
        mtu: get("newvlan_mtu"),
    };
    let parents = parent_options(&rows, &new_vlan.parent);
    let mut page = IpPage {
        csrf,
        error: None,
        notice: None,
        unavailable: None,
        pending: None,
        rows,
        new_vlan,
        parents,
        hostname: get("hostname"),
        gateway4: get("gateway4"),
        gateway6: get("gateway6"),
        routes: get("routes"),
        dns_servers: get("dns_servers"),
        dns_search: get("dns_search"),
        ntp_servers: get("ntp_servers"),
        problems: HashMap::new(),
        gateways_now: Vec::new(),
        dns_now: Vec::new(),
    };
    page.place(error);
    page
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message {
    heading: String,
    text: String,
    error: Option<String>,
}

/// The session's CSRF token if the form's matches, else the page to answer with.
fn form_check(
    st: &app::AppState,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
) -> Result<String, Box<Response>> {
    let Some((_, session)) = st.session(headers) else {
        return Err(Box::new(Redirect::to("/appliance/").into_response()));
    };
    let presented = f.get("csrf").map(String::as_str).unwrap_or("");
    if !session.form_csrf_matches(presented) || !app::same_origin(headers) {
        let page = Message {
            heading: "Request refused".into(),
            text: "The form expired or came from another site; nothing was changed.".into(),
            error: None,
        };
        return Err(Box::new(match page.render() {
            Ok(html) => (StatusCode::FORBIDDEN, Html(html)).into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        }));
    }
    Ok(session.csrf_token)
}

#[utoipa::path(post, path = "/appliance/network/ip", tag = "forms",
    summary = "Networking › IP configuration: Apply",
    description = "Commit-confirm as for PUT /appliance/api/v1/net/config: applied at once, \
        then the page offers Confirm and Cancel. Fields: `csrf`; per interface row N \
        `ifN_name`, `ifN_enabled`, `ifN_mode` (`dhcp`/`static`), `ifN_addresses`, `ifN_mac`, \
        `ifN_mtu`, `ifN_shared`, for a VLAN `ifN_vlan_parent`, `ifN_vlan_id`, `ifN_remove`; \
        a new VLAN `newvlan_parent`, `newvlan_id`, `newvlan_name` and the `newvlan_` \
        interface fields; `gateway4`, `gateway6`, `routes` (one per line), `dns_servers`, \
        `dns_search`, `hostname`, `ntp_servers`.",
    request_body(content = HashMap<String, String>, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Applied: back to the page, which asks for confirmation"),
        (status = 403, description = "Form expired or from another site, a role that may not change anything, or keel-netd's refusal", content_type = "text/html", body = String),
        (status = 409, description = "The form as sent: a change is waiting for confirmation already", content_type = "text/html", body = String),
        (status = 422, description = "The form as sent, the reasons beside their fields", content_type = "text/html", body = String),
        (status = 503, description = "The form as sent: keel-netd not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn ip_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let csrf = match form_check(&st, &headers, &f) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let config = match config_from_form(&f) {
        Ok(c) => c,
        Err(msg) => {
            return render(
                StatusCode::UNPROCESSABLE_ENTITY,
                page_from_form(csrf, &f, msg),
            )
        }
    };
    match propose(config, None).await {
        Ok(_) => Redirect::to("/appliance/network/ip").into_response(),
        Err(e) => render(e.status, page_from_form(csrf, &f, e.message)),
    }
}

// ---- Pages for one part of the configuration (NTP servers, hostname & DNS) -------

/// A page that edits some top-level members of netd's configuration and leaves
/// the rest as it runs; the change goes through the same commit-confirm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Ntp,
    Dns,
}

impl Part {
    fn from_back(back: &str) -> Option<Part> {
        match back {
            "ntp" => Some(Part::Ntp),
            "dns" => Some(Part::Dns),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Part::Ntp => "/appliance/network/ntp",
            Part::Dns => "/appliance/network/dns",
        }
    }

    /// The form fields of the page.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Part::Ntp => &["ntp_servers"],
            Part::Dns => &["hostname", "dns_servers", "dns_search"],
        }
    }

    /// The form's values for a configuration.
    fn values(self, c: &NetConfig) -> PartValues {
        PartValues {
            ntp_servers: c.ntp_servers.join("\n"),
            hostname: c.hostname.clone(),
            dns_servers: join(&c.dns.servers, " "),
            dns_search: c.dns.search.join(" "),
        }
    }

    /// `config` (JSON of the running configuration) with the submitted members.
    fn apply(self, config: &mut Value, f: &HashMap<String, String>) {
        let get = |k: &str| f.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
        match self {
            Part::Ntp => config["ntp_servers"] = json!(words(&get("ntp_servers"))),
            Part::Dns => {
                config["hostname"] = json!(get("hostname"));
                config["dns"] = json!({
                    "servers": words(&get("dns_servers")),
                    "search": words(&get("dns_search")),
                });
            }
        }
    }
}

/// The inputs of a part page (those a page does not show stay empty).
#[derive(Default)]
struct PartValues {
    ntp_servers: String,
    hostname: String,
    dns_servers: String,
    dns_search: String,
}

impl PartValues {
    fn from_form(f: &HashMap<String, String>) -> Self {
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        Self {
            ntp_servers: get("ntp_servers"),
            hostname: get("hostname"),
            dns_servers: get("dns_servers"),
            dns_search: get("dns_search"),
        }
    }
}

/// What a part page shows, whichever template renders it.
struct PartView {
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    unavailable: Option<String>,
    pending: Option<NetPending>,
    values: PartValues,
    problems: HashMap<String, String>,
    /// In force now: the NTP servers, or the DNS servers.
    live: Vec<String>,
    hostname_now: String,
}

impl PartView {
    fn new(csrf: String, s: Option<&NetState>) -> Self {
        let running = s.map(|s| &s.running);
        Self {
            csrf,
            error: None,
            notice: None,
            unavailable: None,
            pending: s.and_then(|s| s.pending.clone()),
            values: running.map(|c| Part::Ntp.values(c)).unwrap_or_default(),
            problems: HashMap::new(),
            live: Vec::new(),
            hostname_now: running.map(|c| c.hostname.clone()).unwrap_or_default(),
        }
    }
}

macro_rules! part_page {
    ($name:ident, $path:literal) => {
        #[derive(Template)]
        #[template(path = $path)]
        struct $name {
            csrf: String,
            error: Option<String>,
            notice: Option<String>,
            unavailable: Option<String>,
            pending: Option<NetPending>,
            values: PartValues,
            problems: HashMap<String, String>,
            live: Vec<String>,
            #[allow(dead_code)] // shown by the DNS page only
            hostname_now: String,
        }

        impl $name {
            fn problem(&self, key: &str) -> &str {
                self.problems.get(key).map(String::as_str).unwrap_or("")
            }
        }

        impl From<PartView> for $name {
            fn from(v: PartView) -> Self {
                Self {
                    csrf: v.csrf,
                    error: v.error,
                    notice: v.notice,
                    unavailable: v.unavailable,
                    pending: v.pending,
                    values: v.values,
                    problems: v.problems,
                    live: v.live,
                    hostname_now: v.hostname_now,
                }
            }
        }
    };
}

part_page!(NtpPage, "net_ntp.html");
part_page!(DnsPage, "net_dns.html");

fn part_render(part: Part, status: StatusCode, v: PartView) -> Response {
    let html = match part {
        Part::Ntp => NtpPage::from(v).render(),
        Part::Dns => DnsPage::from(v).render(),
    };
    match html {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The page for netd's state now (or saying why there is none).
fn part_view(part: Part, csrf: String, s: Result<&NetState, String>) -> PartView {
    match s {
        Ok(s) => {
            let mut v = PartView::new(csrf, Some(s));
            v.values = part.values(&s.running);
            v.live = match part {
                Part::Ntp => s.running.ntp_servers.clone(),
                Part::Dns => s
                    .running
                    .dns
                    .servers
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            };
            v
        }
        Err(why) => {
            let mut v = PartView::new(csrf, None);
            v.unavailable = Some(why);
            v
        }
    }
}

async fn part_page(part: Part, st: Shared, headers: HeaderMap) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    let s = call::<(), NetState>("GET", "/state", None).await;
    let v = part_view(
        part,
        session.csrf_token,
        s.as_ref().map_err(|e| e.message.clone()),
    );
    part_render(part, StatusCode::OK, v)
}

async fn part_submit(
    part: Part,
    st: Shared,
    headers: HeaderMap,
    f: HashMap<String, String>,
) -> Response {
    let csrf = match form_check(&st, &headers, &f) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    // The rest of the configuration as it runs now; only this page's part changes.
    let result = match call::<(), NetState>("GET", "/state", None).await {
        Ok(s) => {
            let mut config = serde_json::to_value(&s.running).unwrap_or(Value::Null);
            part.apply(&mut config, &f);
            propose(config, None).await.map(|_| s)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Redirect::to(part.path()).into_response(),
        Err(e) => {
            let state = call::<(), NetState>("GET", "/state", None).await.ok();
            let mut v = PartView::new(csrf, state.as_ref());
            v.live = part_view(part, String::new(), state.as_ref().ok_or_else(String::new)).live;
            v.values = PartValues::from_form(&f);
            let (problems, rest) = place(&e.message, &[]);
            // A refusal about a member this page does not show stays at the top.
            let (mine, others): (HashMap<_, _>, HashMap<_, _>) = problems
                .into_iter()
                .partition(|(k, _)| part.keys().contains(&k.as_str()));
            v.problems = mine;
            let mut top: Vec<String> = others.into_values().collect();
            top.extend(rest);
            v.error = (!top.is_empty()).then(|| top.join("; "));
            part_render(part, e.status, v)
        }
    }
}

#[utoipa::path(get, path = "/appliance/network/ntp", tag = "pages",
    summary = "Networking › NTP servers",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn ntp_page(State(st): State<Shared>, headers: HeaderMap) -> Response {
    part_page(Part::Ntp, st, headers).await
}

#[utoipa::path(post, path = "/appliance/network/ntp", tag = "forms",
    summary = "Networking › NTP servers: Apply",
    description = "Fields `csrf`, `ntp_servers` (one per line); the rest of the configuration \
        stays as it runs. Commit-confirm as for PUT /appliance/api/v1/net/config.",
    request_body(content = HashMap<String, String>, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Applied: back to the page, which asks for confirmation"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String),
        (status = 409, description = "The form as sent: a change is waiting for confirmation already", content_type = "text/html", body = String),
        (status = 422, description = "The form as sent, the reason beside its field", content_type = "text/html", body = String),
        (status = 503, description = "The form as sent: keel-netd not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn ntp_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    part_submit(Part::Ntp, st, headers, f).await
}

#[utoipa::path(get, path = "/appliance/network/dns", tag = "pages",
    summary = "Networking › Hostname & DNS",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn dns_page(State(st): State<Shared>, headers: HeaderMap) -> Response {
    part_page(Part::Dns, st, headers).await
}

#[utoipa::path(post, path = "/appliance/network/dns", tag = "forms",
    summary = "Networking › Hostname & DNS: Apply",
    description = "Fields `csrf`, `hostname`, `dns_servers`, `dns_search`; the rest of the \
        configuration stays as it runs. Commit-confirm as for PUT /appliance/api/v1/net/config.",
    request_body(content = HashMap<String, String>, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Applied: back to the page, which asks for confirmation"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String),
        (status = 409, description = "The form as sent: a change is waiting for confirmation already", content_type = "text/html", body = String),
        (status = 422, description = "The form as sent, the reasons beside their fields", content_type = "text/html", body = String),
        (status = 503, description = "The form as sent: keel-netd not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn dns_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    part_submit(Part::Dns, st, headers, f).await
}

async fn decide(
    st: Shared,
    headers: HeaderMap,
    f: HashMap<String, String>,
    verb: &str,
) -> Response {
    let csrf = match form_check(&st, &headers, &f) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let result =
        call::<_, NetState>("POST", &format!("/{verb}"), Some(&json!({"owner": OWNER}))).await;
    let notice = if verb == "confirm" {
        "The change is confirmed and saved."
    } else {
        "The previous configuration is back."
    };
    // Confirmed from the NTP or DNS page: back there.
    if let Some(part) = f.get("back").and_then(|b| Part::from_back(b)) {
        let (status, error, s) = match result {
            Ok(s) => (StatusCode::OK, None, Ok(s)),
            Err(e) => (
                e.status,
                Some(e.message),
                call::<(), NetState>("GET", "/state", None)
                    .await
                    .map_err(|e| e.message),
            ),
        };
        let mut v = part_view(part, csrf, s.as_ref().map_err(String::clone));
        if error.is_none() {
            v.notice = Some(notice.into());
        }
        v.error = error;
        return part_render(part, status, v);
    }
    match result {
        Ok(s) => {
            let mut p = page_from(csrf, &s);
            p.notice = Some(notice.into());
            render(StatusCode::OK, p)
        }
        Err(e) => match call::<(), NetState>("GET", "/state", None).await {
            Ok(s) => {
                let mut p = page_from(csrf, &s);
                p.error = Some(e.message);
                render(e.status, p)
            }
            Err(_) => render(e.status, empty_page(csrf, e.message)),
        },
    }
}

#[utoipa::path(post, path = "/appliance/network/confirm", tag = "forms",
    summary = "Networking: Confirm the change",
    description = "Fields `csrf` and `back` (`ntp` or `dns`: answer with that page instead of \
        IP configuration).",
    request_body(content = HashMap<String, String>, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page: confirmed and saved", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, a role that may not change anything, or the change was made through keelctl", content_type = "text/html", body = String),
        (status = 409, description = "The page: no change is waiting for confirmation", content_type = "text/html", body = String),
        (status = 503, description = "The page: keel-netd not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn confirm_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    decide(st, headers, f, "confirm").await
}

#[utoipa::path(post, path = "/appliance/network/cancel", tag = "forms",
    summary = "Networking: Cancel the change (the previous configuration back now)",
    description = "Fields `csrf` and `back` (`ntp` or `dns`: answer with that page instead of \
        IP configuration).",
    request_body(content = HashMap<String, String>, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page: the previous configuration is back", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, a role that may not change anything, or the change was made through keelctl", content_type = "text/html", body = String),
        (status = 409, description = "The page: no change is waiting for confirmation", content_type = "text/html", body = String),
        (status = 503, description = "The page: keel-netd not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn cancel_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    decide(st, headers, f, "cancel").await
}

/// The networking routes, full paths (merged into the console's router).
pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(api_state, api_put))
        .routes(routes!(api_pending))
        .routes(routes!(api_confirm))
        .routes(routes!(api_cancel))
        .routes(routes!(ip_page, ip_submit))
        .routes(routes!(ntp_page, ntp_submit))
        .routes(routes!(dns_page, dns_submit))
        .routes(routes!(confirm_submit))
        .routes(routes!(cancel_submit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_becomes_config() {
        let f: HashMap<String, String> = [
            ("if0_name", "eth0"),
            ("if0_enabled", "on"),
            ("if0_mode", "static"),
            ("if0_addresses", "192.0.2.10/24\r\n2001:db8::10/64"),
            ("if0_mtu", "1400"),
            ("if1_name", "eth1"),
            ("if1_mode", "dhcp"),
            ("gateway4", "192.0.2.1"),
            ("routes", "10.20.0.0/16 via 192.0.2.254 dev eth0 metric 5\n"),
            ("dns_servers", "192.0.2.53, 192.0.2.54"),
            ("hostname", "edge"),
            ("ntp_servers", "ntp1.example.org\nntp2.example.org"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let v = config_from_form(&f).unwrap();
        let c: NetConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[0].addresses.len(), 2);
        assert_eq!(c.interfaces[0].mtu, Some(1400));
        assert!(!c.interfaces[1].enabled);
        assert_eq!(c.routes[0].metric, Some(5));
        assert_eq!(c.routes[0].interface.as_deref(), Some("eth0"));
        assert_eq!(c.dns.servers.len(), 2);
        assert_eq!(c.ntp_servers.len(), 2);
        assert!(parse_routes("10.0.0.0/8 to 1.2.3.4")
            .unwrap_err()
            .contains("line 1"));
        assert!(c.vlans.is_empty());
        assert!(v.get("vlans").is_none(), "no VLANs, no key: {v}");
    }

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn vlans_in_the_form() {
        let f = form(&[
            ("if0_name", "eth0"),
            ("if0_enabled", "on"),
            ("if0_mode", "static"),
            ("if0_addresses", "192.0.2.10/24"),
            // An existing VLAN, kept.
            ("if1_name", "eth0.100"),
            ("if1_vlan_parent", "eth0"),
            ("if1_vlan_id", "100"),
            ("if1_enabled", "on"),
            ("if1_mode", "static"),
            ("if1_addresses", "198.51.100.1/24"),
            ("if1_mtu", "1400"),
            // One removed.
            ("if2_name", "mgmt"),
            ("if2_vlan_parent", "eth0"),
            ("if2_vlan_id", "7"),
            ("if2_remove", "on"),
            ("if2_mode", "dhcp"),
            // A new one, with a name of its own, DHCP.
            ("newvlan_parent", "eth0"),
            ("newvlan_id", "42"),
            ("newvlan_name", "guest"),
            ("newvlan_mode", "dhcp"),
            ("newvlan_addresses", ""),
            ("newvlan_mtu", "1300"),
            ("hostname", "edge"),
        ]);
        let v = config_from_form(&f).unwrap();
        let c: NetConfig = serde_json::from_value(v.clone()).unwrap();
        let names: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth0.100", "guest"]);
        assert_eq!(
            v["vlans"],
            json!([{"parent": "eth0", "id": 100}, {"parent": "eth0", "id": 42, "name": "guest"}])
        );
        assert_eq!(c.interfaces[1].mtu, Some(1400));
        assert!(c.interfaces[2].enabled, "a new VLAN starts enabled");
        assert_eq!(c.interfaces[2].mode, AddressMode::Dhcp);
        assert_eq!(c.interfaces[2].mtu, Some(1300));
        // The default name is the link name when none is given.
        let mut g = f.clone();
        g.insert("newvlan_name".into(), String::new());
        g.insert("newvlan_mode".into(), "static".into());
        g.insert("newvlan_addresses".into(), "203.0.113.5/24".into());
        let c: NetConfig = serde_json::from_value(config_from_form(&g).unwrap()).unwrap();
        assert_eq!(c.interfaces[2].name, "eth0.42");
        assert_eq!(c.vlans[1].name, None);
        assert_eq!(c.interfaces[2].addresses[0].to_string(), "203.0.113.5/24");
        // Not a number, or no parent: said before netd is asked.
        let mut g = f.clone();
        g.insert("newvlan_id".into(), "forty".into());
        assert!(config_from_form(&g)
            .unwrap_err()
            .contains("new VLAN: VLAN ID \"forty\" is not a number"));
        let mut g = f.clone();
        g.insert("newvlan_parent".into(), String::new());
        assert!(config_from_form(&g)
            .unwrap_err()
            .contains("choose the port"));
        // The ID's range is netd's to check (it names the field).
        let mut g = f;
        g.insert("newvlan_id".into(), "4095".into());
        assert_eq!(config_from_form(&g).unwrap()["vlans"][1]["id"], 4095);
    }

    #[test]
    fn vlans_on_the_page() {
        let running: NetConfig = serde_json::from_value(json!({
            "interfaces": [
                {"name": "eth0", "mode": "static", "addresses": ["192.0.2.10/24"]},
                {"name": "eth0.100", "mode": "static", "addresses": ["198.51.100.1/24"]}
            ],
            "vlans": [{"parent": "eth0", "id": 100}]
        }))
        .unwrap();
        let state = NetState {
            running: running.clone(),
            confirmed: running,
            source: "file".into(),
            pending: None,
            links: Vec::new(),
            learned: Default::default(),
        };
        let page = page_from("t".into(), &state);
        assert!(!page.rows[0].is_vlan());
        assert_eq!(page.rows[1].vlan_parent, "eth0");
        assert_eq!(page.rows[1].vlan_id, "100");
        let names: Vec<&str> = page.parents.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["eth0"], "VLANs do not stack");
        let html = page.render().unwrap();
        for want in [
            "VLAN 100 on eth0",
            "name=\"if1_vlan_parent\" value=\"eth0\"",
            "name=\"if1_vlan_id\" value=\"100\"",
            "name=\"if1_remove\"",
            "Add a VLAN",
            "name=\"newvlan_id\"",
            "<option value=\"eth0\">eth0</option>",
        ] {
            assert!(html.contains(want), "{want:?} in\n{html}");
        }
        // The page's own form comes back as the same configuration.
        let mut f: HashMap<String, String> = HashMap::new();
        for r in &page.rows {
            let k = r.k;
            f.insert(format!("if{k}_name"), r.name.clone());
            f.insert(format!("if{k}_enabled"), "on".into());
            f.insert(
                format!("if{k}_mode"),
                if r.dhcp { "dhcp" } else { "static" }.into(),
            );
            f.insert(format!("if{k}_addresses"), r.addresses.clone());
            f.insert(format!("if{k}_vlan_parent"), r.vlan_parent.clone());
            f.insert(format!("if{k}_vlan_id"), r.vlan_id.clone());
        }
        f.insert("hostname".into(), "keel".into());
        let back: NetConfig = serde_json::from_value(config_from_form(&f).unwrap()).unwrap();
        assert_eq!(back.vlans, state.running.vlans);
        assert_eq!(back.interfaces, state.running.interfaces);
    }
}
