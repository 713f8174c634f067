//! The example upstream's library: the profile math ([`profile`]) the `example-upstream`
//! binary serves by, and the scenario format ([`scenario`]) that `cargo xtask demo` and
//! `cargo xtask bench migration` run.
//!
//! Both are plain data and pure functions: time is a parameter (scenario seconds), randomness
//! comes from a seed, and nothing here reads a clock or does I/O except [`scenario::load`] and
//! [`profile::load`], which read the file they are given.

pub mod locate;
pub mod profile;
pub mod scenario;

use std::path::PathBuf;

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong reading or checking a profile or a scenario. Every message starts with the
/// place: `FILE:LINE:COLUMN`, `FILE`, or the origin given (`--profile-json`, a request body).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML or JSON, or does not fit the format (an unknown field, a
    /// wrong type, a missing required field).
    #[error("{place}: {message}")]
    Parse {
        /// `FILE:LINE:COLUMN` (or the origin) of the problem.
        place: String,
        /// What the parser said.
        message: String,
    },
    /// The text parsed, but a value is out of range or inconsistent with another.
    #[error("{place}: {field}: {message}")]
    Invalid {
        /// `FILE:LINE:COLUMN` of the field when it can be found, else the file (or origin).
        place: String,
        /// The field's path, e.g. `groups[0].profile.effects[1].at_s`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// The field a validation error is about, if it is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A validation failure before it is placed in a file: the field's path and the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error for a field one level down, under `prefix`.
    pub(crate) fn under(self, prefix: &str) -> FieldError {
        let field = if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        FieldError { field, ..self }
    }

    /// The error placed in `text` from `origin`: at the field's line when it can be found.
    pub(crate) fn place(self, origin: &str, text: Option<&str>) -> Error {
        let place = match text.and_then(|t| locate::locate(t, &self.field)) {
            Some((line, column)) => format!("{origin}:{line}:{column}"),
            None => origin.to_string(),
        };
        Error::Invalid {
            place,
            field: self.field,
            message: self.message,
        }
    }
}

/// Turns a YAML parse error into [`Error::Parse`] at `origin:LINE:COLUMN`.
pub(crate) fn yaml_error(origin: &str, e: serde_yaml_ng::Error) -> Error {
    let place = match e.location() {
        Some(l) => format!("{origin}:{}:{}", l.line(), l.column()),
        None => origin.to_string(),
    };
    // serde_yaml_ng appends " at line L column C" to the message; the place says it already.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    Error::Parse { place, message }
}

/// Turns a JSON parse error into [`Error::Parse`] at `origin:LINE:COLUMN`.
pub(crate) fn json_error(origin: &str, e: serde_json::Error) -> Error {
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    Error::Parse {
        place: format!("{origin}:{}:{}", e.line(), e.column()),
        message,
    }
}
