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

/// The inverse document frequency of every row of every value table.
#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    pub idf: Vec<(ParamId, Vec<f32>)>,
}

impl Background {
    /// From the background counts of a model with this layout.
    pub fn new(layout: &ModelLayout, counts: &SlotCounts) -> Result<Self> {
        let mut idf = Vec::new();
        for (table, readers) in table_readers(layout) {
            let mut batches: Option<Vec<u64>> = None;
            for l in &readers {
                let c = counts.layers.iter().find(|c| c.layer == *l).ok_or_else(|| {
                    Error::Config(format!("background slot counts: no counts for memory layer {l}"))
                })?;
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
        }
        Ok(Background { idf })
    }

    /// A table's row IDFs.
    pub fn of(&self, table: ParamId) -> Option<&[f32]> {
        self.idf
            .iter()
            .find(|(id, _)| *id == table)
            .map(|(_, v)| v.as_slice())
    }
}

/// The mask (1: update) of the rows with the `top` highest TF-IDF scores among the rows read
/// (`reads[r]` > 0); all rows read when `top` is None or at least their number.
pub fn rank_rows(reads: &[u32], idf: Option<&[f32]>, top: Option<usize>) -> Vec<u32> {
    let read: Vec<usize> = (0..reads.len()).filter(|&r| reads[r] > 0).collect();
    let mut mask = vec![0u32; reads.len()];
    let chosen: Vec<usize> = match (top, idf) {
        (Some(t), Some(idf)) if t < read.len() => {
            let total = read.iter().map(|&r| reads[r] as f64).sum::<f64>();
            let score = |r: usize| reads[r] as f64 / total * idf[r] as f64;
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
