// Tiled f32 GEMM: C (M, N) = op(A) (M, K) · op(B) (K, N), or C += when ACC. One workgroup computes a
// 64x64 block of C through 16-deep slices of A and B staged in workgroup memory; each of its 256
// invocations owns a 4x4 register tile. op(A) = A^T when TRANS_A (A stored (K, M)), op(B) = B^T
// when TRANS_B (B stored (N, K)). Batch z reads A, B, C at offset + z * stride (batched GEMMs).
//
// Shapes: one product of the batch, at its offset.
// Bindings:
//   gemm:
//     0 p  Params                           uniform
//     1 a  f32 (M, K), (K, M) when TRANS_A  read
//     2 b  f32 (K, N), (N, K) when TRANS_B  read
//     3 c  f32 (M, N)                       read_write

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad0: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, _pad1: u32,
}
const TRANS_A: u32 = 1u;
const TRANS_B: u32 = 2u;
const ACC: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
// +1 column of padding avoids bank conflicts on the transposed stores.
var<workgroup> sa: array<array<f32, 65>, 16>;
var<workgroup> sb: array<array<f32, 65>, 16>;

fn load_a(row: u32, col: u32, base: u32) -> f32 {
    // element (row, col) of op(A), zero outside (M, K)
    if (row >= p.m || col >= p.k) { return 0.0; }
    if ((p.flags & TRANS_A) != 0u) { return a[base + col * p.m + row]; }
    return a[base + row * p.k + col];
}

fn load_b(row: u32, col: u32, base: u32) -> f32 {
    // element (row, col) of op(B), zero outside (K, N)
    if (row >= p.k || col >= p.n) { return 0.0; }
    if ((p.flags & TRANS_B) != 0u) { return b[base + col * p.k + row]; }
    return b[base + row * p.n + col];
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let a_base = p.a_off + wg.z * p.a_bs;
    let b_base = p.b_off + wg.z * p.b_bs;
    let c_base = p.c_off + wg.z * p.c_bs;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 1024 elements of each tile, 4 per invocation.
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
            let r = e / BK;      // 0..63 along M (or N)
            let kk = e % BK;     // 0..15 along K
            sa[kk][r] = load_a(row0 + r, k0 + kk, a_base);
            sb[kk][r] = load_b(k0 + kk, col0 + r, b_base);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = sa[kk][lid.y * 4u + i];
                bv[i] = sb[kk][lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], bv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col >= p.n) { continue; }
            let at = c_base + r * p.n + col;
            if ((p.flags & ACC) != 0u) { c[at] += acc[i][j]; } else { c[at] = acc[i][j]; }
        }
    }
}
