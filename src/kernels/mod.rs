//! One Rust module per WGSL file: each validates shapes, sizes the dispatch and records into a
//! caller's `CommandEncoder`. The only place that knows binding layouts. Nothing here submits.

pub mod adamw;
pub mod columns;
pub mod embedding_bag;
pub mod embedding_grad;
mod gpu;
pub mod linear;
pub mod moe;
pub mod normalize;
pub mod ops;
pub mod peer;
pub mod product_topk;
pub mod radix_sort;
pub mod row_gate;
pub mod sgd;
pub mod swilu_backward;
pub mod tuning;
pub mod value_grads;
pub mod yardsticks;

use crate::error::{Error, Result};
pub use gpu::Gpu;
pub use tuning::Tuning;

/// Every WGSL file of the crate, by name (for validation tests and tooling).
pub const ALL_SHADERS: &[(&str, &str)] = &[
    ("adamw.wgsl", adamw::SOURCE),
    ("columns.wgsl", columns::SOURCE),
    ("attention.wgsl", ops::ATTENTION),
    ("attention_rows.wgsl", ops::ATTENTION_ROWS),
    ("attention_lanes.wgsl", ops::ATTENTION_LANES),
    ("cross_entropy.wgsl", ops::CROSS_ENTROPY),
    ("elementwise.wgsl", ops::ELEMENTWISE),
    ("rmsnorm.wgsl", ops::RMSNORM),
    ("rope.wgsl", ops::ROPE),
    ("embedding_bag.wgsl", embedding_bag::SOURCE),
    ("embedding_grad.wgsl", embedding_grad::SOURCE),
    ("linear.wgsl", linear::SOURCE),
    ("linear_subgroup.wgsl", linear::SUBGROUP_SOURCE),
    ("linear_narrow.wgsl", linear::NARROW_SOURCE),
    ("moe.wgsl", moe::SOURCE),
    ("normalize.wgsl", normalize::SOURCE),
    ("peer.wgsl", peer::SOURCE),
    ("product_topk.wgsl", product_topk::SOURCE),
    ("product_topk_lanes.wgsl", product_topk::LANES_SOURCE),
    ("radix_sort.wgsl", radix_sort::SOURCE),
    ("row_gate.wgsl", row_gate::SOURCE),
    ("sgd.wgsl", sgd::SOURCE),
    ("swilu_backward.wgsl", swilu_backward::SOURCE),
    ("value_grads.wgsl", value_grads::SOURCE),
];

/// A shader that uses subgroup operations, as this target's WGSL front end accepts it:
/// browsers require the `enable subgroups;` directive, which naga 30 (native) rejects as
/// unimplemented.
pub(crate) fn with_subgroups(source: &'static str) -> std::borrow::Cow<'static, str> {
    if cfg!(target_arch = "wasm32") {
        format!("enable subgroups;\n{source}").into()
    } else {
        source.into()
    }
}

/// Loop iterations one invocation may run, summed over all its loops.
///
/// lavapipe (Mesa's llvmpipe Vulkan) stops every invocation's loops after 65,535 iterations in
/// total, silently: measured here, a 70,000-iteration loop ends at 65,535, and two loops of
/// 40,000 end at 65,534 together. Results past that point are wrong, not missing. Every kernel
/// therefore sizes its dispatch so that an invocation's iterations, estimated from above on
/// the host, stay within this budget (with room to spare), and refuses shapes that cannot.
pub const LOOP_BUDGET: u64 = 49_152;

/// Most rows one linear dispatch covers (64-row tiles, one grid dimension).
pub const MAX_GRID_ROWS: u32 = crate::gpu::MAX_GRID_DIM * 64;

/// Errors when `iterations` (an upper bound per invocation) exceed the loop budget.
pub(crate) fn check_loop_budget(kernel: &str, iterations: u64, what: &str) -> Result<()> {
    if iterations > LOOP_BUDGET {
        return Err(Error::Config(format!(
            "{kernel}: {what} needs about {iterations} loop iterations per invocation; the portable budget \
is {LOOP_BUDGET} (CPU Vulkan drivers stop loops after 65,535)"
        )));
    }
    Ok(())
}

/// Checks that `buffer` holds at least `elems` 4-byte elements and fits one storage binding.
pub(crate) fn check_buffer(gpu: &Gpu, name: &str, buffer: &wgpu::Buffer, elems: u64) -> Result<()> {
    let need = elems * 4;
    if buffer.size() < need {
        return Err(Error::tensor(
            name,
            format!("a buffer of at least {need} bytes"),
            format!("{} bytes", buffer.size()),
        ));
    }
    if buffer.size() > gpu.max_binding_bytes() {
        return Err(Error::tensor(
            name,
            format!(
                "at most {} bytes (the adapter's largest storage binding)",
                gpu.max_binding_bytes()
            ),
            format!("{} bytes", buffer.size()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The override constants each shader is checked with: its defaults, every workgroup
    /// width the code picks (`WG`), f16 weights, inputs and keys/values, and every GEMM tile shape
    /// (`WG_M`, `WG_N`, `TK`).
    fn override_sets(module: &naga::Module) -> Vec<Vec<(&'static str, f64)>> {
        let has = |name: &str| {
            module
                .overrides
                .iter()
                .any(|(_, o)| o.name.as_deref() == Some(name))
        };
        let mut sets = vec![Vec::new()];
        if has("WG") {
            sets.extend([8.0, 16.0, 32.0, 64.0].map(|wg| vec![("WG", wg)]));
        }
        if has("W_F16") {
            sets.push(vec![("W_F16", 1.0)]);
        }
        if has("X_F16") {
            sets.push(vec![("X_F16", 1.0)]);
            sets.push(vec![("W_F16", 1.0), ("X_F16", 1.0)]);
        }
        if has("KV_F16") {
            sets.push(vec![("KV_F16", 1.0)]);
        }
        if has("ROWS") {
            sets.push(vec![("ROWS", 16.0)]);
        }
        if has("PAIRED") {
            sets.push(vec![("PAIRED", 1.0), ("X_F16", 1.0)]);
        }
        if has("WG_M") {
            sets.extend(crate::kernels::linear::GemmTile::CANDIDATES.map(|t| {
                vec![
                    ("WG_M", t.wg_m as f64),
                    ("WG_N", t.wg_n as f64),
                    ("TK", t.depth as f64),
                ]
            }));
        }
        sets
    }

    fn validate(name: &str, module: &naga::Module) -> naga::valid::ModuleInfo {
        // unpack2x16float is core WGSL; naga files it under this capability, which wgpu
        // grants on every WebGPU-conformant backend.
        // Subgroup operations: only in variants used where the device has the feature.
        let caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32 | naga::valid::Capabilities::SUBGROUP;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    /// Every WGSL file parses and validates with naga (the same front end wgpu uses natively),
    /// and stays within WebGPU's default workgroup limits with every set of override
    /// constants the code uses.
    #[test]
    fn every_shader_parses_and_validates() {
        use naga::back::pipeline_constants::process_overrides;
        let yardsticks = super::yardsticks::SHADERS;
        for (name, source) in super::ALL_SHADERS.iter().chain(yardsticks) {
            let module = naga::front::wgsl::parse_str(source)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
            let info = validate(name, &module);
            for set in override_sets(&module) {
                let constants = set.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                let (module, _) = process_overrides(&module, &info, None, &constants)
                    .unwrap_or_else(|e| panic!("{name} {set:?}: overrides: {e:?}"));
                for ep in &module.entry_points {
                    let invocations: u32 = ep.workgroup_size.iter().product();
                    assert!(
                        invocations <= 256,
                        "{name} {set:?}: {invocations} invocations per workgroup"
                    );
                }
                let workgroup_bytes: u32 = module
                    .global_variables
                    .iter()
                    .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                    .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
                    .sum();
                assert!(
                    workgroup_bytes <= 16384,
                    "{name} {set:?}: {workgroup_bytes} B of workgroup memory"
                );
            }
        }
    }

    /// Every WGSL file, with its override constants at their defaults and at every
    /// workgroup width the code picks, translates through naga's Metal (MSL 2.1, for simd
    /// groups), HLSL (shader model 6.0, for wave operations), SPIR-V (1.3) and GLSL (ES 3.1,
    /// what wgpu's GL back end asks for compute; every entry point, except the subgroup
    /// variants, which GL adapters never get) back ends: a construct one back end rejects
    /// fails here, on machines that cannot run that back end.
    #[test]
    fn every_shader_translates_to_msl_hlsl_spirv_and_glsl() {
        use naga::back::{glsl, hlsl, msl, pipeline_constants::process_overrides, spv};
        let (mut translated, mut glsl_entry_points) = (0, 0);
        for (name, source) in super::ALL_SHADERS {
            let module = naga::front::wgsl::parse_str(source).unwrap();
            let info = validate(name, &module);
            for set in override_sets(&module) {
                let wg = format!("{set:?}");
                let constants = set.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                let (module, info) = process_overrides(&module, &info, None, &constants)
                    .unwrap_or_else(|e| panic!("{name} {wg}: overrides: {e:?}"));
                let msl_options = msl::Options {
                    lang_version: (2, 1),
                    fake_missing_bindings: true,
                    ..Default::default()
                };
                let (metal, _) =
                    msl::write_string(&module, &info, &msl_options, &msl::PipelineOptions::default())
                        .unwrap_or_else(|e| panic!("{name} {wg}: MSL: {e:?}"));
                let hlsl_options = hlsl::Options {
                    shader_model: hlsl::ShaderModel::V6_0,
                    fake_missing_bindings: true,
                    ..Default::default()
                };
                let mut text = String::new();
                let hlsl_pipeline = hlsl::PipelineOptions::default();
                hlsl::Writer::new(&mut text, &hlsl_options, &hlsl_pipeline)
                    .write(&module, &info, None)
                    .unwrap_or_else(|e| panic!("{name} {wg}: HLSL: {e:?}"));
                let spv_options = spv::Options {
                    lang_version: (1, 3),
                    ..Default::default()
                };
                spv::write_vec(&module, &info, &spv_options, None)
                    .unwrap_or_else(|e| panic!("{name} {wg}: SPIR-V: {e:?}"));
                let subgroups = source.contains("subgroupShuffle");
                for ep in module.entry_points.iter().filter(|_| !subgroups) {
                    let pipeline = glsl::PipelineOptions {
                        shader_stage: naga::ShaderStage::Compute,
                        entry_point: ep.name.clone(),
                        multiview: None,
                    };
                    let (options, mut gl) = (glsl::Options::default(), String::new());
                    glsl::Writer::new(&mut gl, &module, &info, &options, &pipeline, Default::default())
                        .and_then(|mut w| w.write())
                        .unwrap_or_else(|e| panic!("{name} {} {wg}: GLSL: {e:?}", ep.name));
                    glsl_entry_points += 1;
                }
                // The subgroup variants' shuffles reach each back end as its own intrinsic.
                if subgroups {
                    assert!(metal.contains("simd_shuffle"), "{name}: MSL without simd_shuffle");
                    assert!(
                        text.contains("WaveReadLaneAt"),
                        "{name}: HLSL without WaveReadLaneAt"
                    );
                }
                translated += 1;
            }
        }
        assert!(translated >= super::ALL_SHADERS.len());
        assert!(glsl_entry_points >= super::ALL_SHADERS.len());
    }

    /// The matrix-unit GEMM (`linear_matrix.wgsl`) in both configurations validates with
    /// cooperative matrices and translates to SPIR-V (Vulkan) and MSL 2.3 (Metal's simdgroup
    /// matrices), on every machine, with or without an adapter that has matrix units. naga
    /// 30 has no cooperative matrices for HLSL or GLSL, and wgpu offers them on neither.
    #[test]
    fn matrix_unit_gemm_validates_and_translates_to_spirv_and_msl() {
        use crate::kernels::linear::MatrixConfig;
        use naga::back::{msl, pipeline_constants::process_overrides, spv};
        for f16_inputs in [true, false] {
            let config = MatrixConfig {
                edge: if f16_inputs { 16 } else { 8 },
                f16_inputs,
                subgroup: 32,
            };
            let source = super::linear::matrix_source(config);
            let module = naga::front::wgsl::parse_str(source)
                .unwrap_or_else(|e| panic!("{config:?}: {}", e.emit_to_string(source)));
            let caps = naga::valid::Capabilities::COOPERATIVE_MATRIX
                | naga::valid::Capabilities::SHADER_FLOAT16
                | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
                | naga::valid::Capabilities::SUBGROUP;
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{config:?}: {e:?}"));
            for (sg, w_f16) in [(32.0, 0.0), (64.0, 1.0)] {
                let constants = [
                    ("SG".to_string(), sg),
                    ("W_F16".to_string(), w_f16),
                    ("X_F16".to_string(), w_f16),
                ]
                .into_iter()
                .collect();
                let (module, info) = process_overrides(&module, &info, None, &constants)
                    .unwrap_or_else(|e| panic!("{config:?} SG={sg}: overrides: {e:?}"));
                let invocations: u32 = module.entry_points[0].workgroup_size.iter().product();
                assert!(
                    invocations <= 256,
                    "{config:?} SG={sg}: {invocations} invocations"
                );
                let spv_options = spv::Options {
                    lang_version: (1, 6),
                    ..Default::default()
                };
                spv::write_vec(&module, &info, &spv_options, None)
                    .unwrap_or_else(|e| panic!("{config:?} SG={sg}: SPIR-V: {e:?}"));
                let msl_options = msl::Options {
                    lang_version: (2, 3),
                    fake_missing_bindings: true,
                    ..Default::default()
                };
                msl::write_string(&module, &info, &msl_options, &msl::PipelineOptions::default())
                    .unwrap_or_else(|e| panic!("{config:?} SG={sg}: MSL: {e:?}"));
            }
        }
    }
}
