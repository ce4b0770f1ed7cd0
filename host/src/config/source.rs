//! Source files and `file:line` errors.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration error at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the error concerns the whole file.
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn at(file: &Path, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: Some(line),
            message: message.into(),
        }
    }

    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A file's text, kept to turn byte offsets into line numbers.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Largest configuration file read (1 MiB): far above any real
/// registration, small enough that a mistaken path cannot eat memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl SourceFile {
    /// Reads a configuration file without ever blocking on it: the file is
    /// opened with `O_NONBLOCK` (a FIFO opens at once instead of waiting
    /// for a writer) and checked with `fstat` before anything is read, so a
    /// FIFO, a device or a socket is refused as "not a regular file" and a
    /// file over [`MAX_CONFIG_BYTES`] as "too large".
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(ConfigError::file(path, "not a regular file"));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::file(
                path,
                format!("too large ({} bytes, limit {MAX_CONFIG_BYTES})", meta.len()),
            ));
        }
        // The file may grow between fstat and read: read one byte more than
        // the limit to notice.
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::file(
                path,
                format!("too large (more than {MAX_CONFIG_BYTES} bytes, limit {MAX_CONFIG_BYTES})"),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| ConfigError::file(path, format!("not UTF-8: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }

    pub fn from_text(path: &Path, text: &str) -> Self {
        Self {
            path: path.to_owned(),
            text: text.to_owned(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, self.line_of(span.start), message)
    }

    /// Deserializes TOML, mapping a syntax or shape error to its line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().trim_end_matches('.').to_owned();
            match e.span() {
                Some(span) => self.error_at(span, message),
                None => ConfigError::file(&self.path, message),
            }
        })
    }
}
