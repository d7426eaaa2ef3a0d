//! Mailbox text as RFC 5321 writes it: smtp-proto hands us a local part with its
//! quoting removed, so a path is re-quoted before it goes into a header field.

/// Characters of an RFC 5321 `atext` besides letters and digits.
const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

/// True when `local` can be written as a `Dot-string` (atoms joined by single dots).
fn is_dot_string(local: &str) -> bool {
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b))
        })
}

/// `mailbox` (`local@domain`, the local part unquoted) with the local part written
/// as a `Quoted-string` when it is not a `Dot-string`; `"` and `\` inside are
/// backslash-escaped. The null path and a text without `@` come back unchanged.
pub(crate) fn requote(mailbox: &str) -> String {
    let Some((local, domain)) = mailbox.rsplit_once('@') else {
        return mailbox.to_string();
    };
    if is_dot_string(local) {
        return mailbox.to_string();
    }
    let mut out = String::with_capacity(mailbox.len() + 4);
    out.push('"');
    for ch in local.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push_str("\"@");
    out.push_str(domain);
    out
}

#[cfg(test)]
mod tests {
    use super::requote;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(requote("a.b+c@x.test"), "a.b+c@x.test");
        assert_eq!(requote(""), "");
        assert_eq!(requote("a>,<b@other.test"), "\"a>,<b\"@other.test");
        assert_eq!(requote("a b@x.test"), "\"a b\"@x.test");
        assert_eq!(requote("a..b@x.test"), "\"a..b\"@x.test");
        assert_eq!(requote(".a@x.test"), "\".a\"@x.test");
        assert_eq!(requote("q\"u\\o@x.test"), "\"q\\\"u\\\\o\"@x.test");
        // The last @ splits: an @ in a quoted local part stays inside the quotes.
        assert_eq!(requote("a@b@x.test"), "\"a@b\"@x.test");
    }
}
