//! Test support: deterministic mutants of valid inputs, for the tests that feed hostile bytes to
//! each parser and assert it answers with an error rather than a panic (SECURITY.md: malformed
//! input is refused, never a crash). Not a coverage-guided fuzzer: a seeded generator that is
//! cheap enough to run in every CI build, and repeatable, so a failure reproduces exactly.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Byte values that parsers treat specially: terminators, quotes, escapes, separators, UTF-8
/// lead and continuation bytes, sign bits.
const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xf0, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b':',
    b',', b'.', b'/', b'%', b'?', b'=', b'&', b'u', b'0', b'9', b'-', b'e', b' ', b'\n',
];

/// 32-bit big-endian values for length and count fields: empty, off by one, negative, huge.
const INTERESTING_I32: &[i32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    -1,
    -2,
    0x7fff,
    0x8000,
    0xffff,
    i32::MAX,
    i32::MIN,
    1 << 24,
];

/// A seeded generator of mutants (xorshift64*).
pub(crate) struct Mutator(u64);

impl Mutator {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `items` (not empty).
    pub(crate) fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    /// Each of `items` with probability one half, in order.
    pub(crate) fn subset<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> Vec<&'a T> {
        items.iter().copied().filter(|_| self.next() & 1 == 1).collect()
    }

    /// `input` with one to four random edits.
    pub(crate) fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..=self.below(4) {
            self.edit(&mut v);
        }
        v
    }

    fn edit(&mut self, v: &mut Vec<u8>) {
        let len = v.len();
        match self.below(8) {
            0 if len > 0 => {
                let i = self.below(len);
                v[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                v[i] = INTERESTING_BYTES[self.below(INTERESTING_BYTES.len())];
            }
            2 => {
                let i = self.below(len + 1);
                let b = if self.below(2) == 0 {
                    INTERESTING_BYTES[self.below(INTERESTING_BYTES.len())]
                } else {
                    self.next() as u8
                };
                v.insert(i, b);
            }
            3 if len > 0 => {
                let i = self.below(len);
                let n = 1 + self.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Repeat a slice of the input somewhere else: nests, duplicates fields.
                let i = self.below(len);
                let n = 1 + self.below((len - i).min(32));
                let piece = v[i..i + n].to_vec();
                let at = self.below(len + 1);
                v.splice(at..at, piece);
            }
            5 => v.truncate(self.below(len + 1)),
            6 if len >= 4 => {
                let i = self.below(len - 3);
                let x = INTERESTING_I32[self.below(INTERESTING_I32.len())];
                v[i..i + 4].copy_from_slice(&x.to_be_bytes());
            }
            7 if len >= 2 => {
                let i = self.below(len - 1);
                let x = INTERESTING_I32[self.below(INTERESTING_I32.len())] as i16;
                v[i..i + 2].copy_from_slice(&x.to_be_bytes());
            }
            _ => v.push(self.next() as u8),
        }
    }
}

/// How many times CI's number of random cases to run: `AGENTGATE_MUTATION_SCALE=N` (default 1)
/// for a longer search by hand.
pub(crate) fn scale() -> usize {
    std::env::var("AGENTGATE_MUTATION_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
}

/// Calls `check` with each seed and with `rounds` mutants of each (times [`scale`]). A panic in
/// `check` fails the test naming the input (hex) that caused it, so the case can become a
/// regression test.
pub(crate) fn each_mutant(seeds: &[&[u8]], rounds: usize, mut check: impl FnMut(&[u8])) {
    let rounds = rounds.saturating_mul(scale());
    let mut m = Mutator::new(0x5eed_0fa9_e76a_7e00);
    for seed in seeds {
        let mut run = |input: &[u8]| {
            if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                panic!("panicked on input {hex} ({} bytes)", input.len());
            }
        };
        run(seed);
        for _ in 0..rounds {
            let input = m.mutate(seed);
            run(&input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_repeatable_and_varied() {
        let seed = b"{\"a\":[1,2,3],\"b\":\"text\"}";
        let first: Vec<Vec<u8>> = {
            let mut m = Mutator::new(7);
            (0..200).map(|_| m.mutate(seed)).collect()
        };
        let again: Vec<Vec<u8>> = {
            let mut m = Mutator::new(7);
            (0..200).map(|_| m.mutate(seed)).collect()
        };
        assert_eq!(first, again);
        let distinct: std::collections::HashSet<&Vec<u8>> = first.iter().collect();
        assert!(distinct.len() > 150, "only {} distinct mutants", distinct.len());
        assert!(first.iter().any(|v| v.len() < seed.len()));
        assert!(first.iter().any(|v| v.len() > seed.len()));
    }

    #[test]
    fn a_panic_names_the_input() {
        let caught = catch_unwind(|| {
            each_mutant(&[b"ab"], 0, |input| {
                assert_ne!(input, b"ab", "boom");
            })
        });
        let message = caught.expect_err("the check panicked");
        let text = message.downcast_ref::<String>().expect("a formatted message");
        assert!(text.contains("6162"), "{text}");
    }
}
