//! The int8 block row kernels (GGUF's Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1, and our own 4-bit type
//! `q4g128`: affine, groups of 128, fp16 scales) of every instruction set this CPU runs, on one
//! thread, against the same matrix: its rows kept small enough to stay
//! in cache (about 1-2 MB), so what is measured is the kernel's arithmetic and not memory, whose
//! speed on a shared machine drifts between runs. Decode (1 token), a short batch (16) and a prompt (128).
//! The ratio column is against the scalar reference, measured in the same run.
//!
//!     cargo run --release --example block_kernels [-- ROWS COLS [TOKENS [TYPE ...]]]
//!
//! TOKENS is a comma-separated list (default 1,16,128) and TYPE a GGUF type name or q4g128
//! (default all):
//! a matrix larger than the caches measures the kernels against memory, where the scalar
//! reference at 128 tokens would take minutes. `BLOCK_KERNELS_ISAS=avx512,avx2` runs only
//! those instruction sets (the ratio column then reads 0 unless `scalar` is among them).

use std::time::Instant;

use llama2rs::kernels::{matmul, Scratch};
use llama2rs::weights::{AffineData, BlockData, BlockType, Matrix, MatrixData, Scales};
use llama2rs::{Isa, Kernels};

/// A xorshift stream: random block bytes (valid once their fp16 scales are set) and inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Random blocks of `kind`, every fp16 scale field a small finite value.
fn random_blocks(rng: &mut Rng, kind: BlockType, rows: usize, cols: usize) -> Vec<u8> {
    let bytes = kind.row_bytes(cols).expect("whole blocks") * rows;
    let mut values: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
    // fp16 fields: where each type keeps its d (and dmin / m).
    let fields: &[usize] = match kind {
        BlockType::Q4K | BlockType::Q5K => &[0, 2],
        BlockType::Q6K => &[208],
        BlockType::Q4_1 => &[0, 2],
        _ => &[0],
    };
    for block in values.chunks_exact_mut(kind.bytes()) {
        for &at in fields {
            block[at] = rng.next() as u8;
            block[at + 1] = 0x1c + (rng.next() as u8 & 3); // about 2^-8: finite
        }
    }
    values
}

/// Seconds per call: the best of `repeats` timings of `calls` calls.
fn time(mut f: impl FnMut(), calls: usize, repeats: usize) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().expect("ROWS COLS"));
    let (rows, cols) = (number(0, 512), number(1, 2048));
    let token_counts: Vec<usize> = args
        .get(2)
        .map_or("1,16,128", String::as_str)
        .split(',')
        .map(|t| t.parse().expect("TOKENS: comma-separated counts"))
        .collect();
    let only = std::env::var("BLOCK_KERNELS_ISAS").ok();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("one thread");
    let mut rng = Rng(0x6b1);
    let kinds = [BlockType::Q4K, BlockType::Q5K, BlockType::Q6K, BlockType::Q8_0, BlockType::Q4_0, BlockType::Q4_1];
    println!("{rows} x {cols}, one thread: weight GB/s (per token), G multiply-adds/s, ratio to the scalar reference");
    println!("{:<6} {:>7} {:>6} {:>8} {:>8} {:>8}", "type", "kernels", "tokens", "GB/s", "GMAC/s", "ratio");
    let wanted = |name: &str| args.len() <= 3 || args[3..].iter().any(|n| n == name);
    // Our own 4-bit type (export.py's default) beside GGUF's: affine, groups of 128 columns,
    // fp16 scales and a zero point per group.
    let group = 128.min(cols);
    let groups = cols.div_ceil(group);
    let affine_values: Vec<u8> = (0..rows * cols.div_ceil(2)).map(|_| rng.next() as u8).collect();
    let affine_scales: Vec<u8> =
        (0..rows * groups).flat_map(|_| (0x1c00u16 + (rng.next() % 0x400) as u16).to_le_bytes()).collect();
    let affine_zeros: Vec<u8> = (0..rows * groups).map(|_| (rng.next() % 16) as u8).collect();
    let mut matrices: Vec<(&str, usize, Matrix)> = Vec::new();
    let block_values: Vec<(BlockType, Vec<u8>)> =
        kinds.iter().filter(|k| wanted(k.name())).map(|&k| (k, random_blocks(&mut rng, k, rows, cols))).collect();
    for (kind, values) in &block_values {
        let data = MatrixData::Blocks(BlockData { kind: *kind, values });
        matrices.push((kind.name(), values.len(), Matrix { rows, cols, data }));
    }
    if wanted("q4g128") {
        let data = MatrixData::Affine(AffineData {
            bits: 4,
            values: &affine_values,
            scales: Scales::F16(&affine_scales),
            zeros: &affine_zeros,
            group_size: group,
            perm: None,
        });
        let bytes = affine_values.len() + affine_scales.len() + affine_zeros.len();
        matrices.push(("q4g128", bytes, Matrix { rows, cols, data }));
    }
    for (name, bytes, m) in &matrices {
        for &tokens in &token_counts {
            let x: Vec<f32> = (0..tokens * cols).map(|_| rng.unit()).collect();
            let mut out = vec![0.0f32; rows * tokens];
            let mut scalar = 0.0;
            for isa in Isa::available() {
                let k = Kernels::new(isa, true).expect("available");
                if k.isa() == Isa::Portable || !only.as_ref().is_none_or(|o| o.split(',').any(|n| n == isa.name())) {
                    continue; // portable dequantizes rows: another path
                }
                let mut scratch = Scratch::default();
                let seconds = pool.install(|| time(|| matmul(&mut out, m, &x, tokens, &mut scratch, &k), 20, 15));
                if isa == Isa::Scalar {
                    scalar = seconds;
                }
                let gbs = *bytes as f64 / seconds / 1e9;
                let gmacs = (rows * cols * tokens) as f64 / seconds / 1e9;
                let ratio = scalar / seconds;
                println!("{name:<6} {:>7} {tokens:>6} {gbs:>8.2} {gmacs:>8.2} {ratio:>7.1}x", isa.name());
            }
        }
    }
}
