//! The tokenizers' merging, for the Python classes that read the files and hold the API:
//! `ByteLevelBpe` (`crate::bpe`) for `llama2rs.bpe.ByteLevelTokenizer`, and `ScoreBpe`
//! (`crate::score_bpe`, llama2.c's score merging) for `llama2rs.Tokenizer`.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::{guarded, library_error, to_pyerr};
use crate::bpe::{ByteLevelBpe, Slicing};
use crate::score_bpe::{ScoreBpe, BYTE_OFFSET};

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

#[pyclass(name = "ScoreBpe", module = "llama2rs._core", frozen)]
pub struct PyScoreBpe {
    inner: ScoreBpe,
}

#[pymethods]
impl PyScoreBpe {
    /// `pieces[i]` and `scores[i]` (float32 values) of token `i`.
    #[new]
    fn new(py: Python<'_>, pieces: Vec<Vec<u8>>, scores: Vec<f32>) -> PyResult<Self> {
        if pieces.len() != scores.len() {
            return Err(library_error(
                "TokenizerError",
                format!("{} pieces but {} scores", pieces.len(), scores.len()),
            ));
        }
        guarded(|| Ok(PyScoreBpe { inner: py.detach(|| ScoreBpe::new(pieces, scores)) }))
    }

    /// run.c's `encode(text, bos, 0)`: token ids of the UTF-8 bytes `text`.
    #[pyo3(signature = (text, bos = true))]
    fn encode(&self, py: Python<'_>, text: &[u8], bos: bool) -> PyResult<Vec<u32>> {
        guarded(|| {
            py.detach(|| self.inner.encode(text, bos)).map_err(|token| {
                library_error(
                    "TokenizerError",
                    format!(
                        "cannot encode byte 0x{:02X}: it is not in the vocabulary and its byte-fallback token {token} \
                     is beyond vocab_size {}",
                        token - BYTE_OFFSET,
                        self.inner.vocab_size()
                    ),
                )
            })
        })
    }
}
