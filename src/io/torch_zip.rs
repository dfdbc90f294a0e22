//! Writes a state dict the way `torch.save` does (torch's zip format: `<name>/data.pkl`, one
//! storage per tensor under `<name>/data/<key>`, `<name>/version`, `<name>/byteorder`), so
//! that `torch.load(path, weights_only=True)` reads it. The pickle is protocol 2 and holds
//! only what `weights_only` loading allows: dicts, strings, integers, tuples, `OrderedDict`,
//! `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`. No crate writes torch's
//! pickles (pytorch-reader, which reads them here, is a reader only), so the few opcodes are
//! written here; the zip container is the zip crate's.

use crate::error::{Error, Result};
use std::io::{Seek, Write};

/// Pickle opcodes (Python's `pickle` module, protocols 0-2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const EMPTY_DICT: u8 = b'}';
    pub const MARK: u8 = b'(';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const GLOBAL: u8 = b'c';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, o: u8) {
        self.0.push(o);
    }

    fn str(&mut self, s: &str) {
        self.op(op::BINUNICODE);
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
    }

    fn int(&mut self, v: u64) {
        if v <= i32::MAX as u64 {
            self.op(op::BININT);
            self.0.extend((v as i32).to_le_bytes());
        } else {
            // Little-endian two's complement, with a zero byte when the top bit is set.
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] & 0x80 == 0 {
                bytes.pop();
            }
            self.op(op::LONG1);
            self.0.push(bytes.len() as u8);
            self.0.extend(bytes);
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(op::GLOBAL);
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
    }

    fn int_tuple(&mut self, values: &[u64]) {
        self.op(op::MARK);
        for &v in values {
            self.int(v);
        }
        self.op(op::TUPLE);
    }

    /// `torch._utils._rebuild_tensor_v2(storage key, 0, shape, contiguous strides, False,
    /// OrderedDict())` over an f32 storage of `numel` elements.
    fn f32_tensor(&mut self, key: &str, shape: &[usize]) {
        let numel: usize = shape.iter().product();
        let mut strides = vec![1u64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1] as u64;
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(op::MARK);
        // The storage: persistent id ('storage', torch.FloatStorage, key, 'cpu', numel).
        self.op(op::MARK);
        self.str("storage");
        self.global("torch", "FloatStorage");
        self.str(key);
        self.str("cpu");
        self.int(numel as u64);
        self.op(op::TUPLE);
        self.op(op::BINPERSID);
        self.int(0);
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        self.int_tuple(&dims);
        self.int_tuple(&strides);
        self.op(op::NEWFALSE);
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
        self.op(op::TUPLE);
        self.op(op::REDUCE);
    }
}

/// The pickle of `{top_key: {name: tensor, ...}}` with tensor i's storage under key `i`.
fn state_dict_pickle(top_key: &str, tensors: &[(String, Vec<usize>, &[f32])]) -> Vec<u8> {
    let mut p = Pickle(Vec::new());
    p.op(op::PROTO);
    p.0.push(2);
    p.op(op::EMPTY_DICT);
    p.str(top_key);
    p.op(op::EMPTY_DICT);
    if !tensors.is_empty() {
        p.op(op::MARK);
        for (i, (name, shape, _)) in tensors.iter().enumerate() {
            p.str(name);
            p.f32_tensor(&i.to_string(), shape);
        }
        p.op(op::SETITEMS);
    }
    p.op(op::SETITEM);
    p.op(op::STOP);
    p.0
}

/// Writes `{top_key: state_dict}` in torch's zip format to `out`; `archive` is the folder
/// name inside the zip (torch uses the file's stem). Tensors are f32.
pub fn write_state_dict<W: Write + Seek>(
    out: W,
    archive: &str,
    top_key: &str,
    tensors: &[(String, Vec<usize>, &[f32])],
) -> Result<()> {
    use zip::write::SimpleFileOptions;
    let zip_err = |e: zip::result::ZipError| Error::Format(format!("writing the torch zip: {e}"));
    for (name, shape, data) in tensors {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::tensor(
                name,
                format!("{shape:?}"),
                format!("{} elements", data.len()),
            ));
        }
    }
    let mut zip = zip::ZipWriter::new(out);
    // Stored, as torch writes, with data aligned to 64 bytes so that torch can map it.
    let options = |bytes: usize| {
        SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes as u64 >= u32::MAX as u64)
            .with_alignment(64)
    };
    let pickle = state_dict_pickle(top_key, tensors);
    zip.start_file(format!("{archive}/data.pkl"), options(pickle.len()))
        .map_err(zip_err)?;
    zip.write_all(&pickle)?;
    zip.start_file(format!("{archive}/byteorder"), options(6))
        .map_err(zip_err)?;
    zip.write_all(b"little")?;
    for (i, (_, _, data)) in tensors.iter().enumerate() {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        zip.start_file(format!("{archive}/data/{i}"), options(bytes.len()))
            .map_err(zip_err)?;
        zip.write_all(bytes)?;
    }
    zip.start_file(format!("{archive}/version"), options(2))
        .map_err(zip_err)?;
    zip.write_all(b"3\n")?;
    zip.finish().map_err(zip_err)?;
    Ok(())
}
