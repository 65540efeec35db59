// Tiled f32 GEMM: C (M, N) = op(A) (M, K) · op(B) (K, N), or C += when ACC. op(A) = A^T when TRANS_A
// (A stored (K, M)), op(B) = B^T when TRANS_B (B stored (N, K)). Batch z reads A, B, C at offset +
// z * stride (batched GEMMs).
//
// One workgroup computes a BM x BN block of C through BK-deep slices of op(A) and op(B) staged in
// workgroup memory; each invocation owns a TM x TN register tile. The tile sizes are override
// constants with no defaults: matmul.rs sets them (one of its `Tiles`), and checks that they fit the
// register arrays here (TM, TN <= 8, multiples of 4; <= 8 staged loads per operand and slice).
//
// Global loads are scalar, since offsets and leading dimensions are arbitrary (vec4 alignment is
// never proven), but coalesced: consecutive invocations walk the operand's contiguous axis (K for A
// and B^T, M for A^T, N for B). The next slice is fetched into registers while the current one is
// multiplied. Shared tiles are K-major rows of vec4s (sa[k][m], sb[k][n]) padded by one vec4, so the
// transposing stores of K-contiguous operands spread over the banks, and the inner loop reads vec4s.
// Invocation (tx, ty) owns rows (i * WY + ty) * 4 + 0..3 for i < TM / 4 and columns
// (j * WX + tx) * 4 + 0..3 for j < TN / 4: a warp's vec4 reads of sb are contiguous, of sa broadcast.
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

override BM: u32;
override BN: u32;
override BK: u32;
override TM: u32;
override TN: u32;
// Derived; the host sets only the five above.
override WX: u32 = BN / TN;       // invocations along N
override WY: u32 = BM / TM;       // invocations along M
override WG: u32 = WX * WY;
override LA: u32 = BM * BK / WG;  // loads per invocation and slice, of A and of B
override LB: u32 = BN * BK / WG;
override SA: u32 = BM / 4u + 1u;  // row strides of the shared tiles in vec4s, one of padding
override SB: u32 = BN / 4u + 1u;

var<workgroup> sa: array<vec4<f32>, BK * SA>;
var<workgroup> sb: array<vec4<f32>, BK * SB>;

// Position (m, k) within the A tile of this invocation's l-th load.
fn a_pos(li: u32, l: u32) -> vec2<u32> {
    let e = li + l * WG;
    if ((p.flags & TRANS_A) != 0u) { return vec2(e % BM, e / BM); }
    return vec2(e / BK, e % BK);
}

// Position (n, k) within the B tile of this invocation's l-th load.
fn b_pos(li: u32, l: u32) -> vec2<u32> {
    let e = li + l * WG;
    if ((p.flags & TRANS_B) != 0u) { return vec2(e / BK, e % BK); }
    return vec2(e % BN, e / BN);
}

// Element (row, col) of op(A), zero outside (M, K).
fn load_a(row: u32, col: u32, base: u32) -> f32 {
    if (row >= p.m || col >= p.k) { return 0.0; }
    if ((p.flags & TRANS_A) != 0u) { return a[base + col * p.m + row]; }
    return a[base + row * p.k + col];
}

// Element (row, col) of op(B), zero outside (K, N).
fn load_b(row: u32, col: u32, base: u32) -> f32 {
    if (row >= p.k || col >= p.n) { return 0.0; }
    if ((p.flags & TRANS_B) != 0u) { return b[base + col * p.k + row]; }
    return b[base + row * p.n + col];
}

@compute @workgroup_size(WG)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tx = li % WX;
    let ty = li / WX;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let a_base = p.a_off + wg.z * p.a_bs;
    let b_base = p.b_off + wg.z * p.b_bs;
    let c_base = p.c_off + wg.z * p.c_bs;
    var acc: array<array<vec4<f32>, 2>, 8>;  // [TM][TN / 4]
    var ra: array<f32, 8>;                   // the next slice: LA values of A, LB of B
    var rb: array<f32, 8>;
    for (var l = 0u; l < LA; l++) { let q = a_pos(li, l); ra[l] = load_a(row0 + q.x, q.y, a_base); }
    for (var l = 0u; l < LB; l++) { let q = b_pos(li, l); rb[l] = load_b(q.y, col0 + q.x, b_base); }
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var l = 0u; l < LA; l++) { let q = a_pos(li, l); sa[q.y * SA + q.x / 4u][q.x % 4u] = ra[l]; }
        for (var l = 0u; l < LB; l++) { let q = b_pos(li, l); sb[q.y * SB + q.x / 4u][q.x % 4u] = rb[l]; }
        workgroupBarrier();
        // Issued before the products so that their latency hides behind them; past K they read 0.
        let k1 = k0 + BK;
        for (var l = 0u; l < LA; l++) { let q = a_pos(li, l); ra[l] = load_a(row0 + q.x, k1 + q.y, a_base); }
        for (var l = 0u; l < LB; l++) { let q = b_pos(li, l); rb[l] = load_b(k1 + q.y, col0 + q.x, b_base); }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f32>, 2>;
            var bv: array<vec4<f32>, 2>;
            for (var i = 0u; i < TM / 4u; i++) { av[i] = sa[kk * SA + i * WY + ty]; }
            for (var j = 0u; j < TN / 4u; j++) { bv[j] = sb[kk * SB + j * WX + tx]; }
            for (var i = 0u; i < TM; i++) {
                let ai = vec4(av[i / 4u][i % 4u]);
                for (var j = 0u; j < TN / 4u; j++) { acc[i][j] = fma(ai, bv[j], acc[i][j]); }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let r = row0 + ((i / 4u) * WY + ty) * 4u + i % 4u;
        if (r >= p.m) { continue; }
        for (var j = 0u; j < TN / 4u; j++) {
            let col4 = col0 + (j * WX + tx) * 4u;
            for (var e = 0u; e < 4u; e++) {
                let col = col4 + e;
                if (col >= p.n) { break; }
                let at = c_base + r * p.n + col;
                if ((p.flags & ACC) != 0u) { c[at] += acc[i][j][e]; } else { c[at] = acc[i][j][e]; }
            }
        }
    }
}
