//! The PyO3 binding: converts types and errors, releases the GIL around compute, nothing more.
//! The Python package (`python/llama2rs`) builds the user-facing API on top of these classes.
//! `errors.rs` is the error adaptor (core errors and panics to `llama2rs.errors`), `model.rs`
//! the `Model` and `Session` classes, `batch.rs` the continuous-batching decoder, `bpe.rs` the
//! tokenizers' merging (byte-level BPE and llama2.c's score merging).

mod batch;
mod bpe;
mod errors;
mod model;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::kernels::Isa;
use model::{PyModel, PySession};

/// The kernel implementations this CPU can run, slowest first.
#[pyfunction]
fn available_kernels() -> Vec<&'static str> {
    Isa::available().into_iter().map(Isa::name).collect()
}

/// Memory read bandwidth in bytes/s: `n_threads` threads stream a buffer of `n_bytes`.
#[pyfunction]
#[pyo3(signature = (n_bytes = 1 << 30, n_threads = 1, repeats = 3))]
fn read_bandwidth(py: Python<'_>, n_bytes: usize, n_threads: usize, repeats: usize) -> f64 {
    py.detach(|| crate::membw::read_bandwidth(n_bytes, n_threads, repeats))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(available_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_panic_for_test, m)?)?;
    m.add_class::<PyModel>()?;
    m.add_class::<PySession>()?;
    m.add_class::<bpe::PyByteLevelBpe>()?;
    m.add_class::<bpe::PyScoreBpe>()?;
    m.add_class::<batch::PyBatchDecoder>()?;
    // The one statement of the config bounds (`config::LIMITS`) and of the kernel names.
    let limits = PyDict::new(m.py());
    for (name, max) in crate::config::LIMITS {
        limits.set_item(name, max)?;
    }
    m.add("CONFIG_LIMITS", limits)?;
    m.add("KERNEL_NAMES", PyTuple::new(m.py(), Isa::ALL.map(Isa::name))?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
