// Dense GEMM on the GEMM core (gemm.wgsl, which this module begins with): C (M, N) = op(A) (M, K) ·
// op(B) (K, N), or C += when ACC. op(A) = A^T when TRANS_A (A stored (K, M)), op(B) = B^T when TRANS_B
// (B stored (N, K)). Batch z reads A, B, C at offset + z * stride (batched GEMMs).
//
// Column sections (the fused q | k | v projection): the stored columns of A (K of them, or M when
// TRANS_A) and the columns of C may come as up to three blocks of widths w0, w1 and the rest, each
// a row-major matrix of its own stored after the previous one. w0 = all columns, w1 = 0: one plain
// row-major matrix.
//
// Global loads are scalar, since offsets and leading dimensions are arbitrary (vec4 alignment is
// never proven). Every index is in range when the views fit their buffers (asserted by matmul.rs).
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
    a_w0: u32, a_w1: u32, c_w0: u32, c_w1: u32,
}
const TRANS_A: u32 = 1u;
const TRANS_B: u32 = 2u;
const ACC: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// This workgroup's product's offsets.
var<private> a_base: u32;
var<private> b_base: u32;
var<private> c_base: u32;

// Offset of element (r, col) of a (rows, cols) matrix stored as column sections w0 | w1 | rest.
fn sectioned(rows: u32, cols: u32, w0: u32, w1: u32, r: u32, col: u32) -> u32 {
    if (col < w0) { return r * w0 + col; }
    if (col < w0 + w1) { return rows * w0 + r * w1 + col - w0; }
    return rows * (w0 + w1) + r * (cols - w0 - w1) + col - w0 - w1;
}

fn load_a(m: u32, k: u32) -> f32 {
    if (m >= p.m || k >= p.k) { return 0.0; }
    if ((p.flags & TRANS_A) != 0u) { return a[a_base + sectioned(p.k, p.m, p.a_w0, p.a_w1, k, m)]; }
    return a[a_base + sectioned(p.m, p.k, p.a_w0, p.a_w1, m, k)];
}

fn load_b(k: u32, n: u32) -> f32 {
    if (k >= p.k || n >= p.n) { return 0.0; }
    if ((p.flags & TRANS_B) != 0u) { return b[b_base + n * p.k + k]; }
    return b[b_base + k * p.n + n];
}

fn store_c(m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.m) { return; }
    for (var e = 0u; e < 4u; e++) {
        if (n + e >= p.n) { return; }
        let at = c_base + sectioned(p.m, p.n, p.c_w0, p.c_w1, m, n + e);
        if ((p.flags & ACC) != 0u) { c[at] += v[e]; } else { c[at] = v[e]; }
    }
}

@compute @workgroup_size(WG)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    a_base = p.a_off + wg.z * p.a_bs;
    b_base = p.b_off + wg.z * p.b_bs;
    c_base = p.c_off + wg.z * p.c_bs;
    // Contiguous along K: A unless transposed, B when transposed.
    gemm_begin(li, wg.y * BM, wg.x * BN, (p.flags & TRANS_A) == 0u, (p.flags & TRANS_B) != 0u);
    var acc: Acc;
    acc = gemm_mainloop(acc, 0u, p.k);
    gemm_store(acc);
}
