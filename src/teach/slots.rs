//! Which value rows a teaching step updates: the rows a batch reads, ranked by TF-IDF against
//! the background reads of the model's original data (Lin et al., "Continual Learning via
//! Sparse Memory Finetuning", 2025).
//!
//! For a value table, a row's term frequency is its share of the batch's reads (at the
//! positions the loss is on); its inverse document frequency, as the paper's, is
//! `ln((B + 1) / (b + 1))`, where the documents are the background batches: `b` of the `B`
//! batches read the row (summed over the memory layers sharing the table, `B` times their
//! number). Batches rather than reads: a row read in nearly every background batch scores near
//! zero whatever its batch count, where the log of read counts would only halve it. Ties go
//! to the lower row index: the ranking is deterministic.

use crate::error::{Error, Result};
use crate::model::{ModelLayout, SlotCounts};
use crate::params::ParamId;

/// The memory layers that read each value table (PEER's two tables are read at the same
/// rows), in layer order.
pub fn table_readers(layout: &ModelLayout) -> Vec<(ParamId, Vec<usize>)> {
    let mut tables: Vec<(ParamId, Vec<usize>)> = layout.values.iter().map(|&id| (id, Vec::new())).collect();
    for (l, layer) in layout.layers.iter().enumerate() {
        if let Some(m) = layer.feed_forward.memory() {
            for id in std::iter::once(m.values).chain(m.values_u) {
                if let Some((_, readers)) = tables.iter_mut().find(|(t, _)| *t == id) {
                    readers.push(l);
                }
            }
        }
    }
    tables
}

/// How `sparse-memory` ranks the rows a batch read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlotRanking {
    /// TF-IDF (Lin et al.): a row's share of the batch's reads times its inverse document
    /// frequency over the background's batches.
    #[default]
    TfIdf,
    /// KL divergence (Goyal et al.'s criterion, as memlayers reads it): a row's term of
    /// `KL(batch || background)`, `p log(p / q)`, with `p` its share of the batch's reads and
    /// `q` its share of the background's reads (add-one smoothed): rows the batch reads far
    /// more than the background does.
    Kl,
}

/// What the background says of every row of every value table: its inverse document
/// frequency, and the log of its (smoothed) share of the background's reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    pub idf: Vec<(ParamId, Vec<f32>)>,
    pub log_share: Vec<(ParamId, Vec<f32>)>,
}

impl Background {
    /// From the background counts of a model with this layout.
    pub fn new(layout: &ModelLayout, counts: &SlotCounts) -> Result<Self> {
        let (mut idf, mut log_share) = (Vec::new(), Vec::new());
        for (table, readers) in table_readers(layout) {
            let mut batches: Option<Vec<u64>> = None;
            let mut reads: Vec<u64> = Vec::new();
            for l in &readers {
                let c = counts.layers.iter().find(|c| c.layer == *l).ok_or_else(|| {
                    Error::Config(format!("background slot counts: no counts for memory layer {l}"))
                })?;
                if reads.is_empty() {
                    reads = vec![0; c.reads.len()];
                } else if reads.len() != c.reads.len() {
                    return Err(Error::Config(
                        "background slot counts: layers of different sizes".into(),
                    ));
                }
                reads.iter_mut().zip(&c.reads).for_each(|(s, x)| *s += x);
                match &mut batches {
                    Some(sum) if sum.len() == c.batches.len() => {
                        sum.iter_mut().zip(&c.batches).for_each(|(s, x)| *s += x)
                    }
                    Some(_) => {
                        return Err(Error::Config(
                            "background slot counts: layers of different sizes".into(),
                        ))
                    }
                    None => batches = Some(c.batches.clone()),
                }
            }
            let documents = (counts.batches * readers.len() as u64) as f64;
            let rows = batches.unwrap_or_default();
            idf.push((
                table,
                rows.iter()
                    .map(|&b| ((documents + 1.0) / (b as f64 + 1.0)).ln() as f32)
                    .collect(),
            ));
            let total = reads.iter().sum::<u64>() as f64 + reads.len() as f64;
            log_share.push((
                table,
                reads
                    .iter()
                    .map(|&r| ((r as f64 + 1.0) / total).ln() as f32)
                    .collect(),
            ));
        }
        Ok(Background { idf, log_share })
    }

    /// A table's row weights for `ranking`: IDFs (TF-IDF) or log background shares (KL).
    pub fn weights(&self, table: ParamId, ranking: SlotRanking) -> Option<RowWeights<'_>> {
        match ranking {
            SlotRanking::TfIdf => self.of(table).map(RowWeights::Idf),
            SlotRanking::Kl => self
                .log_share
                .iter()
                .find(|(id, _)| *id == table)
                .map(|(_, w)| RowWeights::LogShare(w.as_slice())),
        }
    }

    /// A table's row IDFs.
    pub fn of(&self, table: ParamId) -> Option<&[f32]> {
        self.idf
            .iter()
            .find(|(id, _)| *id == table)
            .map(|(_, v)| v.as_slice())
    }
}

/// Per-row background weights a ranking scores reads with.
#[derive(Clone, Copy, Debug)]
pub enum RowWeights<'a> {
    /// Inverse document frequencies: score `p idf`.
    Idf(&'a [f32]),
    /// Logs of the background's read shares: score `p (ln p - ln q)`.
    LogShare(&'a [f32]),
}

/// The mask (1: update) of the rows with the `top` highest TF-IDF scores among the rows read
/// (`reads[r]` > 0); all rows read when `top` is None or at least their number.
pub fn rank_rows(reads: &[u32], idf: Option<&[f32]>, top: Option<usize>) -> Vec<u32> {
    rank_rows_by(reads, idf.map(RowWeights::Idf), top)
}

/// `rank_rows` with the score `weights` says (most reads first without weights).
pub fn rank_rows_by(reads: &[u32], weights: Option<RowWeights>, top: Option<usize>) -> Vec<u32> {
    let read: Vec<usize> = (0..reads.len()).filter(|&r| reads[r] > 0).collect();
    let mut mask = vec![0u32; reads.len()];
    let chosen: Vec<usize> = match (top, weights) {
        (Some(t), Some(weights)) if t < read.len() => {
            let total = read.iter().map(|&r| reads[r] as f64).sum::<f64>();
            let score = |r: usize| {
                let p = reads[r] as f64 / total;
                match weights {
                    RowWeights::Idf(idf) => p * idf[r] as f64,
                    RowWeights::LogShare(log_q) => p * (p.ln() - log_q[r] as f64),
                }
            };
            let mut ranked = read;
            ranked.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
            ranked.truncate(t);
            ranked
        }
        (Some(t), None) if t < read.len() => {
            let mut ranked = read;
            ranked.sort_by(|&a, &b| reads[b].cmp(&reads[a]).then(a.cmp(&b)));
            ranked.truncate(t);
            ranked
        }
        _ => read,
    };
    for r in chosen {
        mask[r] = 1;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The definition, by brute force: a row is chosen iff it was read and fewer than `top`
    /// read rows beat it (higher score, or the same score and a lower index).
    fn oracle(reads: &[u32], idf: &[f32], top: usize) -> Vec<u32> {
        let total: f64 = reads.iter().map(|&c| c as f64).sum();
        let score = |r: usize| reads[r] as f64 / total * idf[r] as f64;
        (0..reads.len())
            .map(|r| {
                let beaten_by = (0..reads.len())
                    .filter(|&o| reads[o] > 0 && (score(o) > score(r) || (score(o) == score(r) && o < r)))
                    .count();
                (reads[r] > 0 && beaten_by < top) as u32
            })
            .collect()
    }

    #[test]
    fn tf_idf_ranking_matches_the_definition() {
        let mut rng = Rng::new(3);
        for (rows, top) in [(1usize, 1usize), (7, 3), (64, 10), (300, 1), (300, 299), (50, 80)] {
            let reads: Vec<u32> = (0..rows)
                .map(|_| if rng.below(3) == 0 { 0 } else { rng.below(5) as u32 })
                .collect();
            // Few distinct IDFs, so that ties happen and the index decides them.
            let idf: Vec<f32> = (0..rows).map(|_| rng.below(4) as f32 * 0.5).collect();
            let got = rank_rows(&reads, Some(&idf), Some(top));
            assert_eq!(got, oracle(&reads, &idf, top), "{rows} rows, top {top}");
            let read = reads.iter().filter(|&&c| c > 0).count();
            assert_eq!(got.iter().sum::<u32>() as usize, read.min(top));
        }
    }

    #[test]
    fn without_a_limit_every_row_read_is_chosen() {
        let reads = [0u32, 2, 0, 1, 5];
        assert_eq!(rank_rows(&reads, None, None), vec![0, 1, 0, 1, 1]);
        assert_eq!(rank_rows(&reads, Some(&[1.0; 5]), Some(10)), vec![0, 1, 0, 1, 1]);
    }

    #[test]
    fn kl_ranking_prefers_rows_the_background_rarely_reads() {
        // Rows 0 and 1 are read alike by the batch; the background reads row 0 a hundred times
        // as often: row 1 is the surprising one. Row 2 is read twice as much as row 1 but is
        // as common in the background as row 0.
        let log_q: Vec<f32> = [0.5f64, 0.005, 0.4945].iter().map(|q| q.ln() as f32).collect();
        let pick = |reads: &[u32], top| rank_rows_by(reads, Some(RowWeights::LogShare(&log_q)), Some(top));
        assert_eq!(pick(&[2, 2, 4], 1), vec![0, 1, 0]);
        assert_eq!(pick(&[2, 2, 4], 2), vec![0, 1, 1]);
        // A row read ten times as often by the batch outranks a rare one read once.
        assert_eq!(pick(&[0, 1, 40], 1), vec![0, 0, 1]);
    }

    #[test]
    fn rows_the_background_reads_often_rank_below_rare_ones() {
        // Row 0 is read 3 times by the batch but in every background batch; row 1 is read
        // once and never in the background: row 1 is the more specific.
        let batches = [32u64, 0, 10];
        let idf: Vec<f32> = batches
            .iter()
            .map(|&b| (33.0 / (b as f64 + 1.0)).ln() as f32)
            .collect();
        assert_eq!(rank_rows(&[3, 1, 1], Some(&idf), Some(1)), vec![0, 1, 0]);
    }
}
