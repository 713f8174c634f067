//! The crate's one error type.

/// Everything that can go wrong when reading the filter's configuration or a telemetry report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not well-formed JSON or does not match the schema.
    #[error("filter configuration: {0}")]
    ConfigSyntax(#[from] serde_json::Error),
    /// The configuration parsed but a field holds a value that cannot work.
    #[error("filter configuration: {field}: {reason}")]
    ConfigInvalid {
        /// Path of the offending field, for example `groups[1].weight`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes are not a protobuf telemetry report.
    #[error("telemetry report: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The report decoded but breaks an invariant of the schema.
    #[error("telemetry report: {field}: {reason}")]
    ReportInvalid {
        /// Path of the offending field, for example `clusters[0].latency.keys`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::ConfigInvalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn report(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::ReportInvalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
