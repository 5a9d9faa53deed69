//! Instruction sets the kernels are written for, and which of them this CPU has.

/// Which implementation runs the kernels. Every one of them is tested against `Scalar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// The reference kernels: plain loops in llama2.c's summation order.
    Scalar,
    /// Portable Rust, vectorized by the compiler for the baseline target.
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI; GFNI used where present.
    Avx512,
    /// aarch64 NEON with the dot-product extension.
    Neon,
}

impl Isa {
    /// Every implementation, slowest first (on its own architecture).
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Every name, in `ALL`'s order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Isa::ALL.into_iter().map(Isa::name)
    }

    /// Can this CPU run it? The one place the CPU's features are read (see `Kernels::new`).
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar | Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            // F16C (fp16 scales and KV cache) came with or before AVX2 on every CPU that has it.
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // It runs the AVX2 kernels where it has no wider ones (attention, fp32).
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest implementation this CPU supports.
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon].into_iter().find(|i| i.supported()).unwrap_or(Isa::Portable)
    }

    /// Every implementation this CPU supports, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }
}

/// True when the CPU has GFNI (every AVX-512 x86 since Ice Lake and Zen 4; not Cascade Lake).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_gfni() -> bool {
    is_x86_feature_detected!("gfni")
}
