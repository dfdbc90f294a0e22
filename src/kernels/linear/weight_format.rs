//! How a linear layer's weight is stored: f32, f16 pairs, or 8-bit integers with one f16 scale
//! per group of 32 consecutive values (the q8_0 layout of local-LLM runtimes), and the host's
//! packing and unpacking of each. Every kernel widens a stored weight to the same f32 value
//! (`unpack_q8` is that value), so results stay the same bit for bit across kernels.
//!
//! The q8 layout, in 4-byte words: first the integers, four a word (element i in byte i % 4 of
//! word i / 4, lowest byte first, two's complement), then from word `scales_at` the scales, two
//! f16 a word (group g in half g % 2 of word `scales_at + g / 2`). Element i's value is
//! `q_i x scale_{i / 32}`; both factors are exact in f32 and so is their product (8 + 11
//! significant bits), so there is no rounding to differ between kernels.

use crate::error::{Error, Result};

/// Values per q8 scale.
pub const Q8_GROUP: usize = 32;

/// A linear layer's weight storage (`Linear::w_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32 values, one a word.
    #[default]
    F32,
    /// f16 values, two a word (`pack_f16`).
    F16,
    /// 8-bit integers, four a word, then their scales from word `scales_at` (`pack_q8`).
    Q8 { scales_at: u32 },
}

impl WeightFormat {
    /// The words holding elements `0..elements` in this format.
    pub fn words(self, elements: u64) -> u64 {
        match self {
            WeightFormat::F32 => elements,
            WeightFormat::F16 => elements.div_ceil(2),
            WeightFormat::Q8 { scales_at } => {
                (scales_at as u64).max(elements.div_ceil(4)) + elements.div_ceil(2 * Q8_GROUP as u64)
            }
        }
    }

    /// f16 where `f16`, else f32.
    pub fn f16_if(f16: bool) -> Self {
        if f16 {
            WeightFormat::F16
        } else {
            WeightFormat::F32
        }
    }

    /// The shaders' override constant of the format (`W_F16`, `W_Q8`), if not f32.
    pub(super) fn constant(self) -> Option<&'static str> {
        match self {
            WeightFormat::F32 => None,
            WeightFormat::F16 => Some("W_F16"),
            WeightFormat::Q8 { .. } => Some("W_Q8"),
        }
    }
}

/// `values` (a whole number of groups of 32) in the q8 layout, and where its scales start.
/// Each group's scale is its largest magnitude / 127 rounded to f16, and each value the
/// nearest integer multiple of it (clamped to +-127, which the rounded scale can call for).
/// Errors where a group's scale is beyond f16's range (a magnitude above 127 x 65504).
pub fn pack_q8(values: &[f32]) -> Result<(Vec<u32>, u32)> {
    if !values.len().is_multiple_of(Q8_GROUP) {
        return Err(Error::Config(format!(
            "8-bit weights: {} values are not whole groups of {Q8_GROUP}",
            values.len()
        )));
    }
    let groups = values.len() / Q8_GROUP;
    let scales_at = values.len() / 4;
    let mut words = vec![0u32; scales_at + groups.div_ceil(2)];
    for (g, group) in values.chunks(Q8_GROUP).enumerate() {
        let largest = group.iter().fold(0f32, |m, v| m.max(v.abs()));
        if group.iter().any(|v| !v.is_finite()) {
            return Err(Error::Config(format!(
                "8-bit weights: a value that is not finite in group {g}"
            )));
        }
        let scale = half::f16::from_f32(largest / 127.0);
        if scale.is_infinite() {
            return Err(Error::Config(format!(
                "8-bit weights: a magnitude of {largest} is beyond an f16 scale's range"
            )));
        }
        let s = scale.to_f32();
        for (j, &v) in group.iter().enumerate() {
            let q = if s == 0.0 {
                0
            } else {
                (v / s).round().clamp(-127.0, 127.0) as i8
            };
            let i = g * Q8_GROUP + j;
            words[i / 4] |= (q as u8 as u32) << (8 * (i % 4));
        }
        words[scales_at + g / 2] |= (scale.to_bits() as u32) << (16 * (g % 2));
    }
    Ok((words, scales_at as u32))
}

/// The first `n` values of `pack_q8`'s words as f32: what every kernel reads.
pub fn unpack_q8(words: &[u32], scales_at: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let q = (words[i / 4] >> (8 * (i % 4))) as u8 as i8;
            let g = i / Q8_GROUP;
            let bits = (words[scales_at as usize + g / 2] >> (16 * (g % 2))) as u16;
            q as f32 * half::f16::from_bits(bits).to_f32()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_round_trips_within_half_a_step() {
        let mut rng = crate::rng::Rng::new(3);
        let values: Vec<f32> = (0..32 * 9)
            .map(|i| rng.normal() * (1.0 + (i / 32) as f32))
            .collect();
        let (words, scales_at) = pack_q8(&values).unwrap();
        assert_eq!(scales_at as usize, values.len() / 4);
        assert_eq!(words.len(), values.len() / 4 + 5);
        let back = unpack_q8(&words, scales_at, values.len());
        for (g, (a, b)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
            let largest = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = half::f16::from_f32(largest / 127.0).to_f32();
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 0.5 * step * 1.001, "group {g}: {x} -> {y}");
            }
        }
    }

    #[test]
    fn q8_zero_groups_and_bad_input() {
        let (words, at) = pack_q8(&[0.0; 64]).unwrap();
        assert!(unpack_q8(&words, at, 64).iter().all(|&v| v == 0.0));
        assert!(pack_q8(&[1.0; 31]).is_err());
        assert!(pack_q8(&[1e10; 32]).is_err());
        let mut nan = [0.5f32; 32];
        nan[3] = f32::NAN;
        assert!(pack_q8(&nan).is_err());
    }

    #[test]
    fn words_count_each_format() {
        assert_eq!(WeightFormat::F32.words(10), 10);
        assert_eq!(WeightFormat::F16.words(11), 6);
        assert_eq!(WeightFormat::Q8 { scales_at: 16 }.words(64), 16 + 1);
    }
}
