//! The pipeline cache: each compute pipeline built once per shader, entry point and override
//! constants, and found again without allocating.

use super::Device;
use std::collections::HashMap;

/// Compute pipelines by the hash of their `PipelineKey`, each with its owned key.
pub(super) type PipelineCache = HashMap<u64, Vec<(OwnedPipelineKey, wgpu::ComputePipeline)>>;

/// What identifies a compute pipeline: the shader's name, the entry point and the override
/// constants. Looked up without allocating (by hash, then compared with the owned copy).
#[derive(Clone, Copy, Debug)]
struct PipelineKey<'a> {
    name: &'a str,
    entry: &'a str,
    constants: &'a [(&'a str, f64)],
}

impl PipelineKey<'_> {
    fn hash64(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut h);
        self.entry.hash(&mut h);
        for (k, v) in self.constants {
            k.hash(&mut h);
            v.to_bits().hash(&mut h);
        }
        h.finish()
    }

    fn to_owned(self) -> OwnedPipelineKey {
        OwnedPipelineKey {
            name: self.name.to_string(),
            entry: self.entry.to_string(),
            constants: self
                .constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        }
    }
}

pub(super) struct OwnedPipelineKey {
    name: String,
    entry: String,
    constants: Vec<(String, u64)>,
}

impl OwnedPipelineKey {
    fn is(&self, k: &PipelineKey) -> bool {
        self.name == k.name
            && self.entry == k.entry
            && self.constants.len() == k.constants.len()
            && self
                .constants
                .iter()
                .zip(k.constants)
                .all(|((a, x), (b, y))| a == b && *x == y.to_bits())
    }
}

impl Device {
    /// A compute pipeline for `source` (entry point `main`), built once per (name, constants).
    pub fn pipeline(&self, name: &str, source: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        self.pipeline_entry(name, source, "main", constants)
    }

    /// A compute pipeline for entry point `entry` of `source`, built once per
    /// (name, entry, constants). Bind group 0's layout is derived from what the entry uses.
    pub fn pipeline_entry(
        &self,
        name: &str,
        source: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let key = PipelineKey {
            name,
            entry,
            constants,
        };
        let hash = key.hash64();
        let mut cache = self.pipelines.lock().unwrap();
        if let Some((_, p)) = cache.get(&hash).and_then(|v| v.iter().find(|(k, _)| k.is(&key))) {
            return p.clone();
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            });
        cache
            .entry(hash)
            .or_default()
            .push((key.to_owned(), pipeline.clone()));
        pipeline
    }
}
