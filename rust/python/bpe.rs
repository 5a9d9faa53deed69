//! `ByteLevelBpe`: the core's byte-level BPE tokenizer (`crate::bpe`) for
//! `llama2rs.bpe.ByteLevelTokenizer`, which reads the files and holds the API.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::{guarded, to_pyerr};
use crate::bpe::{ByteLevelBpe, Slicing};

#[pyclass(name = "ByteLevelBpe", module = "llama2rs._core", frozen)]
pub struct PyByteLevelBpe {
    inner: ByteLevelBpe,
}

#[pymethods]
impl PyByteLevelBpe {
    /// `ranks[i]`: the bytes of token i; `specials`: (text, id) after them; `pattern`: the
    /// pre-tokenizer regex; `slicing`: (chunk_chars, max_run) as Meta's Llama 3 encoder, or None.
    #[new]
    #[pyo3(signature = (ranks, specials, pattern, slicing = None))]
    fn new(
        py: Python<'_>,
        ranks: Vec<Vec<u8>>,
        specials: Vec<(String, u32)>,
        pattern: &str,
        slicing: Option<(usize, usize)>,
    ) -> PyResult<Self> {
        guarded(|| {
            let slicing = slicing.map(|(chunk_chars, max_run)| Slicing { chunk_chars, max_run });
            let inner = py.detach(|| ByteLevelBpe::new(ranks, specials, pattern, slicing)).map_err(to_pyerr)?;
            Ok(PyByteLevelBpe { inner })
        })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// Token ids of `text` (special tokens matched only with `allow_special`).
    #[pyo3(signature = (text, allow_special = false))]
    fn encode(&self, py: Python<'_>, text: &str, allow_special: bool) -> PyResult<Vec<u32>> {
        guarded(|| py.detach(|| self.inner.encode(text, allow_special)).map_err(to_pyerr))
    }

    /// The bytes of `ids`, concatenated.
    fn decode<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyBytes>> {
        guarded(|| {
            let bytes = self.inner.decode(&ids).map_err(to_pyerr)?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    /// The bytes of one token (a special token's text).
    fn token_bytes<'py>(&self, py: Python<'py>, id: u32) -> PyResult<Bound<'py, PyBytes>> {
        guarded(|| {
            let bytes = self.inner.token_bytes(id).map_err(to_pyerr)?;
            Ok(PyBytes::new(py, bytes))
        })
    }

    fn special_id(&self, text: &str) -> PyResult<Option<u32>> {
        guarded(|| Ok(self.inner.special_id(text)))
    }
}
