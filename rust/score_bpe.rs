//! llama2.c's tokenizer (`encode()` in run.c): the vocabulary of a `tokenizer.bin` or a
//! sentencepiece `tokenizer.model`, merged by score. The text becomes one token per UTF-8
//! codepoint (byte tokens `byte + 3` for codepoints the vocabulary lacks); then the adjacent
//! pair whose concatenation is the piece of highest score merges, the leftmost on ties, until
//! none can. run.c rescans the whole sequence per merge (quadratic); here a heap of candidate
//! pairs over a linked list gives the same merges in O(n log n). The Python class
//! `llama2rs.Tokenizer` reads the files, holds the API and calls this for the merging.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;

use crate::bpe::FxHasher;

/// run.c's first tokens: BOS is id 1 and byte `b` falls back to token `b + 3`.
pub const BOS_ID: u32 = 1;
pub const BYTE_OFFSET: u32 = 3;

/// run.c starts each merge search at `best_score = -1e10` and takes only a strictly higher
/// score, so a pair whose piece scores -1e10 or less (or NaN) never merges.
const MIN_MERGE_SCORE: f32 = -1e10;

pub struct ScoreBpe {
    pieces: Vec<Vec<u8>>,                                        // [vocab] id -> bytes
    scores: Vec<f32>,                                            // [vocab]
    lookup: HashMap<Vec<u8>, u32, BuildHasherDefault<FxHasher>>, // bytes -> lowest id
    dummy_prefix: Option<u32>,                                   // the id of " ", if any
}

/// A candidate merge of the nodes `left` and `right` (positions in the first tokens). The
/// heap pops the highest score first, the leftmost on ties, as run.c's scan chooses.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    left_token: u32,
    right_token: u32,
    merged: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // Scores of candidates are never NaN (`pair` refuses them).
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl ScoreBpe {
    /// `pieces[i]` and `scores[i]` of token `i`. On repeated pieces the lowest id wins.
    pub fn new(pieces: Vec<Vec<u8>>, scores: Vec<f32>) -> Self {
        debug_assert_eq!(pieces.len(), scores.len());
        let mut lookup = HashMap::with_capacity_and_hasher(pieces.len(), BuildHasherDefault::default());
        for (id, piece) in pieces.iter().enumerate() {
            lookup.entry(piece.clone()).or_insert(id as u32);
        }
        let dummy_prefix = lookup.get(&b" "[..]).copied();
        ScoreBpe { pieces, scores, lookup, dummy_prefix }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// run.c's `encode(text, bos, eos=0)`: token ids, or `Err(token)` with the first byte
    /// token past the vocabulary (a byte the vocabulary cannot spell).
    pub fn encode(&self, text: &[u8], bos: bool) -> Result<Vec<u32>, u32> {
        let mut tokens = Vec::with_capacity(text.len() + 2);
        if bos {
            tokens.push(BOS_ID);
        }
        if !text.is_empty() {
            tokens.extend(self.dummy_prefix);
        }
        self.push_codepoints(text, &mut tokens);
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.pieces.len()) {
            return Err(bad);
        }
        Ok(self.merge(tokens))
    }

    /// One token per codepoint as run.c groups them: a byte and the continuation bytes
    /// (`10xxxxxx`) after it, four bytes at most; a group not in the vocabulary becomes its
    /// byte tokens.
    fn push_codepoints(&self, text: &[u8], tokens: &mut Vec<u32>) {
        let mut i = 0;
        while i < text.len() {
            let mut j = i + 1;
            while j < text.len() && j - i < 4 && text[j] & 0xC0 == 0x80 {
                j += 1;
            }
            match self.lookup.get(&text[i..j]) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(text[i..j].iter().map(|&b| b as u32 + BYTE_OFFSET)),
            }
            i = j;
        }
    }

    /// The merge of two tokens, `(score, id)`, if their concatenation is a piece that may merge.
    fn pair(&self, left: u32, right: u32, buffer: &mut Vec<u8>) -> Option<(f32, u32)> {
        buffer.clear();
        buffer.extend_from_slice(&self.pieces[left as usize]);
        buffer.extend_from_slice(&self.pieces[right as usize]);
        let merged = *self.lookup.get(buffer.as_slice())?;
        let score = self.scores[merged as usize];
        (score > MIN_MERGE_SCORE).then_some((score, merged))
    }

    /// run.c's merge loop over a linked list of the first tokens. A node keeps its first
    /// position, so positions order nodes left to right; a merge keeps the left node. A heap
    /// entry is stale once either node changed or they are no longer neighbours.
    fn merge(&self, mut tokens: Vec<u32>) -> Vec<u32> {
        let n = tokens.len();
        if n < 2 {
            return tokens;
        }
        const REMOVED: u32 = u32::MAX;
        let mut next: Vec<usize> = (1..=n).collect(); // n: none
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect(); // usize::MAX: none
        let mut buffer = Vec::new();
        let mut heap = BinaryHeap::with_capacity(n);
        let candidate = |this: &Self, left: usize, right: usize, l: u32, r: u32, buffer: &mut Vec<u8>| {
            this.pair(l, r, buffer).map(|(score, merged)| Candidate {
                score,
                left,
                right,
                left_token: l,
                right_token: r,
                merged,
            })
        };
        for i in 0..n - 1 {
            heap.extend(candidate(self, i, i + 1, tokens[i], tokens[i + 1], &mut buffer));
        }
        while let Some(c) = heap.pop() {
            let (i, j) = (c.left, c.right);
            if tokens[i] != c.left_token || tokens[j] != c.right_token || next[i] != j {
                continue;
            }
            tokens[i] = c.merged;
            tokens[j] = REMOVED;
            let k = next[j];
            next[i] = k;
            if k < n {
                prev[k] = i;
                heap.extend(candidate(self, i, k, c.merged, tokens[k], &mut buffer));
            }
            let p = prev[i];
            if p < n {
                heap.extend(candidate(self, p, i, tokens[p], c.merged, &mut buffer));
            }
        }
        // The head is never removed: merges keep the left node.
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            out.push(tokens[i]);
            i = next[i];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// run.c's own loop: rescan for the best pair (leftmost on ties) after every merge.
    fn merge_naive(bpe: &ScoreBpe, mut tokens: Vec<u32>) -> Vec<u32> {
        let mut buffer = Vec::new();
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in 0..tokens.len().saturating_sub(1) {
                if let Some((score, merged)) = bpe.pair(tokens[i], tokens[i + 1], &mut buffer) {
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { return tokens };
            tokens[i] = merged;
            tokens.remove(i + 1);
        }
    }

    #[test]
    fn heap_merge_equals_run_c_loop_on_random_vocabularies() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..40 {
            // Bytes of a small alphabet, all their pairs and some longer pieces, with scores
            // that repeat (ties must go to the leftmost pair).
            let alphabet = b"abcd ";
            let mut pieces: Vec<Vec<u8>> = (0..3).map(|i| vec![b'<', i]).collect(); // ids 0-2
            pieces.extend((0..=255u8).map(|b| vec![0xF8, b])); // byte tokens 3..259 (never text)
            pieces.extend(alphabet.iter().map(|&c| vec![c]));
            for _ in 0..60 {
                let len = 2 + rng.below(4);
                pieces.push((0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect());
            }
            let scores =
                (0..pieces.len()).map(|_| (rng.below(6) as f32) - if round % 5 == 0 { 1e11 } else { 0.0 }).collect();
            let bpe = ScoreBpe::new(pieces, scores);
            for _ in 0..20 {
                let len = rng.below(200);
                let text: Vec<u8> = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
                let mut first = vec![BOS_ID];
                first.extend(bpe.dummy_prefix);
                bpe.push_codepoints(&text, &mut first);
                let expected = merge_naive(&bpe, if text.is_empty() { vec![BOS_ID] } else { first });
                assert_eq!(bpe.encode(&text, true).unwrap(), expected, "round {round}, text {text:?}");
            }
        }
    }

    #[test]
    fn a_byte_the_vocabulary_cannot_spell_is_reported() {
        let bpe =
            ScoreBpe::new(vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec(), b"a".to_vec()], vec![0.0; 4]);
        assert_eq!(bpe.encode(b"a", false), Ok(vec![3]));
        assert_eq!(bpe.encode(b"b", false), Err(b'b' as u32 + BYTE_OFFSET));
    }
}
