//! HashCash stamps (SHA-256), as the MMTP front-end and its original client use them.
//!
//! Token text: `1:<d>:<ts>:<sender>:<recipient>:<ts>::<counter>:` with `<ts>` in Unix
//! milliseconds. A token is valid when the lower-case hex SHA-256 of the token text starts with
//! at least `<d>` `0` characters. Spent tokens are recorded by the store in the same transaction
//! as the message they paid for ([`crate::store::SpentStamp`]), so a replay is refused.

use crate::store::SpentStamp;
use sha2::{Digest, Sha256};

/// Why a stamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashcashError {
    /// The token text does not have the expected fields.
    #[error("malformed hashcash token")]
    Malformed,
    /// The token claims less work than required.
    #[error("hashcash difficulty {got} is below the required {required}")]
    TooEasy {
        /// Claimed difficulty.
        got: u32,
        /// Required difficulty.
        required: u32,
    },
    /// The hash does not have the claimed leading zeros.
    #[error("hashcash token does not satisfy its difficulty")]
    NotSolved,
    /// The token is for another sender or recipient.
    #[error("hashcash token is for another sender or recipient")]
    WrongResource,
    /// The token's time is outside the accepted window.
    #[error("hashcash token is expired or from the future")]
    Stale,
    /// The `counter` field does not match the token.
    #[error("hashcash counter does not match the token")]
    CounterMismatch,
}

/// A minted stamp: the token text and its counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Full token text.
    pub token: String,
    /// The counter that solved it.
    pub counter: u64,
}

/// Number of leading `0` hex digits of SHA-256(`text`).
pub fn leading_hex_zeros(text: &str) -> u32 {
    let digest = Sha256::digest(text.as_bytes());
    let mut zeros = 0;
    for byte in digest {
        if byte == 0 {
            zeros += 2;
        } else {
            if byte >> 4 == 0 {
                zeros += 1;
            }
            break;
        }
    }
    zeros
}

/// Mint a stamp on every core (CPU-bound: call off the async threads).
pub fn mint(difficulty: u32, ts_ms: i64, sender: &str, recipient: &str) -> Stamp {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    mint_parallel(difficulty, ts_ms, sender, recipient, threads).0
}

/// Mint a stamp with `threads` threads; returns it with the number of hashes tried.
///
/// Counters start at a random offset, so two stamps minted in the same millisecond for the
/// same sender and recipient still differ (the token format has no other random field). The
/// fixed prefix is compressed once; each try builds and compresses only the final block(s).
pub fn mint_parallel(
    difficulty: u32,
    ts_ms: i64,
    sender: &str,
    recipient: &str,
    threads: usize,
) -> (Stamp, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let prefix = format!("1:{difficulty}:{ts_ms}:{sender}:{recipient}:{ts_ms}::");
    let midstate = Midstate::new(prefix.as_bytes());
    let offset = u64::from(rand::random::<u32>());
    let threads = threads.max(1) as u64;
    let found = AtomicBool::new(false);
    let winner = AtomicU64::new(u64::MAX);
    let tried = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (midstate, found, winner, tried) = (&midstate, &found, &winner, &tried);
            scope.spawn(move || {
                let mut search = Search::new(midstate, offset + t);
                let mut n = 0u64;
                'search: while !found.load(Ordering::Relaxed) {
                    // Check the flag only every 4096 hashes.
                    for _ in 0..4096 {
                        n += 1;
                        if search.solves(difficulty) {
                            winner.fetch_min(search.counter, Ordering::Relaxed);
                            found.store(true, Ordering::Relaxed);
                            break 'search;
                        }
                        search.advance(threads);
                    }
                }
                tried.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let counter = winner.load(Ordering::Relaxed);
    (
        Stamp {
            token: format!("{prefix}{counter}:"),
            counter,
        },
        tried.load(Ordering::Relaxed),
    )
}

type Block = sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U64>;

/// SHA-256 of a fixed prefix, compressed up to its last full block.
struct Midstate {
    state: [u32; 8],
    tail: Vec<u8>,
    prefix_len: usize,
}

/// The SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl Midstate {
    fn new(prefix: &[u8]) -> Self {
        let full = prefix.len() / 64 * 64;
        let mut state = SHA256_IV;
        let blocks: Vec<Block> = prefix[..full]
            .chunks_exact(64)
            .map(Block::clone_from_slice)
            .collect();
        sha2::compress256(&mut state, &blocks);
        Midstate {
            state,
            tail: prefix[full..].to_vec(),
            prefix_len: prefix.len(),
        }
    }
}

/// One thread's search: the final block(s) of `prefix + counter + ":"` kept ready, the
/// counter's digits incremented in place.
struct Search<'a> {
    mid: &'a Midstate,
    counter: u64,
    blocks: [Block; 2],
    used: usize,
    digits_at: usize,
    digits_len: usize,
}

impl<'a> Search<'a> {
    fn new(mid: &'a Midstate, counter: u64) -> Self {
        let mut s = Search {
            mid,
            counter,
            blocks: [Block::default(), Block::default()],
            used: 1,
            digits_at: mid.tail.len(),
            digits_len: 0,
        };
        s.layout();
        s
    }

    /// Lay the final block(s) out for the current counter (when its length changes).
    fn layout(&mut self) {
        let mut digits = [0u8; 20];
        let digits = decimal(self.counter, &mut digits);
        let mut buf = [0u8; 128];
        let t = self.mid.tail.len();
        buf[..t].copy_from_slice(&self.mid.tail);
        buf[t..t + digits.len()].copy_from_slice(digits);
        let mut len = t + digits.len();
        buf[len] = b':';
        len += 1;
        buf[len] = 0x80;
        self.used = if len + 9 <= 64 { 1 } else { 2 };
        let end = self.used * 64;
        let bits = ((self.mid.prefix_len + digits.len() + 1) as u64) * 8;
        buf[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        self.blocks[0].copy_from_slice(&buf[..64]);
        self.blocks[1].copy_from_slice(&buf[64..]);
        self.digits_len = digits.len();
    }

    fn digit_mut(&mut self, i: usize) -> &mut u8 {
        let pos = self.digits_at + i;
        &mut self.blocks[pos / 64][pos % 64]
    }

    /// Add `step` to the counter, in the decimal digits where possible.
    fn advance(&mut self, step: u64) {
        self.counter += step;
        let mut carry = step;
        let mut i = self.digits_len;
        while carry > 0 && i > 0 {
            i -= 1;
            let d = u64::from(*self.digit_mut(i) - b'0') + carry;
            *self.digit_mut(i) = b'0' + (d % 10) as u8;
            carry = d / 10;
        }
        if carry > 0 {
            self.layout();
        }
    }

    /// Does the current text hash to at least `zeros` leading hex zeros?
    fn solves(&self, zeros: u32) -> bool {
        let mut state = self.mid.state;
        sha2::compress256(&mut state, &self.blocks[..self.used]);
        let mut left = zeros;
        for w in state {
            if left >= 8 {
                if w != 0 {
                    return false;
                }
                left -= 8;
            } else {
                return left == 0 || w >> (32 - 4 * left) == 0;
            }
        }
        true
    }
}

/// Decimal digits of `n` in `buf`, without allocating.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// What a verifier accepts.
#[derive(Debug, Clone, Copy)]
pub struct HashcashPolicy {
    /// Required leading hex zeros.
    pub difficulty: u32,
    /// Oldest accepted token age, ms.
    pub max_age_ms: i64,
    /// How far in the future a token's time may be (clock skew), ms.
    pub max_skew_ms: i64,
}

impl Default for HashcashPolicy {
    fn default() -> Self {
        HashcashPolicy {
            difficulty: 4,
            max_age_ms: 48 * 3600 * 1000,
            max_skew_ms: 10 * 60 * 1000,
        }
    }
}

impl HashcashPolicy {
    /// Check a token for `sender` → `recipient` at time `now_ms`; `counter`, when given, must
    /// match the token's counter field. Returns the record to store as spent.
    pub fn verify(
        &self,
        token: &str,
        counter: Option<u64>,
        sender: &str,
        recipient: &str,
        now_ms: i64,
    ) -> Result<SpentStamp, HashcashError> {
        if token.len() > 2048 {
            return Err(HashcashError::Malformed);
        }
        let fields: Vec<&str> = token.split(':').collect();
        let [version, d, ts, s, r, ts2, ext, ctr, tail] = fields[..] else {
            return Err(HashcashError::Malformed);
        };
        if version != "1" || !ext.is_empty() || !tail.is_empty() || ts != ts2 {
            return Err(HashcashError::Malformed);
        }
        let d: u32 = d.parse().map_err(|_| HashcashError::Malformed)?;
        let ts: i64 = ts.parse().map_err(|_| HashcashError::Malformed)?;
        let ctr: u64 = ctr.parse().map_err(|_| HashcashError::Malformed)?;
        if counter.is_some_and(|c| c != ctr) {
            return Err(HashcashError::CounterMismatch);
        }
        if d < self.difficulty {
            return Err(HashcashError::TooEasy {
                got: d,
                required: self.difficulty,
            });
        }
        if s != sender || r != recipient {
            return Err(HashcashError::WrongResource);
        }
        if ts < now_ms.saturating_sub(self.max_age_ms)
            || ts > now_ms.saturating_add(self.max_skew_ms)
        {
            return Err(HashcashError::Stale);
        }
        if d > 64 || leading_hex_zeros(token) < d {
            return Err(HashcashError::NotSolved);
        }
        Ok(SpentStamp {
            value: token.to_owned(),
            expires_at: ts.saturating_add(self.max_age_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "(alice)%(a.test)";
    const R: &str = "(bob)%(b.test)";

    #[test]
    fn mint_then_verify() {
        let now = 1_700_000_000_000;
        let stamp = mint(3, now, S, R);
        assert!(leading_hex_zeros(&stamp.token) >= 3);
        let policy = HashcashPolicy {
            difficulty: 3,
            ..Default::default()
        };
        let spent = policy
            .verify(&stamp.token, Some(stamp.counter), S, R, now + 1000)
            .unwrap();
        assert_eq!(spent.value, stamp.token);
        assert_eq!(
            policy.verify(&stamp.token, Some(stamp.counter + 1), S, R, now),
            Err(HashcashError::CounterMismatch)
        );
        assert_eq!(
            policy.verify(&stamp.token, None, R, S, now),
            Err(HashcashError::WrongResource)
        );
        assert_eq!(
            policy.verify(&stamp.token, None, S, R, now + 49 * 3600 * 1000),
            Err(HashcashError::Stale)
        );
        let strict = HashcashPolicy {
            difficulty: 4,
            ..Default::default()
        };
        assert!(matches!(
            strict.verify(&stamp.token, None, S, R, now),
            Err(HashcashError::TooEasy {
                got: 3,
                required: 4
            })
        ));
    }

    #[test]
    fn parallel_mint_produces_valid_stamps() {
        for threads in [1, 3] {
            let (stamp, tried) = mint_parallel(3, 1_700_000_000_000, S, R, threads);
            assert!(leading_hex_zeros(&stamp.token) >= 3, "{}", stamp.token);
            assert!(stamp.token.ends_with(&format!("::{}:", stamp.counter)));
            assert!(tried >= 1);
        }
        // The midstate path agrees with a plain SHA-256 for every tail length.
        for len in 0..200 {
            let prefix = "p".repeat(len);
            let m = Midstate::new(prefix.as_bytes());
            for start in [0u64, 7, 95, 123_456_789] {
                let mut search = Search::new(&m, start);
                for _ in 0..12 {
                    let text = format!("{prefix}{}:", search.counter);
                    for zeros in 0..3 {
                        assert_eq!(
                            search.solves(zeros),
                            leading_hex_zeros(&text) >= zeros,
                            "{len} {} {zeros}",
                            search.counter
                        );
                    }
                    search.advance(3);
                }
            }
        }
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(u64::MAX, &mut buf), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn unsolved_and_malformed_tokens_are_refused() {
        let now = 1_700_000_000_000;
        let policy = HashcashPolicy {
            difficulty: 1,
            ..Default::default()
        };
        // Find a counter whose hash does NOT start with 0 and claim difficulty 8 for it.
        let fake = format!("1:8:{now}:{S}:{R}:{now}::1:");
        assert_eq!(
            policy.verify(&fake, None, S, R, now),
            Err(HashcashError::NotSolved)
        );
        for bad in [
            "",
            "1:4",
            "2:4:1:a:b:1::0:",
            "1:x:1:a:b:1::0:",
            "1:4:1:a:b:2::0:",
        ] {
            assert_eq!(
                policy.verify(bad, None, "a", "b", now),
                Err(HashcashError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn spec_example_shape_parses() {
        let t = "1:4:1625849600000:(alice)%(example.com):(bob)%(example.com):1625849600000::1234:";
        let policy = HashcashPolicy::default();
        let r = policy.verify(
            t,
            Some(1234),
            "(alice)%(example.com)",
            "(bob)%(example.com)",
            1625849600000,
        );
        // The example's counter is illustrative; it parses and is then checked for work.
        assert!(matches!(r, Ok(_) | Err(HashcashError::NotSolved)));
    }
}
