//! Seeded byte mutation of a valid client script, for the end-to-end tests that send damaged
//! request streams and sessions to the real gateway: the same mutants on every run.

/// A seeded xorshift generator of mutants.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// `script` with one to four edits: a bit flipped, a byte replaced by or inserted from
    /// `alphabet` (the bytes the protocol gives meaning to), a byte removed, a piece repeated
    /// elsewhere (duplicated headers, lines, messages), or the rest cut off.
    pub fn mutate(&mut self, script: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut bytes = script.to_vec();
        for _ in 0..1 + self.below(4) {
            if bytes.is_empty() {
                break;
            }
            let i = self.below(bytes.len());
            match self.below(6) {
                0 => bytes[i] ^= 1 << self.below(8),
                1 => bytes[i] = alphabet[self.below(alphabet.len())],
                2 => bytes.insert(i, alphabet[self.below(alphabet.len())]),
                3 => {
                    bytes.remove(i);
                }
                4 => {
                    let n = 1 + self.below(40.min(bytes.len() - i));
                    let piece = bytes[i..i + n].to_vec();
                    let at = self.below(bytes.len());
                    bytes.splice(at..at, piece);
                }
                _ => bytes.truncate(i.max(1)),
            }
        }
        bytes
    }
}
