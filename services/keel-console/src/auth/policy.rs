//! What a console password and user name must be. The rules say which one failed,
//! so the admin knows what to change.

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Bytes: longer input is refused before it is hashed.
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const MAX_NAME_LEN: usize = 32;

/// Well-known weak passwords of 12 characters or more (lower case, one a line):
/// shorter ones are refused by length already.
const COMMON: &str = include_str!("common-passwords.txt");

/// Why a password is refused, or `None` when it may be used by `user` on the
/// appliance called `hostname`.
pub fn password_problem(password: &str, user: &str, hostname: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Some(format!(
            "the password is too short: it needs at least {MIN_PASSWORD_LEN} characters \
             ({chars} given)"
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Some(format!(
            "the password is too long: at most {MAX_PASSWORD_LEN} bytes"
        ));
    }
    let lower = password.to_lowercase();
    // Names of 4 characters or more may not appear anywhere in it; shorter ones
    // ("vm", "fw") are too likely to occur by chance, so only the whole is refused.
    let contains = |name: &str| {
        let name = name.to_lowercase();
        !name.is_empty() && (lower == name || (name.chars().count() >= 4 && lower.contains(&name)))
    };
    if contains(hostname) {
        return Some("the password must not be or contain the appliance's name".into());
    }
    if contains(user) {
        return Some("the password must not be or contain the user name".into());
    }
    if COMMON.lines().any(|c| c == lower) {
        return Some("the password is one of the most commonly used ones; choose another".into());
    }
    None
}

/// Why a user name cannot be used, or `None`: 1 to 32 characters of `a-z`, `0-9`,
/// `.`, `_` and `-`, starting with a letter.
pub fn name_problem(name: &str) -> Option<String> {
    if name.chars().any(char::is_control) {
        return Some("the user name contains a control character".into());
    }
    if name.is_empty() {
        return Some("the user name is empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Some(format!(
            "the user name is too long: at most {MAX_NAME_LEN} characters"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("the user name must start with a letter (a-z)".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Some(format!(
            "the user name may hold only a-z, 0-9, '.', '_' and '-' (not {c:?})"
        ));
    }
    None
}

/// The appliance's own name, as the policy compares it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_says_what_failed() {
        let p = |pw: &str| password_problem(pw, "alice", "edge-fw1").unwrap_or_default();
        assert!(p("short").contains("too short"), "{}", p("short"));
        assert!(p(&"x".repeat(1025)).contains("too long"));
        assert!(p("my EDGE-FW1 box pass").contains("appliance's name"));
        assert!(p("Alice in wonderland").contains("user name"));
        assert!(p("Password1234").contains("commonly used"));
        assert!(p("qwertyuiop123").contains("commonly used"));
        assert_eq!(
            password_problem("a good password", "alice", "edge-fw1"),
            None
        );
        // Short names only as the whole password.
        assert_eq!(password_problem("a vm password here", "bob", "vm"), None);
        assert!(password_problem("VM", "bob", "vm").is_some());
        assert!(COMMON.lines().count() >= 300);
        assert!(COMMON
            .lines()
            .all(|l| l.chars().count() >= MIN_PASSWORD_LEN && l == l.to_lowercase()));
    }

    #[test]
    fn user_names() {
        for ok in ["admin", "a", "ops.team_2-b", &"a".repeat(32)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        assert!(name_problem("al\u{7}ice")
            .unwrap()
            .contains("control character"));
        assert!(name_problem("a\nb").unwrap().contains("control character"));
        assert!(name_problem("").unwrap().contains("empty"));
        assert!(name_problem(&"a".repeat(33)).unwrap().contains("too long"));
        assert!(name_problem("1abc")
            .unwrap()
            .contains("start with a letter"));
        assert!(name_problem("Alice")
            .unwrap()
            .contains("start with a letter"));
        assert!(name_problem("al ice").unwrap().contains("only a-z"));
    }
}
