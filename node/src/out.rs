//! CLI output on stdout that ends the process quietly (exit 0) when the reader has gone
//! (`porcupine user list | head -5`): `println!` would panic on the broken pipe.

use std::io::Write;

/// Write one line to stdout; on a closed pipe exit at once with status 0, on any other
/// write error exit with status 1 after saying why on stderr.
pub fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "porcupine: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the CLI: formats, then [`line`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}
