//! `linear_matrix.wgsl`: the GEMM on the adapter's matrix units (cooperative matrices), only
//! under `GemmPrecision::F16Inputs`; its results differ from the others by the inputs'
//! rounding.

use super::flags::Flags;
use super::{Linear, MatrixConfig, Variant};
use crate::kernels::Gpu;

const SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_matrix.wgsl")
);

/// `linear_matrix.wgsl` for `config`: the `enable` directives and the matrix types it runs on.
/// Built once per configuration (the two that exist); recordings look it up.
pub fn matrix_source(config: MatrixConfig) -> &'static str {
    static SOURCES: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    SOURCES[config.f16_inputs as usize].get_or_init(|| build_source(config))
}

fn build_source(config: MatrixConfig) -> String {
    let (input, f16) = if config.f16_inputs {
        ("f16", "enable f16;\n")
    } else {
        ("f32", "")
    };
    let t = config.edge;
    format!(
        "{f16}enable wgpu_cooperative_matrix;\nalias In = {input};\nconst T: u32 = {t}u;\n\
         alias MatA = coop_mat{t}x{t}<{input}, A>;\nalias MatB = coop_mat{t}x{t}<{input}, B>;\n\
         alias MatC = coop_mat{t}x{t}<f32, C>;\n{SOURCE}"
    )
}

pub(super) fn prepare(lin: &Linear, gpu: &Gpu, config: MatrixConfig) -> Variant {
    let name = if config.f16_inputs {
        "linear_matrix_f16"
    } else {
        "linear_matrix_f32"
    };
    let constants = lin.with_formats(vec![("SG", config.subgroup as f64)]);
    Variant {
        pipeline: gpu.pipeline(name, matrix_source(config), &constants),
        grid: (lin.n.div_ceil(config.tile()), lin.m.div_ceil(config.tile())),
        quads: Flags::default(),
    }
}
