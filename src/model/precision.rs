//! The precision a model's forward GEMMs read their weights in (`WeightPrecision`), and the
//! compact copies it keeps of them: f16 pairs, or 8-bit integers with one f16 scale per 32
//! values along the input (`kernels::linear::pack_q8`). Products are summed in f32 either way.

use super::config::ModelConfig;
use super::context::CompactWeight;
use super::layout::ModelLayout;
use super::vocab::{CompactTable, VocabTables};
use crate::error::{Error, Result};
use crate::kernels::linear::{pack_f16, pack_q8, WeightFormat, Q8_GROUP};
use crate::kernels::Gpu;
use crate::memory::ValueDtype;
use crate::params::ParamId;
use half::f16;

/// What the forward GEMMs of attention, the dense feed-forward blocks and the output layer
/// read (`Model::use_f16_weights`, `Model::use_q8_weights`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// The f32 weights themselves (what training updates).
    #[default]
    F32,
    /// f16 copies: half the bytes, each weight rounded to the nearest f16.
    F16,
    /// 8-bit copies (q8_0): 1.0625 bytes a weight, each within half a step of its group's
    /// scale (the group's largest magnitude / 127). A weight whose rows are not whole groups of
    /// 32 keeps an f16 copy; the memory layers' projections keep f16.
    Q8,
}

impl WeightPrecision {
    /// Bytes a GEMM weight takes in this precision (the scales included).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightPrecision::F32 => 4.0,
            WeightPrecision::F16 => 2.0,
            WeightPrecision::Q8 => 1.0 + 2.0 / Q8_GROUP as f64,
        }
    }

    /// Its name in flags and reports: "f32", "f16" or "q8".
    pub fn name(self) -> &'static str {
        match self {
            WeightPrecision::F32 => "f32",
            WeightPrecision::F16 => "f16",
            WeightPrecision::Q8 => "q8",
        }
    }
}

/// The weights that get compact copies besides the output layer's (kept by rows with its
/// table): attention's and those each feed-forward kind names.
pub(super) fn compact_weight_ids(layout: &ModelLayout) -> Vec<ParamId> {
    let mut ids = Vec::new();
    for l in &layout.layers {
        let a = &l.attention;
        ids.extend([a.wq, a.wk, a.wv, a.wo]);
        ids.extend(l.feed_forward.compact_weights());
    }
    ids
}

/// Errors unless every value of weight `id` is within f16's range: bf16 weights reach far
/// past it, and rounding would make them infinite.
fn check_f16_range(layout: &ModelLayout, id: ParamId, data: &[f32]) -> Result<()> {
    match data.iter().find(|v| v.abs() > f16::MAX.to_f32()) {
        Some(v) => Err(Error::tensor(
            &layout.registry.spec(id).name,
            "values within f16's range (|x| <= 65504) for f16 weights",
            format!("{v}; run it with f32 weights"),
        )),
        None => Ok(()),
    }
}

/// Weight `id`'s copy in `precision` (not f32): 8-bit where its rows (of `row_len` values)
/// are whole groups of 32, else f16.
pub(super) fn compact_copy(
    gpu: &Gpu,
    layout: &ModelLayout,
    (id, row_len): (ParamId, usize),
    data: &[f32],
    precision: WeightPrecision,
) -> Result<CompactWeight> {
    let name = &layout.registry.spec(id).name;
    if precision == WeightPrecision::Q8 && row_len.is_multiple_of(Q8_GROUP) {
        let (words, scales_at) = pack_q8(data)
            .map_err(|e| Error::tensor(name, "8-bit weights", format!("{e}; run it with f32 weights")))?;
        return Ok((
            gpu.upload(&format!("{name} (q8)"), &words),
            WeightFormat::Q8 { scales_at },
        ));
    }
    check_f16_range(layout, id, data)?;
    Ok((
        gpu.upload(&format!("{name} (f16)"), &pack_f16(data)),
        WeightFormat::F16,
    ))
}

/// The output layer's compact copy by rows of `rows_per_chunk` (`None`: as many as one
/// binding holds in f16), or `None` where it keeps f32: an odd width (its f16 rows would not
/// be whole words) that is not whole q8 groups either.
pub(super) fn output_compact_table(
    gpu: &Gpu,
    c: &ModelConfig,
    layout: &ModelLayout,
    data: &[f32],
    rows_per_chunk: Option<usize>,
    precision: WeightPrecision,
) -> Result<Option<CompactTable>> {
    if precision == WeightPrecision::Q8 && c.dim.is_multiple_of(Q8_GROUP) {
        // As many rows a buffer as one binding holds (a row's words: its integers, then its
        // share of the scales, rounded up).
        let row_bytes = 4 * (c.dim / 4 + c.dim.div_ceil(2 * Q8_GROUP) + 1) as u64;
        let rows = rows_per_chunk
            .unwrap_or((gpu.max_binding_bytes() / row_bytes).min(u32::MAX as u64) as usize)
            .max(1);
        let name = &layout.registry.spec(layout.output).name;
        let mut buffers = Vec::new();
        for (i, chunk) in data.chunks(rows * c.dim).enumerate() {
            let (words, scales_at) = pack_q8(chunk)
                .map_err(|e| Error::tensor(name, "8-bit weights", format!("{e}; run it with f32 weights")))?;
            buffers.push((
                gpu.upload(&format!("{name} rows {i} (q8)"), &words),
                WeightFormat::Q8 { scales_at },
            ));
        }
        return Ok(Some(CompactTable {
            chunks: buffers,
            rows_per_chunk: rows as u32,
        }));
    }
    if precision == WeightPrecision::F32 || !c.dim.is_multiple_of(2) {
        return Ok(None);
    }
    check_f16_range(layout, layout.output, data)?;
    let pool = VocabTables::table(gpu, data, (c.vocab, c.dim), ValueDtype::F16, rows_per_chunk)?;
    let chunks = pool.chunks();
    Ok(Some(CompactTable {
        chunks: chunks
            .buffers
            .iter()
            .map(|b| ((*b).clone(), WeightFormat::F16))
            .collect(),
        rows_per_chunk: chunks.rows_per_chunk,
    }))
}
