//! The tensor container: a shape, a dtype, a device and the bytes.
//!
//! Weights are usually 2-D `[rows, cols]` with rows contiguous, which is how
//! both safetensors (`[out, in]`) and GGUF store linear layers. Storage may be
//! owned or borrowed from a memory-mapped file, so loading a model copies
//! nothing it does not have to.

use crate::cpu::{bf16_into_f16, stores_bf16_as_f16};
use crate::quant::interleaved::{interleave_rows, InterleavedRows};
use crate::quant::layout::WeightLayout;
use crate::quant::packed::{pack_rows, PackedRows};
use crate::quant::{dequantize_row, quantize_row};
use crate::{DType, Device, Result, TensorError};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;

/// The bytes behind a tensor.
#[derive(Clone)]
pub enum Storage {
    /// Owned f32 values (always aligned).
    F32(Arc<Vec<f32>>),
    /// Owned raw bytes in the tensor's dtype.
    Bytes(Arc<Vec<u8>>),
    /// A byte range of a shared buffer, typically a memory-mapped file.
    Mapped {
        /// The whole buffer.
        buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
        /// Start of this tensor.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::F32(v) => write!(f, "F32({} values)", v.len()),
            Storage::Bytes(v) => write!(f, "Bytes({} bytes)", v.len()),
            Storage::Mapped { offset, len, .. } => write!(f, "Mapped({len} bytes at {offset})"),
        }
    }
}

/// An n-dimensional array on a device.
#[derive(Debug, Clone)]
pub struct Tensor {
    storage: Storage,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    /// Rows repacked for the fastest dot-product kernel, if any.
    packed: Option<Arc<PackedRows>>,
    /// Groups of eight rows interleaved for the AVX2 kernel, if any.
    interleaved: Option<Arc<InterleavedRows>>,
}

impl Tensor {
    /// A CPU f32 tensor from values; errors if the shape does not fit.
    pub fn from_f32(values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        check_len(shape, DType::F32, values.len() * 4)?;
        Ok(Tensor {
            storage: Storage::F32(Arc::new(values)),
            shape: shape.to_vec(),
            dtype: DType::F32,
            device: Device::Cpu,
            packed: None,
            interleaved: None,
        })
    }

    /// A CPU tensor from raw bytes in `dtype`; errors if the shape does not fit.
    pub fn from_bytes(bytes: Vec<u8>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        check_len(shape, dtype, bytes.len())?;
        Ok(Tensor {
            storage: Storage::Bytes(Arc::new(bytes)),
            shape: shape.to_vec(),
            dtype,
            device: Device::Cpu,
            packed: None,
            interleaved: None,
        })
    }

    /// A CPU tensor viewing `len` bytes at `offset` of a shared buffer.
    pub fn mapped(
        buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
        offset: usize,
        len: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        let available = (*buffer).as_ref().len();
        if offset.checked_add(len).is_none_or(|end| end > available) {
            return Err(TensorError::Incompatible {
                op: "mapped",
                detail: format!("range {offset}+{len} is past the end of a {available}-byte buffer"),
            });
        }
        check_len(shape, dtype, len)?;
        Ok(Tensor {
            storage: Storage::Mapped { buffer, offset, len },
            shape: shape.to_vec(),
            dtype,
            device: Device::Cpu,
            packed: None,
            interleaved: None,
        })
    }

    /// This tensor with its rows also stored in the layout the CPU's
    /// kernels read fastest ([`WeightLayout::chosen`]: interleaved groups or
    /// VNNI pair-packed rows); unchanged when the format, row length or CPU
    /// does not allow it.
    pub fn prepacked(self) -> Tensor {
        self.in_layout(WeightLayout::chosen())
    }

    /// This tensor with its rows also stored in `layout` (or in the one
    /// this CPU runs instead, [`WeightLayout::runnable`]): tests and
    /// benchmarks run every kernel path this way on one machine.
    pub fn in_layout(mut self, layout: WeightLayout) -> Tensor {
        if self.shape.len() != 2 {
            return self;
        }
        match layout.runnable() {
            WeightLayout::Packed => {
                self.packed = pack_rows(self.dtype, self.bytes(), self.row_len()).map(Arc::new);
            }
            WeightLayout::Interleaved => {
                self.interleaved =
                    interleave_rows(self.dtype, self.bytes(), self.row_count(), self.row_len()).map(Arc::new);
                if let Some(rows) = self.interleaved.as_ref().map(|i| i.rows()) {
                    self.page_out_rows(rows);
                } else if self.dtype == DType::BF16 && stores_bf16_as_f16(self.row_len()) {
                    return self.into_f16();
                } else if matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
                    return self.into_huge_pages();
                }
            }
            WeightLayout::Rows => {}
        }
        self
    }

    /// A matrix read as stored (f32, f16, bf16) moved out of a mapped file
    /// into memory advised to 2 MiB pages ([`advise_huge_pages`]), its
    /// mapped pages handed back: decoding streams the whole matrix per
    /// token, and a file mapping's 4 KiB pages cost a TLB miss each (3B
    /// f16 decode, see the commit that added this). Resident memory stays
    /// one copy; loading copies it once.
    fn into_huge_pages(self) -> Tensor {
        let dtype = self.dtype;
        let copy = |from: &[u8], to: &mut [u8]| {
            to.copy_from_slice(from);
            true
        };
        self.moved_out(dtype, copy).unwrap_or_else(|unmoved| unmoved)
    }

    /// A mapped bf16 matrix converted to f16 into memory advised to 2 MiB
    /// pages, its mapped pages handed back, on a CPU whose f16 product
    /// kernel outruns its bf16 one ([`stores_bf16_as_f16`]); the same
    /// bytes as the bf16 copy [`Tensor::into_huge_pages`] would make, and
    /// exact for every weight of magnitude 2⁻¹⁷ or more ([`bf16_into_f16`]).
    /// A matrix holding a value f16 cannot (past ±65,504, or not finite)
    /// stays bf16.
    fn into_f16(self) -> Tensor {
        self.moved_out(DType::F16, bf16_into_f16).unwrap_or_else(Tensor::into_huge_pages)
    }

    /// This mapped matrix's bytes written piece by piece by `write(from,
    /// to)` into memory advised to 2 MiB pages, as a `dtype` tensor, its
    /// mapped pages handed back; `Err(self)` untouched where the storage is
    /// not mapped or `write` refuses a piece.
    fn moved_out(
        self,
        dtype: DType,
        write: impl Fn(&[u8], &mut [u8]) -> bool + Sync,
    ) -> std::result::Result<Tensor, Tensor> {
        if !matches!(self.storage, Storage::Mapped { .. }) {
            return Err(self);
        }
        let mut data = vec![0u8; self.bytes().len()];
        advise_huge_pages(&mut data);
        const PIECE: usize = 1 << 20;
        let pieces = data.par_chunks_mut(PIECE).zip(self.bytes().par_chunks(PIECE));
        if !pieces.all(|(to, from)| write(from, to)) {
            return Err(self);
        }
        self.page_out_rows(self.row_count());
        Ok(Tensor { storage: Storage::Bytes(Arc::new(data)), dtype, ..self })
    }

    /// Lets the kernel reclaim the memory of the first `rows` rows of a
    /// mapped file (their interleaved copy serves every kernel; a later
    /// read of them, say an embedding lookup, faults them back in from the
    /// file). `MADV_PAGEOUT` never loses data: anonymous memory would be
    /// swapped, not zeroed. Only whole pages inside the range are advised.
    fn page_out_rows(&self, rows: usize) {
        let Storage::Mapped { .. } = &self.storage else { return };
        let bytes = &self.bytes()[..rows * self.bytes().len() / self.row_count().max(1)];
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
            let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
            let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
            if end > start {
                // SAFETY: [start, end) lies inside this tensor's mapped range,
                // which the Arc'd buffer keeps mapped; MADV_PAGEOUT only
                // hints reclaim and never changes the contents. A failure
                // (an old kernel) just leaves the pages resident.
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = bytes;
    }

    /// The groups of eight rows [`Tensor::prepacked`] interleaved, if any.
    pub fn interleaved(&self) -> Option<&InterleavedRows> {
        self.interleaved.as_deref()
    }

    /// The repacked rows, when [`Tensor::prepacked`] made them.
    pub fn packed(&self) -> Option<&PackedRows> {
        self.packed.as_deref()
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the last dimension (1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows (product of all but the last dimension).
    pub fn row_count(&self) -> usize {
        self.elem_count() / self.row_len().max(1)
    }

    /// The raw bytes in the tensor's dtype.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::F32(v) => bytemuck::cast_slice(v.as_slice()),
            Storage::Bytes(v) => v.as_slice(),
            Storage::Mapped { buffer, offset, len } => &(**buffer).as_ref()[*offset..*offset + *len],
        }
    }

    /// Bytes of row `i` (rows of `row_len()` elements).
    pub fn row_bytes(&self, i: usize) -> &[u8] {
        let row = self.dtype.type_size() * self.row_len() / self.dtype.block_size();
        &self.bytes()[i * row..(i + 1) * row]
    }

    /// The values as f32: borrowed when stored as aligned f32, else converted.
    pub fn to_f32(&self) -> Result<Cow<'_, [f32]>> {
        if self.dtype == DType::F32 {
            if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(self.bytes()) {
                return Ok(Cow::Borrowed(values));
            }
        }
        let mut out = vec![0f32; self.elem_count()];
        dequantize_row(self.dtype, self.bytes(), &mut out)?;
        Ok(Cow::Owned(out))
    }

    /// The values as a mutable f32 slice (training a weight in place): the
    /// storage becomes owned f32 first when it is not (a copy of mapped or
    /// quantized data, or of values another tensor shares), and repacked
    /// rows are dropped.
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        if self.dtype != DType::F32 || !matches!(self.storage, Storage::F32(_)) {
            let values = self.to_f32()?.into_owned();
            self.storage = Storage::F32(Arc::new(values));
            self.dtype = DType::F32;
        }
        self.packed = None;
        match &mut self.storage {
            Storage::F32(values) => Ok(Arc::make_mut(values).as_mut_slice()),
            _ => Err(TensorError::Incompatible { op: "f32_mut", detail: "storage is not f32".into() }),
        }
    }

    /// The same values in memory this tensor owns: a view of a mapped file
    /// is copied out (so the mapping, and the pages it keeps resident, can
    /// go once no tensor views it); owned storage is kept as it is.
    pub fn into_owned(self) -> Result<Tensor> {
        if !matches!(self.storage, Storage::Mapped { .. }) {
            return Ok(self);
        }
        match self.dtype {
            DType::F32 => Tensor::from_f32(self.to_f32()?.into_owned(), &self.shape),
            dtype => Tensor::from_bytes(self.bytes().to_vec(), dtype, &self.shape),
        }
    }

    /// A copy converted (quantized or dequantized) to `dtype`, row by row
    /// (rows in parallel: the k-quants' scale searches make quantizing a
    /// large model take seconds per billion weights and thread).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let values = self.to_f32()?;
        if dtype == DType::F32 {
            return Tensor::from_f32(values.into_owned(), &self.shape);
        }
        let row_len = self.row_len().max(1);
        let row_bytes = dtype.bytes_for(row_len)?;
        let mut bytes = vec![0u8; dtype.bytes_for(self.elem_count())?];
        bytes.par_chunks_mut(row_bytes.max(1)).zip(values.par_chunks(row_len)).try_for_each_init(
            || Vec::with_capacity(row_bytes),
            |row_out, (out, row)| {
                row_out.clear();
                quantize_row(dtype, row, row_out)?;
                out.copy_from_slice(row_out);
                Ok::<_, TensorError>(())
            },
        )?;
        Tensor::from_bytes(bytes, dtype, &self.shape)
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        check_len(shape, self.dtype, self.bytes().len())?;
        Ok(Tensor { shape: shape.to_vec(), packed: None, interleaved: None, ..self.clone() })
    }
}

fn check_len(shape: &[usize], dtype: DType, actual_bytes: usize) -> Result<()> {
    let expected: usize = shape.iter().product();
    let row = shape.last().copied().unwrap_or(1);
    let mismatch = || TensorError::ShapeMismatch {
        shape: shape.to_vec(),
        dtype,
        expected,
        expected_bytes: dtype.bytes_for(expected).unwrap_or(0),
        actual_bytes,
    };
    if row % dtype.block_size() != 0 {
        return Err(TensorError::BadBlockLength { dtype, block: dtype.block_size(), len: row });
    }
    match dtype.bytes_for(expected) {
        Ok(n) if n == actual_bytes => Ok(()),
        _ => Err(mismatch()),
    }
}

/// Asks Linux to back `data` (still untouched: a fresh zeroed mapping)
/// with 2 MiB pages where whole ones fit, so a kernel streaming it takes
/// one TLB entry per 2 MiB instead of per 4 KiB. A hint: where
/// transparent huge pages are off, nothing changes.
pub(crate) fn advise_huge_pages(data: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (data.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (data.as_ptr() as usize + data.len()) / HUGE * HUGE;
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of
            // this allocation (start..end lies inside `data`); it neither
            // unmaps them nor changes their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of a shared buffer is copied out (f32 into aligned values,
    /// other dtypes as bytes) and lets the buffer go; owned storage stays.
    #[test]
    fn into_owned_copies_a_mapped_view_out_and_releases_the_buffer() {
        let values = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5];
        // Two bytes first: the view's f32 values are unaligned in the buffer.
        let mut bytes = vec![0u8; 2];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        bytes.extend([0x80, 0x3f, 0x00, 0xc0]); // bf16 1.0, -2.0
        let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes);
        let f32_view = Tensor::mapped(buffer.clone(), 2, 24, DType::F32, &[2, 3]).unwrap();
        let bf16_view = Tensor::mapped(buffer.clone(), 26, 4, DType::BF16, &[1, 2]).unwrap();
        let (f32_owned, bf16_owned) = (f32_view.into_owned().unwrap(), bf16_view.into_owned().unwrap());
        assert!(matches!(f32_owned.storage, Storage::F32(_)));
        assert!(matches!(bf16_owned.storage, Storage::Bytes(_)));
        assert_eq!(f32_owned.to_f32().unwrap().as_ref(), &values);
        assert_eq!(bf16_owned.to_f32().unwrap().as_ref(), &[1.0, -2.0]);
        assert_eq!((f32_owned.shape(), bf16_owned.dtype()), (&[2usize, 3][..], DType::BF16));
        assert_eq!(Arc::strong_count(&buffer), 1, "the views let the buffer go");
        let again = f32_owned.clone().into_owned().unwrap();
        assert!(
            matches!((&again.storage, &f32_owned.storage), (Storage::F32(a), Storage::F32(b)) if Arc::ptr_eq(a, b))
        );
    }

    /// A mapped bf16 matrix laid out for the CPU's kernels is stored as
    /// f16 where the f16 product kernel runs, with every value of f16's
    /// range kept exactly (normal and down to 2⁻¹⁷) and tinier ones
    /// within 2⁻²⁵; one holding a value f16 cannot stays bf16. Elsewhere
    /// both stay bf16.
    #[test]
    fn a_mapped_bf16_matrix_is_stored_as_f16_where_f16_products_run() {
        let (rows, cols) = (4, 64);
        let mut values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let magnitude = [1.0e-9, 3.0e-6, 2.0f32.powi(-17), 6.2e-5, 0.01, 1.7, 300.0, 40000.0][i % 8];
                let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
                f32::from_bits((sign * magnitude * (1.0 + i as f32 / 512.0)).to_bits() & 0xffff_0000)
            })
            .collect();
        values[7] = -65280.0; // bf16's largest below f16's limit
        let bf16_bytes = |values: &[f32]| -> Vec<u8> {
            values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect()
        };
        let mapped = |values: &[f32]| {
            let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bf16_bytes(values));
            Tensor::mapped(buffer, 0, 2 * values.len(), DType::BF16, &[rows, cols]).unwrap()
        };
        let laid_out = mapped(&values).in_layout(WeightLayout::Interleaved);
        let converts = stores_bf16_as_f16(cols) && WeightLayout::Interleaved.runnable() == WeightLayout::Interleaved;
        assert_eq!(laid_out.dtype(), if converts { DType::F16 } else { DType::BF16 });
        for (got, want) in laid_out.to_f32().unwrap().iter().zip(&values) {
            let error = (got - want).abs();
            if want.abs() >= 2.0f32.powi(-17) {
                assert_eq!(error, 0.0, "{want:e} became {got:e}");
            } else {
                assert!(error <= 2.0f32.powi(-25), "{want:e} became {got:e}");
            }
        }
        let mut too_large = values.clone();
        too_large[5] = 65536.0;
        assert_eq!(mapped(&too_large).in_layout(WeightLayout::Interleaved).dtype(), DType::BF16);
    }
}
