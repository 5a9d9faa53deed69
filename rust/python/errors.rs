//! The error adaptor: each core `Error` becomes the `llama2rs.errors` class of the same
//! meaning (all subclasses of `llama2rs.Llama2rsError`), and a panic in core code becomes
//! `llama2rs.InternalError` (`guarded`), never pyo3's `PanicException` (a `BaseException`,
//! which `except Exception` does not catch).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

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

/// Run `body` (a binding entry point's work: core code, with or without the GIL), turning a
/// panic that unwinds out of it into `llama2rs.InternalError` with the panic's message. A
/// panic in one of rayon's workers reaches here too: rayon resumes it in the caller of
/// `install`/`join`. Every entry point that runs core code goes through this one function.
pub(crate) fn guarded<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    // AssertUnwindSafe: after a panic the object it ran on may be half-updated; the error says
    // it is a bug, and nothing in it is memory-unsafe to use again (poisoned locks are
    // recovered where they are taken).
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(internal_error(payload.as_ref())))
}

/// `llama2rs.InternalError` for a panic's payload.
fn internal_error(payload: &(dyn Any + Send)) -> PyErr {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    library_error(
        "InternalError",
        format!("internal error in llama2rs (a bug: please report it, with the call that raised this): {message}"),
    )
}

/// Panic inside `guarded`, on this thread or in one of a rayon pool's workers, with or without
/// the GIL: exists only for the test that `guarded` turns each into `InternalError`
/// (tests/test_fuzz_regressions_rust.py).
#[pyfunction]
#[pyo3(signature = (message, in_pool = false))]
pub(crate) fn _panic_for_test(py: Python<'_>, message: String, in_pool: bool) -> PyResult<()> {
    guarded(|| {
        py.detach(|| {
            if in_pool {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of 2 threads");
                pool.install(|| rayon::join(|| (), || panic!("{message}")));
            } else {
                panic!("{message}");
            }
        });
        Ok(())
    })
}
