//! Token embedding on the GPU in the convention of `cpu::embedding`: a row lookup in the table
//! (V, C). The backward scatter-add is made race-free by `TokenIndex`, built on the host.

use super::matmul::View;
use super::{groups_1d, Buf, Encoder, Gpu, Kernel};
use crate::error::Result;

const SRC: &str = include_str!("shaders/embedding.wgsl");
const FORWARD: Kernel = Kernel::checked(SRC, "embedding_forward");
const BACKWARD: Kernel = Kernel::checked(SRC, "embedding_backward");

// embedding.wgsl's two uniforms, each one 16-byte row.

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FwdParams {
    t: u32, c: u32, out_off: u32, table_off: u32,
}

/// cap: the `TokenIndex`'s capacity T.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdParams {
    cap: u32, c: u32, dtable_off: u32, dout_off: u32,
}

/// The token positions of a batch grouped by token id (a CSR list) for `embedding_backward`, in one
/// persistent u32 buffer [R | rows (T) | start (T + 1) | pos (T)] for a capacity of T positions:
/// rows[..R] are the distinct token ids in ascending order and pos[start[r]..start[r + 1]] the
/// positions of token rows[r], ascending. Each backward invocation owns one (row, channel) and adds
/// its positions in token order: no atomics, no races, the CPU's summation order, and a cost that
/// does not grow with the vocabulary. R lives in the buffer, so the kernel parameters and bind group
/// stay the same from batch to batch.
pub struct TokenIndex {
    buf: Buf,
    /// Capacity T.
    t: usize,
}

impl TokenIndex {
    /// Room for t positions, holding none until `set`.
    pub fn new(g: &Gpu, t: usize) -> Result<TokenIndex> {
        Ok(TokenIndex { buf: g.zeros(3 * t + 2)?, t })
    }

    /// Groups `tokens` (at most T). A queued write like `Gpu::write`: it lands before the next
    /// submission, so call it after the previous user of the index was submitted.
    pub fn set(&self, g: &Gpu, tokens: &[u32]) {
        assert!(tokens.len() <= self.t, "TokenIndex: {} tokens for a capacity of {}", tokens.len(), self.t);
        let mut pos: Vec<u32> = (0..tokens.len() as u32).collect();
        pos.sort_by_key(|&t| tokens[t as usize]); // stable: ascending t within a token
        let (mut rows, mut start) = (Vec::new(), Vec::new());
        for (k, &t) in pos.iter().enumerate() {
            let tok = tokens[t as usize];
            if rows.last() != Some(&tok) {
                rows.push(tok);
                start.push(k as u32);
            }
        }
        start.push(pos.len() as u32);
        g.write(&self.buf, 0, &[rows.len() as u32]);
        g.write(&self.buf, 1, &rows);
        g.write(&self.buf, 1 + self.t, &start);
        g.write(&self.buf, 2 + 2 * self.t, &pos);
    }
}

/// out (T, C) = table[tokens[t]]; tokens (T) u32, table (V, C). Overwrites out. Token ids are
/// validated by the caller.
pub fn embedding_forward(g: &Gpu, enc: &mut Encoder, out: View, tokens: &Buf, table: View, t: usize, c: usize) {
    let p = FwdParams { t: t as u32, c: c as u32, out_off: out.off as u32, table_off: table.off as u32 };
    g.dispatch(enc, &FORWARD, &[out.buf, tokens, table.buf], &p, groups_1d(t * c, 256));
}

/// dtable (V, C) [tokens[t]] += dout (T, C) [t], the tokens as grouped by `TokenIndex::set`.
/// Accumulates; each row sums its positions in token order, as the CPU does, so the sums are
/// deterministic and equal to the CPU's.
pub fn embedding_backward(g: &Gpu, enc: &mut Encoder, dtable: View, dout: View, tokens: &TokenIndex, c: usize) {
    let p = BwdParams { cap: tokens.t as u32, c: c as u32, dtable_off: dtable.off as u32, dout_off: dout.off as u32 };
    // One invocation per (position, channel): R <= T rows in use, the rest return at once.
    g.dispatch(enc, &BACKWARD, &[dtable.buf, dout.buf, &tokens.buf], &p, groups_1d(tokens.t * c, 256));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::embedding as cpu;
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};

    #[test]
    fn embedding_matches_cpu() {
        let Some(g) = test_gpu("embedding_matches_cpu") else { return };
        // Repeated tokens, unused rows, T * C not a multiple of 256.
        let (v, c) = (9, 29);
        let tokens = [4u32, 1, 4, 0, 8, 4, 1, 7, 2, 4, 6];
        let t = tokens.len();
        let (table, dout, dtable0) = (randn(v * c, 1), randn(t * c, 2), randn(v * c, 3));
        let mut out = vec![0.0; t * c];
        cpu::embedding_forward(&mut out, &tokens, &table, c);
        let mut dtable = dtable0.clone();
        cpu::embedding_backward(&mut dtable, &dout, &tokens, c);

        // The table and its gradient are views at an offset, as in the flat parameter buffers.
        let pad = |x: &[f32]| [vec![7.0; 3], x.to_vec()].concat();
        let (gtable, gdtable) = (g.upload(&pad(&table)).unwrap(), g.upload(&pad(&dtable0)).unwrap());
        let (gtok, gdout, gout) = (g.upload(&tokens).unwrap(), g.upload(&dout).unwrap(), g.upload(&vec![5.0f32; t * c]).unwrap());
        // Capacity above T, and a longer batch grouped first: the index is reused across batches.
        let index = TokenIndex::new(g, t + 2).unwrap();
        index.set(g, &[3, 3, 8, 0, 5, 6, 2, 2, 1, 1, 0, 7, 4]);
        index.set(g, &tokens);
        let at = |buf, off| View { buf, off };
        let mut enc = g.encoder();
        embedding_forward(g, &mut enc, (&gout).into(), &gtok, at(&gtable, 3), t, c);
        embedding_backward(g, &mut enc, at(&gdtable, 3), (&gdout).into(), &index, c);
        let res = g.finish(enc, &[&gout, &gdtable]).unwrap();
        let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(w).to_vec();
        assert_close("embedding out", &f(&res[0]), &out, 0.0, 0.0);
        assert_close("embedding dtable", &f(&res[1])[3..], &dtable, 0.0, 0.0);
        assert_eq!(&f(&res[1])[..3], &[7.0; 3], "dtable outside the view is untouched");
    }
}
