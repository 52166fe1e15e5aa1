//! GGUF files: a bounds-checked reader over a memory map, and a small writer
//! (used by tests to build tiny models and by tools that emit GGUF).
//!
//! Layout (version 2 and 3): magic `GGUF`, u32 version, u64 tensor count,
//! u64 metadata count, the metadata key/values, the tensor infos (name, dims
//! innermost first, ggml type, offset), padding to `general.alignment`, then
//! the tensor data.

use crate::error::{io_error, ModelError, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tailor_tensor::{DType, Tensor};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U64(v) => Some(v),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice, if a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array, if one.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Shape, outermost first (the reverse of GGUF's order).
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Size in bytes.
    pub len: usize,
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Metadata by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl GgufFile {
    /// Opens and validates a GGUF file: every tensor must lie inside it.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        // SAFETY: the map is read-only and private to this process; tailor
        // does not modify model files while they are loaded, and a concurrent
        // truncation by another process is outside what any mmap-based
        // loader (llama.cpp included) can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        let map = Arc::new(map);
        let (metadata, tensors) = Parser { path, bytes: &map, pos: 0 }.parse()?;
        Ok(GgufFile { path: path.to_path_buf(), map, metadata, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A tensor as a zero-copy view of the mapped file.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), name: name.to_string() })?;
        let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = self.map.clone();
        Ok(Tensor::mapped(buffer, info.offset, info.len, info.dtype, &info.shape)?)
    }
}

struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

type Parsed = (BTreeMap<String, MetaValue>, BTreeMap<String, TensorInfo>);

impl Parser<'_> {
    fn parse(mut self) -> Result<Parsed> {
        if self.bytes.len() < 4 || &self.bytes[..4] != MAGIC {
            return Err(self.corrupt("not a GGUF file (bad magic)".into()));
        }
        self.pos = 4;
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(self.corrupt(format!("GGUF version {version} (supported: 2, 3)")));
        }
        let tensor_count = self.u64()?;
        let kv_count = self.u64()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = self.string()?;
            let kind = self.u32()?;
            let value = self.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment").and_then(MetaValue::as_u64) {
            Some(a) if a.is_power_of_two() => a as usize,
            Some(a) => return Err(self.corrupt(format!("general.alignment {a} is not a power of two"))),
            None => DEFAULT_ALIGNMENT,
        };
        let mut infos = Vec::new();
        for _ in 0..tensor_count {
            infos.push(self.tensor_info()?);
        }
        let data_start = self.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, dtype, rel_offset) in infos {
            let info = self.place(&name, shape, dtype, rel_offset, data_start)?;
            tensors.insert(name, info);
        }
        Ok((metadata, tensors))
    }

    fn place(&self, name: &str, shape: Vec<usize>, dtype: DType, rel: u64, data_start: usize) -> Result<TensorInfo> {
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let elems = elems.ok_or_else(|| self.corrupt(format!("tensor {name:?}: shape {shape:?} overflows")))?;
        let len = dtype.bytes_for(elems).map_err(|e| self.corrupt(format!("tensor {name:?}: {e}")))?;
        let offset = usize::try_from(rel).ok().and_then(|r| r.checked_add(data_start));
        let end = offset.and_then(|o| o.checked_add(len));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= self.bytes.len() => Ok(TensorInfo { shape, dtype, offset, len }),
            _ => Err(ModelError::Truncated {
                path: self.path.to_path_buf(),
                detail: format!(
                    "tensor {name:?} ({len} bytes at data offset {rel}) ends past the end of the {}-byte file",
                    self.bytes.len()
                ),
            }),
        }
    }

    fn tensor_info(&mut self) -> Result<(String, Vec<usize>, DType, u64)> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.corrupt(format!("tensor {name:?} has {n_dims} dimensions")));
        }
        let mut shape = Vec::new();
        for _ in 0..n_dims {
            let d = self.u64()?;
            shape.push(usize::try_from(d).map_err(|_| self.corrupt(format!("tensor {name:?}: dimension {d}")))?);
        }
        shape.reverse();
        let type_id = self.u32()?;
        let dtype = DType::from_ggml_id(type_id).map_err(|e| self.corrupt(format!("tensor {name:?}: {e}")))?;
        let offset = self.u64()?;
        Ok((name, shape, dtype, offset))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<MetaValue> {
        Ok(match kind {
            0 => MetaValue::U64(self.take(1)?[0] as u64),
            1 => MetaValue::I64(self.take(1)?[0] as i8 as i64),
            2 => MetaValue::U64(u16::from_le_bytes(self.array()?) as u64),
            3 => MetaValue::I64(i16::from_le_bytes(self.array()?) as i64),
            4 => MetaValue::U64(self.u32()? as u64),
            5 => MetaValue::I64(i32::from_le_bytes(self.array()?) as i64),
            6 => MetaValue::F64(f32::from_le_bytes(self.array()?) as f64),
            7 => MetaValue::Bool(self.take(1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 if depth == 0 => {
                let item_kind = self.u32()?;
                let count = self.u64()?;
                // Every item takes at least one byte: a count larger than
                // what is left is corrupt, not a reason to allocate.
                if count > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.truncated(format!("array of {count} items")));
                }
                let items = (0..count).map(|_| self.value(item_kind, depth + 1)).collect::<Result<_>>()?;
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.corrupt(format!("unknown metadata value type {other}"))),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.truncated(format!("{n} bytes wanted at offset {}", self.pos)))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| self.truncated(format!("string of {len} bytes")))?;
        let bytes = self.take(len)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.corrupt(format!("string at offset {} is not UTF-8", self.pos - len)))
    }

    fn corrupt(&self, detail: String) -> ModelError {
        ModelError::Corrupt { path: self.path.to_path_buf(), detail }
    }

    fn truncated(&self, detail: String) -> ModelError {
        ModelError::Truncated { path: self.path.to_path_buf(), detail }
    }
}

/// Builds a GGUF file in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Tensor)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds a metadata entry. Unsigned values are written as u32 when they
    /// fit (as llama.cpp does for hyper-parameters), floats as f32.
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor (its shape outermost first). A dtype GGUF has no type
    /// for (nf4, nf4_dq) is written as the f32 values it holds.
    pub fn tensor(&mut self, name: &str, tensor: Tensor) -> &mut Self {
        let tensor = match tensor.dtype().ggml_id() {
            Some(_) => tensor,
            // A Tensor's bytes were checked against its shape when it was
            // made, so its blocks always dequantize.
            None => tensor.to_dtype(tailor_tensor::DType::F32).expect("a well-formed tensor dequantizes"),
        };
        self.tensors.push((name.to_string(), tensor));
        self
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the file to `sink` (the header is built in memory, tensor
    /// data goes straight from each tensor's bytes: no second copy of the
    /// weights).
    pub fn write_to(&self, sink: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            write_value(&mut out, value, true);
        }
        let mut offset = 0usize;
        for (name, tensor) in &self.tensors {
            write_string(&mut out, name);
            out.extend_from_slice(&(tensor.shape().len() as u32).to_le_bytes());
            for d in tensor.shape().iter().rev() {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            let id = tensor.dtype().ggml_id().unwrap_or(0); // `tensor` stored such dtypes as f32
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + tensor.bytes().len()).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        let mut written = out.len();
        sink.write_all(&out)?;
        for (_, tensor) in &self.tensors {
            let padding = written.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - written;
            sink.write_all(&[0u8; DEFAULT_ALIGNMENT][..padding])?;
            sink.write_all(tensor.bytes())?;
            written += padding + tensor.bytes().len();
        }
        Ok(())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF type a value is written as: integers in 32 bits when they fit
/// (as llama.cpp writes hyper-parameters and token types, and reads them
/// back strictly), floats as f32; an array's items all take one type, the
/// widest any of them needs.
fn value_kind(value: &MetaValue) -> u32 {
    match value {
        MetaValue::U64(v) if *v <= u32::MAX as u64 => 4,
        MetaValue::U64(_) => 10,
        MetaValue::I64(v) if i32::try_from(*v).is_ok() => 5,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
    }
}

/// The one type of an array's items.
fn item_kind(items: &[MetaValue]) -> u32 {
    let kinds = items.iter().map(value_kind);
    match items.first() {
        Some(MetaValue::U64(_)) => kinds.max().unwrap_or(4),
        Some(MetaValue::I64(_)) => kinds.max().unwrap_or(5),
        Some(first) => value_kind(first),
        None => 4,
    }
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue, with_kind: bool) {
    let kind = value_kind(value);
    if with_kind {
        out.extend_from_slice(&kind.to_le_bytes());
    }
    write_as(out, value, kind);
}

/// Writes `value` as GGUF type `kind` (chosen by [`value_kind`] or [`item_kind`]).
fn write_as(out: &mut Vec<u8>, value: &MetaValue, kind: u32) {
    match (value, kind) {
        (MetaValue::U64(v), 4) => out.extend_from_slice(&(*v as u32).to_le_bytes()),
        (MetaValue::U64(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (MetaValue::I64(v), 5) => out.extend_from_slice(&(*v as i32).to_le_bytes()),
        (MetaValue::I64(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (MetaValue::F64(v), _) => out.extend_from_slice(&(*v as f32).to_le_bytes()),
        (MetaValue::Bool(v), _) => out.push(*v as u8),
        (MetaValue::Str(s), _) => write_string(out, s),
        (MetaValue::Array(items), _) => {
            let kind = item_kind(items);
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_as(out, item, kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp reads some keys with a fixed type (token types are INT32):
    /// integers that fit stay 32-bit, and an array's items share one type.
    #[test]
    fn small_integers_are_written_in_32_bits() {
        let mut writer = GgufWriter::new();
        writer.meta("t", MetaValue::Array(vec![MetaValue::I64(1), MetaValue::I64(-3)]));
        let bytes = writer.to_bytes();
        let header = 4 + 4 + 8 + 8;
        let after_key = header + 8 + 1;
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        assert_eq!((u32_at(after_key), u32_at(after_key + 4)), (9, 5), "an array of INT32");
        assert_eq!(bytes.len(), after_key + 4 + 4 + 8 + 2 * 4);
        let mut wide = GgufWriter::new();
        wide.meta("t", MetaValue::Array(vec![MetaValue::I64(1), MetaValue::I64(1 << 40)]));
        let bytes = wide.to_bytes();
        assert_eq!(
            u32::from_le_bytes([
                bytes[after_key + 4],
                bytes[after_key + 5],
                bytes[after_key + 6],
                bytes[after_key + 7]
            ]),
            11
        );
    }
}
