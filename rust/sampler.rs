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
