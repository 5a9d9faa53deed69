//! `BatchDecoder`: the core's continuous-batching decoder (`crate::generate::BatchDecoder`)
//! for `llama2rs.serving`, which schedules requests onto it.

use pyo3::prelude::*;

use super::errors::{guarded, to_pyerr};
use super::model::{non_negative, token_ids, PyModel};
use crate::generate::BatchDecoder;
use crate::sampler::{Penalties, SamplerConfig};

/// What `step` returns per sequence: (id, token, logprob, top logprobs, context_full).
type StepRow = (u64, u32, Option<f32>, Option<Vec<(u32, f32)>>, bool);

/// Sequences decoded together, one pass over the weights per step.
#[pyclass(name = "BatchDecoder", module = "llama2rs._core")]
pub(crate) struct PyBatchDecoder {
    inner: BatchDecoder,
    vocab_size: usize,
}

#[pymethods]
impl PyBatchDecoder {
    #[new]
    #[pyo3(signature = (model, prefill_chunk = 64))]
    fn new(model: &PyModel, prefill_chunk: i64) -> PyResult<Self> {
        guarded(|| {
            let chunk = non_negative("prefill_chunk", prefill_chunk).map_err(to_pyerr)?;
            let shared = model.shared()?;
            let vocab_size = shared.config().vocab_size;
            Ok(PyBatchDecoder { inner: BatchDecoder::new(shared, chunk).map_err(to_pyerr)?, vocab_size })
        })
    }

    /// Start a sequence; returns its id. The prompt is checked now and fed by later steps.
    #[pyo3(signature = (prompt, temperature, top_p, top_k, seed, repeat_penalty = 1.0, repeat_last_n = 64,
                        presence_penalty = 0.0, frequency_penalty = 0.0, min_p = 0.0, logprobs = 0))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        prompt: Vec<i64>,
        temperature: f64,
        top_p: f64,
        top_k: i64,
        seed: u64,
        repeat_penalty: f64,
        repeat_last_n: i64,
        presence_penalty: f64,
        frequency_penalty: f64,
        min_p: f64,
        logprobs: i64,
    ) -> PyResult<u64> {
        guarded(|| {
            let ids = token_ids(&prompt, self.vocab_size).map_err(to_pyerr)?;
            let sampler = SamplerConfig {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k: non_negative("top_k", top_k).map_err(to_pyerr)?,
                seed,
            };
            let penalties = Penalties {
                repeat_penalty: repeat_penalty as f32,
                repeat_last_n: non_negative("repeat_last_n", repeat_last_n).map_err(to_pyerr)?,
                presence_penalty: presence_penalty as f32,
                frequency_penalty: frequency_penalty as f32,
                min_p: min_p as f32,
            };
            let top = non_negative("logprobs", logprobs).map_err(to_pyerr)?;
            self.inner.add(&ids, sampler, penalties, top).map_err(to_pyerr)
        })
    }

    /// Drop a sequence; False if there is none with that id.
    fn remove(&mut self, id: u64) -> PyResult<bool> {
        guarded(|| Ok(self.inner.remove(id)))
    }

    /// One pass over the weights for every sequence (the GIL released): the tokens sampled.
    fn step(&mut self, py: Python<'_>) -> PyResult<Vec<StepRow>> {
        guarded(|| {
            let inner = &mut self.inner;
            let sampled = py.detach(|| inner.step()).map_err(to_pyerr)?;
            Ok(sampled
                .into_iter()
                .map(|s| {
                    let (logprob, top) = match s.logprobs {
                        Some((lp, top)) => (Some(lp), Some(top)),
                        None => (None, None),
                    };
                    (s.id, s.token, logprob, top, s.context_full)
                })
                .collect())
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Sequences still feeding their prompt.
    #[getter]
    fn prefilling(&self) -> usize {
        self.inner.prefilling()
    }
}
