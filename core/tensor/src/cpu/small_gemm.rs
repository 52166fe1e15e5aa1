//! One single-threaded call of the `gemm` crate with named operands.
//!
//! The crate takes nineteen positional arguments; matmul, attention and
//! the training backward each call it on their own thread's slice of a
//! product. Here the operands carry their strides by name, and a
//! [`Product`] says what is computed.

/// A matrix operand: its first element and its strides, in elements,
/// between columns and between rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<P> {
    /// The first element.
    pub at: P,
    /// Distance between neighbouring columns.
    pub col_stride: isize,
    /// Distance between neighbouring rows.
    pub row_stride: isize,
}

impl<P> Operand<P> {
    /// A row-major matrix whose rows lie `row_stride` apart.
    pub fn rows(at: P, row_stride: isize) -> Operand<P> {
        Operand { at, col_stride: 1, row_stride }
    }

    /// The transpose of a row-major matrix whose rows lie `stride` apart,
    /// read in place.
    pub fn transposed(at: P, stride: isize) -> Operand<P> {
        Operand { at, col_stride: stride, row_stride: 1 }
    }
}

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs`, an `m × k` by
/// `k × n` product.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Product {
    /// Rows of `lhs` and `dst`.
    pub m: usize,
    /// Columns of `rhs` and `dst`.
    pub n: usize,
    /// Columns of `lhs`, rows of `rhs`.
    pub k: usize,
    /// Add to `dst` (else its old contents are neither read nor kept).
    pub accumulate: bool,
    /// The product's factor.
    pub scale: f32,
}

impl Product {
    /// `dst = lhs · rhs`.
    pub fn plain(m: usize, n: usize, k: usize) -> Product {
        Product { m, n, k, accumulate: false, scale: 1.0 }
    }
}

/// Computes `product` on the calling thread.
///
/// # Safety
/// Every element the strides reach (`m × n` of `dst`, `m × k` of `lhs`,
/// `k × n` of `rhs`) lies inside its buffer, and no other thread touches
/// `dst`'s elements during the call.
pub(crate) unsafe fn small_gemm(
    product: Product,
    dst: Operand<*mut f32>,
    lhs: Operand<*const f32>,
    rhs: Operand<*const f32>,
) {
    let Product { m, n, k, accumulate, scale } = product;
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.at,
            dst.col_stride,
            dst.row_stride,
            accumulate,
            lhs.at,
            lhs.col_stride,
            lhs.row_stride,
            rhs.at,
            rhs.col_stride,
            rhs.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
