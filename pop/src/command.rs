//! Parses one POP3 command line (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH) into a
//! [`Command`]. Pure: no state, no I/O.

/// A message number as the client writes it (1-based).
pub type MessageNumber = usize;

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CAPA`: list capabilities (any state).
    Capa,
    /// `STLS`: switch to TLS (RFC 2595), AUTHORIZATION state only.
    Stls,
    /// `QUIT`: end the session; in TRANSACTION state, commit deletes first.
    Quit,
    /// `NOOP`: do nothing.
    Noop,
    /// `RSET`: undo all deletes of this session.
    Rset,
    /// `STAT`: count and total size of the visible messages.
    Stat,
    /// `USER name`.
    User(String),
    /// `PASS secret` (the whole rest of the line: RFC 1939 allows spaces in it).
    Pass(String),
    /// `AUTH [mechanism [initial-response]]`; the mechanism is upper-cased.
    Auth {
        /// SASL mechanism name; `None` asks for the list of mechanisms.
        mechanism: Option<String>,
        /// Base64 initial response (RFC 5034), `=` meaning empty.
        initial_response: Option<String>,
    },
    /// `LIST [msg]`.
    List(Option<MessageNumber>),
    /// `UIDL [msg]`.
    Uidl(Option<MessageNumber>),
    /// `RETR msg`.
    Retr(MessageNumber),
    /// `DELE msg`.
    Dele(MessageNumber),
    /// `TOP msg lines`; a line count too large to represent means "all lines".
    Top {
        /// Which message.
        message: MessageNumber,
        /// How many body lines after the header block.
        body_lines: usize,
    },
}

/// Why a command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The keyword is not a POP3 command we know (or the line is garbage).
    Unknown,
    /// The keyword is known but its arguments are wrong; the text says how.
    BadArguments(&'static str),
}

/// Parse one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let keyword_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let keyword = &line[..keyword_end];
    if keyword.is_empty() || keyword.len() > 4 || !keyword.iter().all(u8::is_ascii_alphabetic) {
        return Err(ParseError::Unknown);
    }
    let keyword = keyword.to_ascii_uppercase();
    let rest = line.get(keyword_end + 1..).unwrap_or(&[]);
    let rest = std::str::from_utf8(rest)
        .map_err(|_| ParseError::BadArguments("argument is not valid UTF-8"))?;
    if rest.chars().any(char::is_control) {
        return Err(ParseError::BadArguments("control character in argument"));
    }
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();

    match keyword.as_slice() {
        b"CAPA" => no_args(&args, Command::Capa),
        b"STLS" => no_args(&args, Command::Stls),
        b"QUIT" => no_args(&args, Command::Quit),
        b"NOOP" => no_args(&args, Command::Noop),
        b"RSET" => no_args(&args, Command::Rset),
        b"STAT" => no_args(&args, Command::Stat),
        b"USER" => match args.as_slice() {
            [name] => Ok(Command::User((*name).to_string())),
            [] => Err(ParseError::BadArguments("missing user name")),
            _ => Err(ParseError::BadArguments("too many arguments")),
        },
        b"PASS" => {
            if rest.is_empty() {
                Err(ParseError::BadArguments("missing password"))
            } else {
                Ok(Command::Pass(rest.to_string()))
            }
        }
        b"AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial_response: None,
            }),
            [mechanism] => Ok(Command::Auth {
                mechanism: Some(mechanism.to_ascii_uppercase()),
                initial_response: None,
            }),
            [mechanism, initial] => Ok(Command::Auth {
                mechanism: Some(mechanism.to_ascii_uppercase()),
                initial_response: Some((*initial).to_string()),
            }),
            _ => Err(ParseError::BadArguments("too many arguments")),
        },
        b"LIST" => optional_message(&args).map(Command::List),
        b"UIDL" => optional_message(&args).map(Command::Uidl),
        b"RETR" => one_message(&args).map(Command::Retr),
        b"DELE" => one_message(&args).map(Command::Dele),
        b"TOP" => match args.as_slice() {
            [message, lines] => Ok(Command::Top {
                message: message_number(message)?,
                body_lines: line_count(lines)?,
            }),
            [] | [_] => Err(ParseError::BadArguments("usage: TOP msg lines")),
            _ => Err(ParseError::BadArguments("too many arguments")),
        },
        _ => Err(ParseError::Unknown),
    }
}

fn no_args(args: &[&str], command: Command) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(ParseError::BadArguments("this command takes no arguments"))
    }
}

fn optional_message(args: &[&str]) -> Result<Option<MessageNumber>, ParseError> {
    match args {
        [] => Ok(None),
        [message] => message_number(message).map(Some),
        _ => Err(ParseError::BadArguments("too many arguments")),
    }
}

fn one_message(args: &[&str]) -> Result<MessageNumber, ParseError> {
    match args {
        [message] => message_number(message),
        [] => Err(ParseError::BadArguments("missing message number")),
        _ => Err(ParseError::BadArguments("too many arguments")),
    }
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn message_number(text: &str) -> Result<MessageNumber, ParseError> {
    if !all_digits(text) {
        return Err(ParseError::BadArguments("invalid message number"));
    }
    // Digits only, so the one failure left is overflow: no such message can exist,
    // but the syntax is fine, so map it past any real message.
    Ok(text.parse().unwrap_or(MessageNumber::MAX))
}

fn line_count(text: &str) -> Result<usize, ParseError> {
    if !all_digits(text) {
        return Err(ParseError::BadArguments("invalid line count"));
    }
    Ok(text.parse().unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(line: &[u8]) -> &'static str {
        match parse(line) {
            Err(ParseError::BadArguments(why)) => why,
            other => panic!("expected bad arguments for {line:?}, got {other:?}"),
        }
    }

    #[test]
    fn simple_commands_any_case() {
        assert_eq!(parse(b"CAPA"), Ok(Command::Capa));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
        assert_eq!(parse(b"NoOp"), Ok(Command::Noop));
        assert_eq!(parse(b"RSET"), Ok(Command::Rset));
        assert_eq!(parse(b"stat "), Ok(Command::Stat));
    }

    #[test]
    fn no_arg_commands_reject_arguments() {
        assert_eq!(bad(b"STAT 1"), "this command takes no arguments");
        assert_eq!(bad(b"QUIT now"), "this command takes no arguments");
    }

    #[test]
    fn user_and_pass() {
        assert_eq!(parse(b"USER alice"), Ok(Command::User("alice".into())));
        assert_eq!(bad(b"USER"), "missing user name");
        assert_eq!(bad(b"USER a b"), "too many arguments");
        // PASS keeps spaces, including leading and trailing ones, as typed.
        assert_eq!(
            parse(b"PASS  my secret "),
            Ok(Command::Pass(" my secret ".into()))
        );
        assert_eq!(bad(b"PASS"), "missing password");
        assert_eq!(bad(b"PASS "), "missing password");
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse(b"AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial_response: None
            })
        );
        assert_eq!(
            parse(b"auth plain"),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: None
            })
        );
        assert_eq!(
            parse(b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(bad(b"AUTH PLAIN a b"), "too many arguments");
    }

    #[test]
    fn message_number_commands() {
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"UIDL"), Ok(Command::Uidl(None)));
        assert_eq!(parse(b"uidl 12"), Ok(Command::Uidl(Some(12))));
        assert_eq!(parse(b"RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(parse(b"DELE 2"), Ok(Command::Dele(2)));
        assert_eq!(
            parse(b"TOP 1 10"),
            Ok(Command::Top {
                message: 1,
                body_lines: 10
            })
        );
        assert_eq!(
            parse(b"TOP 1 99999999999999999999999"),
            Ok(Command::Top {
                message: 1,
                body_lines: usize::MAX
            })
        );
        assert_eq!(
            parse(b"RETR 99999999999999999999999"),
            Ok(Command::Retr(usize::MAX))
        );
    }

    #[test]
    fn bad_message_numbers() {
        assert_eq!(bad(b"RETR"), "missing message number");
        assert_eq!(bad(b"RETR x"), "invalid message number");
        assert_eq!(bad(b"RETR -1"), "invalid message number");
        assert_eq!(bad(b"RETR +1"), "invalid message number");
        assert_eq!(bad(b"DELE 1 2"), "too many arguments");
        assert_eq!(bad(b"LIST 1 2"), "too many arguments");
        assert_eq!(bad(b"TOP 1"), "usage: TOP msg lines");
        assert_eq!(bad(b"TOP 1 x"), "invalid line count");
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(parse(b""), Err(ParseError::Unknown));
        assert_eq!(parse(b" STAT"), Err(ParseError::Unknown));
        assert_eq!(parse(b"HELO x"), Err(ParseError::Unknown));
        assert_eq!(parse(b"APOP a b"), Err(ParseError::Unknown));
        assert_eq!(parse(b"STATS"), Err(ParseError::Unknown));
        assert_eq!(parse(b"\xff\xfe\x00"), Err(ParseError::Unknown));
        assert_eq!(parse(b"ST\x00T"), Err(ParseError::Unknown));
    }

    #[test]
    fn bad_bytes_in_arguments() {
        assert_eq!(bad(b"USER \xffalice"), "argument is not valid UTF-8");
        assert_eq!(bad(b"USER al\x00ice"), "control character in argument");
        assert_eq!(bad(b"PASS a\rb"), "control character in argument");
    }
}
