//! What the fuzz targets (`fuzz/fuzz_targets/*.rs`) run on each input, and what the replay
//! test (`tests` below, run by `cargo test`) runs on each file kept in `fuzz/regressions/`: one
//! function, so a crasher replays through exactly the code that found it.
//!
//! The input is read as a model file (any format: readers are chosen by content). When it
//! opens and its model is small, the model is built from a copy of the bytes of exactly their
//! length (a read past the end is caught by the address sanitizer) with one of the kernel sets
//! this CPU runs (picked by the input's length), the tokenizer arrays the binding hands to
//! Python are walked, and one token, then a batch of two, runs through the forward pass: a
//! header that passes validation must also be safe to run.

use std::path::Path;

use crate::error::Error;
use crate::formats;
use crate::kernels::{Isa, Kernels};
use crate::model::Model;

/// At most this many multiply-adds per token (weights read once each), so one input stays
/// well under a millisecond or so; the fuzzer's inputs are small, so this rarely bites.
pub const MAX_MACS_PER_TOKEN: usize = 1 << 22;
/// At most this many values in the KV cache and the attention scores (`seq_len` may be 2^20).
pub const MAX_STATE_VALUES: usize = 1 << 22;

/// How far an input went.
#[derive(Debug)]
pub enum Outcome {
    /// A reader refused it, with this error.
    Refused(Error),
    /// It opened, but its model is too large to run per input.
    Opened,
    /// It opened and ran; the forward pass, if it refused, refused with this error.
    Ran(Option<Error>),
}

/// Read `bytes` as a model file and, when it opens and is small, run it. Never panics on any
/// input (the fuzz targets' property): a panic here is a bug in a reader or in the checks
/// that must keep kernels' preconditions.
pub fn check(bytes: &[u8]) -> Outcome {
    let path = Path::new("fuzz-input");
    // First on the caller's own buffer (libFuzzer's is exactly the input's length).
    let contents = match formats::read(path, bytes) {
        Ok(contents) => contents,
        Err(error) => return refused(error),
    };
    let config = contents.config;
    drop(contents);
    if !small(&config) {
        return Outcome::Opened;
    }
    // Every kernel set this CPU runs, with and without int8 activations, chosen by the input's
    // length: each input always runs the same (a crasher replays), and all of them get run.
    let isas = Isa::available();
    let isa = isas[bytes.len() % isas.len()];
    let kernels = Kernels::new(isa, (bytes.len() / isas.len()).is_multiple_of(2)).unwrap_or_else(|_| Kernels::best());
    let model = match Model::from_bytes(path, bytes, Some(1), kernels, None) {
        Ok(model) => model,
        Err(error) => return refused(error),
    };
    // What the binding copies into Python: the GGUF vocabulary and the metadata strings.
    if let Some(v) = model.vocabulary() {
        let bytes: usize = v.tokens.iter().map(|t| t.len()).sum();
        let scores = v.scores.as_ref().map_or(0.0, |s| s.iter().sum::<f32>());
        let types = v.token_type.as_ref().map_or(0, |t| t.iter().map(|&x| x as i64).sum::<i64>());
        std::hint::black_box((bytes, scores, types, &v.model, &v.pre, v.bos_id, v.eos_id));
    }
    std::hint::black_box(model.metadata().values().map(String::len).sum::<usize>());
    std::hint::black_box(model.tokenizer_bytes().map(|t| t.iter().map(|&b| b as usize).sum::<usize>()));
    Outcome::Ran(run(&model).err())
}

fn refused(error: Error) -> Outcome {
    // Formatting the message is part of refusing: it must not panic either.
    std::hint::black_box(error.to_string());
    Outcome::Refused(error)
}

/// One token at position 0, then (context allowing) a batch of two more: the single-token
/// and the batch kernels.
fn run(model: &Model) -> crate::Result<()> {
    let c = model.config();
    let mut state = model.new_state()?;
    let first = c.bos_id.min(c.vocab_size as u32 - 1);
    let logits = model.forward(&mut state, first, 0)?;
    std::hint::black_box(logits.iter().sum::<f32>());
    if c.seq_len >= 3 {
        let tokens = [c.eos_id, (c.vocab_size - 1) as u32];
        let logits = model.forward_batch(&mut state, &tokens, 1, true)?;
        std::hint::black_box(logits.iter().sum::<f32>());
    }
    Ok(())
}

/// Whether one input's forward pass and state stay small.
fn small(c: &crate::Config) -> bool {
    let q_dim = c.n_heads * c.head_size();
    // Each product is of bounded factors (config limits), so none of these overflow a u64.
    let per_layer = (c.dim * (2 * q_dim + 2 * c.kv_dim()) + 3 * c.dim * c.hidden_dim) as u64;
    let macs = c.n_layers as u64 * per_layer + (c.vocab_size * c.dim) as u64;
    let state = 2 * (c.n_layers * c.seq_len * c.kv_dim()) as u64 + (c.n_heads * c.seq_len) as u64;
    macs <= MAX_MACS_PER_TOKEN as u64 && state <= MAX_STATE_VALUES as u64
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every file kept in `fuzz/regressions/<target>/` (crashers the fuzzer found, minimised,
    /// and hand-made adversarial headers) goes through `check` again: each must come back
    /// (refused or run), never panic. A panic fails this test with the file's name.
    #[test]
    fn fuzz_regressions_replay_without_panicking() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("regressions");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("fuzz/regressions exists")
            .flat_map(|target| std::fs::read_dir(target.unwrap().path()).unwrap())
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 10, "expected the kept regressions, found {files:?}");
        let mut panicked = Vec::new();
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| super::check(&bytes));
            match outcome {
                Ok(outcome) => eprintln!("{}: {outcome:?}", file.display()),
                Err(_) => panicked.push(file.display().to_string()),
            }
        }
        assert!(panicked.is_empty(), "these inputs panicked: {panicked:?}");
    }
}
