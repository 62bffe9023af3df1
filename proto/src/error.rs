//! Error codes shared by every role, and their mapping to errno (one function, `errno`) and
//! to gRPC status (one function, `to_status` / `from_status`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a caller acts on it. POSIX-visible codes map to one errno each;
/// the rest are cluster-internal and tell the caller whether and where to retry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ErrorCode {
    // --- POSIX namespace errors ---
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    InvalidArgument,
    NameTooLong,
    NotPermitted,
    AccessDenied,
    NoSpace,
    TooManyLinks,
    Loop,
    CrossDevice,
    Busy,
    StaleHandle,
    FileTooBig,
    NotSupported,
    Io,
    // --- cluster-internal ---
    /// This meta replica is not the Raft leader; retry on the hinted leader.
    NotLeader,
    /// The request's chain version does not match the replica's; refresh routing, retry.
    StaleChainVersion,
    /// The target does not serve this request in its current state; pick another replica.
    TargetNotServing,
    /// A chunk update arrived with a version gap.
    VersionGap,
    /// Stored data failed its CRC32C check.
    Checksum,
    /// Missing or wrong cluster token.
    Unauthenticated,
    /// A deadline expired.
    Timeout,
    /// The peer cannot be reached or is shutting down; retry within budget.
    Unavailable,
    /// A malformed request (bad frame, bad encoding, out-of-range field).
    Malformed,
    /// A bug or an unexpected failure inside the server.
    Internal,
    // --- POSIX, added later (appended: codes are encoded by position) ---
    /// No extended attribute by that name (ENODATA).
    NoData,
    /// A name or value outside what the operation accepts (ERANGE).
    OutOfRange,
    /// An argument larger than allowed (E2BIG), e.g. an extended attribute's value.
    TooBig,
}

impl ErrorCode {
    /// The errno a POSIX filesystem returns for this failure.
    pub fn errno(self) -> i32 {
        use ErrorCode::*;
        match self {
            NotFound => libc::ENOENT,
            Exists => libc::EEXIST,
            NotDir => libc::ENOTDIR,
            IsDir => libc::EISDIR,
            NotEmpty => libc::ENOTEMPTY,
            InvalidArgument | Malformed => libc::EINVAL,
            NameTooLong => libc::ENAMETOOLONG,
            NotPermitted => libc::EPERM,
            AccessDenied | Unauthenticated => libc::EACCES,
            NoSpace => libc::ENOSPC,
            TooManyLinks => libc::EMLINK,
            Loop => libc::ELOOP,
            CrossDevice => libc::EXDEV,
            Busy => libc::EBUSY,
            StaleHandle => libc::ESTALE,
            FileTooBig => libc::EFBIG,
            NotSupported => libc::EOPNOTSUPP,
            Timeout => libc::ETIMEDOUT,
            NoData => libc::ENODATA,
            OutOfRange => libc::ERANGE,
            TooBig => libc::E2BIG,
            Io | NotLeader | StaleChainVersion | TargetNotServing | VersionGap | Checksum
            | Unavailable | Internal => libc::EIO,
        }
    }

    /// Whether a caller may retry the same request (possibly elsewhere) within its budget.
    pub fn is_retryable(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            NotLeader | StaleChainVersion | TargetNotServing | Timeout | Unavailable | Checksum
        )
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            NotFound => "no such file or directory",
            Exists => "file exists",
            NotDir => "not a directory",
            IsDir => "is a directory",
            NotEmpty => "directory not empty",
            InvalidArgument => "invalid argument",
            NameTooLong => "file name too long",
            NotPermitted => "operation not permitted",
            AccessDenied => "permission denied",
            NoSpace => "no space left on device",
            TooManyLinks => "too many links",
            Loop => "too many levels of symbolic links",
            CrossDevice => "invalid cross-device link",
            Busy => "device or resource busy",
            StaleHandle => "stale file handle",
            FileTooBig => "file too large",
            NotSupported => "operation not supported",
            Io => "input/output error",
            NotLeader => "not the metadata leader",
            StaleChainVersion => "stale chain version",
            TargetNotServing => "target not serving",
            VersionGap => "chunk version gap",
            Checksum => "checksum mismatch",
            Unauthenticated => "missing or wrong cluster token",
            Timeout => "deadline expired",
            Unavailable => "unavailable",
            Malformed => "malformed request",
            Internal => "internal error",
            NoData => "no data available",
            OutOfRange => "numerical result out of range",
            TooBig => "argument list too long",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it crosses the wire: a code callers match on, plus human context.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PondError {
    pub code: ErrorCode,
    pub message: String,
    /// For `NotLeader`: the node id of the leader if known.
    pub leader_hint: Option<u64>,
}

impl PondError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> PondError {
        PondError {
            code,
            message: message.into(),
            leader_hint: None,
        }
    }

    pub fn errno(&self) -> i32 {
        self.code.errno()
    }
}

impl From<ErrorCode> for PondError {
    fn from(code: ErrorCode) -> PondError {
        PondError {
            code,
            message: String::new(),
            leader_hint: None,
        }
    }
}

/// gRPC status details carry the postcard-encoded `PondError`, so codes survive the trip.
pub fn to_status(e: &PondError) -> tonic::Status {
    let grpc = match e.code {
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Exists => tonic::Code::AlreadyExists,
        ErrorCode::InvalidArgument | ErrorCode::Malformed | ErrorCode::NameTooLong => {
            tonic::Code::InvalidArgument
        }
        ErrorCode::Internal => tonic::Code::Internal,
        _ => tonic::Code::FailedPrecondition,
    };
    let details = postcard::to_stdvec(e).unwrap_or_default();
    tonic::Status::with_details(grpc, e.to_string(), details.into())
}

/// Inverse of `to_status`; statuses not produced by pond map by their gRPC code.
pub fn from_status(s: &tonic::Status) -> PondError {
    if let Ok(e) = postcard::from_bytes::<PondError>(s.details()) {
        return e;
    }
    let code = match s.code() {
        tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
        tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            ErrorCode::Unavailable
        }
        tonic::Code::InvalidArgument => ErrorCode::Malformed,
        _ => ErrorCode::Internal,
    };
    PondError::new(code, s.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_roundtrip_keeps_code_and_hint() {
        let mut e = PondError::new(ErrorCode::NotLeader, "go elsewhere");
        e.leader_hint = Some(3);
        let back = from_status(&to_status(&e));
        assert_eq!(back, e);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(ErrorCode::NotEmpty.errno(), libc::ENOTEMPTY);
        assert_eq!(ErrorCode::NameTooLong.errno(), libc::ENAMETOOLONG);
        assert_eq!(ErrorCode::NoSpace.errno(), libc::ENOSPC);
        assert_eq!(ErrorCode::Unavailable.errno(), libc::EIO);
    }

    #[test]
    fn foreign_status_maps_by_code() {
        let s = tonic::Status::unavailable("conn refused");
        assert_eq!(from_status(&s).code, ErrorCode::Unavailable);
    }
}
