//! Generation over a shared model: a `Session` runs one sequence; a `BatchDecoder` runs many
//! at once, one pass over the weights per step (continuous batching).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::{Activations, Model, State};
use crate::sampler::{logprobs, Penalties, Sampler, SamplerConfig};

/// Feeds tokens through the model and samples what comes next. Positions count from 0;
/// the session ends when it reaches the model's context length.
pub struct Session {
    model: Arc<Model>,
    state: State,
    sampler: Sampler,
    /// Number of tokens fed so far (the next token's position).
    pos: usize,
}

impl Session {
    pub fn new(model: Arc<Model>, sampler: SamplerConfig) -> Result<Session> {
        let config = *model.config();
        let sampler = Sampler::new(sampler, config.vocab_size)?;
        let state = model.new_state()?;
        Ok(Session { model, state, sampler, pos: 0 })
    }

    pub fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Positions left before the context is full.
    pub fn remaining(&self) -> usize {
        self.model.config().seq_len - self.pos
    }

    /// Whether `tokens` can be fed now: valid ids, and room for them in the context.
    pub fn check_feed(&self, tokens: &[u32]) -> Result<()> {
        self.model.check_tokens(tokens)?;
        if tokens.len() > self.remaining() {
            return Err(Error::ContextLength {
                what: "the prompt",
                needed: self.pos + tokens.len(),
                seq_len: self.model.config().seq_len,
            });
        }
        Ok(())
    }

    /// Run `tokens` through the model at the next positions. Checks all of them first, so on
    /// error nothing has changed.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.check_feed(tokens)?;
        for batch in tokens.chunks(crate::model::PREFILL_BATCH) {
            self.model.forward_batch(&mut self.state, batch, self.pos, false)?;
            self.pos += batch.len();
        }
        Ok(())
    }

    /// Sample the next token from the logits of the last token fed.
    pub fn sample(&mut self) -> Result<u32> {
        if self.pos == 0 {
            return Err(Error::Argument("feed at least one token (e.g. BOS) before sampling".into()));
        }
        let vocab_size = self.vocab_size();
        Ok(self.sampler.sample(&mut self.state.acts.logits[..vocab_size]) as u32)
    }
}

/// A sequence's place in a `BatchDecoder`.
pub type SequenceId = u64;

/// One sequence in a batch: its cache, sampler, and the tokens it still has to feed.
struct Sequence {
    id: SequenceId,
    state: State,
    sampler: Sampler,
    penalties: Penalties,
    /// How many most likely tokens to report with each sampled one (0: none).
    top_logprobs: usize,
    /// Every token fed or sampled so far (the penalties' history).
    history: Vec<u32>,
    /// Tokens fed so far: the next token's position.
    pos: usize,
    /// Tokens waiting to be fed: the rest of the prompt, or the token just sampled.
    pending: Vec<u32>,
}

/// What one sequence produced in a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub id: SequenceId,
    pub token: u32,
    /// The token's log-probability and the most likely tokens' (when asked for).
    pub logprobs: Option<(f32, Vec<(u32, f32)>)>,
    /// The context is full: the token cannot be fed, so the sequence ends here.
    pub context_full: bool,
}

/// Sequences decoded together. Each `step` advances every sequence by one pass: a sequence
/// still feeding its prompt feeds its next piece (at most `prefill_chunk` prompt tokens per
/// step across all sequences, so running streams never wait long for a new prompt); the
/// others feed the token they sampled last. Every weight matrix is read once per step for all
/// of them, which is what makes B streams cost little more than one while decoding is bound by
/// memory. Sequences join (`add`) and leave (`remove`) between steps.
pub struct BatchDecoder {
    model: Arc<Model>,
    acts: Activations,
    sequences: Vec<Sequence>,
    next_id: SequenceId,
    prefill_chunk: usize,
}

impl BatchDecoder {
    pub fn new(model: Arc<Model>, prefill_chunk: usize) -> Result<BatchDecoder> {
        if prefill_chunk == 0 {
            return Err(Error::Argument("prefill_chunk must be at least 1".into()));
        }
        let acts = Activations::new(model.config());
        Ok(BatchDecoder { model, acts, sequences: Vec::new(), next_id: 1, prefill_chunk })
    }

    /// Start a sequence from `prompt` (checked now: valid ids, shorter than the context).
    pub fn add(
        &mut self,
        prompt: &[u32],
        sampler: SamplerConfig,
        penalties: Penalties,
        top_logprobs: usize,
    ) -> Result<SequenceId> {
        let config = *self.model.config();
        self.model.check_tokens(prompt)?;
        if prompt.is_empty() {
            return Err(Error::Argument("a prompt needs at least one token (e.g. BOS)".into()));
        }
        if prompt.len() >= config.seq_len {
            return Err(Error::ContextLength { what: "the prompt", needed: prompt.len() + 1, seq_len: config.seq_len });
        }
        penalties.validate()?;
        let sampler = Sampler::new(sampler, config.vocab_size)?;
        let state = self.model.new_state()?;
        let id = self.next_id;
        self.next_id += 1;
        self.sequences.push(Sequence {
            id,
            state,
            sampler,
            penalties,
            top_logprobs,
            history: prompt.to_vec(),
            pos: 0,
            pending: prompt.to_vec(),
        });
        Ok(id)
    }

    /// Drop a sequence (finished, or its client left); false if there is none with that id.
    pub fn remove(&mut self, id: SequenceId) -> bool {
        let before = self.sequences.len();
        self.sequences.retain(|s| s.id != id);
        self.sequences.len() != before
    }

    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Sequences still feeding their prompt.
    pub fn prefilling(&self) -> usize {
        self.sequences.iter().filter(|s| s.pending.len() > 1 || s.pos == 0).count()
    }

    /// One pass: returns the token each sequence sampled (those still feeding their prompt
    /// sample nothing yet). A sequence whose context is full is removed after its last token.
    pub fn step(&mut self) -> Result<Vec<Sampled>> {
        let mut budget = self.prefill_chunk;
        // (index, tokens to feed now): decoding sequences always; prompts as the budget allows.
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, s) in self.sequences.iter().enumerate() {
            let n = if s.pending.len() == 1 && s.pos > 0 {
                1
            } else {
                let n = s.pending.len().min(budget);
                budget -= n;
                n
            };
            if n > 0 {
                plan.push((i, n));
            }
        }
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let vocab_size = self.model.config().vocab_size;
        let positions: Vec<usize> = plan.iter().map(|&(i, _)| self.sequences[i].pos).collect();
        let chunks: Vec<Vec<u32>> = plan.iter().map(|&(i, n)| self.sequences[i].pending[..n].to_vec()).collect();
        let chunk_refs: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
        let mut planned: Vec<bool> = vec![false; self.sequences.len()];
        for &(i, _) in &plan {
            planned[i] = true;
        }
        let mut states: Vec<&mut State> =
            self.sequences.iter_mut().zip(&planned).filter(|(_, &p)| p).map(|(s, _)| &mut s.state).collect();
        let n_logits = self.model.forward_sequences(&mut self.acts, &mut states, &positions, &chunk_refs)?.len();
        let logits = &mut self.acts.logits[..n_logits];
        let seq_len = self.model.config().seq_len;
        let mut out = Vec::new();
        for (row, &(i, n)) in plan.iter().enumerate() {
            let s = &mut self.sequences[i];
            s.pending.drain(..n);
            s.pos += n;
            if !s.pending.is_empty() {
                continue; // more prompt to feed
            }
            let row_logits = &mut logits[row * vocab_size..(row + 1) * vocab_size];
            let reported = (s.top_logprobs > 0).then(|| row_logits.to_vec()); // the model's own
            s.penalties.apply(row_logits, &s.history);
            let token = s.sampler.sample(row_logits) as u32;
            let logprobs = reported.map(|l| logprobs(&l, token as usize, s.top_logprobs));
            s.history.push(token);
            s.pending.push(token);
            out.push(Sampled { id: s.id, token, logprobs, context_full: s.pos >= seq_len });
        }
        self.sequences.retain(|s| s.pos < seq_len);
        Ok(out)
    }
}
