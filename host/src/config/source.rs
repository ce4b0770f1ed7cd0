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

/// Largest configuration file read, to keep a mistaken path from eating memory.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl SourceFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::file(
                path,
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
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
