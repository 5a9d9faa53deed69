//! Every table this CPU supports against the scalar references and float64 expectations.

// Expectations are written index by index, as the formulas are.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::affine::activation as act;
#[cfg(target_arch = "x86_64")]
use super::affine::{dot_i8_scalar, AffineRows, RowsOut};
use super::attention::{sum_scalar, CacheValue};
use super::matmul::int16_gemm_block;
use super::q8_0::QuantizedVec;
use super::*;
#[cfg(target_arch = "x86_64")]
use crate::disjoint::DisjointSlice;
use crate::test_rng::Rng;
use crate::weights::{AffineData, BlockData, BlockType, Matrix, MatrixData, Q8Data, Scales};

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (5, 8),
    (17, 31),
    (9, 33),
    (64, 64),
    (172, 64),
    (64, 172),
    (13, 129),
    (7, 300),
    (33, 256),
    (5, 1000),
    (3, 1500),
];

fn choices() -> Vec<Kernels> {
    Isa::available().into_iter().map(|isa| Kernels::new(isa, true).unwrap()).collect()
}

fn exact_kernels(isa: Isa) -> Kernels {
    Kernels::new(isa, false).unwrap()
}

fn run(w: &Matrix, x: &[f32], n_tokens: usize, k: &Kernels) -> Vec<f32> {
    let mut out = vec![0.0; w.rows * n_tokens];
    matmul(&mut out, w, x, n_tokens, &mut Scratch::default(), k);
    out
}

fn assert_close(a: &[f32], b: &[f32], tol: f64, what: &str) {
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let scale = 1.0 + (y as f64).abs();
        assert!(((x - y) as f64).abs() <= tol * scale, "{what} [{i}]: {x} vs {y}");
    }
}

#[test]
fn every_isa_runs_here_and_detect_picks_a_supported_one() {
    assert!(Isa::detect().supported());
    assert!(Isa::available().contains(&Isa::Scalar) && Isa::available().contains(&Isa::Portable));
    assert_eq!(Isa::from_name("avx2"), Some(Isa::Avx2));
    assert_eq!(Isa::from_name("neon"), Some(Isa::Neon));
    // Where the CPU has the dot-product extension (qemu-aarch64's default CPU does), the
    // NEON kernels are chosen, so the kernel tests run them.
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        assert_eq!(Isa::detect(), Isa::Neon);
    }
}

#[test]
fn a_table_for_an_isa_this_cpu_lacks_is_an_error() {
    let mut refused = 0;
    for isa in Isa::ALL {
        match Kernels::new(isa, true) {
            Ok(k) => assert!(isa.supported() && k.isa() == isa, "{isa:?}"),
            Err(e) => {
                assert!(!isa.supported(), "{isa:?}");
                assert!(e.to_string().contains(&format!("cannot run the {} kernels", isa.name())), "{e}");
                refused += 1;
            }
        }
    }
    // Every CPU lacks the other architecture's instruction sets.
    assert!(refused >= 1);
}

#[test]
fn f32_kernels_match_scalar_and_float64() {
    let mut rng = Rng(0x1234_5678);
    for &(rows, cols) in SHAPES {
        let w = rng.vec(rows * cols);
        let x = rng.vec(2 * cols);
        let m = Matrix { rows, cols, data: MatrixData::F32(w.clone().into()) };
        let exact: Vec<f32> = (0..2)
            .flat_map(|t| {
                let (w, x) = (&w, &x);
                (0..rows).map(move |r| {
                    (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64).sum::<f64>() as f32
                })
            })
            .collect();
        for k in choices() {
            let tol = 1e-5 * (cols as f64).sqrt().max(1.0);
            assert_close(&run(&m, &x, 2, &k), &exact, tol, &format!("f32 {rows}x{cols} {:?}", k.isa()));
        }
    }
}

#[test]
fn attention_kernels_match_scalar_and_float64() {
    attention_kernels_match::<f32>();
    attention_kernels_match::<f16>();
}

#[test]
fn fp16_cache_store_equals_the_scalar_rounding() {
    let mut rng = Rng(0xf16);
    let mut values: Vec<f32> = rng.vec(1003).into_iter().map(|v| v * 70000.0).collect();
    values.extend([0.0, -0.0, 1e-8, 6e-8, 65519.0, 65520.0, f32::INFINITY, 1.0 + 2f32.powi(-11)]);
    for k in choices() {
        let mut stored = vec![f16::default(); values.len()];
        k.store(&values, &mut stored);
        for (v, s) in values.iter().zip(&stored) {
            assert_eq!(s.to_bits(), f16::from_f32(*v).to_bits(), "{v} {:?}", k.isa());
        }
    }
    assert!(f16::zeros(5).unwrap().iter().all(|z| z.to_bits() == 0));
    assert!(f32::zeros(7).unwrap().iter().all(|z| z.to_bits() == 0));
    assert!(f32::zeros(0).unwrap().is_empty());
    // More than any address space: refused, not an abort.
    assert!(f32::zeros(usize::MAX / 2).is_none() && f16::zeros(1 << 62).is_none());
}

/// Each ISA's attention over a cache of `T` against the plain loops and a float64 score.
fn attention_kernels_match<T: TableCache>() {
    let mut rng = Rng(0xa11ce);
    for (hs, positions) in [(8usize, 1usize), (64, 5), (36, 9), (128, 17), (100, 3), (13, 4), (160, 6), (264, 3)] {
        let q = rng.vec(hs);
        let keys: Vec<T> = rng.vec(hs * positions).into_iter().map(T::from_f32).collect();
        let values: Vec<T> = rng.vec(hs * positions).into_iter().map(T::from_f32).collect();
        let att: Vec<f32> = (0..positions).map(|_| rng.unit()).collect();
        let out0 = rng.vec(hs);
        let scale = (hs as f32).sqrt();
        let mut expected_sum = out0.clone();
        sum_scalar(&att, &values, &mut expected_sum);
        for k in choices() {
            let kernels = k.attention::<T>();
            let mut scores = vec![0.0f32; positions];
            (kernels.scores)(&q, &keys, scale, &mut scores);
            for (p, &got) in scores.iter().enumerate() {
                let exact: f64 =
                    (0..hs).map(|i| q[i] as f64 * keys[p * hs + i].to_f32() as f64).sum::<f64>() / scale as f64;
                assert!((got as f64 - exact).abs() < 1e-5 * (1.0 + exact.abs()), "hs {hs} p {p} {:?}", k.isa());
            }
            // Every version rounds each product and sum as run.c does: bit-identical.
            let mut out = out0.clone();
            (kernels.sum)(&att, &values, &mut out);
            assert_eq!(out, expected_sum, "hs {hs} {:?}", k.isa());
        }
    }
}

#[test]
fn q8_kernels_equal_scalar_exactly() {
    let mut rng = Rng(0x9e37_79b9);
    for &(rows, cols) in SHAPES {
        for gs in [1usize, 2, 4, 8, 32, 64] {
            if cols % gs != 0 {
                continue;
            }
            let w = rng.vec(rows * cols);
            let mut wq = QuantizedVec::default();
            wq.quantize(&w, gs);
            let x = rng.vec(cols);
            let mut xq = QuantizedVec::default();
            xq.quantize(&x, gs);
            let m = Matrix {
                rows,
                cols,
                data: MatrixData::Q8(Q8Data { values: &wq.values, scales: wq.scales.clone().into(), group_size: gs }),
            };
            let reference = run(&m, &x, 1, &Kernels::new(Isa::Scalar, true).unwrap());
            for k in choices() {
                assert_eq!(run(&m, &x, 1, &k), reference, "{rows}x{cols} gs {gs} {:?}", k.isa());
            }
            // Independent expectation: dequantize both and multiply in float64.
            for r in 0..rows {
                let exact: f64 = (0..cols)
                    .map(|c| {
                        let i = r * cols + c;
                        (wq.values[i] as f64 * wq.scales[i / gs] as f64)
                            * (xq.values[c] as f64 * xq.scales[c / gs] as f64)
                    })
                    .sum();
                assert!((reference[r] as f64 - exact).abs() < 1e-4, "{rows}x{cols} gs {gs} row {r}");
            }
        }
    }
}

/// Pack `q` (`[rows, cols]`, values < 2^bits) the way `AffineData` stores it.
fn pack(q: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
    let row_bytes = AffineData::row_bytes(bits, cols);
    let mut out = vec![0u8; rows * row_bytes];
    for r in 0..rows {
        for c in 0..cols {
            let v = q[r * cols + c];
            if bits == 8 {
                out[r * row_bytes + c] = v;
            } else {
                out[r * row_bytes + c / 2] |= v << ((c % 2) * 4);
            }
        }
    }
    out
}

struct Affine {
    q: Vec<u8>,
    packed: Vec<u8>,
    zeros: Vec<u8>,
    scales: Vec<f32>,
    scales_f16: Vec<u8>, // the same scales as fp16 bytes
    perm: Option<Vec<u32>>,
}

fn random_affine(rng: &mut Rng, rows: usize, cols: usize, bits: u32, gs: usize, act_order: bool) -> Affine {
    let top = ((1u32 << bits) - 1) as f32;
    let groups = cols.div_ceil(gs);
    let q: Vec<u8> = (0..rows * cols).map(|_| (rng.unit() * top).round() as u8).collect();
    let zeros: Vec<u8> = (0..rows * groups).map(|_| (rng.unit() * top).round() as u8).collect();
    // fp16 values in [2^-10, 2^-4 * 2), so the same scales can be stored either way.
    let scales_f16: Vec<u8> = (0..rows * groups)
        .flat_map(|_| (0x1400u16 + (rng.unit() * (0x3000 - 0x1400) as f32) as u16).min(0x2fff).to_le_bytes())
        .collect();
    let scales: Vec<f32> =
        scales_f16.chunks_exact(2).map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect();
    let perm = act_order.then(|| {
        let mut p: Vec<u32> = (0..cols as u32).collect();
        for i in (1..cols).rev() {
            let j = ((rng.unit() * (i + 1) as f32) as usize).min(i);
            p.swap(i, j);
        }
        p
    });
    let packed = pack(&q, rows, cols, bits);
    Affine { q, packed, zeros, scales, scales_f16, perm }
}

impl Affine {
    /// The matrix with its scales stored as fp32 or as fp16 (the same values).
    fn data(&self, bits: u32, group_size: usize, f16: bool) -> AffineData<'_> {
        AffineData {
            bits,
            values: &self.packed,
            scales: if f16 { Scales::F16(&self.scales_f16) } else { Scales::F32(self.scales.clone().into()) },
            zeros: &self.zeros,
            group_size,
            perm: self.perm.clone().map(Into::into),
        }
    }
}

#[test]
fn affine_kernels_match_float64_dequantization() {
    let mut rng = Rng(0xabcd_ef01);
    for &(rows, cols) in SHAPES {
        for bits in [4u32, 8] {
            for gs in [1usize, 3, 8, 32, 64, 128, 256, 384, 512, cols] {
                if gs > cols {
                    continue;
                }
                for (act_order, n_tokens, f16) in [
                    (false, 1, false),
                    (true, 1, true),
                    (true, 3, true),
                    (false, 5, true),
                    (true, 6, false),
                    (false, 13, true),
                ] {
                    let a = random_affine(&mut rng, rows, cols, bits, gs, act_order);
                    let x = rng.vec(n_tokens * cols);
                    let m = Matrix { rows, cols, data: MatrixData::Affine(a.data(bits, gs, f16)) };
                    let groups = cols.div_ceil(gs);
                    // x in stored column order, per token.
                    let stored: Vec<f32> = (0..n_tokens)
                        .flat_map(|t| {
                            let xt = &x[t * cols..(t + 1) * cols];
                            match &a.perm {
                                Some(p) => p.iter().map(|&i| xt[i as usize]).collect::<Vec<f32>>(),
                                None => xt.to_vec(),
                            }
                        })
                        .collect();
                    // w[r, c] in float64, then w @ x per token, with x as each kernel sees it:
                    // fp32, int8 + residual (decode) or int16 in blocks (the AVX-512 GEMM).
                    let weight = |r: usize, c: usize| {
                        let g = r * groups + c / gs;
                        a.scales[g] as f64 * (a.q[r * cols + c] as f64 - a.zeros[g] as f64)
                    };
                    let exact = |x_value: &dyn Fn(usize, usize) -> f64| -> Vec<f32> {
                        let mut out = Vec::new(); // matmul's layout: [token, row]
                        for t in 0..n_tokens {
                            for r in 0..rows {
                                out.push((0..cols).map(|c| weight(r, c) * x_value(t, c)).sum::<f64>() as f32);
                            }
                        }
                        out
                    };
                    // sum |w x| per output: fp32 rounding grows with it, not with the result
                    // (8-bit rows of 1500 columns cancel to small sums).
                    let magnitude: Vec<f64> = (0..n_tokens)
                        .flat_map(|t| (0..rows).map(move |r| (t, r)))
                        .map(|(t, r)| (0..cols).map(|c| (weight(r, c) * stored[t * cols + c] as f64).abs()).sum())
                        .collect();
                    let assert_close = |got: &[f32], want: &[f32], tol: f64, what: &str| {
                        for (i, (&x, &y)) in got.iter().zip(want).enumerate() {
                            let bound = tol * (1.0 + (y as f64).abs()) + 1e-6 * magnitude[i];
                            assert!(((x - y) as f64).abs() <= bound, "{what} [{i}]: {x} vs {y}");
                        }
                    };
                    let exact_f32 = exact(&|t, c| stored[t * cols + c] as f64);
                    let int8: Vec<act::Int8Activation> = (0..n_tokens)
                        .map(|t| {
                            let mut q = act::Int8Activation::default();
                            q.quantize(&stored[t * cols..(t + 1) * cols]);
                            q
                        })
                        .collect();
                    let exact_int8 = exact(&|t, c| int8[t].value(c) as f64);
                    let data = match &m.data {
                        MatrixData::Affine(d) => d,
                        _ => unreachable!(),
                    };
                    for k in choices() {
                        let what =
                            format!("{rows}x{cols} bits {bits} gs {gs} act_order {act_order} f16 {f16} {:?}", k.isa());
                        let fp = run(&m, &x, n_tokens, &exact_kernels(k.isa()));
                        assert_close(&fp, &exact_f32, 1e-4, &format!("f32 activations {what}"));
                        let q = run(&m, &x, n_tokens, &k);
                        if let Some(block) = int16_gemm_block(&k, data, cols, n_tokens) {
                            let mut int16 = act::Int16Activations::default();
                            int16.quantize(&stored, n_tokens, cols, block);
                            let exact_int16 = exact(&|t, c| int16.value(t, c) as f64);
                            assert_close(&q, &exact_int16, 1e-5, &format!("int16 GEMM {what}"));
                            assert_close(&q, &exact_f32, 1e-3, &format!("int16 GEMM vs fp32 {what}"));
                            continue;
                        }
                        // The fp32 GEMM: AVX2's batches; AVX-512's int8 rows take any batch
                        // below the int16 GEMM's, where the groups fit their lanes.
                        let lanes_fit = act::lanes_fit_groups(gs, cols);
                        let gemm = bits == 4
                            && n_tokens >= GEMM_MIN_TOKENS
                            && (k.isa() == Isa::Avx2 || (k.isa() == Isa::Avx512 && !lanes_fit));
                        let int8_used = bits == 4 && k.isa() != Isa::Portable && lanes_fit && !gemm;
                        let expected = if int8_used { &exact_int8 } else { &exact_f32 };
                        assert_close(&q, expected, 1e-4, &format!("int8 activations {what}"));
                    }
                }
            }
        }
    }
}

/// The AVX-512 int8 row kernels with and without GFNI (one CPU may have either) against the
/// scalar reference on the same int8 activations, called on whole matrices (the matmul tests
/// split rows into small tasks): one token (the decode kernel) and every batch of 2 to 16
/// (the tiles of `avx512_batch`), groups smaller than a chunk, of whole chunks and ragged,
/// columns not multiples of 8, 128 or a tile's pieces, rows past a group of 32.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_int8_rows_with_and_without_gfni_match_scalar() {
    if !Isa::Avx512.supported() {
        return;
    }
    let mut rng = Rng(0x5eed);
    let shapes = SHAPES.iter().copied().chain([(40, 2304), (70, 5632)]);
    for (rows, cols) in shapes {
        for gs in [8usize, 32, 64, 128, 256, 384, cols] {
            if gs > cols || !act::lanes_fit_groups(gs, cols) {
                continue;
            }
            let a = random_affine(&mut rng, rows, cols, 4, gs, false);
            let data = a.data(4, gs, gs % 3 == 0);
            let affine_rows = AffineRows::new(&data, cols, super::fp16::f16_to_f32_scalar);
            let token_counts: Vec<usize> =
                if rows * cols > 100_000 { vec![1, 2, 7, 9, 16] } else { (1..=16).collect() };
            for n_tokens in token_counts {
                let acts: Vec<act::Int8Activation> = (0..n_tokens)
                    .map(|_| {
                        let mut act = act::Int8Activation::default();
                        act.quantize(&rng.vec(cols));
                        act.update_group_sums(gs);
                        act
                    })
                    .collect();
                let mut buffer = Vec::new();
                let reference: Vec<f32> = (0..n_tokens)
                    .flat_map(|t| (0..rows).map(move |r| (t, r)))
                    .map(|(t, r)| dot_i8_scalar(affine_rows.row(r, &mut buffer), &acts[t]))
                    .collect();
                for gfni in [false, true] {
                    if gfni && !isa::has_gfni() {
                        continue;
                    }
                    let mut out = vec![f32::NAN; rows * n_tokens];
                    {
                        let dst = DisjointSlice::new(&mut out);
                        let rows_out = RowsOut { data: &dst, offset: 0, stride: rows };
                        let kernel =
                            if gfni { affine::avx512_decode::rows_gfni } else { affine::avx512_decode::rows_plain };
                        // SAFETY: AVX-512 VNNI (and GFNI when used) are present; all rows of
                        // every token fit `out`, and this thread alone writes it.
                        unsafe { kernel(&affine_rows, 0..rows, &acts, &mut buffer, rows_out) };
                    }
                    // To 1e-5 of the sum of the products' magnitudes (fp32 rounding grows with
                    // it: 2304 columns in groups of 8 sum 288 zero-point terms).
                    for (i, (&g, &e)) in out.iter().zip(&reference).enumerate() {
                        let (t, r) = (i / rows, i % rows);
                        let magnitude: f32 = (0..cols)
                            .map(|c| {
                                let g = r * cols.div_ceil(gs) + c / gs;
                                let w = a.scales[g] * (a.q[r * cols + c] as f32 - a.zeros[g] as f32);
                                (w * acts[t].value(c)).abs()
                            })
                            .sum();
                        let what = format!("{rows}x{cols} gs {gs} tokens {n_tokens} gfni {gfni} [{i}]");
                        assert!((g - e).abs() <= 1e-5 * magnitude + 1e-6, "{what}: {g} vs {e}");
                    }
                }
            }
        }
    }
}

/// The AVX-512 K-quant kernels, Q6_K's with and without GFNI (the table picks one by the
/// CPU), and the 32-value types' (tiles of eight blocks), called on whole matrices (the matmul
/// tests split rows into small tasks) against the scalar references (to 1e-5 of the sum of the
/// products' magnitudes, as the other block tests): one token and tiles of every size (1 to 16
/// tokens), one and several column chunks, one to three groups of 32 rows; for the 32-value
/// types, rows of fewer than eight blocks and rows that end in part of a group of eight.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_k_quant_kernels_match_scalar_on_whole_matrices() {
    use blocks::dot_i8::{
        dot_q4_0_scalar, dot_q4_1_scalar, dot_q4k_scalar, dot_q5k_scalar, dot_q6k_scalar, dot_q8_0_scalar,
    };
    if !Isa::Avx512.supported() {
        return;
    }
    type Dot = fn(&[u8], &blocks::activation::BlockActivation) -> f32;
    let mut kernels: Vec<(BlockType, blocks::BlockRowsI8, Dot, &str)> = vec![
        (BlockType::Q4K, blocks::avx512::rows_q4k, dot_q4k_scalar, "q4k"),
        (BlockType::Q5K, blocks::avx512::rows_q5k, dot_q5k_scalar, "q5k"),
        (BlockType::Q6K, blocks::avx512::rows_q6k, dot_q6k_scalar, "q6k"),
        (BlockType::Q4_0, blocks::avx512_tiles32::rows_q4_0, dot_q4_0_scalar, "q4_0"),
        (BlockType::Q4_1, blocks::avx512_tiles32::rows_q4_1, dot_q4_1_scalar, "q4_1"),
        (BlockType::Q8_0, blocks::avx512_tiles32::rows_q8_0, dot_q8_0_scalar, "q8_0"),
    ];
    if isa::has_gfni() {
        kernels.push((BlockType::Q6K, blocks::avx512::rows_q6k_gfni, dot_q6k_scalar, "q6k gfni"));
    }
    let mut rng = Rng(0x6a6);
    for (kind, kernel, dot, name) in kernels {
        let shapes: &[(usize, usize)] = if kind.elements() == 32 {
            &[(5, 32), (3, 224), (5, 256), (33, 2080), (70, 5664)]
        } else {
            &[(5, 256), (3, 2304), (33, 4096), (70, 5632)]
        };
        for &(rows, cols) in shapes {
            let values = random_blocks(&mut rng, kind, rows, cols);
            let w = BlockData { kind, values: &values };
            let dequantized = dequantized_rows(kind, &values, cols);
            let row_bytes = kind.row_bytes(cols).unwrap();
            for n_tokens in 1..=16 {
                let acts: Vec<blocks::activation::BlockActivation> = (0..n_tokens)
                    .map(|_| {
                        let mut a = blocks::activation::BlockActivation::default();
                        a.quantize(&rng.vec(cols));
                        a
                    })
                    .collect();
                let reference: Vec<f32> = (0..n_tokens)
                    .flat_map(|t| (0..rows).map(move |r| (t, r)))
                    .map(|(t, r)| dot(&values[r * row_bytes..(r + 1) * row_bytes], &acts[t]))
                    .collect();
                let mut out = vec![f32::NAN; rows * n_tokens];
                {
                    let dst = DisjointSlice::new(&mut out);
                    let rows_out = RowsOut { data: &dst, offset: 0, stride: rows };
                    // SAFETY: AVX-512 VNNI and F16C (and GFNI when used) are present; the
                    // activations have the rows' columns; all rows of every token fit `out`,
                    // and this thread alone writes it.
                    unsafe { kernel(&w, cols, 0..rows, &acts, rows_out) };
                }
                for (i, (&g, &e)) in out.iter().zip(&reference).enumerate() {
                    let (t, r) = (i / rows, i % rows);
                    let magnitude: f32 = (0..cols).map(|c| (dequantized[r * cols + c] * acts[t].value(c)).abs()).sum();
                    let what = format!("{name} {rows}x{cols} tokens {n_tokens} [{i}]");
                    assert!((g - e).abs() <= 1e-5 * magnitude + 1e-6, "{what}: {g} vs {e}");
                }
            }
        }
    }
}

/// The batch kernels copy a batch's activations into their own layout once per thread and
/// batch; a new input in the same buffers (the next matrix's, in one `Scratch`) is copied
/// again: every result equals a fresh scratch's.
#[test]
fn batch_kernels_restage_a_new_input_in_the_same_buffers() {
    let mut rng = Rng(0x57a6e);
    let (rows, cols, n_tokens) = (40, 512, 6);
    let values = random_blocks(&mut rng, BlockType::Q4K, rows, cols);
    let q6 = random_blocks(&mut rng, BlockType::Q6K, rows, cols);
    let q4_0 = random_blocks(&mut rng, BlockType::Q4_0, rows, cols);
    let affine = random_affine(&mut rng, rows, cols, 4, 128, false);
    let matrices = [
        Matrix { rows, cols, data: MatrixData::Blocks(BlockData { kind: BlockType::Q4K, values: &values }) },
        Matrix { rows, cols, data: MatrixData::Blocks(BlockData { kind: BlockType::Q6K, values: &q6 }) },
        Matrix { rows, cols, data: MatrixData::Blocks(BlockData { kind: BlockType::Q4_0, values: &q4_0 }) },
        Matrix { rows, cols, data: MatrixData::Affine(affine.data(4, 128, true)) },
    ];
    for k in choices() {
        let inputs: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(n_tokens * cols)).collect();
        let want: Vec<Vec<f32>> =
            inputs.iter().flat_map(|x| matrices.iter().map(|m| run(m, x, n_tokens, &k))).collect();
        let mut scratch = Scratch::default();
        let mut got = Vec::new();
        for x in &inputs {
            for m in &matrices {
                let mut out = vec![0.0; rows * n_tokens];
                matmul(&mut out, m, x, n_tokens, &mut scratch, &k);
                got.push(out);
            }
        }
        assert_eq!(got, want, "{:?}", k.isa());
    }
}

#[test]
fn shared_input_matmul_equals_one_matmul_per_matrix() {
    let mut rng = Rng(0xfeed);
    let cols = 256;
    for gs in [32usize, 128, cols] {
        let parts: Vec<Affine> =
            [40usize, 7, 33].iter().map(|&rows| random_affine(&mut rng, rows, cols, 4, gs, false)).collect();
        let mats: Vec<Matrix> = parts
            .iter()
            .zip([40usize, 7, 33])
            .enumerate()
            .map(|(i, (a, rows))| Matrix { rows, cols, data: MatrixData::Affine(a.data(4, gs, i == 1)) })
            .collect();
        for n_tokens in [1usize, 2, 13] {
            let x = rng.vec(n_tokens * cols);
            for k in choices() {
                let separate: Vec<Vec<f32>> = mats.iter().map(|m| run(m, &x, n_tokens, &k)).collect();
                let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![f32::NAN; m.rows * n_tokens]).collect();
                let (a, rest) = outs.split_at_mut(1);
                let (b, c) = rest.split_at_mut(1);
                let mut jobs = [(&mut a[0][..], &mats[0]), (&mut b[0][..], &mats[1]), (&mut c[0][..], &mats[2])];
                matmul_shared_input(&mut jobs, &x, n_tokens, &mut Scratch::default(), &k);
                assert_eq!(outs, separate, "gs {gs} tokens {n_tokens} {:?}", k.isa());
            }
        }
    }
}

#[test]
fn int8_activations_stay_close_to_exact() {
    // The int8 path trades a little accuracy for speed: measure how little on a wide layer.
    let mut rng = Rng(77);
    let (rows, cols, gs) = (64, 1024, 128);
    let a = random_affine(&mut rng, rows, cols, 4, gs, false);
    let m = Matrix { rows, cols, data: MatrixData::Affine(a.data(4, gs, false)) };
    let x = rng.vec(cols);
    let exact = run(&m, &x, 1, &exact_kernels(Isa::Scalar));
    let int8 = run(&m, &x, 1, &Kernels::new(Isa::Scalar, true).unwrap());
    let norm: f64 = exact.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let err: f64 = exact.iter().zip(&int8).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    assert!(err / norm < 2e-4, "relative error {}", err / norm);
}

#[test]
fn quantize_matches_hand_computed_values() {
    let mut q = QuantizedVec::default();
    q.quantize(&[1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0], 4);
    assert_eq!(q.scales, vec![1.0 / 127.0, 0.0]);
    // 0.5 * 127 = 63.5 rounds away from zero; 0.25 * 127 = 31.75 -> 32.
    assert_eq!(q.values, vec![127, -64, 32, 0, 0, 0, 0, 0]);
}

/// Random blocks of `kind` (`rows` x `cols`), valid once their fp16 scale fields are finite:
/// those are set to values in [2^-9, 2^-6).
fn random_blocks(rng: &mut Rng, kind: BlockType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * kind.row_bytes(cols).unwrap();
    let mut bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    let mut small = || (0x1800u16 + (rng.next_u64() % 0xc00) as u16).to_le_bytes();
    for block in bytes.chunks_exact_mut(kind.bytes()) {
        let fields: &[usize] = match kind {
            BlockType::F16 | BlockType::Q8_0 | BlockType::Q4_0 => &[0],
            BlockType::Q4_1 | BlockType::Q4K | BlockType::Q5K => &[0, 2],
            BlockType::Q6K => &[208],
            BlockType::Bf16 => &[],
        };
        for &at in fields {
            block[at..at + 2].copy_from_slice(&small());
        }
        if kind == BlockType::Bf16 {
            block[1] = 0x3c + (block[1] & 1); // exponent near 2^-7: finite
        }
    }
    bytes
}

/// Every row of a block matrix (`cols` columns) as the scalar reference dequantizes it.
fn dequantized_rows(kind: BlockType, values: &[u8], cols: usize) -> Vec<f32> {
    values
        .chunks_exact(kind.row_bytes(cols).unwrap())
        .flat_map(|row| {
            let mut out = vec![0.0f32; cols];
            blocks::dequantize_scalar(kind, row, &mut out);
            out
        })
        .collect()
}

/// The activation a block GEMM multiplies (`[n_tokens, cols]`, as it rounds it to int16),
/// where `k` runs this batch on one.
fn block_gemm_input(k: &Kernels, kind: BlockType, x: &[f32], n_tokens: usize, cols: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if k.block_gemm(kind).is_some() && n_tokens >= crate::kernels::matmul::BLOCK_GEMM_MIN_TOKENS {
        use blocks::gemm_k_avx512::{levels, pair_position, to_pair_order, BLOCK};
        let mut permuted = Vec::new();
        to_pair_order(kind, x, cols, &mut permuted);
        let mut xq = crate::kernels::affine::activation::Int16Activations::default();
        xq.quantize_to(&permuted, n_tokens, cols, BLOCK, levels(kind).unwrap());
        return Some((0..n_tokens * cols).map(|i| xq.value(i / cols, pair_position(kind, i % cols))).collect());
    }
    let _ = (k, kind, x, n_tokens, cols);
    None
}

#[test]
fn block_kernels_match_float64_dequantization() {
    let mut rng = Rng(0xb10c);
    for kind in BlockType::ALL {
        for (rows, cols) in [(1usize, 256usize), (3, 512), (17, 768), (40, 256), (5, 2048), (9, 32 * 7)] {
            if kind.row_bytes(cols).is_none() {
                continue; // K-quants: 224 columns are not whole blocks
            }
            let values = random_blocks(&mut rng, kind, rows, cols);
            let m = Matrix { rows, cols, data: MatrixData::Blocks(BlockData { kind, values: &values }) };
            // The reference dequantization of every row, then the products in float64.
            let w = dequantized_rows(kind, &values, cols);
            // The int16 GEMM's first batch, on the smaller matrices.
            let gemm = crate::kernels::matmul::BLOCK_GEMM_MIN_TOKENS;
            let token_counts: &[usize] =
                if rows * cols <= 10_240 { &[1, 3, 6, 13, 50, gemm] } else { &[1, 3, 6, 13, 50] };
            for &n_tokens in token_counts {
                let x = rng.vec(n_tokens * cols);
                let exact = |x_value: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
                    (0..n_tokens)
                        .flat_map(|t| (0..rows).map(move |r| (t, r)))
                        .map(|(t, r)| (0..cols).map(|c| w[r * cols + c] as f64 * x_value(t, c)).sum())
                        .collect()
                };
                let magnitude: Vec<f64> = (0..n_tokens)
                    .flat_map(|t| (0..rows).map(move |r| (t, r)))
                    .map(|(t, r)| (0..cols).map(|c| (w[r * cols + c] as f64 * x[t * cols + c] as f64).abs()).sum())
                    .collect();
                let close = |got: &[f32], want: &[f64], what: &str| {
                    for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
                        assert!((g as f64 - e).abs() <= 1e-5 * magnitude[i] + 1e-6, "{what} [{i}]: {g} vs {e}");
                    }
                };
                let acts: Vec<blocks::activation::BlockActivation> = (0..n_tokens)
                    .filter(|_| cols.is_multiple_of(blocks::activation::BLOCK))
                    .map(|t| {
                        let mut a = blocks::activation::BlockActivation::default();
                        a.quantize(&x[t * cols..(t + 1) * cols]);
                        a
                    })
                    .collect();
                let exact_f32 = exact(&|t, c| x[t * cols + c] as f64);
                for k in choices() {
                    let what = format!("{} {rows}x{cols} tokens {n_tokens} {:?}", kind.name(), k.isa());
                    close(&run(&m, &x, n_tokens, &exact_kernels(k.isa())), &exact_f32, &format!("exact {what}"));
                    let fast = run(&m, &x, n_tokens, &k);
                    if let Some(xq) = block_gemm_input(&k, kind, &x, n_tokens, cols) {
                        // The int16 GEMM: the same products with the activation as it rounds it.
                        let exact_i16 = exact(&|t, c| xq[t * cols + c] as f64);
                        close(&fast, &exact_i16, &format!("int16 {what}"));
                    } else if k.block_rows(kind).is_some() {
                        // int8 activations: the same products with the activation as quantized.
                        let exact_i8 = exact(&|t, c| acts[t].value(c) as f64);
                        close(&fast, &exact_i8, &format!("int8 {what}"));
                    } else {
                        close(&fast, &exact_f32, &format!("f32 {what}"));
                    }
                }
            }
        }
    }
}

/// Every table's int8 block kernels against the scalar references, on shapes with columns that
/// are not multiples of the SIMD kernels' steps (32, 96, 224, 800 for the 32-value types) and
/// odd row counts, so their tails run too; 2080 and 2304 are past the AVX-512 driver's 2048-column
/// chunks, with a partial last one, and 8448 (33 blocks) past the K-quant tiles' chunks of
/// 64 / tokens blocks for every tile size; 40 rows are more than a group of 32. Every batch
/// of 1 to 16 tokens (one or two tiles of every size).
#[test]
fn block_kernels_match_the_scalar_references() {
    let mut rng = Rng(0x5ca1);
    let reference = Kernels::new(Isa::Scalar, true).unwrap();
    for kind in BlockType::ALL {
        if reference.block_rows(kind).is_none() {
            continue;
        }
        let shapes: &[(usize, usize)] = if kind.elements() == 32 {
            &[(1, 32), (3, 64), (17, 96), (3, 224), (1, 256), (17, 288), (3, 800), (40, 1056), (17, 2080)]
        } else {
            &[(1, 256), (17, 256), (3, 512), (40, 1280), (17, 2304), (3, 8448)]
        };
        for &(rows, cols) in shapes {
            let values = random_blocks(&mut rng, kind, rows, cols);
            let m = Matrix { rows, cols, data: MatrixData::Blocks(BlockData { kind, values: &values }) };
            let w = dequantized_rows(kind, &values, cols);
            for n_tokens in 1..=16 {
                let x = rng.vec(n_tokens * cols);
                let want = run(&m, &x, n_tokens, &reference);
                for k in choices() {
                    if k.block_rows(kind).is_none() {
                        continue;
                    }
                    if block_gemm_input(&k, kind, &x, n_tokens, cols).is_some() {
                        continue; // int16 activations: against float64 in the test above
                    }
                    let got = run(&m, &x, n_tokens, &k);
                    for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                        let (t, r) = (i / rows, i % rows);
                        let magnitude: f32 = (0..cols).map(|c| (w[r * cols + c] * x[t * cols + c]).abs()).sum();
                        let what = format!("{} {rows}x{cols} tokens {n_tokens} {:?} [{i}]", kind.name(), k.isa());
                        assert!((g - e).abs() <= 1e-5 * magnitude + 1e-6, "{what}: {g} vs {e}");
                    }
                }
            }
        }
    }
}

/// Every SIMD table has an int8 row kernel for each block type the scalar reference has one
/// for (NEON's K-quants included), so the two tests above check them rather than skip them.
#[test]
fn every_simd_table_has_every_block_kernel() {
    let reference = Kernels::new(Isa::Scalar, true).unwrap();
    for k in choices().into_iter().filter(|k| k.isa() != Isa::Portable) {
        for kind in BlockType::ALL {
            assert_eq!(
                k.block_rows(kind).is_some(),
                reference.block_rows(kind).is_some(),
                "{} {:?}",
                kind.name(),
                k.isa()
            );
        }
    }
}

#[test]
fn block_activation_stays_close_to_its_input() {
    let mut rng = Rng(0xac7);
    let x: Vec<f32> = rng.vec(512).into_iter().map(|v| v * 3.0).collect();
    let mut a = blocks::activation::BlockActivation::default();
    a.quantize(&x);
    for (c, &v) in x.iter().enumerate() {
        let d = a.d[c / 32];
        assert!((a.value(c) - v).abs() <= d / 2.0 + 1e-6, "column {c}");
    }
    // The AVX-512 K-quant lane orders: dword (u, L, t) of a block at byte 64 u + 16 L + 4 t.
    assert_eq!(a.q_k4[4], a.q[32]); // (0, 0, 1): sub-block 1
    assert_eq!(a.q_k4[64 + 16 * 2 + 4 * 3 + 1], a.q[32 * 7 + 4 + 1]); // (1, 2, 3): sub-block 7
    assert_eq!(a.q_q6[64 * 3 + 16 + 4 * 2], a.q[64 * 2 + 16 + 12]); // (3, 1, 2): sub-block 9
    assert_eq!(a.offsets_q6[4 + 2], -32 * a.sums16[9]); // lane (L 1, t 2)
    assert_eq!(a.d_k4[16 + 4 * 3 + 2], a.d[8 + 6]);
    assert_eq!(a.sums16[3], a.q[48..64].iter().map(|&v| v as i32).sum::<i32>());
}
