//! `porcupine load`: a load generator for any SMTP + POP3 server, fast enough to find
//! the server's limit, that checks every message end to end.
//!
//! Every message carries `X-Porcupine-Load: <run>-<id> <hash of the body>`; every
//! retrieved message is unstuffed, parsed and checked. The report counts sent,
//! acknowledged, failed, retrieved, corrupt, missing and duplicate messages and gives
//! msgs/s and HDR latency percentiles per protocol and phase; a corrupt, missing or
//! duplicate message is a failure.
//!
//! Modules:
//! - [`args`]: the flags ([`LoadArgs`]) and the validated [`Plan`]
//! - [`run`]: the phases of a mode, the tally, the verdict, the output files
//! - [`schedule`]: message ids, end of the send phase, open-loop due times, live counters
//! - [`smtp_client`]: one SMTP session (MAIL/RCPT/DATA loops, optional PIPELINING)
//! - [`pop_client`]: one POP3 drain session (STAT/UIDL/LIST, RETR + verify, DELE, QUIT)
//! - [`conn`]: timed connect/write and a bounded line reader
//! - [`message`]: build a message, hash, dot-stuffing and unstuffing, verification
//! - [`size`]: size distributions; [`rng`]: the per-session generator
//! - [`report`]: figures, table, JSON; [`calibrate`]: `--calibrate-out` estimates
//! - [`error`]: [`LoadError`] (the run) and [`ConnError`] (one exchange)
#![warn(missing_docs)]

pub mod args;
pub mod calibrate;
pub mod conn;
pub mod error;
pub mod message;
pub mod pop_client;
pub mod report;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod size;
pub mod smtp_client;

pub use args::{LoadArgs, Mode, Plan};
pub use error::{ConnError, LoadError};
pub use report::Report;
pub use run::{execute, run};

/// Parse `porcupine load` flags from words (the first is the program name), for tests
/// and embedders.
pub fn parse_args<I, T>(words: I) -> Result<LoadArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadArgs,
    }
    <Wrapper as clap::Parser>::try_parse_from(words).map(|w| w.args)
}
