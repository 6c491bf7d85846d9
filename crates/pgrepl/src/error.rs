//! The replication connection's error type.

use std::fmt;

/// An `ErrorResponse` from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC`.
    pub severity: String,
    /// SQLSTATE, e.g. `42704`.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server {} (SQLSTATE {}): {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// SQLSTATE codes the crate's users commonly act on.
pub mod sqlstate {
    /// `undefined_object`: e.g. the replication slot does not exist.
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// `duplicate_object`: e.g. the replication slot already exists.
    pub const DUPLICATE_OBJECT: &str = "42710";
    /// `object_in_use`: e.g. the slot is active for another process.
    pub const OBJECT_IN_USE: &str = "55006";
    /// `object_not_in_prerequisite_state`: e.g. the slot was invalidated, wal_level too low.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    /// `invalid_password`.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// `invalid_authorization_specification` (e.g. no pg_hba.conf entry).
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// `insufficient_privilege`.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
}

/// Why a replication connection operation failed. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The connection string or settings are invalid.
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// The TCP or Unix socket connection could not be opened.
    #[error("could not connect to {target}: {source} (is the server running and accepting connections there?)")]
    Connect {
        /// `host:port` or socket path.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("connecting to {target} timed out after {secs} s")]
    ConnectTimeout {
        /// `host:port` or socket path.
        target: String,
        /// The timeout.
        secs: u64,
    },
    /// An I/O error on an established connection.
    #[error("replication connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS could not be set up.
    #[error("TLS error: {0}")]
    Tls(String),
    /// Authentication failed on our side (the server's refusals are [`ReplError::Server`]).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server reported an error.
    #[error("{0}")]
    Server(ServerError),
    /// The server closed the connection.
    #[error("the server closed the replication connection")]
    Closed,
    /// The server is too old or lacks a needed feature.
    #[error("unsupported server: {0}")]
    Unsupported(String),
}

impl ReplError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The replication slot named in the command does not exist.
    pub fn is_slot_missing(&self) -> bool {
        self.code() == Some(sqlstate::UNDEFINED_OBJECT)
    }

    /// The replication slot is active for another process.
    pub fn is_slot_in_use(&self) -> bool {
        self.code() == Some(sqlstate::OBJECT_IN_USE)
    }

    /// The slot already exists.
    pub fn is_duplicate(&self) -> bool {
        self.code() == Some(sqlstate::DUPLICATE_OBJECT)
    }

    /// A connection-level failure worth retrying after a pause: the server could not be
    /// reached, the connection broke, or the server is shutting down or starting up, or has
    /// no connection slots left.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplError::Connect { .. } | ReplError::ConnectTimeout { .. } | ReplError::Io(_) | ReplError::Closed => true,
            ReplError::Server(e) => {
                e.code.starts_with("08") || matches!(e.code.as_str(), "57P01" | "57P02" | "57P03" | "53300" | "40001")
            }
            _ => false,
        }
    }
}
