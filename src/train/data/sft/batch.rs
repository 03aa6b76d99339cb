//! Batches: the order samples come in each epoch ([`Batching`]) and padded next-token
//! [`Batch`]es.
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::SftDataset;

/// The order samples are batched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batching {
    /// A seeded shuffle each epoch; each batch is padded to its longest sample.
    #[default]
    Shuffled,
    /// Like Hugging Face's `LengthGroupedSampler`: a seeded shuffle, then mega-batches of
    /// `min(n / (4·batch_size), 50)·batch_size` samples are each sorted by length and cut into
    /// batches, so that a batch holds samples of similar length (little padding); the batches
    /// are shuffled, and the one holding the longest sample comes first (an out-of-memory shows
    /// at the first step).
    GroupByLength,
    /// Samples (shuffled each epoch) are concatenated into one stream and cut into rows of
    /// exactly `max_seq_len` tokens (the last row padded). As in trl's default ("wrapped")
    /// packing, attention crosses sample boundaries within a row, and a sample may be split
    /// across two rows. The dataset's length is then the number of rows.
    Packed,
}

impl std::str::FromStr for Batching {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "shuffled" | "shuffle" | "random" => Ok(Self::Shuffled),
            "group-by-length" | "grouped" | "length" => Ok(Self::GroupByLength),
            "packed" | "packing" | "pack" => Ok(Self::Packed),
            other => {
                bail!("unknown batching `{other}`; expected shuffled, group-by-length or packed")
            }
        }
    }
}

/// A training batch of next-token targets.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(b, t)` u32, padded on the right.
    pub input_ids: Tensor,
    /// `(b·(t-1),)` u32: row by row, `input_ids[r][i + 1]` for `i` in `0..t-1`.
    pub targets: Tensor,
    /// `(b·(t-1),)` f32: 1 where the target is counted, 0 for prompt and padding.
    pub loss_mask: Tensor,
    /// Targets counted (the sum of `loss_mask`).
    pub tokens: usize,
}

impl Batch {
    /// Builds a batch from rows of (ids, labels mask), padding with `pad_id` to the longest.
    pub fn from_rows(rows: &[(&[u32], &[u8])], pad_id: u32, device: &Device) -> Result<Self> {
        if rows.is_empty() {
            bail!("a batch needs at least one row");
        }
        let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        if t < 2 {
            bail!("a batch needs rows of at least 2 tokens (one input, one target)");
        }
        let b = rows.len();
        let mut input = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * (t - 1));
        let mut mask = Vec::with_capacity(b * (t - 1));
        let mut tokens = 0;
        for (ids, labels) in rows {
            if ids.len() != labels.len() {
                bail!(
                    "a row has {} ids but {} mask entries",
                    ids.len(),
                    labels.len()
                );
            }
            input.extend_from_slice(ids);
            input.extend(std::iter::repeat_n(pad_id, t - ids.len()));
            for i in 0..t - 1 {
                let j = i + 1;
                if j < ids.len() {
                    targets.push(ids[j]);
                    let counted = labels[j] != 0;
                    mask.push(if counted { 1f32 } else { 0f32 });
                    tokens += usize::from(counted);
                } else {
                    targets.push(pad_id);
                    mask.push(0f32);
                }
            }
        }
        Ok(Self {
            input_ids: Tensor::from_vec(input, (b, t), device)?,
            targets: Tensor::from_vec(targets, b * (t - 1), device)?,
            loss_mask: Tensor::from_vec(mask, b * (t - 1), device)?,
            tokens,
        })
    }

    /// `(b, t)`.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.input_ids.dims();
        (d[0], d[1])
    }
}

/// A seed for one epoch.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(seed ^ splitmix(epoch as u64))
}

impl SftDataset {
    /// Samples per epoch; with [`Batching::Packed`], packed rows.
    pub fn len(&self) -> usize {
        match self.batching {
            Batching::Packed => {
                // A last row of a single token has no target and is left out.
                let total: usize = self.samples.iter().map(|s| s.len()).sum();
                total / self.max_seq_len + usize::from(total % self.max_seq_len >= 2)
            }
            _ => self.samples.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.len().div_ceil(batch_size.max(1))
    }

    /// What each batch of an epoch is made of: sample indices, or with [`Batching::Packed`]
    /// indices into [`SftDataset::packed_rows`]. Deterministic in `(epoch, seed)`.
    pub fn batch_plan(&self, epoch: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        if self.batching == Batching::Packed {
            let rows: Vec<usize> = (0..self.len()).collect();
            return rows.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect();
        }
        let batch_size = batch_size.max(1);
        let mut rng = StdRng::seed_from_u64(epoch_seed(seed, epoch));
        let n = self.samples.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        match self.batching {
            Batching::Shuffled | Batching::Packed => {
                order.chunks(batch_size).map(|c| c.to_vec()).collect()
            }
            Batching::GroupByLength => {
                let mult = (n / (batch_size * 4)).clamp(1, 50);
                let mega = mult * batch_size;
                let mut batches: Vec<Vec<usize>> = Vec::with_capacity(n.div_ceil(batch_size));
                for chunk in order.chunks(mega) {
                    let mut chunk = chunk.to_vec();
                    chunk.sort_by_key(|&i| std::cmp::Reverse(self.samples[i].len()));
                    batches.extend(chunk.chunks(batch_size).map(|c| c.to_vec()));
                }
                batches.shuffle(&mut rng);
                let longest = batches
                    .iter()
                    .enumerate()
                    .max_by_key(|(k, b)| {
                        (
                            b.iter().map(|&i| self.samples[i].len()).max().unwrap_or(0),
                            std::cmp::Reverse(*k),
                        )
                    })
                    .map(|(k, _)| k)
                    .unwrap_or(0);
                batches.swap(0, longest);
                batches
            }
        }
    }

    /// The batch of the given samples.
    pub fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let rows: Vec<(&[u32], &[u8])> = indices
            .iter()
            .map(|&i| {
                self.samples
                    .get(i)
                    .map(|s| (s.input_ids.as_slice(), s.labels_mask.as_slice()))
                    .ok_or_else(|| anyhow!("sample index {i} out of range"))
            })
            .collect::<Result<_>>()?;
        Batch::from_rows(&rows, self.pad_id, &self.device)
    }

    /// Packed rows of an epoch: (ids, labels mask), each `max_seq_len` long but the last (a
    /// last row of a single token, which has no target, is left out).
    pub fn packed_rows(&self, epoch: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u8>)> {
        let mut rng = StdRng::seed_from_u64(epoch_seed(seed, epoch));
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        order.shuffle(&mut rng);
        let total: usize = self.samples.iter().map(|s| s.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut labels = Vec::with_capacity(total);
        for &i in &order {
            ids.extend_from_slice(&self.samples[i].input_ids);
            labels.extend_from_slice(&self.samples[i].labels_mask);
        }
        ids.chunks(self.max_seq_len)
            .zip(labels.chunks(self.max_seq_len))
            .filter(|(a, _)| a.len() >= 2)
            .map(|(a, b)| (a.to_vec(), b.to_vec()))
            .collect()
    }

    /// Every batch of an epoch, on the dataset's device. Deterministic in `(epoch, seed)`.
    pub fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<Batch>> {
        Ok(self
            .split_batches(epoch, batch_size, batch_size, seed)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Every batch of an epoch (as [`SftDataset::batches`] makes them) cut into
    /// micro-batches of at most `micro` rows, in order: the same examples per batch
    /// whatever the micro-batch, each micro-batch padded only to its own longest row.
    pub fn split_batches(
        &self,
        epoch: usize,
        batch_size: usize,
        micro: usize,
        seed: u64,
    ) -> Result<Vec<Vec<Batch>>> {
        self.split_with(
            epoch,
            batch_size,
            micro,
            seed,
            |rows| Batch::from_rows(rows, self.pad_id, &self.device),
            |indices| self.make_batch(indices),
        )
    }

    /// The padded length of each micro-batch [`SftDataset::split_batches`] makes, batch by
    /// batch, without making them (the memory plan reads these).
    pub fn micro_batch_lengths(
        &self,
        epoch: usize,
        batch_size: usize,
        micro: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        self.split_with(
            epoch,
            batch_size,
            micro,
            seed,
            |rows| Ok(rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0)),
            |indices| {
                Ok(indices
                    .iter()
                    .map(|&i| self.samples[i].len())
                    .max()
                    .unwrap_or(0))
            },
        )
    }

    /// The batches of an epoch cut into micro-batches, each made by `packed` (from its
    /// packed rows) or `indexed` (from its sample indices).
    fn split_with<T>(
        &self,
        epoch: usize,
        batch_size: usize,
        micro: usize,
        seed: u64,
        packed: impl Fn(&[(&[u32], &[u8])]) -> Result<T>,
        indexed: impl Fn(&[usize]) -> Result<T>,
    ) -> Result<Vec<Vec<T>>> {
        if batch_size == 0 || micro == 0 {
            bail!("batch_size must be at least 1");
        }
        match self.batching {
            Batching::Packed => {
                let rows = self.packed_rows(epoch, seed);
                let rows: Vec<(&[u32], &[u8])> = rows
                    .iter()
                    .map(|(a, b)| (a.as_slice(), b.as_slice()))
                    .collect();
                rows.chunks(batch_size)
                    .map(|batch| batch.chunks(micro).map(&packed).collect())
                    .collect()
            }
            _ => self
                .batch_plan(epoch, batch_size, seed)
                .iter()
                .map(|idx| idx.chunks(micro).map(&indexed).collect())
                .collect(),
        }
    }
}
