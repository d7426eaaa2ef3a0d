//! SASL PLAIN (RFC 4616) as used by POP3 AUTH (RFC 5034): decodes the client's
//! base64 response into a user name and password. Pure: no state, no I/O.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard alphabet; padding optional because some clients leave it off.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The identity and secret carried by one PLAIN response.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The authentication identity (the login name).
    pub user: String,
    /// The password.
    pub password: String,
}

/// Why a PLAIN response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The response is not valid base64.
    #[error("invalid base64 in SASL response")]
    Base64,
    /// The decoded response is not `[authzid] NUL authcid NUL passwd` in UTF-8.
    #[error("malformed PLAIN response")]
    Malformed,
    /// The client asked to act as another user; we do not support proxy logins.
    #[error("authorization identity differs from authentication identity")]
    AuthzidNotAllowed,
}

/// Decode a base64 PLAIN response (`=` stands for an empty response, RFC 5034).
pub fn decode_plain(response: &str) -> Result<PlainCredentials, SaslError> {
    let raw = if response == "=" {
        Vec::new()
    } else {
        BASE64.decode(response).map_err(|_| SaslError::Base64)?
    };
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| SaslError::Malformed)
    };
    let (authzid, user, password) = (text(authzid)?, text(authcid)?, text(password)?);
    if user.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::AuthzidNotAllowed);
    }
    Ok(PlainCredentials { user, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(raw: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn decodes_without_authzid() {
        let creds = decode_plain(&encode(b"\0alice\0s3cret pw")).unwrap();
        assert_eq!(creds.user, "alice");
        assert_eq!(creds.password, "s3cret pw");
    }

    #[test]
    fn accepts_authzid_equal_to_user() {
        let creds = decode_plain(&encode(b"bob\0bob\0pw")).unwrap();
        assert_eq!(creds.user, "bob");
        assert_eq!(creds.password, "pw");
    }

    #[test]
    fn accepts_missing_padding() {
        let padded = encode(b"\0al\0pwd");
        assert!(padded.ends_with('='));
        let creds = decode_plain(padded.trim_end_matches('=')).unwrap();
        assert_eq!(creds.user, "al");
    }

    #[test]
    fn refuses_other_authzid() {
        assert_eq!(
            decode_plain(&encode(b"root\0bob\0pw")),
            Err(SaslError::AuthzidNotAllowed)
        );
    }

    #[test]
    fn refuses_bad_base64_and_bad_shapes() {
        assert_eq!(decode_plain("not base64!"), Err(SaslError::Base64));
        assert_eq!(decode_plain("="), Err(SaslError::Malformed));
        assert_eq!(
            decode_plain(&encode(b"alice\0pw")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&encode(b"\0a\0b\0c")),
            Err(SaslError::Malformed)
        );
        assert_eq!(decode_plain(&encode(b"\0\0pw")), Err(SaslError::Malformed));
        assert_eq!(
            decode_plain(&encode(b"\0alice\0")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&encode(b"\0al\xffice\0pw")),
            Err(SaslError::Malformed)
        );
    }
}
