//! The kernel table: one set of function pointers per instruction set, made once per model.
//!
//! `Kernels::new` is the only way to get one, and it refuses an instruction set this CPU lacks.
//! Every call into an ISA-specific kernel goes through a table's entry, so the one argument
//! for running those kernels' instructions is here: **a table for `isa` exists only where
//! `isa.supported()` held when it was made** (CPU features do not go away while a process
//! runs). The entries that take raw outputs (`RowsI8`, `GemmF32`, `GemmI16`) stay `unsafe fn`
//! for their output contract alone; the others are safe to call with any arguments.

use half::f16;

use super::attention::{self, AttentionKernels, CacheValue};
use super::isa::Isa;
use super::{affine, blocks, dot_f32, fp16, q8_0};
use crate::error::{Error, Result};

/// How a model's matrices are multiplied: the instruction set's kernels, and whether 4-bit
/// weights quantize their activation to int8 (fast) or keep it fp32 (`exact`).
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    int8_activations: bool,
    fp16_in_hardware: bool,
    pub(crate) dot_f32: fn(&[f32], &[f32]) -> f32,
    pub(crate) dot_q8: q8_0::DotQ8,
    pub(crate) dot_affine_f32: affine::DotF32,
    /// A row of llama.cpp blocks (GGUF) to fp32, for `dot_f32` to multiply.
    pub(crate) dequantize_blocks: blocks::Dequantize,
    /// Q4_K, Q5_K, Q6_K, Q8_0, Q4_0 and Q4_1 rows x int8 activations; `None`: rows are
    /// dequantized instead.
    pub(crate) rows_q4k: Option<blocks::BlockRowsI8>,
    pub(crate) rows_q5k: Option<blocks::BlockRowsI8>,
    pub(crate) rows_q6k: Option<blocks::BlockRowsI8>,
    pub(crate) rows_q8_0: Option<blocks::BlockRowsI8>,
    pub(crate) rows_q4_0: Option<blocks::BlockRowsI8>,
    pub(crate) rows_q4_1: Option<blocks::BlockRowsI8>,
    /// Q4_K and Q6_K batches as int16 `vpdpwssd` GEMMs (AVX-512 VNNI).
    #[cfg(target_arch = "x86_64")]
    pub(crate) gemm_q4k: Option<blocks::BlockGemm>,
    #[cfg(target_arch = "x86_64")]
    pub(crate) gemm_q6k: Option<blocks::BlockGemm>,
    /// 4-bit rows x int8 activations; `None` where the fp32 kernels are faster (portable).
    pub(crate) rows_i8: Option<affine::RowsI8>,
    /// The fp32 GEMM for 4-bit batches (x86).
    pub(crate) gemm_f32: Option<affine::GemmF32>,
    /// The int16 `vpdpwssd` GEMM for 4-bit batches (AVX-512 VNNI).
    #[cfg(target_arch = "x86_64")]
    pub(crate) gemm_i16: Option<affine::GemmI16>,
    pub(crate) f16_to_f32: fp16::F16ToF32,
    pub(crate) f32_to_f16: fp16::F32ToF16,
    pub(crate) attention_f32: AttentionKernels<f32>,
    pub(crate) attention_f16: AttentionKernels<f16>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).field("int8_activations", &self.int8_activations).finish()
    }
}

impl Kernels {
    /// The table for `isa`, or an `Argument` error when this CPU cannot run it.
    /// `int8_activations = false` is the exact path for 4-bit weights.
    pub fn new(isa: Isa, int8_activations: bool) -> Result<Kernels> {
        if !isa.supported() {
            let available: Vec<&str> = Isa::available().into_iter().map(Isa::name).collect();
            return Err(Error::Argument(format!(
                "this CPU cannot run the {} kernels (it runs {})",
                isa.name(),
                available.join(", ")
            )));
        }
        Ok(Kernels::for_supported(isa, int8_activations))
    }

    /// The fastest table this CPU runs, with int8 activations.
    pub fn best() -> Kernels {
        // `detect` returns a supported instruction set.
        Kernels::for_supported(Isa::detect(), true)
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn int8_activations(&self) -> bool {
        self.int8_activations
    }

    /// True when these kernels convert fp16 in hardware (F16C), so an fp16 KV cache costs
    /// attention nothing.
    pub fn fp16_in_hardware(&self) -> bool {
        self.fp16_in_hardware
    }

    /// Attention's kernels over a cache of `T`.
    pub fn attention<T: TableCache>(&self) -> AttentionKernels<T> {
        T::attention(self)
    }

    /// `to[i] = T::from_f32(from[i])`, the KV cache's store.
    pub fn store<T: TableCache>(&self, from: &[f32], to: &mut [T]) {
        T::store(self, from, to)
    }

    /// The int8 row kernel for a block type, where the table has one.
    pub(crate) fn block_rows(&self, kind: crate::weights::BlockType) -> Option<blocks::BlockRowsI8> {
        match kind {
            crate::weights::BlockType::Q4K => self.rows_q4k,
            crate::weights::BlockType::Q5K => self.rows_q5k,
            crate::weights::BlockType::Q6K => self.rows_q6k,
            crate::weights::BlockType::Q8_0 => self.rows_q8_0,
            crate::weights::BlockType::Q4_0 => self.rows_q4_0,
            crate::weights::BlockType::Q4_1 => self.rows_q4_1,
            _ => None,
        }
    }

    /// The int16 GEMM for batches of a block type, where the table has one (and integer
    /// activations are allowed).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn block_gemm(&self, kind: crate::weights::BlockType) -> Option<blocks::BlockGemm> {
        if !self.int8_activations {
            return None;
        }
        match kind {
            crate::weights::BlockType::Q4K => self.gemm_q4k,
            crate::weights::BlockType::Q6K => self.gemm_q6k,
            _ => None,
        }
    }

    /// Only for an `isa` that `supported()` (the module's invariant).
    fn for_supported(isa: Isa, int8_activations: bool) -> Kernels {
        debug_assert!(isa.supported());
        let scalar = Kernels {
            isa,
            int8_activations,
            fp16_in_hardware: false,
            dot_f32: dot_f32::dot_scalar,
            dot_q8: q8_0::dot_scalar,
            dot_affine_f32: affine::dot_f32_scalar,
            dequantize_blocks: blocks::dequantize_scalar,
            rows_q4k: Some(blocks::rows_q4k_scalar),
            rows_q5k: Some(blocks::rows_q5k_scalar),
            rows_q6k: Some(blocks::rows_q6k_scalar),
            rows_q8_0: Some(blocks::rows_q8_0_scalar),
            rows_q4_0: Some(blocks::rows_q4_0_scalar),
            rows_q4_1: Some(blocks::rows_q4_1_scalar),
            rows_i8: Some(affine::rows_i8_scalar),
            gemm_f32: None,
            #[cfg(target_arch = "x86_64")]
            gemm_i16: None,
            #[cfg(target_arch = "x86_64")]
            gemm_q4k: None,
            #[cfg(target_arch = "x86_64")]
            gemm_q6k: None,
            f16_to_f32: fp16::f16_to_f32_scalar,
            f32_to_f16: fp16::f32_to_f16_scalar,
            attention_f32: AttentionKernels { scores: attention::scores_scalar, sum: attention::sum_scalar },
            attention_f16: AttentionKernels { scores: attention::scores_scalar, sum: attention::sum_scalar },
        };
        let portable = Kernels {
            dot_f32: dot_f32::dot_portable,
            dot_q8: q8_0::dot_portable,
            dot_affine_f32: affine::dot_f32_portable,
            rows_i8: None,
            rows_q4k: None,
            rows_q5k: None,
            rows_q6k: None,
            rows_q8_0: None,
            rows_q4_0: None,
            rows_q4_1: None,
            attention_f32: AttentionKernels { scores: attention::scores_portable, sum: attention::sum_scalar },
            ..scalar
        };
        match isa {
            Isa::Scalar => scalar,
            Isa::Portable => portable,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => x86_table(isa, portable),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon_table(portable),
            #[allow(unreachable_patterns)]
            _ => unreachable!("{isa:?} is not supported on this architecture"),
        }
    }
}

/// The AVX2 and AVX-512 tables. Every closure here calls a `#[target_feature]` kernel; they
/// are only reachable through a table made for a supported `isa` (the module's invariant).
/// Both need AVX2, FMA and F16C, which `Isa::Avx512.supported()` includes.
#[cfg(target_arch = "x86_64")]
fn x86_table(isa: Isa, portable: Kernels) -> Kernels {
    use super::affine::{avx2_decode, avx512_decode, gemm_f32_x86, gemm_i16_avx512};
    let avx2 = Kernels {
        fp16_in_hardware: true,
        // SAFETY: the table invariant (AVX2, FMA, F16C); `dot` takes any lengths.
        dot_f32: |a, b| unsafe { dot_f32::avx2::dot(a, b) },
        dot_q8: |w, ws, x, xs, gs| {
            assert!(x.len() >= w.len(), "Q8_0 activation shorter than the row");
            if gs == 0 || !gs.is_multiple_of(32) {
                return q8_0::dot_portable(w, ws, x, xs, gs);
            }
            // SAFETY: the table invariant; gs is a positive multiple of 32 and x covers w;
            // the scales are read with bounds checks.
            unsafe { q8_0::avx2::dot(w, ws, x, xs, gs) }
        },
        rows_i8: Some(avx2_decode::rows),
        gemm_f32: Some(gemm_f32_x86::gemm_avx2),
        rows_q4k: Some(blocks::avx2::rows_q4k),
        rows_q5k: Some(blocks::avx2::rows_q5k),
        rows_q6k: Some(blocks::avx2::rows_q6k),
        rows_q8_0: Some(blocks::avx2::rows_q8_0),
        rows_q4_0: Some(blocks::avx2::rows_q4_0),
        rows_q4_1: Some(blocks::avx2::rows_q4_1),
        // SAFETY: the table invariant (F16C); any lengths are fine.
        f16_to_f32: |bytes, out| unsafe { fp16::f16c::f16_to_f32(bytes, out) },
        // SAFETY: the table invariant (F16C); any lengths are fine.
        f32_to_f16: |values, out| unsafe { fp16::f16c::f32_to_f16(values, out) },
        attention_f32: AttentionKernels {
            // SAFETY: the table invariant; any lengths are fine.
            scores: |q, keys, scale, att| unsafe { attention::avx2::scores_f32(q, keys, scale, att) },
            // SAFETY: the table invariant; any lengths are fine.
            sum: |att, values, out| unsafe { attention::avx2::sum_f32(att, values, out) },
        },
        attention_f16: AttentionKernels {
            // SAFETY: the table invariant; any lengths are fine.
            scores: |q, keys, scale, att| unsafe { attention::avx2::scores_f16(q, keys, scale, att) },
            // SAFETY: the table invariant; any lengths are fine.
            sum: |att, values, out| unsafe { attention::avx2::sum_f16(att, values, out) },
        },
        ..portable
    };
    if isa == Isa::Avx2 {
        return avx2;
    }
    Kernels {
        // GFNI is checked here, once, like the instruction set itself.
        rows_i8: Some(if super::isa::has_gfni() { avx512_decode::rows_gfni } else { avx512_decode::rows_plain }),
        gemm_f32: Some(gemm_f32_x86::gemm_avx512),
        gemm_i16: Some(gemm_i16_avx512::gemm),
        gemm_q4k: Some(blocks::gemm_k_avx512::gemm_q4k),
        gemm_q6k: Some(blocks::gemm_k_avx512::gemm_q6k),
        rows_q4k: Some(blocks::avx512::rows_q4k),
        rows_q5k: Some(blocks::avx512::rows_q5k),
        rows_q6k: Some(if super::isa::has_gfni() { blocks::avx512::rows_q6k_gfni } else { blocks::avx512::rows_q6k }),
        rows_q8_0: Some(blocks::avx512_tiles32::rows_q8_0),
        rows_q4_0: Some(blocks::avx512_tiles32::rows_q4_0),
        rows_q4_1: Some(blocks::avx512_tiles32::rows_q4_1),
        ..avx2
    }
}

/// The NEON table: `sdot` for 4-bit rows, Q8_0 and the GGUF block types (K-quants, Q8_0,
/// Q4_0, Q4_1); portable Rust for the rest.
#[cfg(target_arch = "aarch64")]
fn neon_table(portable: Kernels) -> Kernels {
    Kernels {
        dot_q8: |w, ws, x, xs, gs| {
            assert!(x.len() >= w.len(), "Q8_0 activation shorter than the row");
            if gs == 0 || !gs.is_multiple_of(16) {
                return q8_0::dot_portable(w, ws, x, xs, gs);
            }
            // SAFETY: the table invariant (dotprod); gs is a positive multiple of 16 and x
            // covers w; the scales are read with bounds checks.
            unsafe { q8_0::neon::dot(w, ws, x, xs, gs) }
        },
        rows_i8: Some(affine::rows_i8_neon),
        rows_q4k: Some(blocks::neon_k::rows_q4k),
        rows_q5k: Some(blocks::neon_k::rows_q5k),
        rows_q6k: Some(blocks::neon_k::rows_q6k),
        rows_q8_0: Some(blocks::neon_q4::rows_q8_0),
        rows_q4_0: Some(blocks::neon_q4::rows_q4_0),
        rows_q4_1: Some(blocks::neon_q4::rows_q4_1),
        ..portable
    }
}

/// A KV cache element type the table has kernels for.
pub trait TableCache: CacheValue {
    fn attention(k: &Kernels) -> AttentionKernels<Self>;
    fn store(k: &Kernels, from: &[f32], to: &mut [Self]);
}

impl TableCache for f32 {
    fn attention(k: &Kernels) -> AttentionKernels<f32> {
        k.attention_f32
    }
    fn store(_: &Kernels, from: &[f32], to: &mut [f32]) {
        to.copy_from_slice(from);
    }
}

impl TableCache for f16 {
    fn attention(k: &Kernels) -> AttentionKernels<f16> {
        k.attention_f16
    }
    fn store(k: &Kernels, from: &[f32], to: &mut [f16]) {
        (k.f32_to_f16)(from, to)
    }
}
