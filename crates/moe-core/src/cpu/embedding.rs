//! Token embedding: a row lookup in embed_tokens (V, C).

use rayon::prelude::*;

/// out (T, C) = table[tokens[t]]. Overwrites out. Token ids are validated by the caller.
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], table: &[f32], c: usize) {
    out.par_chunks_mut(c).zip(tokens.par_iter()).for_each(|(o, &tok)| o.copy_from_slice(&table[tok as usize * c..][..c]));
}

/// dtable[tokens[t]] += dout[t]. Accumulates; sequential in token order (rows can repeat), so the
/// sums are deterministic.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &mut dtable[tok as usize * c..][..c];
        row.iter_mut().zip(&dout[t * c..][..c]).for_each(|(a, b)| *a += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dot, gradcheck, randn};

    #[test]
    fn embedding_gradcheck() {
        let (v, c) = (5, 3);
        let tokens = [4u32, 1, 4, 0];
        let (table, dout) = (randn(v * c, 1), randn(tokens.len() * c, 2));
        let mut dtable = vec![0.0; v * c];
        embedding_backward(&mut dtable, &dout, &tokens, c);
        let loss = |tb: &[f32]| {
            let mut o = vec![0.0; tokens.len() * c];
            embedding_forward(&mut o, &tokens, tb, c);
            dot(&o, &dout)
        };
        gradcheck("embedding.table", loss, &table, &dtable, 1e-2, 1e-4, 1e-3);
    }
}
