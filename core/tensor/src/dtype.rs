//! Element types: dense floats and the GGUF block-quantized formats.
//!
//! A block format stores `block_size()` elements in `type_size()` bytes; a
//! dense type is a block of one element.

use crate::{Result, TensorError};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32 elements: f16 scale + 32 × i8.
    Q8_0,
    /// 32 elements: f16 scale + 32 × 4-bit (offset 8).
    Q4_0,
    /// 32 elements: f16 scale, f16 min + 32 × 4-bit.
    Q4_1,
    /// 32 elements: f16 scale + 32 high bits + 32 × 4-bit low bits (offset 16).
    Q5_0,
    /// 32 elements: f16 scale, f16 min + 32 high bits + 32 × 4-bit low bits.
    Q5_1,
    /// 256 elements: super-block of 8 × 32 with 6-bit scales and mins.
    Q4K,
    /// 256 elements: 6-bit quants, 16 × 16 with i8 scales.
    Q6K,
    /// 256 elements: 2-bit quants, 16 × 16 with 4-bit scales and mins.
    Q2K,
    /// 256 elements: 3-bit quants (2 low bits + a high-bit mask), 16 × 16
    /// with 6-bit signed scales.
    Q3K,
    /// 256 elements: as q4_k with a fifth bit per quant.
    Q5K,
    /// 32 elements: f16 scale + 32 × 4-bit indices into a fixed non-linear
    /// table of 16 i8 values.
    IQ4NL,
    /// 256 elements: iq4_nl's table with a 6-bit scale per 32 elements.
    IQ4XS,
    /// 64 elements: f32 absmax + 64 × 4-bit indices into the NormalFloat
    /// codebook (QLoRA's NF4). tailor's own layout: no GGUF type.
    NF4,
    /// 64 elements: u8 logarithmic scale code + 64 × 4-bit NF4 indices
    /// (QLoRA's NF4 with its double quantization's 4.125 bits per weight;
    /// the code is described in `quant::formats`). No GGUF type.
    NF4DQ,
}

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 17] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2K,
        DType::Q3K,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::IQ4NL,
        DType::IQ4XS,
        DType::NF4,
        DType::NF4DQ,
    ];

    /// True for the GGUF block types (quantized, with a ggml id: not nf4).
    pub fn is_gguf_block(self) -> bool {
        self.is_quantized() && self.ggml_id().is_some()
    }

    /// Elements per block (1 for dense types).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::IQ4NL => 32,
            DType::Q4K | DType::Q6K | DType::Q2K | DType::Q3K | DType::Q5K | DType::IQ4XS => 256,
            DType::NF4 | DType::NF4DQ => 64,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q4K => 144,
            DType::Q6K => 210,
            DType::Q2K => 84,
            DType::Q3K => 110,
            DType::Q5K => 176,
            DType::IQ4NL => 18,
            DType::IQ4XS => 136,
            DType::NF4 => 36,
            DType::NF4DQ => 33,
        }
    }

    /// True for the block-quantized formats.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for `n` elements; errors if `n` is not whole blocks.
    pub fn bytes_for(self, n: usize) -> Result<usize> {
        let block = self.block_size();
        if !n.is_multiple_of(block) {
            return Err(TensorError::BadBlockLength { dtype: self, block, len: n });
        }
        Ok(n / block * self.type_size())
    }

    /// The dtype a matrix meant for `self` takes when its rows of
    /// `row_len` elements are not whole blocks, as llama.cpp falls back: a
    /// 256-element type to the 32-element type of about its size, nf4 and
    /// nf4_dq to q8_0, and any type whose blocks still do not fit to f16.
    pub fn for_rows_of(self, row_len: usize) -> DType {
        let mut dtype = self;
        while !row_len.is_multiple_of(dtype.block_size()) {
            dtype = match dtype {
                DType::Q2K | DType::Q3K | DType::IQ4XS => DType::IQ4NL,
                DType::Q4K => DType::Q5_0,
                DType::Q5K => DType::Q5_1,
                DType::Q6K | DType::NF4 | DType::NF4DQ => DType::Q8_0,
                _ => DType::F16,
            };
        }
        dtype
    }

    /// The ggml type id used in GGUF files (none for nf4 and nf4_dq).
    pub fn ggml_id(self) -> Option<u32> {
        Some(match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q4K => 12,
            DType::Q6K => 14,
            DType::Q2K => 10,
            DType::Q3K => 11,
            DType::Q5K => 13,
            DType::IQ4NL => 20,
            DType::IQ4XS => 23,
            DType::BF16 => 30,
            DType::NF4 | DType::NF4DQ => return None,
        })
    }

    /// Maps a ggml type id from a GGUF file to a dtype.
    pub fn from_ggml_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            12 => DType::Q4K,
            14 => DType::Q6K,
            10 => DType::Q2K,
            11 => DType::Q3K,
            13 => DType::Q5K,
            20 => DType::IQ4NL,
            23 => DType::IQ4XS,
            30 => DType::BF16,
            other => return Err(TensorError::UnknownGgmlType(other)),
        })
    }

    /// Lower-case name as used on the command line (`q4_0`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q4K => "q4_k",
            DType::Q6K => "q6_k",
            DType::Q2K => "q2_k",
            DType::Q3K => "q3_k",
            DType::Q5K => "q5_k",
            DType::IQ4NL => "iq4_nl",
            DType::IQ4XS => "iq4_xs",
            DType::NF4 => "nf4",
            DType::NF4DQ => "nf4_dq",
        }
    }
}

impl std::str::FromStr for DType {
    type Err = TensorError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_ascii_lowercase();
        DType::ALL.into_iter().find(|d| d.name() == wanted).ok_or_else(|| TensorError::UnknownDTypeName(s.to_string()))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
