//! The error type of the file API. Every case maps to one `ErrorCode` and so to one errno
//! (`ErrorCode::errno` is the single mapping); FUSE replies with `errno()`, the shell tools print
//! the message and exit non-zero.

use crate::config::ConfigError;
use crate::net::NetError;
use pond_proto::{ErrorCode, PondError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A failure reported by meta or storage, or decided here with a code (ENOENT, EIO…).
    #[error(transparent)]
    Pond(#[from] PondError),
    /// The cluster file could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A local file of `put`/`get` failed.
    #[error("{path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Pond(PondError::new(code, message))
    }

    /// The code callers act on.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Pond(e) => e.code,
            ClientError::Config(_) => ErrorCode::InvalidArgument,
            ClientError::Local { source, .. } => io_code(source),
        }
    }

    /// The errno a POSIX caller sees.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Local { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            other => other.code().errno(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }

    /// As a wire error (for code that must hand a `PondError` on).
    pub fn into_pond(self) -> PondError {
        match self {
            ClientError::Pond(e) => e,
            other => PondError::new(other.code(), other.to_string()),
        }
    }
}

impl From<NetError> for ClientError {
    fn from(e: NetError) -> ClientError {
        ClientError::Pond(e.into_pond())
    }
}

impl From<ErrorCode> for ClientError {
    fn from(code: ErrorCode) -> ClientError {
        ClientError::Pond(PondError::new(code, code.as_str()))
    }
}

impl From<ClientError> for std::io::Error {
    fn from(e: ClientError) -> std::io::Error {
        match e {
            ClientError::Local { source, .. } => source,
            other => std::io::Error::from_raw_os_error(other.errno()),
        }
    }
}

fn io_code(e: &std::io::Error) -> ErrorCode {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => ErrorCode::NotFound,
        PermissionDenied => ErrorCode::AccessDenied,
        AlreadyExists => ErrorCode::Exists,
        InvalidInput | InvalidData => ErrorCode::InvalidArgument,
        TimedOut => ErrorCode::Timeout,
        _ => ErrorCode::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_follows_the_code() {
        let cases = [
            (ErrorCode::NotFound, libc::ENOENT),
            (ErrorCode::Exists, libc::EEXIST),
            (ErrorCode::NotEmpty, libc::ENOTEMPTY),
            (ErrorCode::IsDir, libc::EISDIR),
            (ErrorCode::NotDir, libc::ENOTDIR),
            (ErrorCode::NameTooLong, libc::ENAMETOOLONG),
            (ErrorCode::NoSpace, libc::ENOSPC),
            (ErrorCode::CrossDevice, libc::EXDEV),
            (ErrorCode::NotSupported, libc::EOPNOTSUPP),
            (ErrorCode::StaleChainVersion, libc::EIO),
            (ErrorCode::Unavailable, libc::EIO),
            (ErrorCode::Timeout, libc::ETIMEDOUT),
        ];
        for (code, errno) in cases {
            assert_eq!(ClientError::from(code).errno(), errno, "{code:?}");
        }
    }

    #[test]
    fn net_errors_keep_remote_codes() {
        let e: ClientError =
            NetError::Remote(PondError::new(ErrorCode::TargetNotServing, "x")).into();
        assert_eq!(e.code(), ErrorCode::TargetNotServing);
        assert!(e.is_retryable());
        let e: ClientError = NetError::Closed.into();
        assert_eq!(e.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn local_errors_keep_their_errno() {
        let e = ClientError::Local {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(e.errno(), libc::EACCES);
        assert_eq!(e.code(), ErrorCode::AccessDenied);
        let io: std::io::Error = ClientError::from(ErrorCode::NotFound).into();
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
    }
}
