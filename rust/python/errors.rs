//! The error adaptor: each core `Error` becomes the `llama2rs.errors` class of the same
//! meaning (all subclasses of `llama2rs.Llama2rsError`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::Error;

/// Raise the `llama2rs.errors` class that means the same as `error`.
pub(crate) fn to_pyerr(error: Error) -> PyErr {
    let class_name = match &error {
        Error::ModelFile { .. } => "ModelFileError",
        Error::Config(_) => "ConfigError",
        Error::InvalidToken { .. } => "InvalidTokenError",
        Error::ContextLength { .. } => "ContextLengthError",
        Error::Argument(_) => "ArgumentError",
        Error::OutOfMemory { .. } => "OutOfMemoryError",
        Error::NonFinite { .. } => "ModelFileError",
    };
    library_error(class_name, error.to_string())
}

/// Raise `llama2rs.errors.<class_name>(message)` (a RuntimeError if the module cannot be read).
pub(crate) fn library_error(class_name: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("llama2rs.errors")
            .and_then(|module| module.getattr(class_name))
            .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message),
            Err(_) => PyRuntimeError::new_err(message),
        }
    })
}
