//! Byte-level BPE, the tokenizer of Llama 3 (and GPT-2 style vocabularies): text is split by a
//! pre-tokenizer regex, and each piece's bytes are merged pairwise, lowest rank first, as
//! tiktoken's `byte_pair_merge` does. A token's id is its rank; special tokens follow the ranks
//! and are matched in the text only when the caller allows them.
//!
//! The regex needs look-ahead (`\s+(?!\S)`), hence `fancy-regex` (tiktoken's own choice);
//! special tokens are one `regex` alternation.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// Rank lookups hash short byte strings millions of times: FxHash (rustc's, tiktoken's choice)
/// instead of the DoS-resistant default, which here is 2-3x slower. The keys are the
/// vocabulary's, fixed when the tokenizer is made, so there is nothing to attack.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Ranks = HashMap<Vec<u8>, u32, BuildHasherDefault<FxHasher>>;

/// Pieces longer than this merge on a heap (`merge_heap_into`). Up to it the plain scan is
/// faster: it has no heap and no lists, and nearly every piece is a word of a few bytes.
const HEAP_MERGE_MIN_BYTES: usize = 128;

/// How Meta's Llama 3 encoder cuts a text before tiktoken sees it: into chunks of at most
/// `chunk_chars` characters, then wherever a run of whitespace or of non-whitespace (by
/// Python's `str.isspace`) would exceed `max_run` characters. It bounds the merge loop's
/// quadratic cost on a pathological run, and it changes the tokens at those cuts, so an encoder
/// that equals Meta's must cut alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slicing {
    pub chunk_chars: usize,
    pub max_run: usize,
}

pub struct ByteLevelBpe {
    ranks: Ranks,                          // mergeable token bytes -> rank (its id)
    tokens: Vec<Vec<u8>>,                  // [vocab] id -> bytes, special tokens' text included
    specials: HashMap<String, u32>,        // special token text -> id
    pattern: fancy_regex::Regex,           // the pre-tokenizer
    special_pattern: Option<regex::Regex>, // any special token, longest first
    slicing: Option<Slicing>,
}

impl ByteLevelBpe {
    /// `ranks[i]` is the bytes of the token of rank (and id) `i`; `specials` are (text, id)
    /// with ids past the ranks.
    pub fn new(
        ranks: Vec<Vec<u8>>,
        specials: Vec<(String, u32)>,
        pattern: &str,
        slicing: Option<Slicing>,
    ) -> Result<Self> {
        let bad = |message: String| Error::Argument(format!("byte-level BPE: {message}"));
        // An empty special token matches everywhere and cuts of 0 characters never advance:
        // either would loop forever in `encode` (found by fuzzing the Python readers).
        if let Some(s) = slicing.filter(|s| s.chunk_chars == 0 || s.max_run == 0) {
            return Err(bad(format!("cuts must be at least 1 character, got {s:?}")));
        }
        if let Some((_, id)) = specials.iter().find(|(text, _)| text.is_empty()) {
            return Err(bad(format!("special token {id} is empty")));
        }
        let pattern =
            fancy_regex::Regex::new(pattern).map_err(|e| bad(format!("invalid pre-tokenizer pattern: {e}")))?;
        let n_ranks = ranks.len();
        let mut table = Ranks::default();
        for (rank, bytes) in ranks.iter().enumerate() {
            if bytes.is_empty() {
                return Err(bad(format!("token {rank} is empty")));
            }
            if table.insert(bytes.clone(), rank as u32).is_some() {
                return Err(bad(format!("token {rank} repeats an earlier token's bytes")));
            }
        }
        if let Some(byte) = (0..=255u8).find(|b| !table.contains_key(&[*b][..])) {
            // Every piece must fall apart into tokens at worst: each single byte is one.
            return Err(bad(format!("no token for the single byte {byte:#04x}")));
        }
        let mut tokens = ranks;
        let mut by_text = HashMap::new();
        for (text, id) in &specials {
            let id_usize = *id as usize;
            if id_usize < n_ranks || by_text.insert(text.clone(), *id).is_some() {
                return Err(bad(format!("special token {text:?} (id {id}) overlaps the ranks or another special")));
            }
            if tokens.len() <= id_usize {
                tokens.resize(id_usize + 1, Vec::new());
            }
            tokens[id_usize] = text.as_bytes().to_vec();
        }
        let special_pattern = if specials.is_empty() {
            None
        } else {
            let mut texts: Vec<&str> = specials.iter().map(|(t, _)| t.as_str()).collect();
            texts.sort_by_key(|t| std::cmp::Reverse(t.len())); // the longest of overlapping specials wins
            let alternation = texts.iter().map(|t| regex::escape(t)).collect::<Vec<_>>().join("|");
            Some(regex::Regex::new(&alternation).map_err(|e| bad(format!("special tokens: {e}")))?)
        };
        Ok(ByteLevelBpe { ranks: table, tokens, specials: by_text, pattern, special_pattern, slicing })
    }

    /// Ids: ranks and special tokens (gaps between specials included).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The bytes of token `id` (a special token's text), or an error for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        match self.tokens.get(id as usize) {
            Some(bytes) if !bytes.is_empty() => Ok(bytes),
            _ => Err(Error::InvalidToken { token: id as i64, index: 0, vocab_size: self.tokens.len() }),
        }
    }

    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.get(text).copied()
    }

    /// The concatenated bytes of `ids` (index of the first unknown id in the error).
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (index, &id) in ids.iter().enumerate() {
            let bytes = self.token_bytes(id).map_err(|_| Error::InvalidToken {
                token: id as i64,
                index,
                vocab_size: self.tokens.len(),
            })?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Token ids of `text`. With `allow_special`, special tokens written in the text are their
    /// ids; without, they are ordinary text.
    pub fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3);
        match self.slicing {
            None => self.encode_slice(text, allow_special, &mut out)?,
            Some(slicing) => {
                for chunk in char_chunks(text, slicing.chunk_chars) {
                    for slice in runs_sliced(chunk, slicing.max_run) {
                        self.encode_slice(slice, allow_special, &mut out)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// tiktoken's encode of one slice: ordinary text up to each allowed special token.
    fn encode_slice(&self, text: &str, allow_special: bool, out: &mut Vec<u32>) -> Result<()> {
        let mut start = 0;
        loop {
            let special = match (&self.special_pattern, allow_special) {
                (Some(p), true) => p.find_at(text, start),
                _ => None,
            };
            let end = special.map_or(text.len(), |m| m.start());
            self.encode_ordinary(&text[start..end], out)?;
            match special {
                Some(m) => {
                    out.push(self.specials[m.as_str()]);
                    start = m.end();
                }
                None => return Ok(()),
            }
        }
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        for piece in self.pattern.find_iter(text) {
            let piece = piece.map_err(|e| Error::Argument(format!("byte-level BPE: the pre-tokenizer failed: {e}")))?;
            let bytes = piece.as_str().as_bytes();
            if bytes.is_empty() {
                continue; // a pattern that can match nothing
            }
            match self.ranks.get(bytes) {
                Some(&id) => out.push(id),
                None => self.merge_into(bytes, out),
            }
        }
        Ok(())
    }

    /// The piece's tokens: adjacent parts merged, lowest rank first (the leftmost of equal
    /// ones), until no adjacent pair is a token. Short pieces (nearly all) take the plain loop;
    /// long ones the heap, whose result is the same (tested against it) in O(n log n) instead
    /// of O(n^2): a 200 000-byte run took 14 s the plain way.
    fn merge_into(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() > HEAP_MERGE_MIN_BYTES {
            self.merge_heap_into(piece, out)
        } else {
            self.merge_plain_into(piece, out)
        }
    }

    /// `merge_into` on a min-heap of (rank, start) over a linked list of parts: each merge
    /// pushes the two pairs it changed; entries whose pair has changed since are skipped.
    fn merge_heap_into(&self, piece: &[u8], out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = piece.len();
        let rank_of = |a: usize, b: usize| self.ranks.get(&piece[a..b]).copied().unwrap_or(u32::MAX);
        // Part i starts at byte i while alive; `next[i]` is the start of the part after it (n: none).
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect(); // usize::MAX: none
        let mut alive = vec![true; n];
        let mut pair_rank = vec![u32::MAX; n]; // [n] rank of part i joined with the next one
        let mut heap = BinaryHeap::with_capacity(n);
        let pair = |i: usize, next: &[usize]| if next[i] < n { rank_of(i, next[next[i]].min(n)) } else { u32::MAX };
        for (i, rank) in pair_rank.iter_mut().enumerate() {
            *rank = pair(i, &next);
            if *rank != u32::MAX {
                heap.push(Reverse((*rank, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            if !alive[i] || pair_rank[i] != rank {
                continue; // stale: this part has merged or changed its neighbour since
            }
            let j = next[i];
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            pair_rank[i] = pair(i, &next);
            if pair_rank[i] != u32::MAX {
                heap.push(Reverse((pair_rank[i], i)));
            }
            let p = prev[i];
            if p != usize::MAX {
                pair_rank[p] = pair(p, &next);
                if pair_rank[p] != u32::MAX {
                    heap.push(Reverse((pair_rank[p], p)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            out.push(self.ranks[&piece[i..next[i]]]);
            i = next[i];
        }
    }

    /// `merge_into` as tiktoken's `byte_pair_merge` does it: `parts[i]` is (start of part i,
    /// rank of part i joined with part i + 1), and each step scans them for the lowest.
    fn merge_plain_into(&self, piece: &[u8], out: &mut Vec<u32>) {
        let rank_of = |range: std::ops::Range<usize>| self.ranks.get(&piece[range]).copied().unwrap_or(u32::MAX);
        let mut parts: Vec<(usize, u32)> = (0..piece.len().saturating_sub(1)).map(|i| (i, rank_of(i..i + 2))).collect();
        parts.push((piece.len() - 1, u32::MAX));
        parts.push((piece.len(), u32::MAX));
        loop {
            // The lowest rank; the first of equal ones.
            let (i, rank) =
                parts[..parts.len() - 1]
                    .iter()
                    .enumerate()
                    .fold((0, u32::MAX), |best, (i, &(_, r))| if r < best.1 { (i, r) } else { best });
            if rank == u32::MAX {
                break;
            }
            // Part i absorbs part i + 1; the ranks of the pairs around it change.
            parts.remove(i + 1);
            let joined = |parts: &[(usize, u32)], j: usize| {
                if j + 2 < parts.len() {
                    rank_of(parts[j].0..parts[j + 2].0)
                } else {
                    u32::MAX
                }
            };
            parts[i].1 = joined(&parts, i);
            if i > 0 {
                parts[i - 1].1 = joined(&parts, i - 1);
            }
        }
        out.extend(parts.windows(2).map(|w| self.ranks[&piece[w[0].0..w[1].0]]));
    }
}

/// Python's `str.isspace`: Unicode White_Space, and the four information separators
/// U+001C..U+001F, which Python counts as whitespace and Rust does not.
fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `text` in pieces of at most `n` characters.
fn char_chunks(text: &str, n: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
        let (chunk, tail) = rest.split_at(cut);
        rest = tail;
        Some(chunk)
    })
}

/// Meta's `_split_whitespaces_or_nonwhitespaces`: cut `text` before the character that would
/// make a run of whitespace (or of non-whitespace) longer than `max_run`. Always yields at
/// least one slice (the empty text is one).
fn runs_sliced(text: &str, max_run: usize) -> Vec<&str> {
    let mut slices = Vec::new();
    let mut run = 0usize;
    let mut in_space = text.chars().next().is_some_and(python_isspace);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let space = python_isspace(c);
        if space != in_space {
            run = 1;
            in_space = space;
        } else {
            run += 1;
            if run > max_run {
                slices.push(&text[start..i]);
                start = i;
                run = 1;
            }
        }
    }
    slices.push(&text[start..]);
    slices
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes 0..=255, then "ab" (256), "abc" (257), "bc" (258), " a" (259), and a special.
    fn toy() -> ByteLevelBpe {
        let mut ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        ranks.extend([b"ab".to_vec(), b"abc".to_vec(), b"bc".to_vec(), b" a".to_vec()]);
        let pattern = r"'s|\s?\p{L}+|\s+(?!\S)|\s+|[^\s\p{L}]+";
        ByteLevelBpe::new(ranks, vec![("<|end|>".into(), 300)], pattern, None).unwrap()
    }

    #[test]
    fn merges_lowest_rank_first() {
        let t = toy();
        // "abc": ab (256) before bc (258), then abc (257): one token.
        assert_eq!(t.encode("abc", false).unwrap(), vec![257]);
        // "bca": bc, then a; " abd": " a"? no: " abd" is one piece; ab (256) ranks before " a" (259).
        assert_eq!(t.encode("bca", false).unwrap(), vec![258, b'a' as u32]);
        assert_eq!(t.encode(" abd", false).unwrap(), vec![b' ' as u32, 256, b'd' as u32]);
        assert_eq!(t.decode(&t.encode(" abd bca", false).unwrap()).unwrap(), b" abd bca");
    }

    #[test]
    fn special_tokens_only_where_allowed() {
        let t = toy();
        assert_eq!(t.encode("ab<|end|>", true).unwrap(), vec![256, 300]);
        let plain = t.encode("ab<|end|>", false).unwrap();
        assert!(!plain.contains(&300));
        assert_eq!(t.decode(&plain).unwrap(), b"ab<|end|>");
        assert_eq!(t.token_bytes(300).unwrap(), b"<|end|>");
        assert!(t.token_bytes(299).is_err() && t.token_bytes(301).is_err()); // gaps and past the end
    }

    #[test]
    fn bad_vocabularies_are_errors() {
        let bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        assert!(ByteLevelBpe::new(bytes[1..].to_vec(), vec![], r"\w+", None).is_err()); // no 0x00
        let mut repeated = bytes.clone();
        repeated.push(vec![b'a']);
        assert!(ByteLevelBpe::new(repeated, vec![], r"\w+", None).is_err());
        assert!(ByteLevelBpe::new(bytes.clone(), vec![("<s>".into(), 3)], r"\w+", None).is_err()); // id of a rank
        assert!(ByteLevelBpe::new(bytes.clone(), vec![], r"(", None).is_err());
        // These would make `encode` loop forever.
        assert!(ByteLevelBpe::new(bytes.clone(), vec![("".into(), 256)], r"\w+", None).is_err());
        for (chunk_chars, max_run) in [(0, 5), (5, 0)] {
            let slicing = Some(Slicing { chunk_chars, max_run });
            assert!(ByteLevelBpe::new(bytes.clone(), vec![], r"\w+", slicing).is_err());
        }
        assert!(ByteLevelBpe::new(bytes, vec![], r"\w+", Some(Slicing { chunk_chars: 1, max_run: 1 })).is_ok());
    }

    #[test]
    fn the_heap_merges_as_the_plain_loop_does() {
        // A vocabulary of random merges over a small alphabet, so long pieces merge in many
        // overlapping ways (and tie-breaks matter); lengths around and far past the threshold.
        let mut rng = crate::test_rng::Rng(0x6e);
        let alphabet = b"abcde ";
        let mut ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut known: std::collections::HashSet<Vec<u8>> = ranks.iter().cloned().collect();
        // Every pair of the alphabet, in a shuffled order (so at least pairs merge), then joins.
        let mut pairs: Vec<Vec<u8>> =
            alphabet.iter().flat_map(|&a| alphabet.iter().map(move |&b| vec![a, b])).collect();
        for i in (1..pairs.len()).rev() {
            pairs.swap(i, rng.below(i + 1));
        }
        for pair in pairs {
            known.insert(pair.clone());
            ranks.push(pair);
        }
        while ranks.len() < 600 {
            let (a, b) = (256 + rng.below(ranks.len() - 256), 256 + rng.below(ranks.len() - 256));
            let joined: Vec<u8> = [ranks[a].clone(), ranks[b].clone()].concat();
            if joined.len() <= 12 && known.insert(joined.clone()) {
                ranks.push(joined);
            }
        }
        let t = ByteLevelBpe::new(ranks, vec![], r"[\s\S]+", None).unwrap();
        for len in [2usize, 3, 17, 127, 128, 129, 300, 2000] {
            for _ in 0..20 {
                let piece: Vec<u8> = (0..len).map(|_| alphabet[rng.below(6)]).collect();
                let (mut heap, mut plain) = (Vec::new(), Vec::new());
                t.merge_heap_into(&piece, &mut heap);
                t.merge_plain_into(&piece, &mut plain);
                assert_eq!(heap, plain, "{}", String::from_utf8_lossy(&piece));
                assert!(plain.len() < len, "every pair is a token: something merges");
            }
        }
    }

    #[test]
    fn slicing_cuts_long_runs_as_metas_encoder() {
        assert_eq!(runs_sliced("aaaaa", 2), vec!["aa", "aa", "a"]);
        assert_eq!(runs_sliced("ab  \u{1c}cd", 2), vec!["ab  ", "\u{1c}cd"]);
        assert_eq!(runs_sliced("", 2), vec![""]);
        assert_eq!(char_chunks("héllo", 2).collect::<Vec<_>>(), vec!["hé", "ll", "o"]);
    }
}
