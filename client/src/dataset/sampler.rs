//! Deterministic shuffling and exact sharding without O(N) memory.
//!
//! - [`Permutation`]: a keyed bijection of `0..n` — a balanced Feistel network over the
//!   smallest even-bit power of two ≥ n, with cycle walking back into `0..n`. Evaluating one
//!   position costs a few multiplications (cycle walking averages < 4 steps since the domain
//!   is < 4n); memory is O(1).
//! - [`Sampler`]: the global order of an epoch is `perm(j)` for global positions
//!   `j = 0, 1, 2, …`. Rank `r` of `w` takes positions `r, r + w, r + 2w, …`. So the global
//!   order is the same for any world size, ranks never overlap, and together they cover the
//!   epoch. `drop_last` trims the epoch to a multiple of `w`; otherwise it is padded to a
//!   multiple of `w` by wrapping around (`perm(j mod n)`), as PyTorch's `DistributedSampler`.
//! - [`SamplerState`]: `{seed, epoch, position}` where `position` counts *global* positions
//!   consumed (`local × world`), so a job can even resume with another world size when the
//!   position is a multiple of it. Encoded in 29 bytes with a version and a CRC.

use super::DatasetError;

/// Feistel rounds: 4 rounds make a pseudo-random permutation (Luby–Rackoff); 6 add margin
/// against the weak round function (a 64-bit mixer), and cost nothing measurable.
const ROUNDS: usize = 6;

/// splitmix64's finaliser: a fast, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A keyed bijection of `0..n`.
#[derive(Clone, Debug)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl Permutation {
    /// The permutation of `0..n` for `(seed, epoch)`.
    pub fn new(n: u64, seed: u64, epoch: u64) -> Permutation {
        // Domain 2^(2h) ≥ n with h ≥ 1, so both halves have at least one bit.
        let bits = if n <= 1 {
            0
        } else {
            64 - (n - 1).leading_zeros()
        };
        let half_bits = bits.div_ceil(2).max(1);
        let base = mix(mix(seed) ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut keys = [0u64; ROUNDS];
        for (r, k) in keys.iter_mut().enumerate() {
            *k = mix(base ^ (r as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
        }
        Permutation { n, half_bits, keys }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn feistel(&self, x: u64) -> u64 {
        let h = self.half_bits;
        let mask = if h >= 64 { u64::MAX } else { (1u64 << h) - 1 };
        let mut left = (x >> h) & mask;
        let mut right = x & mask;
        for k in self.keys {
            let f = mix(right ^ k) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << h) | right
    }

    /// The image of `i` (`i < n`).
    pub fn apply(&self, i: u64) -> u64 {
        assert!(i < self.n, "permutation input {i} outside 0..{}", self.n);
        // Cycle walking: the Feistel network permutes 0..2^(2h) ⊇ 0..n; following the cycle
        // of `i` until it re-enters 0..n gives a bijection of 0..n. Terminates because the
        // cycle through `i` returns to `i` itself at worst.
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

/// How a sampler orders and splits an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerOptions {
    pub seed: u64,
    /// `false`: the identity order (sequential reading), still sharded.
    pub shuffle: bool,
    /// `true`: drop the tail so every rank gets `n / world` samples; `false`: pad by
    /// wrapping around so every rank gets `ceil(n / world)`.
    pub drop_last: bool,
    pub rank: u32,
    pub world_size: u32,
}

impl Default for SamplerOptions {
    fn default() -> SamplerOptions {
        SamplerOptions {
            seed: 0,
            shuffle: true,
            drop_last: false,
            rank: 0,
            world_size: 1,
        }
    }
}

/// Resume point: a few bytes that restart an epoch exactly where it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// Global positions consumed in `epoch` (by all ranks together: local × world size).
    pub position: u64,
}

/// Version byte of the encoded state.
const STATE_VERSION: u8 = 1;
/// Encoded size: version, seed, epoch, position, CRC32C.
pub const STATE_BYTES: usize = 1 + 8 + 8 + 8 + 4;

impl SamplerState {
    pub fn encode(&self) -> [u8; STATE_BYTES] {
        let mut b = [0u8; STATE_BYTES];
        b[0] = STATE_VERSION;
        b[1..9].copy_from_slice(&self.seed.to_le_bytes());
        b[9..17].copy_from_slice(&self.epoch.to_le_bytes());
        b[17..25].copy_from_slice(&self.position.to_le_bytes());
        let crc = crc32c::crc32c(&b[..25]);
        b[25..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SamplerState, DatasetError> {
        let bad = |reason: String| DatasetError::InvalidState(reason);
        if b.len() != STATE_BYTES {
            return Err(bad(format!("{} bytes, expected {STATE_BYTES}", b.len())));
        }
        if b[0] != STATE_VERSION {
            return Err(bad(format!(
                "version {}, this build reads {STATE_VERSION}",
                b[0]
            )));
        }
        let crc = u32::from_le_bytes(b[25..29].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..25]) {
            return Err(bad("checksum mismatch".into()));
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        Ok(SamplerState {
            seed: u(1..9),
            epoch: u(9..17),
            position: u(17..25),
        })
    }
}

/// This rank's sample order for one epoch at a time; an iterator over sample indices.
#[derive(Clone, Debug)]
pub struct Sampler {
    n: u64,
    opts: SamplerOptions,
    epoch: u64,
    perm: Permutation,
    /// Samples of this rank consumed in this epoch.
    local: u64,
}

impl Sampler {
    pub fn new(n: u64, opts: SamplerOptions) -> Result<Sampler, DatasetError> {
        if opts.world_size == 0 || opts.world_size > super::limits::WORLD_SIZE_MAX {
            return Err(DatasetError::InvalidOptions(format!(
                "world size {} outside 1..={}",
                opts.world_size,
                super::limits::WORLD_SIZE_MAX
            )));
        }
        if opts.rank >= opts.world_size {
            return Err(DatasetError::InvalidOptions(format!(
                "rank {} not below world size {}",
                opts.rank, opts.world_size
            )));
        }
        Ok(Sampler {
            n,
            opts,
            epoch: 0,
            perm: Permutation::new(n, opts.seed, 0),
            local: 0,
        })
    }

    pub fn options(&self) -> SamplerOptions {
        self.opts
    }

    /// Samples in the dataset.
    pub fn dataset_len(&self) -> u64 {
        self.n
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Global positions of an epoch (after trimming or padding to a multiple of the world).
    pub fn epoch_len(&self) -> u64 {
        let w = self.opts.world_size as u64;
        if self.opts.drop_last {
            self.n / w * w
        } else if self.n == 0 {
            0
        } else {
            self.n.div_ceil(w) * w
        }
    }

    /// Samples this rank reads per epoch.
    pub fn len(&self) -> u64 {
        self.epoch_len() / self.opts.world_size as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples of this rank already consumed in this epoch.
    pub fn local_position(&self) -> u64 {
        self.local
    }

    /// Samples of this rank left in this epoch.
    pub fn remaining(&self) -> u64 {
        self.len() - self.local
    }

    /// Starts `epoch` from its beginning.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.perm = Permutation::new(self.n, self.opts.seed, epoch);
        self.local = 0;
    }

    /// The sample at global position `j` of the current epoch (`j < epoch_len()`).
    pub fn global(&self, j: u64) -> u64 {
        assert!(j < self.epoch_len(), "global position {j} past the epoch");
        let j = j % self.n;
        if self.opts.shuffle {
            self.perm.apply(j)
        } else {
            j
        }
    }

    /// The `i`-th sample of this rank in the current epoch (`i < len()`).
    pub fn get(&self, i: u64) -> u64 {
        assert!(i < self.len(), "local position {i} past this rank's epoch");
        self.global(i * self.opts.world_size as u64 + self.opts.rank as u64)
    }

    /// Skips to this rank's local position `i` (≤ `len()`).
    pub fn seek(&mut self, i: u64) -> Result<(), DatasetError> {
        if i > self.len() {
            return Err(DatasetError::InvalidState(format!(
                "local position {i} past this rank's epoch of {}",
                self.len()
            )));
        }
        self.local = i;
        Ok(())
    }

    /// The resume point after the samples consumed so far.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.opts.seed,
            epoch: self.epoch,
            position: self.local * self.opts.world_size as u64,
        }
    }

    /// Restarts at `state` (from any world size whose position this one divides).
    pub fn load_state(&mut self, state: SamplerState) -> Result<(), DatasetError> {
        if state.seed != self.opts.seed {
            return Err(DatasetError::InvalidState(format!(
                "state has seed {}, this sampler {}",
                state.seed, self.opts.seed
            )));
        }
        let w = self.opts.world_size as u64;
        if !state.position.is_multiple_of(w) {
            return Err(DatasetError::InvalidState(format!(
                "global position {} is not a multiple of the world size {w}",
                state.position
            )));
        }
        self.set_epoch(state.epoch);
        self.seek(state.position / w)
    }
}

impl Iterator for Sampler {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.local >= self.len() {
            return None;
        }
        let s = self.get(self.local);
        self.local += 1;
        Some(s)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        (r, Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64, rank: u32, world_size: u32, drop_last: bool) -> SamplerOptions {
        SamplerOptions {
            seed,
            shuffle: true,
            drop_last,
            rank,
            world_size,
        }
    }

    #[test]
    fn permutation_is_a_bijection_for_many_sizes() {
        let mut sizes: Vec<u64> = (0..=130).collect();
        sizes.extend([
            251, 256, 257, 1_000, 1_023, 1_024, 1_025, 4_093, 65_521, 65_536, 100_003,
        ]);
        for n in sizes {
            for seed in [0u64, 7, u64::MAX] {
                let p = Permutation::new(n, seed, 3);
                let mut seen = vec![false; n as usize];
                for i in 0..n {
                    let x = p.apply(i);
                    assert!(x < n, "n={n}: {i} -> {x} out of range");
                    assert!(!seen[x as usize], "n={n} seed={seed}: {x} twice");
                    seen[x as usize] = true;
                }
            }
        }
    }

    #[test]
    fn permutation_shuffles_and_depends_on_seed_and_epoch() {
        let n = 10_000;
        let a: Vec<u64> = (0..n).map(|i| Permutation::new(n, 1, 0).apply(i)).collect();
        let b: Vec<u64> = (0..n).map(|i| Permutation::new(n, 1, 1).apply(i)).collect();
        let c: Vec<u64> = (0..n).map(|i| Permutation::new(n, 2, 0).apply(i)).collect();
        let again: Vec<u64> = (0..n).map(|i| Permutation::new(n, 1, 0).apply(i)).collect();
        assert_eq!(a, again, "deterministic");
        assert_ne!(a, b, "epoch changes the order");
        assert_ne!(a, c, "seed changes the order");
        let fixed = a
            .iter()
            .enumerate()
            .filter(|(i, x)| *i as u64 == **x)
            .count();
        assert!(fixed < 20, "{fixed} fixed points: hardly shuffled");
        // Neighbours scatter: the mean jump is near n/3 for a random permutation.
        let jumps: u64 = a.windows(2).map(|w| w[0].abs_diff(w[1])).sum();
        let mean = jumps / (n - 1);
        assert!((2_500..4_200).contains(&mean), "mean jump {mean}");
    }

    #[test]
    fn union_of_all_ranks_is_exactly_the_epoch() {
        for n in [0u64, 1, 2, 3, 5, 7, 10, 97, 1000, 1009] {
            for w in [1u32, 2, 3, 4, 7, 8, 16] {
                for drop_last in [false, true] {
                    let mut all: Vec<u64> = Vec::new();
                    let mut lens = Vec::new();
                    for r in 0..w {
                        let s = Sampler::new(n, opts(5, r, w, drop_last)).unwrap();
                        lens.push(s.len());
                        all.extend(s);
                    }
                    assert!(lens.iter().all(|l| *l == lens[0]), "equal shares {lens:?}");
                    let mut sorted = all.clone();
                    sorted.sort();
                    if drop_last {
                        let keep = (n / w as u64 * w as u64) as usize;
                        assert_eq!(all.len(), keep, "n={n} w={w}");
                        sorted.dedup();
                        assert_eq!(sorted.len(), keep, "n={n} w={w}: duplicates");
                    } else {
                        let total = if n == 0 {
                            0
                        } else {
                            n.div_ceil(w as u64) * w as u64
                        };
                        assert_eq!(all.len() as u64, total, "n={n} w={w}");
                        sorted.dedup();
                        let want: Vec<u64> = (0..n).collect();
                        assert_eq!(sorted, want, "n={n} w={w}: every sample, no gaps");
                    }
                }
            }
        }
    }

    #[test]
    fn global_order_is_the_same_for_any_world_size() {
        let n = 1_000;
        let order = |w: u32| -> Vec<u64> {
            let ranks: Vec<Vec<u64>> = (0..w)
                .map(|r| Sampler::new(n, opts(11, r, w, true)).unwrap().collect())
                .collect();
            let mut out = Vec::new();
            for i in 0..ranks[0].len() {
                for r in &ranks {
                    out.push(r[i]);
                }
            }
            out
        };
        let one = order(1);
        for w in [2u32, 3, 4, 8, 10, 999, 1000] {
            let g = order(w);
            assert_eq!(&one[..g.len()], &g[..], "world {w}");
        }
    }

    #[test]
    fn fewer_samples_than_ranks() {
        // n < world: padding gives every rank one sample; drop_last gives none.
        for n in [1u64, 2, 3] {
            let w = 8;
            for r in 0..w {
                let s: Vec<u64> = Sampler::new(n, opts(1, r, w, false)).unwrap().collect();
                assert_eq!(s.len(), 1);
                assert!(s[0] < n);
                assert_eq!(Sampler::new(n, opts(1, r, w, true)).unwrap().count(), 0);
            }
        }
    }

    #[test]
    fn resume_from_any_position_yields_exactly_the_rest() {
        let n = 333;
        for w in [1u32, 3, 4] {
            for r in 0..w {
                let mut full = Sampler::new(n, opts(9, r, w, false)).unwrap();
                full.set_epoch(4);
                let all: Vec<u64> = full.clone().collect();
                for pos in 0..=all.len() {
                    let mut s = full.clone();
                    for _ in 0..pos {
                        s.next();
                    }
                    let bytes = s.state().encode();
                    let state = SamplerState::decode(&bytes).unwrap();
                    let mut resumed = Sampler::new(n, opts(9, r, w, false)).unwrap();
                    resumed.load_state(state).unwrap();
                    let rest: Vec<u64> = resumed.collect();
                    assert_eq!(&rest[..], &all[pos..], "w={w} r={r} pos={pos}");
                }
            }
        }
    }

    #[test]
    fn resume_with_another_world_size() {
        // 2 ranks consumed 60 local samples each = global position 120; 4 ranks carry on.
        let n = 1_000;
        let mut a = Sampler::new(n, opts(3, 0, 2, true)).unwrap();
        a.set_epoch(2);
        for _ in 0..60 {
            a.next();
        }
        let st = a.state();
        assert_eq!(st.position, 120);
        let mut seen: Vec<u64> = (0..120)
            .map(|j| Permutation::new(n, 3, 2).apply(j))
            .collect();
        for r in 0..4 {
            let mut b = Sampler::new(n, opts(3, r, 4, true)).unwrap();
            b.load_state(st).unwrap();
            seen.extend(b);
        }
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        let mut odd = Sampler::new(n, opts(3, 0, 7, true)).unwrap();
        let e = odd.load_state(st).unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
    }

    #[test]
    fn state_encoding_rejects_damage() {
        let st = SamplerState {
            seed: 1,
            epoch: 2,
            position: 3,
        };
        let mut b = st.encode();
        assert_eq!(SamplerState::decode(&b).unwrap(), st);
        b[10] ^= 1;
        assert!(
            SamplerState::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        assert!(SamplerState::decode(&b[..5]).is_err());
        let mut s = Sampler::new(10, opts(1, 0, 1, false)).unwrap();
        let e = s
            .load_state(SamplerState {
                seed: 1,
                epoch: 0,
                position: 11,
            })
            .unwrap_err();
        assert!(e.to_string().contains("past"), "{e}");
        assert!(Sampler::new(10, opts(1, 2, 2, false)).is_err());
        assert!(Sampler::new(10, opts(1, 0, 0, false)).is_err());
    }

    #[test]
    fn no_shuffle_is_sequential() {
        let s: Vec<u64> = Sampler::new(
            10,
            SamplerOptions {
                shuffle: false,
                world_size: 2,
                rank: 1,
                ..Default::default()
            },
        )
        .unwrap()
        .collect();
        assert_eq!(s, vec![1, 3, 5, 7, 9]);
    }
}
