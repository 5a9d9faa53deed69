//! `Model` and `Session`: thin wrappers over the core's model and generation session.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::errors::{guarded, to_pyerr};
use crate::error::Error;
use crate::formats::llama2c::Format;
use crate::formats::FileFormat;
use crate::generate::Session;
use crate::kernels::{Isa, Kernels};
use crate::model::{KvCacheType, Model};
use crate::sampler::SamplerConfig;

/// Python ints to token ids; a negative or huge id is an invalid token, not an OverflowError.
pub(crate) fn token_ids(tokens: &[i64], vocab_size: usize) -> Result<Vec<u32>, Error> {
    tokens
        .iter()
        .enumerate()
        .map(|(index, &t)| {
            if t < 0 || t as u64 >= vocab_size as u64 {
                Err(Error::InvalidToken { token: t, index, vocab_size })
            } else {
                Ok(t as u32)
            }
        })
        .collect()
}

pub(crate) fn non_negative(name: &str, value: i64) -> Result<usize, Error> {
    usize::try_from(value).map_err(|_| Error::Argument(format!("{name} must be >= 0, got {value}")))
}

/// A memory-mapped model (read-only, shareable between threads).
#[pyclass(name = "Model", module = "llama2rs._core", frozen)]
pub(crate) struct PyModel {
    /// None once closed. Sessions and batch decoders hold their own `Arc`, so the map goes when
    /// the last of them does.
    inner: RwLock<Option<Arc<Model>>>,
}

impl PyModel {
    /// The core model, shared with what runs over it; an error once the model is closed.
    pub(crate) fn shared(&self) -> PyResult<Arc<Model>> {
        let guard = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.as_ref().map(Arc::clone).ok_or_else(|| to_pyerr(Error::Argument("the model is closed".into())))
    }
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (path, n_threads = None, kernels = None, exact = false, kv_cache = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        n_threads: Option<i64>,
        kernels: Option<String>,
        exact: bool,
        kv_cache: Option<String>,
    ) -> PyResult<Self> {
        guarded(|| {
            let n_threads = match n_threads {
                Some(n) if n < 1 => {
                    return Err(to_pyerr(Error::Argument(format!("n_threads must be at least 1, got {n}"))))
                }
                Some(n) => Some(n as usize),
                None => None,
            };
            let isa = match kernels.as_deref() {
                None | Some("auto") => Isa::detect(),
                Some(name) => Isa::from_name(name).ok_or_else(|| {
                    let names: Vec<&str> = std::iter::once("auto").chain(Isa::names()).collect();
                    to_pyerr(Error::Argument(format!("kernels must be one of {}; got {name:?}", names.join(", "))))
                })?,
            };
            let kv_cache = match kv_cache.as_deref() {
                None | Some("auto") => None,
                Some(name) => Some(KvCacheType::from_name(name).ok_or_else(|| {
                    let names: Vec<&str> =
                        std::iter::once("auto").chain(KvCacheType::ALL.map(KvCacheType::name)).collect();
                    to_pyerr(Error::Argument(format!("kv_cache must be one of {}; got {name:?}", names.join(", "))))
                })?),
            };
            let kernels = Kernels::new(isa, !exact).map_err(to_pyerr)?;
            let model = py.detach(|| Model::open_with(&path, n_threads, kernels, kv_cache)).map_err(to_pyerr)?;
            Ok(PyModel { inner: RwLock::new(Some(Arc::new(model))) })
        })
    }

    /// The kernel implementation in use (one of `KERNEL_NAMES`).
    #[getter]
    fn kernels(&self) -> PyResult<&'static str> {
        Ok(self.shared()?.kernels().isa().name())
    }

    /// What the KV cache stores (`f32` or `f16`).
    #[getter]
    fn kv_cache(&self) -> PyResult<&'static str> {
        Ok(self.shared()?.kv_cache().name())
    }

    /// True when 4-bit weights multiply fp32 activations (the exact path).
    #[getter]
    fn exact(&self) -> PyResult<bool> {
        Ok(!self.shared()?.kernels().int8_activations())
    }

    /// The shape as a dict of ints.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let model = self.shared()?;
        let c = model.config();
        let d = PyDict::new(py);
        d.set_item("dim", c.dim)?;
        d.set_item("hidden_dim", c.hidden_dim)?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_kv_heads", c.n_kv_heads)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("seq_len", c.seq_len)?;
        d.set_item("norm_eps", c.norm_eps as f64)?;
        d.set_item("rope_theta", c.rope_theta as f64)?;
        d.set_item("bos_id", c.bos_id)?;
        d.set_item("eos_id", c.eos_id)?;
        Ok(d)
    }

    #[getter]
    fn format(&self) -> PyResult<String> {
        Ok(self.shared()?.format().name())
    }

    /// Weights per Q8_0 scale of a llama2.c version-2 file, else None.
    #[getter]
    fn group_size(&self) -> PyResult<Option<usize>> {
        Ok(match self.shared()?.format() {
            FileFormat::Llama2c(Format::V2Q8 { group_size }) => Some(group_size),
            _ => None,
        })
    }

    /// The tokenizer stored in the file (tokenizer.bin encoding), or None.
    #[getter]
    fn tokenizer_bytes<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self.shared()?.tokenizer_bytes().map(|b| PyBytes::new(py, b)))
    }

    /// A GGUF file's tokenizer arrays as a dict (`model`, `tokens` as bytes, `scores`,
    /// `token_type`, `bos_id`, `eos_id`), or None.
    #[getter]
    fn vocabulary<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        guarded(|| {
            let model = self.shared()?;
            let Some(v) = model.vocabulary() else { return Ok(None) };
            let d = PyDict::new(py);
            d.set_item("model", &v.model)?;
            d.set_item("pre", v.pre.clone())?;
            let tokens: Vec<Bound<'py, PyBytes>> = v.tokens.iter().map(|t| PyBytes::new(py, t)).collect();
            d.set_item("tokens", tokens)?;
            d.set_item("scores", v.scores.clone())?;
            d.set_item("token_type", v.token_type.clone())?;
            d.set_item("bos_id", v.bos_id)?;
            d.set_item("eos_id", v.eos_id)?;
            Ok(Some(d))
        })
    }

    /// The file's metadata strings (empty for llama2.c files).
    #[getter]
    fn metadata(&self) -> PyResult<std::collections::HashMap<String, String>> {
        Ok(self.shared()?.metadata().clone())
    }

    #[getter]
    fn shared_classifier(&self) -> PyResult<bool> {
        Ok(self.shared()?.shared_classifier())
    }

    #[getter]
    fn n_threads(&self) -> PyResult<usize> {
        Ok(self.shared()?.n_threads())
    }

    #[getter]
    fn file_size(&self) -> PyResult<usize> {
        Ok(self.shared()?.file_size())
    }

    #[getter]
    fn path(&self) -> PyResult<PathBuf> {
        Ok(self.shared()?.path().to_path_buf())
    }

    /// Teacher-forced logits, float32 `[len(tokens), vocab_size]`.
    fn logits<'py>(&self, py: Python<'py>, tokens: Vec<i64>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        guarded(|| {
            let model = self.shared()?;
            let vocab_size = model.config().vocab_size;
            let ids = token_ids(&tokens, vocab_size).map_err(to_pyerr)?;
            let values = py.detach(|| model.logits(&ids)).map_err(to_pyerr)?;
            PyArray1::from_vec(py, values).reshape([ids.len(), vocab_size])
        })
    }

    /// A new generation session with its own KV cache and sampler.
    #[pyo3(signature = (temperature, top_p, top_k, seed))]
    fn session(&self, temperature: f64, top_p: f64, top_k: i64, seed: u64) -> PyResult<PySession> {
        guarded(|| {
            let sampler = SamplerConfig {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k: non_negative("top_k", top_k).map_err(to_pyerr)?,
                seed,
            };
            let inner = Session::new(self.shared()?, sampler).map_err(to_pyerr)?;
            Ok(PySession { inner })
        })
    }

    /// Let go of the model: the memory map is released once no session or batch decoder made
    /// from it is left. Every later call raises; closing twice is allowed.
    fn close(&self) {
        let taken = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        drop(taken);
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none()
    }
}

/// One sequence being generated: feed tokens, sample the next one.
#[pyclass(name = "Session", module = "llama2rs._core")]
pub(crate) struct PySession {
    inner: Session,
}

#[pymethods]
impl PySession {
    /// Run tokens through the model at the next positions (all checked before any runs), a
    /// batch at a time with Python's signal handlers run between batches: Ctrl-C during a long
    /// prompt raises KeyboardInterrupt within one batch, not at its end.
    fn feed(&mut self, py: Python<'_>, tokens: Vec<i64>) -> PyResult<()> {
        guarded(|| {
            let session = &mut self.inner;
            let ids = token_ids(&tokens, session.vocab_size()).map_err(to_pyerr)?;
            session.check_feed(&ids).map_err(to_pyerr)?;
            for batch in ids.chunks(crate::model::PREFILL_BATCH) {
                py.detach(|| session.feed(batch)).map_err(to_pyerr)?;
                py.check_signals()?;
            }
            Ok(())
        })
    }

    /// Sample the next token id from the logits of the last token fed.
    fn sample(&mut self, py: Python<'_>) -> PyResult<u32> {
        guarded(|| {
            let session = &mut self.inner;
            py.detach(|| session.sample()).map_err(to_pyerr)
        })
    }

    /// Number of tokens fed so far.
    #[getter]
    fn pos(&self) -> usize {
        self.inner.pos()
    }

    /// Positions left in the context.
    #[getter]
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }
}
