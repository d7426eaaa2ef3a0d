//! Mail addresses as RFC 5321 / 5322 allow them: the checks every account, alias and
//! domain name passes before it enters the registry, each failure naming its rule.
//!
//! A written address (`user add`, `alias add`, the admin API) is `local@domain` where
//! the local part is a dot-atom (`a.b+c`) or a quoted string (`"john doe"`), at most
//! 64 octets as written (RFC 5321 §4.5.3.1.1), and the domain is a host name: labels
//! of 1–63 letters, digits and hyphens, no hyphen at either end of a label (RFC 1035
//! §2.3.1, RFC 5321 §4.1.2), at most 253 octets in all; the whole path at most 254
//! (RFC 5321 §4.5.3.1.3 allows 256 octets with the angle brackets). Only ASCII.
//!
//! The canonical form, the registry's key, is lowercase with the local part unquoted:
//! `"John"@Example.TEST` and `john@example.test` are one account (RFC 5321 §4.1.2: a
//! quoted form is equivalent to its unquoted content), and the SMTP session, which
//! hands over RCPT local parts unquoted, finds it with [`canonical_smtp`].

/// Longest local part, in octets as written (RFC 5321 §4.5.3.1.1).
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// Longest domain, in octets (RFC 1035 §2.3.4 names 255 on the wire, 253 as text).
pub const DOMAIN_BYTES_MAX: usize = 253;
/// Longest domain label, in octets (RFC 1035 §2.3.4).
pub const LABEL_BYTES_MAX: usize = 63;
/// Longest address without angle brackets (RFC 5321 §4.5.3.1.3: 256 with them).
pub const PATH_BYTES_MAX: usize = 254;

/// Characters of an RFC 5322 `atext` besides letters and digits.
const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

/// Why an address or domain was refused; each message names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Anything outside 7-bit ASCII.
    #[error("only ASCII is accepted (RFC 5321 §4.1.2; SMTPUTF8 is not offered)")]
    NotAscii,
    /// No `@` between local part and domain.
    #[error("expected local@domain (RFC 5321 §4.1.2 Mailbox)")]
    NoAt,
    /// Nothing before the `@`.
    #[error("the local part is empty (RFC 5321 §4.1.2 Local-part)")]
    EmptyLocal,
    /// Local part over 64 octets.
    #[error("local part is {0} octets; at most 64 (RFC 5321 §4.5.3.1.1)")]
    LocalTooLong(usize),
    /// A dot at the start or end of a dot-atom, or two in a row.
    #[error(
        "local part {0:?} has a leading, trailing or doubled dot; quote it or remove the \
         dot (RFC 5322 §3.2.3 dot-atom)"
    )]
    LocalDot(String),
    /// A character a dot-atom may not hold.
    #[error(
        "local part {local:?} holds {ch:?}, which a dot-atom may not; quote the local part \
         (RFC 5322 §3.2.3 atext)"
    )]
    LocalChar {
        /// The local part.
        local: String,
        /// The offending character.
        ch: char,
    },
    /// A quoted local part without its closing quote, or text after it.
    #[error(
        "quoted local part {0:?} is not closed by a final '\"' (RFC 5321 §4.1.2 Quoted-string)"
    )]
    QuoteUnclosed(String),
    /// A control character inside a quoted local part.
    #[error(
        "quoted local part {0:?} holds a control character (RFC 5321 §4.1.2 qtextSMTP: \
         printable ASCII only)"
    )]
    QuoteChar(String),
    /// Nothing after the `@`.
    #[error("the domain is empty (RFC 5321 §4.1.2 Domain)")]
    EmptyDomain,
    /// An address literal (`[192.0.2.1]`) where a domain name is needed.
    #[error("address literal {0:?} cannot be a local domain; use a domain name (RFC 5321 §4.1.3)")]
    Literal(String),
    /// Domain over 253 octets.
    #[error("domain is {0} octets; at most 253 (RFC 1035 §2.3.4)")]
    DomainTooLong(usize),
    /// Two dots in a row, or a dot at either end.
    #[error("domain {0:?} has an empty label (RFC 1035 §2.3.1: labels are 1 to 63 characters)")]
    EmptyLabel(String),
    /// A label over 63 octets.
    #[error("domain label {label:?} is {len} octets; at most 63 (RFC 1035 §2.3.4)")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A label character other than letter, digit or hyphen.
    #[error(
        "domain label {label:?} holds {ch:?}; only letters, digits and hyphens are allowed \
         (RFC 1035 §2.3.1)"
    )]
    LabelChar {
        /// The label.
        label: String,
        /// The offending character.
        ch: char,
    },
    /// A label starting or ending with a hyphen.
    #[error("domain label {0:?} may not start or end with a hyphen (RFC 1035 §2.3.1)")]
    LabelHyphen(String),
    /// The whole address over 254 octets.
    #[error("address is {0} octets; a path holds at most 254 (RFC 5321 §4.5.3.1.3)")]
    PathTooLong(usize),
}

/// Check a domain name and return it lowercase.
pub fn canonical_domain(raw: &str) -> Result<String, AddressError> {
    let domain = raw.trim();
    if !domain.is_ascii() {
        return Err(AddressError::NotAscii);
    }
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    if domain.starts_with('[') {
        return Err(AddressError::Literal(domain.to_string()));
    }
    if domain.len() > DOMAIN_BYTES_MAX {
        return Err(AddressError::DomainTooLong(domain.len()));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(AddressError::EmptyLabel(domain.to_string()));
        }
        if label.len() > LABEL_BYTES_MAX {
            return Err(AddressError::LabelTooLong {
                label: label.to_string(),
                len: label.len(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(AddressError::LabelChar {
                label: label.to_string(),
                ch,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::LabelHyphen(label.to_string()));
        }
    }
    Ok(domain.to_ascii_lowercase())
}

/// True when `local` is a dot-atom (atoms of atext joined by single dots).
fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b))
        })
}

/// Octets of `content` written as a quoted string (quotes, backslash escapes).
fn quoted_len(content: &str) -> usize {
    2 + content.len()
        + content
            .bytes()
            .filter(|b| *b == b'"' || *b == b'\\')
            .count()
}

/// The content of a quoted local part (`"..."` with `\x` escapes), checked.
fn unquote(written: &str) -> Result<String, AddressError> {
    let unclosed = || AddressError::QuoteUnclosed(written.to_string());
    let inner = written
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(unclosed)?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => chars.next().ok_or_else(unclosed)?,
            '"' => return Err(unclosed()),
            c => c,
        };
        if !(' '..='~').contains(&c) {
            return Err(AddressError::QuoteChar(written.to_string()));
        }
        out.push(c);
    }
    Ok(out)
}

/// Split at the `@` that starts the domain: the last one (a quoted local part may hold
/// `@`).
fn split(address: &str) -> Result<(&str, &str), AddressError> {
    address.rsplit_once('@').ok_or(AddressError::NoAt)
}

/// Check a written address (dot-atom or quoted local part) and return its canonical
/// form: lowercase, the local part unquoted. Surrounding `<>` and spaces are ignored.
pub fn canonical_address(raw: &str) -> Result<String, AddressError> {
    let address = raw.trim();
    let address = address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address);
    if !address.is_ascii() {
        return Err(AddressError::NotAscii);
    }
    let (local, domain) = split(address)?;
    if local.is_empty() {
        return Err(AddressError::EmptyLocal);
    }
    if local.len() > LOCAL_PART_BYTES_MAX {
        return Err(AddressError::LocalTooLong(local.len()));
    }
    let content = if local.starts_with('"') {
        // `""` is a quoted string, but an empty mailbox name is nobody (and its
        // canonical form would read as a catch-all source).
        Some(unquote(local)?)
            .filter(|c| !c.is_empty())
            .ok_or(AddressError::EmptyLocal)?
    } else {
        check_dot_atom(local)?;
        local.to_string()
    };
    let domain = canonical_domain(domain)?;
    if address.len() > PATH_BYTES_MAX {
        return Err(AddressError::PathTooLong(address.len()));
    }
    Ok(format!("{}@{domain}", content.to_ascii_lowercase()))
}

/// Why `local` is not a dot-atom, if it is not one.
fn check_dot_atom(local: &str) -> Result<(), AddressError> {
    if let Some(ch) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || ATEXT_SPECIALS.contains(&(*c as u8))))
    {
        return Err(AddressError::LocalChar {
            local: local.to_string(),
            ch,
        });
    }
    if !is_dot_atom(local) {
        return Err(AddressError::LocalDot(local.to_string()));
    }
    Ok(())
}

/// The canonical form of a recipient as the SMTP session hands it over: the local part
/// already unquoted (smtp-proto removes the quotes). Its lengths are checked as the
/// address would be written, quoted when it is not a dot-atom.
pub fn canonical_smtp(unquoted: &str) -> Result<String, AddressError> {
    if !unquoted.is_ascii() {
        return Err(AddressError::NotAscii);
    }
    let (local, domain) = split(unquoted)?;
    if local.is_empty() {
        return Err(AddressError::EmptyLocal);
    }
    if local.chars().any(|c| !(' '..='~').contains(&c)) {
        return Err(AddressError::QuoteChar(local.to_string()));
    }
    let written_len = if is_dot_atom(local) {
        local.len()
    } else {
        quoted_len(local)
    };
    if written_len > LOCAL_PART_BYTES_MAX {
        return Err(AddressError::LocalTooLong(written_len));
    }
    let domain = canonical_domain(domain)?;
    if written_len + 1 + domain.len() > PATH_BYTES_MAX {
        return Err(AddressError::PathTooLong(written_len + 1 + domain.len()));
    }
    Ok(format!("{}@{domain}", local.to_ascii_lowercase()))
}

/// A catch-all source (`@domain`): the domain, canonical; `None` when `raw` is not of
/// that form.
pub fn catch_all_domain(raw: &str) -> Option<Result<String, AddressError>> {
    raw.trim().strip_prefix('@').map(canonical_domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> AddressError {
        match canonical_address(raw) {
            Ok(ok) => panic!("{raw:?} accepted as {ok:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn dot_atoms_are_lowercased() {
        assert_eq!(
            canonical_address("Alice@Example.TEST").unwrap(),
            "alice@example.test"
        );
        assert_eq!(canonical_address("<bob@x.y>").unwrap(), "bob@x.y");
        assert_eq!(
            canonical_address("a.b+c!#$%&'*/=?^_`{|}~-@x.test").unwrap(),
            "a.b+c!#$%&'*/=?^_`{|}~-@x.test"
        );
        assert_eq!(canonical_address("a@localhost").unwrap(), "a@localhost");
    }

    #[test]
    fn missing_parts() {
        assert_eq!(err("alice"), AddressError::NoAt);
        assert_eq!(err(""), AddressError::NoAt);
        assert_eq!(err("@x.test"), AddressError::EmptyLocal);
        assert_eq!(err("a@"), AddressError::EmptyDomain);
    }

    #[test]
    fn label_rules() {
        assert_eq!(
            err("x@-bad-.test"),
            AddressError::LabelHyphen("-bad-".into())
        );
        assert_eq!(err("x@bad-.test"), AddressError::LabelHyphen("bad-".into()));
        assert!(canonical_address("x@a-b.test").is_ok());
        assert!(canonical_address("x@3com.test").is_ok());
        assert_eq!(
            err("x@a_b.test"),
            AddressError::LabelChar {
                label: "a_b".into(),
                ch: '_'
            }
        );
        assert_eq!(err("a@x..test"), AddressError::EmptyLabel("x..test".into()));
        assert_eq!(err("a@.x"), AddressError::EmptyLabel(".x".into()));
        assert_eq!(err("a@x."), AddressError::EmptyLabel("x.".into()));
        assert!(matches!(
            err("a@x/y"),
            AddressError::LabelChar { ch: '/', .. }
        ));
        let label63 = "a".repeat(63);
        assert!(canonical_address(&format!("x@{label63}.test")).is_ok());
        assert_eq!(
            err(&format!("x@{label63}a.test")),
            AddressError::LabelTooLong {
                label: format!("{label63}a"),
                len: 64
            }
        );
        assert!(matches!(err("x@[192.0.2.1]"), AddressError::Literal(_)));
    }

    #[test]
    fn domain_length() {
        // 4 labels of 63 + 3 dots = 255 > 253; 3 × 63 + 61 + 3 dots = 253.
        let l = "a".repeat(63);
        let ok = format!("{l}.{l}.{l}.{}", "b".repeat(61));
        assert_eq!(ok.len(), 253);
        assert!(canonical_domain(&ok).is_ok());
        let long = format!("{l}.{l}.{l}.{}", "b".repeat(62));
        assert_eq!(
            canonical_domain(&long),
            Err(AddressError::DomainTooLong(254))
        );
    }

    #[test]
    fn path_length() {
        let l = "a".repeat(63);
        let domain = format!("{l}.{l}.{l}.{}", "b".repeat(61)); // 253
        assert_eq!(
            err(&format!("x@{domain}")),
            AddressError::PathTooLong(255),
            "1 + 1 + 253 octets"
        );
        let domain = format!("{l}.{l}.{l}.{}", "b".repeat(51)); // 243
        let local = "c".repeat(10);
        assert_eq!(
            canonical_address(&format!("{local}@{domain}"))
                .unwrap()
                .len(),
            254
        );
    }

    #[test]
    fn local_part_length() {
        assert!(canonical_address(&format!("{}@x.test", "a".repeat(64))).is_ok());
        assert_eq!(
            err(&format!("{}@x.test", "a".repeat(65))),
            AddressError::LocalTooLong(65)
        );
        // Quoted: the quotes count.
        assert_eq!(
            err(&format!("\"{}\"@x.test", "a".repeat(63))),
            AddressError::LocalTooLong(65)
        );
    }

    #[test]
    fn dot_atom_rules() {
        assert_eq!(err("a..b@x.test"), AddressError::LocalDot("a..b".into()));
        assert_eq!(err(".a@x.test"), AddressError::LocalDot(".a".into()));
        assert_eq!(err("a.@x.test"), AddressError::LocalDot("a.".into()));
        assert_eq!(
            err("a b@x.test"),
            AddressError::LocalChar {
                local: "a b".into(),
                ch: ' '
            }
        );
        assert!(matches!(
            err("a(b)@x.test"),
            AddressError::LocalChar { ch: '(', .. }
        ));
    }

    #[test]
    fn quoted_local_parts() {
        assert_eq!(
            canonical_address("\"John Doe\"@X.test").unwrap(),
            "john doe@x.test"
        );
        assert_eq!(canonical_address("\"john\"@x.test").unwrap(), "john@x.test");
        assert_eq!(
            canonical_address(r#""a\"b\\c"@x.test"#).unwrap(),
            r#"a"b\c@x.test"#
        );
        assert_eq!(
            canonical_address("\"a@b\"@x.test").unwrap(),
            "a@b@x.test",
            "the last @ starts the domain"
        );
        assert!(matches!(
            err("\"abc@x.test"),
            AddressError::QuoteUnclosed(_)
        ));
        assert!(matches!(
            err("\"a\"b\"@x.test"),
            AddressError::QuoteUnclosed(_)
        ));
        assert!(matches!(err("\"a\tb\"@x.test"), AddressError::QuoteChar(_)));
        assert_eq!(err("é@x.test"), AddressError::NotAscii);
        assert_eq!(
            err("\"\"@x.test"),
            AddressError::EmptyLocal,
            "an empty quoted string"
        );
    }

    #[test]
    fn smtp_form_is_unquoted() {
        assert_eq!(
            canonical_smtp("John Doe@x.test").unwrap(),
            "john doe@x.test"
        );
        assert_eq!(canonical_smtp("a+tag@X.TEST").unwrap(), "a+tag@x.test");
        assert_eq!(
            canonical_smtp("a@-x.test"),
            Err(AddressError::LabelHyphen("-x".into()))
        );
        // 63 characters with a space need quotes: 65 octets written.
        let local = format!("{} ", "a".repeat(62));
        assert_eq!(
            canonical_smtp(&format!("{local}@x.test")),
            Err(AddressError::LocalTooLong(65))
        );
    }

    #[test]
    fn catch_all_sources() {
        assert_eq!(
            catch_all_domain("@Example.test"),
            Some(Ok("example.test".into()))
        );
        assert_eq!(catch_all_domain("a@example.test"), None);
        assert!(matches!(catch_all_domain("@-x.test"), Some(Err(_))));
    }

    /// Seeded random addresses over an alphabet rich in the characters the rules are
    /// about: never a panic, and whatever is accepted is canonical in both forms (the
    /// SMTP session finds the account under the same key).
    #[test]
    fn random_addresses_never_panic_and_accepted_ones_are_stable() {
        const ALPHABET: &[u8] = b"aZ09.-_@\" +!~()<>[]\t\x7f";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..50_000 {
            let len = (next() % 80) as usize;
            let mut raw: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            if next() % 3 == 0 {
                raw.push_str("@x.test");
            }
            if let Ok(c) = canonical_address(&raw) {
                accepted += 1;
                assert!(c.len() <= PATH_BYTES_MAX, "{raw:?} -> {c:?}");
                let (_, domain) = c.rsplit_once('@').unwrap();
                assert_eq!(canonical_domain(domain).as_deref(), Ok(domain), "{raw:?}");
                assert_eq!(canonical_smtp(&c).as_deref(), Ok(c.as_str()), "{raw:?}");
            }
        }
        assert!(
            accepted > 100,
            "the generator should reach valid addresses: {accepted}"
        );
    }

    #[test]
    fn the_issue_example_names_its_rule() {
        assert_eq!(
            err("x@-bad-.test").to_string(),
            "domain label \"-bad-\" may not start or end with a hyphen (RFC 1035 §2.3.1)"
        );
    }
}
