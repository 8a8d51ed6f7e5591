//! Field paths made readable for people: `interfaces[0].addresses[0]` with
//! `invalid address: 192.0.2.300/24 at line 1 column 139` becomes
//! `enp0s2: 192.0.2.300/24 is not a valid address`. The path itself stays in the
//! API answer's `field` member for programs; people get the interface's name,
//! never serde's internals.

use serde_json::Value;

/// The JSON value a path like `interfaces[0].addresses[1]` points at.
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = root;
    for part in path.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            v = v.get(idx.parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

/// `name[3]` → (`name`, Some(3)).
fn indexed(part: &str) -> (&str, Option<usize>) {
    match part.split_once('[') {
        Some((k, rest)) => (k, rest.trim_end_matches(']').parse().ok()),
        None => (part, None),
    }
}

/// Who a field belongs to, as an admin names it: the interface's name, a VLAN's
/// link name, "static route 2", "DNS server", ...
pub fn subject(config: &Value, field: &str) -> String {
    let parts: Vec<&str> = field.split('.').collect();
    let (head, n) = indexed(parts[0]);
    let name_of = |list: &str, n: usize| {
        lookup(config, &format!("{list}[{n}].name"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match (head, n) {
        ("interfaces", Some(n)) => {
            name_of("interfaces", n).unwrap_or_else(|| format!("interface {}", n + 1))
        }
        ("vlans", Some(n)) => name_of("vlans", n)
            .or_else(|| {
                let parent = lookup(config, &format!("vlans[{n}].parent"))?.as_str()?;
                let id = lookup(config, &format!("vlans[{n}].id"))?;
                Some(format!("{parent}.{id}"))
            })
            .unwrap_or_else(|| format!("VLAN {}", n + 1)),
        ("routes", Some(n)) => format!("static route {}", n + 1),
        ("ntp_servers", _) => "NTP servers".into(),
        ("gateway4", _) => "default gateway IPv4".into(),
        ("gateway6", _) => "default gateway IPv6".into(),
        ("dns", _) => match parts.get(1).map(|p| indexed(p).0) {
            Some("servers") => "DNS servers".into(),
            Some("search") => "DNS search domains".into(),
            _ => "DNS".into(),
        },
        (other, _) => other.replace('_', " "),
    }
}

/// Drops serde_json's ` at line 1 column 139`: a form's user never saw that JSON.
fn without_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i)
            if msg[i + 9..].split_once(" column ").is_some_and(|(l, c)| {
                l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit())
            }) =>
        {
            &msg[..i]
        }
        _ => msg,
    }
}

/// What a field of this name holds, for "X is not a valid …".
fn kind_of(field: &str) -> Option<&'static str> {
    let last = indexed(field.rsplit('.').next().unwrap_or(field)).0;
    Some(match last {
        "addresses" | "shared_address" => "address",
        "gateway" | "gateway4" | "gateway6" => "gateway address",
        "servers" => "DNS server address",
        "destination" => "destination network",
        "mtu" => "MTU",
        "metric" => "metric",
        "id" => "VLAN ID",
        "mode" => "addressing mode (dhcp or static)",
        _ => return None,
    })
}

/// A refusal of the JSON parser, readable: `subject: value is not a valid kind`
/// when the value is at hand, else the parser's own words without the position.
pub fn parse_error(config: &Value, field: &str, parser_msg: &str) -> String {
    let who = subject(config, field);
    let leaf = lookup(config, field);
    let shown = match leaf {
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ Value::Number(_)) => Some(v.to_string()),
        _ => None,
    };
    match (kind_of(field), shown) {
        (Some(kind), Some(v)) => format!("{who}: {v} is not a valid {kind}"),
        _ => format!("{who}: {}", without_position(parser_msg)),
    }
}

/// A validation refusal (`field`, `message`), readable.
pub fn validation_error(config: &Value, field: &str, message: &str) -> String {
    format!("{}: {message}", subject(config, field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({
            "interfaces": [
                {"name": "enp0s2", "mode": "static", "addresses": ["192.0.2.10/24", "192.0.2.300/24"]},
                {"mode": "dhcp", "mtu": 70000}
            ],
            "vlans": [{"parent": "enp0s2", "id": 100}],
            "routes": [{"destination": "10.0.0.0/8", "gateway": "192.0.2.999"}],
            "dns": {"servers": ["banana"]}
        })
    }

    #[test]
    fn the_issue_example_reads_as_a_sentence() {
        assert_eq!(
            parse_error(
                &config(),
                "interfaces[0].addresses[1]",
                "invalid address: 192.0.2.300/24 at line 1 column 139"
            ),
            "enp0s2: 192.0.2.300/24 is not a valid address"
        );
    }

    #[test]
    fn subjects_are_names_not_indexes() {
        let c = config();
        assert_eq!(subject(&c, "interfaces[1].mtu"), "interface 2");
        assert_eq!(subject(&c, "vlans[0].id"), "enp0s2.100");
        assert_eq!(subject(&c, "routes[0].gateway"), "static route 1");
        assert_eq!(subject(&c, "dns.servers[0]"), "DNS servers");
        assert_eq!(subject(&c, "ntp_servers[3]"), "NTP servers");
        assert_eq!(subject(&c, "hostname"), "hostname");
        assert_eq!(
            parse_error(
                &c,
                "routes[0].gateway",
                "invalid IP address syntax at line 1 column 9"
            ),
            "static route 1: 192.0.2.999 is not a valid gateway address"
        );
        assert_eq!(
            parse_error(&c, "dns.servers[0]", "invalid IP address syntax"),
            "DNS servers: banana is not a valid DNS server address"
        );
    }

    #[test]
    fn unknown_shapes_keep_the_message_without_position() {
        let c = config();
        assert_eq!(
            parse_error(
                &c,
                "interfaces[0].colour",
                "unknown field `colour`, expected one of `name` at line 1 column 50"
            ),
            "enp0s2: unknown field `colour`, expected one of `name`"
        );
        // "at line" inside a message, not a position: kept.
        assert_eq!(without_position("x at line one"), "x at line one");
        assert_eq!(
            validation_error(
                &c,
                "interfaces[0].addresses[0]",
                "duplicate address 192.0.2.10"
            ),
            "enp0s2: duplicate address 192.0.2.10"
        );
    }
}
