//! Token sampling, reproducing llama2.c run.c's sampler exactly: its xorshift64* generator,
//! `random_f32`, greedy argmax, multinomial sampling and top-p (nucleus) sampling with the
//! same cutoff and ordering, so a seed gives llama2.c's text. Top-k is our addition.

use crate::error::{Error, Result};
use crate::math::softmax;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Nucleus sampling threshold; values <= 0 or >= 1 sample from the full distribution.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 = all). Applied before top-p.
    pub top_k: usize,
    /// Initial state of the generator; must be non-zero (xorshift stays at 0 forever).
    pub seed: u64,
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Argument(format!("temperature must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p.is_finite() && self.top_p >= 0.0 && self.top_p <= 1.0) {
            return Err(Error::Argument(format!("top_p must be in [0, 1], got {}", self.top_p)));
        }
        if self.seed == 0 {
            return Err(Error::Argument(
                "seed must be a positive integer (llama2.c's xorshift generator is stuck at 0)".into(),
            ));
        }
        Ok(())
    }
}

/// What reshapes the logits before sampling, as llama.cpp's samplers do (all off by default,
/// which keeps llama2.c's results): penalties on the tokens of the last `repeat_last_n`
/// positions (prompt included), then min-p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// Above 1 it discourages repeats: a repeated token's logit is divided by it if positive and
    /// multiplied by it if negative (llama.cpp's `repeat_penalty`); 1 = off.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token seen (OpenAI's `presence_penalty`).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was seen (`frequency_penalty`).
    pub frequency_penalty: f32,
    /// Keep only tokens at least `min_p` times as likely as the most likely one (0 = off).
    pub min_p: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties { repeat_penalty: 1.0, repeat_last_n: 64, presence_penalty: 0.0, frequency_penalty: 0.0, min_p: 0.0 }
    }
}

impl Penalties {
    pub fn validate(&self) -> Result<()> {
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(Error::Argument(format!(
                "repeat_penalty must be a positive number, got {}",
                self.repeat_penalty
            )));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(value.is_finite() && (-2.0..=2.0).contains(&value)) {
                return Err(Error::Argument(format!("{name} must be in [-2, 2], got {value}")));
            }
        }
        if !(self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)) {
            return Err(Error::Argument(format!("min_p must be in [0, 1], got {}", self.min_p)));
        }
        Ok(())
    }

    fn is_off(&self) -> bool {
        self.repeat_penalty == 1.0 && self.presence_penalty == 0.0 && self.frequency_penalty == 0.0 && self.min_p == 0.0
    }

    /// Apply to `logits` given the sequence's tokens so far (`history`, oldest first).
    pub fn apply(&self, logits: &mut [f32], history: &[u32]) {
        if self.is_off() {
            return;
        }
        let recent = &history[history.len().saturating_sub(self.repeat_last_n)..];
        let mut counts: Vec<(u32, u32)> = Vec::with_capacity(recent.len());
        for &t in recent {
            match counts.iter_mut().find(|(token, _)| *token == t) {
                Some((_, n)) => *n += 1,
                None => counts.push((t, 1)),
            }
        }
        for &(token, n) in &counts {
            let Some(l) = logits.get_mut(token as usize) else { continue };
            *l = if *l > 0.0 { *l / self.repeat_penalty } else { *l * self.repeat_penalty };
            *l -= self.presence_penalty + self.frequency_penalty * n as f32;
        }
        if self.min_p > 0.0 {
            // p_i / p_max = exp(l_i - l_max): compare logits, no softmax needed.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let floor = max + self.min_p.ln();
            for l in logits.iter_mut() {
                if *l < floor {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// The log-probabilities of `logits` (`[vocab_size]`, the model's own distribution): the
/// chosen token's, and the `n` most likely tokens', best first.
pub fn logprobs(logits: &[f32], chosen: usize, n: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let n = n.min(logits.len());
    if n > 0 && n < logits.len() {
        order.select_nth_unstable_by(n - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    }
    order.truncate(n);
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    (logits[chosen] - log_sum, order.into_iter().map(|i| (i as u32, logits[i] - log_sum)).collect())
}

/// One entry of the candidate list used by top-p sampling.
#[derive(Debug, Clone, Copy)]
struct ProbIndex {
    prob: f32,
    index: usize,
}

#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng_state: u64,
    candidates: Vec<ProbIndex>, // [vocab_size] scratch for top-p
}

impl Sampler {
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Result<Sampler> {
        config.validate()?;
        Ok(Sampler { config, rng_state: config.seed, candidates: Vec::with_capacity(vocab_size) })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// xorshift64*: llama2.c's `random_u32`.
    fn random_u32(&mut self) -> u32 {
        let s = &mut self.rng_state;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// A float in [0, 1) from the top 24 bits: llama2.c's `random_f32`.
    pub fn random_f32(&mut self) -> f32 {
        (self.random_u32() >> 8) as f32 / 16_777_216.0
    }

    /// Pick the next token from `logits` (`[vocab_size]`, overwritten with probabilities).
    pub fn sample(&mut self, logits: &mut [f32]) -> usize {
        let c = self.config;
        if c.temperature == 0.0 {
            return argmax(logits);
        }
        if c.top_k > 0 && c.top_k < logits.len() {
            keep_top_k(logits, c.top_k);
        }
        // A temperature so small that a logit divided by it overflows (below ~1e-38 for logits
        // near 1) leaves a distribution with all its mass on the largest logit: that is greedy.
        // Dividing would give inf - inf = NaN in the softmax and sample garbage. (Top-k's -inf
        // stays -inf and weighs 0 either way.)
        let max_abs = logits.iter().filter(|l| l.is_finite()).fold(0.0f32, |m, l| m.max(l.abs()));
        if !(max_abs / c.temperature).is_finite() {
            return argmax(logits);
        }
        for l in logits.iter_mut() {
            *l /= c.temperature;
        }
        softmax(logits);
        let coin = self.random_f32();
        if c.top_p <= 0.0 || c.top_p >= 1.0 {
            sample_multinomial(logits, coin)
        } else {
            self.sample_top_p(logits, c.top_p, coin)
        }
    }

    /// Sample from the smallest set of most likely tokens whose probability exceeds `top_p`.
    fn sample_top_p(&mut self, probs: &[f32], top_p: f32, coin: f32) -> usize {
        let n = probs.len();
        // Tokens below this cannot be in the nucleus; dropping them first keeps the sort short.
        let cutoff = (1.0 - top_p) / (n - 1).max(1) as f32;
        self.candidates.clear();
        self.candidates.extend(
            probs.iter().enumerate().filter(|(_, &p)| p >= cutoff).map(|(index, &prob)| ProbIndex { prob, index }),
        );
        // Descending; stable, like glibc's merge-sort qsort that llama2.c gets on Linux.
        self.candidates.sort_by(|a, b| b.prob.total_cmp(&a.prob));
        let candidates = &self.candidates;
        if candidates.is_empty() {
            return argmax(probs);
        }
        let mut cumulative = 0.0f32;
        let mut last = candidates.len() - 1;
        for (i, c) in candidates.iter().enumerate() {
            cumulative += c.prob;
            if cumulative > top_p {
                last = i;
                break;
            }
        }
        let r = coin * cumulative;
        let mut cdf = 0.0f32;
        for c in &candidates[..=last] {
            cdf += c.prob;
            if r < cdf {
                return c.index;
            }
        }
        candidates[last].index // rounding errors
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Sample index `i` with probability `probs[i]` given a uniform `coin` in [0, 1).
fn sample_multinomial(probs: &[f32], coin: f32) -> usize {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i;
        }
    }
    // Rounding errors: the last token that can be drawn at all.
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(probs.len() - 1)
}

/// Set every logit outside the `k` largest to -inf.
fn keep_top_k(logits: &mut [f32], k: usize) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    for &i in &order[k..] {
        logits[i] = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> Sampler {
        Sampler::new(SamplerConfig { temperature, top_p, top_k, seed }, 8).unwrap()
    }

    #[test]
    fn xorshift_matches_values_computed_in_python() {
        // Python big-int evaluation of run.c's random_u32 from state 42 (masked to 64 bits).
        let mut s = sampler(1.0, 0.9, 0, 42);
        let first: Vec<u32> = (0..3).map(|_| s.random_u32()).collect();
        assert_eq!(first, vec![1456360119, 3359763283, 3393612768]);
    }

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = sampler(0.0, 0.9, 0, 1);
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn a_temperature_too_small_to_divide_by_is_greedy() {
        // 1e-40 is subnormal in f32: 3.0 / 1e-40 overflows, and sampling over NaNs would pick
        // whatever the coin says. Top-k's -inf entries do not count as overflow.
        for (top_p, top_k) in [(0.9, 0), (0.0, 0), (0.9, 3)] {
            let mut s = sampler(1e-40, top_p, top_k, 7);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9, 0.5]), 1);
            }
        }
        // Large enough to divide by, a small temperature keeps sampling (here: nearly greedy).
        let mut s = sampler(1e-3, 0.0, 0, 7);
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9, 0.5]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = sampler(1.0, 0.0, 1, 7);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.5, 0.1, 2.0, 1.9, -3.0]), 2);
        }
    }

    #[test]
    fn top_p_never_leaves_the_nucleus() {
        // probs ~ [0.6, 0.3, 0.07, 0.03]: with top_p 0.8 only tokens 0 and 1 can be drawn.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.07f32.ln(), 0.03f32.ln()];
        let mut s = sampler(1.0, 0.8, 0, 99);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&mut logits.clone())] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0);
        // Renormalised nucleus: 2/3 and 1/3.
        let frac = seen[0] as f64 / 2000.0;
        assert!((frac - 2.0 / 3.0).abs() < 0.05, "{frac}");
    }

    #[test]
    fn penalties_follow_llama_cpp_and_openai() {
        let p = Penalties {
            repeat_penalty: 2.0,
            repeat_last_n: 3,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            min_p: 0.0,
        };
        // History: token 4 is outside the last 3; token 1 twice, token 2 once inside.
        let mut logits = [1.0f32, 3.0, -1.0, 0.5, 2.0];
        p.apply(&mut logits, &[4, 1, 2, 1]);
        // 1: 3/2 - 0.5 - 2*0.25 = 0.5; 2: -1*2 - 0.5 - 0.25 = -2.75; others untouched.
        assert_eq!(logits, [1.0, 0.5, -2.75, 0.5, 2.0]);
        let mut off = [1.0f32, 3.0, -1.0];
        Penalties::default().apply(&mut off, &[0, 1, 2]);
        assert_eq!(off, [1.0, 3.0, -1.0]);
    }

    #[test]
    fn min_p_keeps_tokens_at_least_that_likely_relative_to_the_best() {
        let p = Penalties { min_p: 0.2, ..Penalties::default() };
        // Relative probabilities exp(l - 2): 1, e^-1 = 0.37, e^-2 = 0.14, e^-1.5 = 0.22.
        let mut logits = [2.0f32, 1.0, 0.0, 0.5];
        p.apply(&mut logits, &[]);
        assert_eq!(logits, [2.0, 1.0, f32::NEG_INFINITY, 0.5]);
    }

    #[test]
    fn logprobs_are_log_softmax_best_first() {
        let logits = [0.0f32, 2.0, 1.0, 2.0];
        let (chosen, top) = logprobs(&logits, 2, 3);
        let log_sum = (1.0f32 + 2.0 * 2f32.exp() + 1f32.exp()).ln();
        assert!((chosen - (1.0 - log_sum)).abs() < 1e-6);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]); // ties by id
        assert!((top[0].1 - (2.0 - log_sum)).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_arguments() {
        let bad = |t: f32, p: f32, seed: u64| {
            Sampler::new(SamplerConfig { temperature: t, top_p: p, top_k: 0, seed }, 4).unwrap_err().to_string()
        };
        assert!(bad(-1.0, 0.9, 1).contains("temperature"));
        assert!(bad(f32::NAN, 0.9, 1).contains("temperature"));
        assert!(bad(1.0, 1.5, 1).contains("top_p"));
        assert!(bad(1.0, 0.9, 0).contains("seed"));
    }
}
