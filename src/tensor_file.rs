//! Host tensors and safetensors files: the lowest layer of file formats (the model and the
//! trainer write through it; `io` reads and writes model folders on top of it).

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A named tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// The dtype it was stored with (for messages).
    pub stored_as: String,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor {
            shape,
            data: TensorData::F32(data),
            stored_as: "F32".into(),
        }
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        HostTensor {
            shape,
            data: TensorData::I64(data),
            stored_as: "I64".into(),
        }
    }
}

/// The tensors of one safetensors file, by name.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, HostTensor>,
}

/// A tensor's little-endian bytes of `dtype` as f32 (floats) or i64 (integers).
pub(crate) fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<TensorData> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match dtype {
        Dtype::F32 => TensorData::F32(
            chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        Dtype::F16 => TensorData::F32(
            chunks(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
        ),
        Dtype::BF16 => TensorData::F32(
            chunks(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
        ),
        Dtype::F64 => TensorData::F32(
            chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
        ),
        Dtype::I64 => TensorData::I64(
            chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        Dtype::I32 => TensorData::I64(
            chunks(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
        ),
        other => {
            return Err(Error::tensor(
                name,
                "a float (F32, F16, BF16, F64) or integer (I64, I32) dtype",
                format!("{other:?}"),
            ))
        }
    })
}

impl TensorFile {
    /// Parses safetensors bytes; floats of any width become f32, integers i64.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Format(format!("{what} is not a valid safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = to_f32(name, view.dtype(), view.data())?;
            tensors.insert(
                name.to_string(),
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                    stored_as: format!("{:?}", view.dtype()),
                },
            );
        }
        Ok(TensorFile { tensors })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// A float tensor, with its shape checked against `expected` (`None` = any size there).
    pub fn f32_with_shape(&self, name: &str, expected: &[Option<usize>]) -> Result<(&[usize], &[f32])> {
        let t = self.get(name)?;
        let shape_ok = t.shape.len() == expected.len()
            && t.shape
                .iter()
                .zip(expected)
                .all(|(&s, e)| e.is_none_or(|e| e == s));
        if !shape_ok {
            let exp: Vec<String> = expected
                .iter()
                .map(|e| e.map_or("_".into(), |v| v.to_string()))
                .collect();
            return Err(Error::tensor(
                name,
                format!("shape [{}]", exp.join(", ")),
                format!("{:?}", t.shape),
            ));
        }
        match &t.data {
            TensorData::F32(v) => Ok((&t.shape, v)),
            TensorData::I64(_) => Err(Error::tensor(name, "a float dtype", t.stored_as.clone())),
        }
    }

    /// Serialises to safetensors bytes (f32 and i64 as stored).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let (dtype, bytes) = match &t.data {
                TensorData::F32(v) => (Dtype::F32, bytemuck::cast_slice::<f32, u8>(v).to_vec()),
                TensorData::I64(v) => (Dtype::I64, bytemuck::cast_slice::<i64, u8>(v).to_vec()),
            };
            raw.push((name.clone(), dtype, t.shape.clone(), bytes));
        }
        let views = raw
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::tensor(n, format!("{d:?} data matching shape {s:?}"), e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, None).map_err(|e| Error::Format(format!("serialize: {e}")))
    }

    /// Writes atomically: a crash never leaves half a file at `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Format(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::Io)
}

#[cfg(target_arch = "wasm32")]
pub fn write_atomic(_path: &Path, _bytes: &[u8]) -> Result<()> {
    Err(Error::Format("no file system on the web".into()))
}
