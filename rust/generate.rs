//! A generation session: one sequence's state and sampler over a shared model.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::{Model, State};
use crate::sampler::{Sampler, SamplerConfig};

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

    /// Run `tokens` through the model at the next positions. Checks all of them first, so on
    /// error nothing has changed.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.model.check_tokens(tokens)?;
        if tokens.len() > self.remaining() {
            return Err(Error::ContextLength {
                what: "the prompt",
                needed: self.pos + tokens.len(),
                seq_len: self.model.config().seq_len,
            });
        }
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
        Ok(self.sampler.sample(&mut self.state.logits[..vocab_size]) as u32)
    }
}
