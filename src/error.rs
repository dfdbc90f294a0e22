//! One error type for the library: every failure a user can cause names what was expected
//! and what was found.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No adapter, or an adapter that cannot do the work.
    Adapter(String),
    /// The device could not be created or reported an error.
    Device(String),
    /// A configuration value out of range or inconsistent.
    Config(String),
    /// A tensor with the wrong shape, dtype or contents.
    Tensor {
        name: String,
        expected: String,
        found: String,
    },
    /// A tensor that a file should hold is missing.
    MissingTensor(String),
    /// A file that could not be parsed.
    Format(String),
    Io(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn tensor(name: impl Into<String>, expected: impl Into<String>, found: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Adapter(m) => write!(f, "adapter: {m}"),
            Error::Device(m) => write!(f, "device: {m}"),
            Error::Config(m) => write!(f, "config: {m}"),
            Error::Tensor {
                name,
                expected,
                found,
            } => write!(f, "tensor `{name}`: expected {expected}, found {found}"),
            Error::MissingTensor(name) => write!(f, "tensor `{name}` is missing"),
            Error::Format(m) => write!(f, "format: {m}"),
            Error::Io(e) => write!(f, "io: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
