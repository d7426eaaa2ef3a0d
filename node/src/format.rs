//! The data directory's format version: written once, checked before anything else
//! opens the directory, so a binary never reads (or damages) a newer layout.

use std::path::Path;

/// The data directory format this binary writes and reads.
pub const DATA_FORMAT: u32 = 1;
/// The file in the data directory naming its format.
pub const FORMAT_FILE: &str = "FORMAT";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer release.
    #[error(
        "data directory {dir} has format {found}, newer than the format {DATA_FORMAT} this porcupine ({version}) reads: refusing to start, nothing was changed; run the release that wrote it"
    )]
    Newer {
        /// The directory.
        dir: String,
        /// Its format.
        found: u32,
        /// This binary's version.
        version: &'static str,
    },
    /// The format file is not one this project writes.
    #[error("data directory {dir}: unreadable {FORMAT_FILE} file ({text:?}); refusing to start")]
    Unreadable {
        /// The directory.
        dir: String,
        /// What the file holds.
        text: String,
    },
    /// The file could not be read or written.
    #[error("data directory {dir}: {FORMAT_FILE}: {source}")]
    Io {
        /// The directory.
        dir: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// Check `dir`'s format, recording [`DATA_FORMAT`] in a directory that has none yet
/// (new, or written before formats were recorded, which is format 1).
pub fn check(dir: &Path) -> Result<(), FormatError> {
    let path = dir.join(FORMAT_FILE);
    let io = |source| FormatError::Io {
        dir: dir.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = text
                .trim()
                .strip_prefix("porcupine data format ")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| FormatError::Unreadable {
                    dir: dir.display().to_string(),
                    text: text.chars().take(80).collect(),
                })?;
            if found > DATA_FORMAT {
                return Err(FormatError::Newer {
                    dir: dir.display().to_string(),
                    found,
                    version: env!("CARGO_PKG_VERSION"),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
            std::fs::write(&tmp, format!("porcupine data format {DATA_FORMAT}\n")).map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text, format!("porcupine data format {DATA_FORMAT}\n"));
        check(dir.path()).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("porcupine data format {}\n", DATA_FORMAT + 1);
        std::fs::write(dir.path().join(FORMAT_FILE), &body).unwrap();
        let e = check(dir.path()).unwrap_err();
        assert!(e.to_string().contains("refusing to start"), "{e}");
        let after = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(after, body);
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "hello").unwrap();
        assert!(matches!(
            check(dir.path()),
            Err(FormatError::Unreadable { .. })
        ));
    }
}
