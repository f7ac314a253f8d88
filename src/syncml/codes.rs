//! SyncML DM status codes and alert codes, carrying the numbers of OMA-TS-DM-RepPro 1.2
//! (see OMA-DM-NOTES.md §2). Pure.

/// Status codes a DM command can be answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum StatusCode {
    InProgress = 101,
    Ok = 200,
    /// Accepted for asynchronous processing (SCOMO Exec: the result comes in a Generic Alert).
    Accepted = 202,
    AuthenticationAccepted = 212,
    /// A large-object chunk was accepted and buffered.
    ChunkAccepted = 213,
    OperationCancelled = 214,
    NotExecuted = 215,
    AtomicRollbackOk = 216,
    BadRequest = 400,
    InvalidCredentials = 401,
    Forbidden = 403,
    NotFound = 404,
    CommandNotAllowed = 405,
    OptionalFeatureNotSupported = 406,
    MissingCredentials = 407,
    IncompleteCommand = 412,
    RequestEntityTooLarge = 413,
    UriTooLong = 414,
    UnsupportedMediaType = 415,
    RequestedSizeTooBig = 416,
    AlreadyExists = 418,
    DeviceFull = 420,
    /// A reassembled large object does not have the announced size.
    SizeMismatch = 424,
    PermissionDenied = 425,
    CommandFailed = 500,
    ProcessingError = 506,
    AtomicFailed = 507,
    AtomicRollbackFailed = 516,
}

impl StatusCode {
    const ALL: [StatusCode; 28] = [
        Self::InProgress,
        Self::Ok,
        Self::Accepted,
        Self::AuthenticationAccepted,
        Self::ChunkAccepted,
        Self::OperationCancelled,
        Self::NotExecuted,
        Self::AtomicRollbackOk,
        Self::BadRequest,
        Self::InvalidCredentials,
        Self::Forbidden,
        Self::NotFound,
        Self::CommandNotAllowed,
        Self::OptionalFeatureNotSupported,
        Self::MissingCredentials,
        Self::IncompleteCommand,
        Self::RequestEntityTooLarge,
        Self::UriTooLong,
        Self::UnsupportedMediaType,
        Self::RequestedSizeTooBig,
        Self::AlreadyExists,
        Self::DeviceFull,
        Self::SizeMismatch,
        Self::PermissionDenied,
        Self::CommandFailed,
        Self::ProcessingError,
        Self::AtomicFailed,
        Self::AtomicRollbackFailed,
    ];

    /// The spec's number.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The enum for a number, if it is one we know.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.code() == code)
    }

    /// 2xx.
    pub fn is_success(code: u16) -> bool {
        (200..300).contains(&code)
    }
}

/// Alert codes (the `Data` of an `Alert`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum AlertCode {
    Display = 1100,
    Confirm = 1101,
    TextInput = 1102,
    SingleChoice = 1103,
    MultipleChoice = 1104,
    /// Package 1 of a server-initiated session.
    ServerInitiated = 1200,
    /// Package 1 of a client-initiated session.
    ClientInitiated = 1201,
    /// "Send the next message" of a package split over several messages.
    NextMessage = 1222,
    SessionAbort = 1223,
    /// A large object's remaining chunks will not come; the partial object is dropped.
    EndOfData = 1225,
    /// Generic Alert: asynchronous reports such as SCOMO OperationComplete.
    Generic = 1226,
}

impl AlertCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<Self> {
        [
            Self::Display,
            Self::Confirm,
            Self::TextInput,
            Self::SingleChoice,
            Self::MultipleChoice,
            Self::ServerInitiated,
            Self::ClientInitiated,
            Self::NextMessage,
            Self::SessionAbort,
            Self::EndOfData,
            Self::Generic,
        ]
        .into_iter()
        .find(|a| a.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for s in StatusCode::ALL {
            assert_eq!(StatusCode::from_code(s.code()), Some(s));
        }
        assert_eq!(StatusCode::SizeMismatch.code(), 424);
        assert_eq!(StatusCode::from_code(999), None);
        assert_eq!(AlertCode::from_code(1226), Some(AlertCode::Generic));
        assert_eq!(AlertCode::ClientInitiated.code(), 1201);
    }
}
