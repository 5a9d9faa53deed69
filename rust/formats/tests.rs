//! The readers of untrusted bytes (`llama2c`, `l2rs`) on small files of every encoding: every
//! truncation point is an error, and hundreds of random byte flips never panic, neither while
//! reading nor while running the model on what was read.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::read;
use crate::kernels::{Isa, Kernels};
use crate::model::Model;
use crate::test_rng::Rng;

/// dim 8, hidden 12, 2 layers, 2 heads of 4 (1 kv head), vocab 10, seq_len 4.
const SHAPE: [i32; 7] = [8, 12, 2, 2, 1, 10, 4];

/// Little-endian fp32 values in [-0.5, 0.5).
fn f32_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| (rng.next_f32() / 2.0).to_le_bytes()).collect()
}

fn ints(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A llama2.c file, its bytes laid out as llama2.c's own export writes them (counted here
/// independently of the reader).
fn llama2c_file(version: i32, shared: bool, rng: &mut Rng) -> Vec<u8> {
    let [dim, hidden, layers, heads, kv_heads, vocab, seq_len] = SHAPE.map(|v| v as usize);
    let hs = dim / heads;
    let kv_dim = kv_heads * hs;
    let per_layer = [dim * dim, kv_dim * dim, kv_dim * dim, dim * dim, hidden * dim, dim * hidden, hidden * dim];
    let mut out = Vec::new();
    match version {
        0 => {
            let mut header = SHAPE;
            header[5] = if shared { vocab as i32 } else { -(vocab as i32) };
            out.extend(ints(&header));
            out.extend(f32_bytes(rng, vocab * dim + layers * dim));
            for n in per_layer[..4].iter() {
                out.extend(f32_bytes(rng, layers * n));
            }
            out.extend(f32_bytes(rng, layers * dim));
            for n in per_layer[4..].iter() {
                out.extend(f32_bytes(rng, layers * n));
            }
            out.extend(f32_bytes(rng, dim + seq_len * hs)); // final norm, both RoPE tables
            if !shared {
                out.extend(f32_bytes(rng, vocab * dim));
            }
        }
        _ => {
            out.extend(0x616b_3432u32.to_le_bytes());
            out.extend(ints(&[version]));
            out.extend(ints(&SHAPE));
            out.push(shared as u8);
            let group = 4usize;
            if version == 2 {
                out.extend(ints(&[group as i32]));
            }
            out.resize(256, 0);
            out.extend(f32_bytes(rng, 2 * layers * dim + dim)); // norms
            let mut matrices = vec![vocab * dim];
            for n in per_layer {
                matrices.extend(std::iter::repeat_n(n, layers));
            }
            if !shared {
                matrices.push(vocab * dim);
            }
            for n in matrices {
                if version == 2 {
                    out.extend((0..n).map(|_| rng.next_u64() as u8));
                    out.extend(f32_bytes(rng, n / group));
                } else {
                    out.extend(f32_bytes(rng, n));
                }
            }
        }
    }
    out
}

/// A llama2rs file holding every encoding: fp32, Q8_0, 4-bit with fp16 scales and act-order,
/// 8-bit with fp32 scales, and a separate classifier.
fn l2rs_file(rng: &mut Rng) -> Vec<u8> {
    let [dim, hidden, layers, heads, kv_heads, vocab, seq_len] = SHAPE.map(|v| v as usize);
    let kv_dim = kv_heads * (dim / heads);
    let group = 4usize;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add =
        |name: String, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>| tensors.push((name, dtype, shape, data));
    add("tokenizer".into(), Dtype::U8, vec![5], b"tok!\n".to_vec());
    add("rms_final".into(), Dtype::F32, vec![dim], f32_bytes(rng, dim));
    add("token_embedding.weight".into(), Dtype::F32, vec![vocab, dim], f32_bytes(rng, vocab * dim));
    add(
        "classifier.q8_0".into(),
        Dtype::I8,
        vec![vocab, dim],
        (0..vocab * dim).map(|_| rng.next_u64() as u8).collect(),
    );
    add("classifier.q8_0_scales".into(), Dtype::F32, vec![vocab, dim / group], f32_bytes(rng, vocab * dim / group));
    for l in 0..layers {
        let p = format!("layers.{l}");
        add(format!("{p}.rms_att"), Dtype::F32, vec![dim], f32_bytes(rng, dim));
        add(format!("{p}.rms_ffn"), Dtype::F32, vec![dim], f32_bytes(rng, dim));
        for (m, rows, cols) in [
            ("wq", dim, dim),
            ("wk", kv_dim, dim),
            ("wv", kv_dim, dim),
            ("wo", dim, dim),
            ("w1", hidden, dim),
            ("w2", dim, hidden),
            ("w3", hidden, dim),
        ] {
            let groups = cols.div_ceil(group);
            let four_bit = m != "wv";
            let (bits, row_bytes) = if four_bit { (4, cols.div_ceil(2)) } else { (8, cols) };
            add(
                format!("{p}.{m}.q{bits}"),
                Dtype::U8,
                vec![rows, row_bytes],
                (0..rows * row_bytes).map(|_| rng.next_u64() as u8).collect(),
            );
            let scales: Vec<u8> = if four_bit {
                (0..rows * groups).flat_map(|_| (0x2000u16 + (rng.next_u64() % 0x1000) as u16).to_le_bytes()).collect()
            } else {
                f32_bytes(rng, rows * groups)
            };
            add(format!("{p}.{m}.scales"), if four_bit { Dtype::F16 } else { Dtype::F32 }, vec![rows, groups], scales);
            add(
                format!("{p}.{m}.zeros"),
                Dtype::U8,
                vec![rows, groups],
                (0..rows * groups).map(|_| rng.next_u64() as u8 & 15).collect(),
            );
            if m == "w2" {
                let perm: Vec<u8> = (0..cols as i32).rev().flat_map(|i| i.to_le_bytes()).collect();
                add(format!("{p}.{m}.perm"), Dtype::I32, vec![cols], perm);
            }
        }
    }
    let config = format!(
        r#"{{"dim": {dim}, "hidden_dim": {hidden}, "n_layers": {layers}, "n_heads": {heads}, "n_kv_heads": {kv_heads}, "vocab_size": {vocab}, "seq_len": {seq_len}, "norm_eps": 1e-5, "rope_theta": 10000.0, "rope_layout": "interleaved", "bos_id": 1, "eos_id": 2}}"#
    );
    let metadata: HashMap<String, String> = [
        ("format", "llama2rs".to_string()),
        ("format_version", "2".to_string()),
        ("config", config),
        ("affine_group_size", group.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, Some(metadata)).unwrap()
}

/// A GGUF file with one matrix of every block type we run (dim 256, so the K-quants' 256-value
/// blocks fit), a tokenizer, and random block bytes whose fp16 scales are finite.
fn gguf_file(rng: &mut Rng) -> Vec<u8> {
    use crate::weights::BlockType;
    let (dim, hidden, heads, kv_heads, vocab, seq_len) = (256usize, 256usize, 4usize, 2usize, 16usize, 8usize);
    let kv_dim = kv_heads * dim / heads;
    let string = |s: &[u8]| -> Vec<u8> { [&(s.len() as u64).to_le_bytes()[..], s].concat() };
    let mut kv: Vec<u8> = Vec::new();
    let mut n_kv = 0u64;
    let mut key = |kv: &mut Vec<u8>, name: &str, kind: u32, value: Vec<u8>| {
        kv.extend(string(name.as_bytes()));
        kv.extend(kind.to_le_bytes());
        kv.extend(value);
        n_kv += 1;
    };
    key(&mut kv, "general.architecture", 8, string(b"llama"));
    for (name, value) in [
        ("llama.context_length", seq_len),
        ("llama.embedding_length", dim),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", hidden),
        ("llama.attention.head_count", heads),
        ("llama.attention.head_count_kv", kv_heads),
        ("llama.rope.dimension_count", dim / heads),
    ] {
        key(&mut kv, name, 4, (value as u32).to_le_bytes().to_vec());
    }
    key(&mut kv, "llama.attention.layer_norm_rms_epsilon", 6, 1e-5f32.to_le_bytes().to_vec());
    key(&mut kv, "llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec());
    key(&mut kv, "tokenizer.ggml.model", 8, string(b"llama"));
    let array = |item: u32, count: usize, items: Vec<u8>| -> Vec<u8> {
        [&item.to_le_bytes()[..], &(count as u64).to_le_bytes(), &items].concat()
    };
    let tokens: Vec<u8> = (0..vocab).flat_map(|i| string(format!("tok{i}").as_bytes())).collect();
    key(&mut kv, "tokenizer.ggml.tokens", 9, array(8, vocab, tokens));
    key(&mut kv, "tokenizer.ggml.scores", 9, array(6, vocab, f32_bytes(rng, vocab)));
    key(
        &mut kv,
        "tokenizer.ggml.token_type",
        9,
        array(5, vocab, (0..vocab as i32).flat_map(|_| 1i32.to_le_bytes()).collect()),
    );
    key(&mut kv, "tokenizer.ggml.bos_token_id", 4, 1u32.to_le_bytes().to_vec());
    key(&mut kv, "tokenizer.ggml.eos_token_id", 4, 2u32.to_le_bytes().to_vec());
    // (name, rows, cols, ggml type id, block type or None for F32)
    let tensors: Vec<(&str, usize, usize, u32, Option<BlockType>)> = vec![
        ("token_embd.weight", vocab, dim, 12, Some(BlockType::Q4K)),
        ("output_norm.weight", 1, dim, 0, None),
        ("output.weight", vocab, dim, 14, Some(BlockType::Q6K)),
        ("blk.0.attn_norm.weight", 1, dim, 0, None),
        ("blk.0.attn_q.weight", dim, dim, 2, Some(BlockType::Q4_0)),
        ("blk.0.attn_k.weight", kv_dim, dim, 3, Some(BlockType::Q4_1)),
        ("blk.0.attn_v.weight", kv_dim, dim, 8, Some(BlockType::Q8_0)),
        ("blk.0.attn_output.weight", dim, dim, 13, Some(BlockType::Q5K)),
        ("blk.0.ffn_norm.weight", 1, dim, 0, None),
        ("blk.0.ffn_gate.weight", hidden, dim, 1, Some(BlockType::F16)),
        ("blk.0.ffn_up.weight", hidden, dim, 30, Some(BlockType::Bf16)),
        ("blk.0.ffn_down.weight", dim, hidden, 0, None),
    ];
    let mut infos = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, rows, cols, type_id, kind) in &tensors {
        infos.extend(string(name.as_bytes()));
        let ne: Vec<u64> = if *rows == 1 { vec![*cols as u64] } else { vec![*cols as u64, *rows as u64] };
        infos.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            infos.extend(d.to_le_bytes());
        }
        infos.extend(type_id.to_le_bytes());
        infos.extend((data.len() as u64).to_le_bytes());
        let bytes = match kind {
            None => f32_bytes(rng, rows * cols),
            Some(kind) => {
                let n = rows * kind.row_bytes(*cols).unwrap();
                let mut b: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                // Finite fp16 fields: every 16-bit word of F16/BF16, and each block's d/dmin.
                let small = |rng: &mut Rng| (0x1c00u16 + (rng.next_u64() % 0x800) as u16).to_le_bytes();
                for block in b.chunks_exact_mut(kind.bytes()) {
                    let at: &[usize] = match kind {
                        BlockType::F16 | BlockType::Bf16 | BlockType::Q8_0 | BlockType::Q4_0 => &[0],
                        BlockType::Q4_1 | BlockType::Q4K | BlockType::Q5K => &[0, 2],
                        BlockType::Q6K => &[208],
                    };
                    for &i in at {
                        block[i..i + 2].copy_from_slice(&small(rng));
                    }
                    if *kind == BlockType::Bf16 {
                        block[1] = 0x3c; // about 2^-7: finite
                    }
                }
                b
            }
        };
        data.extend(bytes);
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(n_kv.to_le_bytes());
    out.extend(kv);
    out.extend(infos);
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.extend(data);
    out
}

/// Every file the tests corrupt, by name.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng(0x5eed_f11e);
    vec![
        ("llama2c legacy, shared classifier", llama2c_file(0, true, &mut rng)),
        ("llama2c legacy, separate classifier", llama2c_file(0, false, &mut rng)),
        ("llama2c v1", llama2c_file(1, false, &mut rng)),
        ("llama2c v2 (Q8_0)", llama2c_file(2, true, &mut rng)),
        ("llama2rs", l2rs_file(&mut rng)),
        ("gguf", gguf_file(&mut rng)),
    ]
}

#[test]
fn the_test_files_are_valid() {
    for (what, bytes) in files() {
        let contents = read(Path::new(what), &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        let dim = if what == "gguf" { 256 } else { SHAPE[0] as usize };
        assert_eq!(contents.config.dim, dim, "{what}");
    }
}

#[test]
fn every_truncation_is_an_error_and_so_is_a_trailing_byte() {
    for (what, bytes) in files() {
        for len in 0..bytes.len() {
            let result = catch_unwind(|| read(Path::new(what), &bytes[..len]).map(|_| ()));
            match result {
                Ok(Err(_)) => {}
                Ok(Ok(())) => panic!("{what}: a file cut to {len} of {} bytes was accepted", bytes.len()),
                Err(_) => panic!("{what}: a file cut to {len} of {} bytes panicked the reader", bytes.len()),
            }
        }
        // (GGUF, like safetensors, may carry bytes after its last tensor.)
        if what.starts_with("llama2c") {
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(read(Path::new(what), &longer).is_err(), "{what}: a trailing byte was accepted");
        }
    }
}

#[test]
fn random_byte_flips_never_panic_reading_or_running() {
    let dir = std::env::temp_dir().join(format!("llama2rs-flips-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0xf1195);
    let kernels: Vec<Kernels> = Isa::available().into_iter().map(|isa| Kernels::new(isa, true).unwrap()).collect();
    let (mut accepted, mut refused) = (0, 0);
    for (what, bytes) in files() {
        for trial in 0..80 {
            let mut flipped = bytes.clone();
            // Mostly the header, where the structure is; the rest anywhere.
            let header = if what == "llama2rs" {
                (u64::from_le_bytes(bytes[..8].try_into().unwrap()) + 8) as usize
            } else {
                256
            };
            for _ in 0..1 + rng.below(3) {
                let at = if rng.below(4) > 0 { rng.below(header.min(flipped.len())) } else { rng.below(flipped.len()) };
                flipped[at] ^= 1 << rng.below(8);
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| read(Path::new(what), &flipped).is_ok()));
            match outcome {
                Ok(true) => accepted += 1,
                Ok(false) => {
                    refused += 1;
                    continue;
                }
                Err(_) => panic!("{what}: flip trial {trial} panicked the reader"),
            }
            // What the reader accepted must run: every ISA, a few positions.
            let path = dir.join(format!("{trial}.bin"));
            std::fs::write(&path, &flipped).unwrap();
            for k in &kernels {
                let ran = catch_unwind(AssertUnwindSafe(|| {
                    let model = Model::open_with(&path, Some(1), *k, None).expect("opened once already");
                    let mut state = model.new_state().unwrap();
                    for (pos, token) in [1u32, 5, 9].into_iter().enumerate() {
                        model.forward(&mut state, token, pos).unwrap();
                    }
                    model.logits(&[1, 2, 3, 4]).unwrap();
                }));
                assert!(ran.is_ok(), "{what}: flip trial {trial} panicked the forward pass on {:?}", k.isa());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    // Both outcomes happen: flips in the data are accepted, flips in the header are not.
    assert!(accepted > 20 && refused > 20, "accepted {accepted}, refused {refused}");
}

#[test]
fn sequences_run_together_give_the_logits_each_gives_alone() {
    // Three sequences at different positions, some feeding two tokens and some one, in one
    // pass; against each sequence run alone from the same cache. Every file, every kernel set.
    let dir = std::env::temp_dir().join(format!("llama2rs-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernels: Vec<Kernels> = Isa::available().into_iter().map(|isa| Kernels::new(isa, true).unwrap()).collect();
    for (what, bytes) in files() {
        let path = dir.join("model.bin");
        std::fs::write(&path, &bytes).unwrap();
        for k in &kernels {
            let model = Model::open_with(&path, Some(2), *k, None).unwrap();
            let vocab = model.config().vocab_size;
            let prompts: [&[u32]; 3] = [&[1, 5], &[2], &[3, 4, 6]];
            let next: [&[u32]; 3] = [&[7], &[8, 9], &[0]];
            let mut alone = Vec::new();
            let mut states = Vec::new();
            for (prompt, next) in prompts.iter().zip(next) {
                let mut state = model.new_state().unwrap();
                model.forward_batch(&mut state, prompt, 0, false).unwrap();
                states.push(state.clone());
                alone.push(model.forward_batch(&mut state, next, prompt.len(), false).unwrap().to_vec());
            }
            let mut acts = crate::model::Activations::new(model.config());
            let mut refs: Vec<&mut crate::model::State> = states.iter_mut().collect();
            let positions: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
            let together = model.forward_sequences(&mut acts, &mut refs, &positions, &next).unwrap();
            for (i, expected) in alone.iter().enumerate() {
                let got = &together[i * vocab..(i + 1) * vocab];
                let scale = expected.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(
                    worst <= 1e-3 * scale,
                    "{what} on {:?}: sequence {i} differs by {worst} (scale {scale})",
                    k.isa()
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn safetensors_sizes_that_overflow_a_u64_are_an_error() {
    // Found in review while fuzzing: the size check added the header's length and the largest
    // data offset in u64, which overflowed (a panic with overflow checks, a wrong message
    // without). fuzz/regressions/l2rs/data-offsets-end-u64-max is this file.
    let header = br#"{"t":{"dtype":"U8","shape":[4],"data_offsets":[0,18446744073709551615]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(b"abcd");
    let message = read(Path::new("x"), &bytes).err().expect("refused").to_string();
    assert!(message.contains("truncated: expected 18446744073709551695 bytes"), "{message}");
    // Called directly (not through `read`, which checks the length first): 3 bytes.
    let message = super::l2rs::read_model(Path::new("x"), b"abc").err().expect("refused").to_string();
    assert!(message.contains("3 bytes, shorter than a safetensors header"), "{message}");
}
