//! The crate's error type: everything that can go wrong on the host side of a plugin.

/// What went wrong loading, starting or driving a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wasmtime refused the engine configuration, the module, or an instantiation.
    #[error("wasm: {0:#}")]
    Wasm(wasmtime::Error),
    /// The module exports none of the proxy-wasm ABI version markers.
    #[error("module exports no proxy_abi_version_* marker (0_2_1, 0_2_0 or 0_1_0)")]
    UnknownAbi,
    /// The guest trapped (or hit its deadline or memory cap) in a callback.
    #[error("plugin trapped in {callback}: {message}")]
    Trap {
        /// The callback that was running.
        callback: &'static str,
        /// Wasmtime's description of the trap.
        message: String,
    },
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false.
    #[error("plugin rejected its {what} configuration")]
    Rejected {
        /// `vm` or `plugin`.
        what: &'static str,
    },
    /// The plugin failed earlier and its failure policy keeps it out of the way.
    #[error("plugin is not running: {0}")]
    Failed(String),
    /// A call on a stream that does not exist or has ended.
    #[error("no open stream {0}")]
    NoStream(u32),
    /// A callout token the plugin never dispatched, or one already answered.
    #[error("no pending callout with token {0}")]
    NoCallout(u32),
    /// An expectation of a test or scenario did not hold.
    #[error("expectation failed: {0}")]
    Expectation(String),
    /// A scenario or host setting that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<wasmtime::Error> for Error {
    fn from(e: wasmtime::Error) -> Self {
        Error::Wasm(e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
