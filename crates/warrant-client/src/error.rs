//! What can go wrong talking to intake, with the API's own error code when
//! intake gave one (`{"error":{"code","message"}}`, docs/contract.md §6.1).

use crate::key::KeyError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{url:?} is not an intake URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{0}")]
    Input(String),
    #[error("intake at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Intake answered with its error shape.
    #[error("intake refused ({status} {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Intake (or whatever answered) sent something that is not Warrant's
    /// answer to this request.
    #[error("unexpected answer from {url} ({status}): {detail}")]
    Unexpected {
        url: String,
        status: u16,
        detail: String,
    },
}

/// The class of a failure, for callers that act on it (the CLI's exit
/// codes): nothing here is a decision, only who has to do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input was wrong before anything was sent.
    Usage,
    /// Who the caller is could not be established: an unusable key file,
    /// or intake refused the key, signature, session or token (401, 403).
    Auth,
    /// Intake understood the request and refused it (other 4xx).
    Refused,
    /// Intake could not be reached or could not answer (timeouts, 5xx):
    /// trying again later may succeed.
    Unavailable,
    /// Anything else: an answer that is not Warrant's.
    Other,
}

impl Error {
    /// The API's error code (`unknown_key`, `digest_mismatch`, ...), when
    /// intake answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Key(KeyError::Exists { .. }) | Error::Url { .. } | Error::Input(_) => {
                ErrorKind::Usage
            }
            Error::Key(_) => ErrorKind::Auth,
            Error::Unreachable { .. } => ErrorKind::Unavailable,
            Error::Api { status, .. } => match status {
                401 | 403 => ErrorKind::Auth,
                500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::Refused,
            },
            Error::Unexpected { status, .. } if *status >= 500 => ErrorKind::Unavailable,
            Error::Unexpected { .. } => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> Error {
        Error::Api {
            status,
            code: "c".to_owned(),
            message: "m".to_owned(),
        }
    }

    #[test]
    fn statuses_fall_into_the_classes_a_caller_acts_on() {
        assert_eq!(api(401).kind(), ErrorKind::Auth);
        assert_eq!(api(403).kind(), ErrorKind::Auth);
        assert_eq!(api(404).kind(), ErrorKind::Refused);
        assert_eq!(api(409).kind(), ErrorKind::Refused);
        assert_eq!(api(503).kind(), ErrorKind::Unavailable);
        assert_eq!(
            Error::Unreachable {
                url: "u".to_owned(),
                reason: "r".to_owned()
            }
            .kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            Error::Key(KeyError::Exists { path: "k".into() }).kind(),
            ErrorKind::Usage
        );
        assert_eq!(
            Error::Key(KeyError::Mismatch { path: "k".into() }).kind(),
            ErrorKind::Auth
        );
        assert_eq!(api(401).code(), Some("c"));
    }
}
