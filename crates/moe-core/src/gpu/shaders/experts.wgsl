// Dropless experts, mirroring cpu/experts.rs: the N = T*K (token, slot) pairs counting-sorted by
// expert (stable in token order), gathered into one block of rows per expert, SwiGLU expert MLPs as
// grouped GEMMs over those blocks, and the weighted combine. Sorted position p holds the pair
// rows[p] = t*K + k; pos is the inverse.
//
// Shapes: N = T*K pairs of T tokens and K slots, E experts, C channels, NB = ceil(N / 256) sort
// blocks; m, n, k: a grouped GEMM's own sizes (pg.m, pg.n, pg.k). (T, C) tensors are views at
// `off`, GEMM operands at their offsets in the GemmParams; the sorted (N, ..) buffers start at 0.
// Bindings:
//   permute_count:
//     0   pp           PermuteParams                             uniform
//     1   idx          u32 (N)                                   read
//     2   counts       u32 (E, NB)                               read_write
//   permute_scan:
//     0   pp           PermuteParams                             uniform
//     1   scan         u32 counts (E, NB), in place              read_write
//     2   offsets_out  u32 (E + 1)                               read_write
//     3   tiles_out    u32 (E + 1)                               read_write
//   permute_scatter:
//     0   pp           PermuteParams                             uniform
//     1   idx          u32 (N)                                   read
//     2   counts       u32 (E, NB), scanned                      read_write
//     3   rows_out     u32 (N)                                   read_write
//     4   pos_out      u32 (N)                                   read_write
//   gather_forward:
//     0   pr           RowParams                                 uniform
//     1   perm         u32 rows (N)                              read
//     2   src          f32 x (T, C)                              read
//     3   dst          f32 xs (N, C)                             read_write
//   gather_backward:
//     0   pr           RowParams                                 uniform
//     1   perm         u32 pos (N)                               read
//     2   src          f32 dxs (N, C)                            read
//     3   dst          f32 dx (T, C)                             read_write
//   combine_forward:
//     0   pr           RowParams                                 uniform
//     1   perm         u32 pos (N)                               read
//     2   src          f32 ys (N, C)                             read
//     3   dst          f32 out (T, C)                            read_write
//     4   wk           f32 w (T, K)                              read
//   combine_backward:
//     0-2              as combine_forward
//     3   dst          f32 dys (N, C)                            read_write
//     4   wk           f32 w (T, K)                              read
//     5   dout         f32 (T, C)                                read
//     6   dw           f32 (T, K)                                read_write
//   experts_gemm:
//     0   pg           GemmParams                                uniform
//     1   offsets      u32 (E + 1)                               read
//     2   a            f32 (N, k)                                read
//     3   b            f32 (E, n, k) if TRANS_B, else (E, k, n)  read
//     4   c            f32 (1|2|3, N, n) by epilogue             read_write
//     5   tiles        u32 (E + 1)                               read
//     6   aux          f32 g | u (2, N, n)                       read
//   experts_wgrad:
//     0   pg           GemmParams                                uniform
//     1   offsets      u32 (E + 1)                               read
//     2   a            f32 (N, m)                                read
//     3   b            f32 (N, n)                                read
//     4   c            f32 (E, m, n)                             read_write

const BM: u32 = 64u;   // GEMM tile rows (also the unit of the row-tile table)
const BN: u32 = 64u;   // GEMM tile columns
const BK: u32 = 16u;   // GEMM slice depth

// ---- Counting sort ---------------------------------------------------------------------------
// Pairs go in blocks of 256. counts[e * NB + blk] = pairs of block blk choosing expert e. Its
// exclusive scan in this expert-major order is where block blk's pairs of expert e start, so the
// stable scatter needs only each pair's rank among the earlier pairs of its expert in its block.
// Correct for any N: one workgroup per block, and the scan is one workgroup looping over E * NB.

struct PermuteParams { n: u32, e: u32, nb: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> pp: PermuteParams;

@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> rows_out: array<u32>;
@group(0) @binding(4) var<storage, read_write> pos_out: array<u32>;
@group(0) @binding(1) var<storage, read_write> scan: array<u32>;
@group(0) @binding(2) var<storage, read_write> offsets_out: array<u32>;
@group(0) @binding(3) var<storage, read_write> tiles_out: array<u32>;

var<workgroup> sw: array<u32, 256>;

// Block index on a grid folded by groups_1d; loads its experts into sw (E marks past the end).
fn load_block(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    let blk = wg.x + wg.y * nwg.x;
    let j = blk * 256u + lid;
    sw[lid] = pp.e;
    if (j < pp.n) { sw[lid] = idx[j]; }
    workgroupBarrier();
    return blk;
}

@compute @workgroup_size(256)
fn permute_count(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let blk = load_block(wg, nwg, lid);
    if (blk >= pp.nb) { return; }
    for (var e = lid; e < pp.e; e += 256u) {
        var n = 0u;
        for (var j = 0u; j < 256u; j++) { n += u32(sw[j] == e); }
        counts[e * pp.nb + blk] = n;
    }
}

// One workgroup: exclusive scan of counts (E * NB) in place, by 256 contiguous chunks;
// offsets[e] = the scanned count at expert e's first block (offsets[E] = N);
// tiles[e] = sum_{j<e} ceil(n_j / BM), the row tiles of the grouped GEMMs (tiles[E] = all of them).
@compute @workgroup_size(256)
fn permute_scan(@builtin(local_invocation_index) lid: u32) {
    let n = pp.e * pp.nb;
    let chunk = (n + 255u) / 256u;
    let lo = min(lid * chunk, n);
    let hi = min(lo + chunk, n);
    var run = 0u;
    for (var i = lo; i < hi; i++) { run += scan[i]; }
    sw[lid] = run;
    workgroupBarrier();
    if (lid == 0u) {
        run = 0u;
        for (var i = 0u; i < 256u; i++) {
            let v = sw[i];
            sw[i] = run;
            run += v;
        }
    }
    workgroupBarrier();
    run = sw[lid];
    for (var i = lo; i < hi; i++) {
        let v = scan[i];
        scan[i] = run;
        run += v;
    }
    storageBarrier();
    for (var e = lid; e < pp.e; e += 256u) { offsets_out[e] = scan[e * pp.nb]; }
    if (lid == 0u) { offsets_out[pp.e] = pp.n; }
    storageBarrier();
    if (lid == 0u) {
        run = 0u;
        for (var e = 0u; e < pp.e; e++) {
            tiles_out[e] = run;
            run += (offsets_out[e + 1u] - offsets_out[e] + BM - 1u) / BM;
        }
        tiles_out[pp.e] = run;
    }
}

@compute @workgroup_size(256)
fn permute_scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let blk = load_block(wg, nwg, lid);
    let j = blk * 256u + lid;
    if (j >= pp.n) { return; }
    let e = sw[lid];
    var rank = 0u;
    for (var i = 0u; i < lid; i++) { rank += u32(sw[i] == e); }
    let p = counts[e * pp.nb + blk] + rank;
    rows_out[p] = j;
    pos_out[j] = p;
}

// ---- Gather and combine ----------------------------------------------------------------------

struct RowParams { rows: u32, c: u32, k: u32, off: u32 }
@group(0) @binding(0) var<uniform> pr: RowParams;

@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read> wk: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw: array<f32>;

fn element(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// xs[p] = x[rows[p] / K]
@compute @workgroup_size(256)
fn gather_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= pr.rows * pr.c) { return; }
    let p = i / pr.c;
    dst[i] = src[pr.off + (perm[p] / pr.k) * pr.c + i % pr.c];
}

// dx[t] = sum_k dxs[pos[t*K+k]] (overwrites: the only writer of dx before the router's +=)
@compute @workgroup_size(256)
fn gather_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= pr.rows * pr.c) { return; }
    let t = i / pr.c;
    var sum = 0.0;
    for (var k = 0u; k < pr.k; k++) { sum += src[perm[t * pr.k + k] * pr.c + i % pr.c]; }
    dst[pr.off + i] = sum;
}

// out[t] = sum_k w[t,k] * ys[pos[t*K+k]]
@compute @workgroup_size(256)
fn combine_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= pr.rows * pr.c) { return; }
    let t = i / pr.c;
    var sum = 0.0;
    for (var k = 0u; k < pr.k; k++) {
        let tk = t * pr.k + k;
        sum += wk[tk] * src[perm[tk] * pr.c + i % pr.c];
    }
    dst[pr.off + i] = sum;
}

var<workgroup> red: array<f32, 256>;

// One workgroup per token t, per slot k at p = pos[t*K+k]: dys[p] = w[t,k] * dout[t] and
// dw[t,k] = <dout[t], ys[p]> (strided partials, then a tree: deterministic).
@compute @workgroup_size(256)
fn combine_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + wg.y * nwg.x;
    if (t >= pr.rows) { return; }
    for (var k = 0u; k < pr.k; k++) {
        let tk = t * pr.k + k;
        let p = perm[tk];
        var part = 0.0;
        for (var c = lid; c < pr.c; c += 256u) {
            let d = dout[pr.off + t * pr.c + c];
            dst[p * pr.c + c] = wk[tk] * d;
            part += d * src[p * pr.c + c];
        }
        red[lid] = part;
        workgroupBarrier();
        for (var stride = 128u; stride > 0u; stride >>= 1u) {
            if (lid < stride) { red[lid] += red[lid + stride]; }
            workgroupBarrier();
        }
        if (lid == 0u) { dw[tk] = red[0]; }
        workgroupBarrier();
    }
}

// ---- Grouped GEMMs ---------------------------------------------------------------------------
// Expert e owns sorted rows offsets[e]..offsets[e+1] (n_e of them) and row tiles tiles[e]..tiles[e+1].
// Tiles as in matmul.wgsl: a 64x64 block of the output per workgroup, 16-deep slices staged in
// workgroup memory, a 4x4 register tile per invocation.
//
// experts_gemm, one workgroup per (row tile over all experts, -, column tile):
//   out (n_e, n) = A rows of expert e (n_e, k) · op(W_e),  W_e = b[b_off + e * b_es ..],
//   op(W) = W^T when TRANS_B (W stored (n, k) like nn.Linear), else W (stored (k, n)).
// Epilogues: plain (c = or c +=, ACC); SWIGLU: two products, gate (b_off) and up (b_off2), stored as
//   g, u, h = silu(g) * u at c[0 | sec | 2 sec ..]; SWIGLU_BWD: the product is dh, and with g, u
//   from aux[0 | sec ..]:  dg = dh u s (1 + g (1 - s)),  du = dh g s,  s = sigmoid(g), at c[0 | sec ..].
// experts_wgrad, one workgroup per (column tile, row tile, expert e), no atomics:
//   c[c_off + e m n ..] (m, n) += A_e^T (m, n_e) · B_e (n_e, n) over expert e's rows,
//   A rows m wide at a_off, B rows n wide at b_off.

struct GemmParams {
    m: u32, n: u32, k: u32, flags: u32,
    experts: u32, a_off: u32, b_off: u32, b_off2: u32,
    b_es: u32, c_off: u32, sec: u32, _pad: u32,
}
const TRANS_B: u32 = 1u;
const ACC: u32 = 2u;
const SWIGLU: u32 = 4u;
const SWIGLU_BWD: u32 = 8u;

@group(0) @binding(0) var<uniform> pg: GemmParams;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> tiles: array<u32>;
@group(0) @binding(6) var<storage, read> aux: array<f32>;

// +1 column of padding avoids bank conflicts on the transposed stores.
var<workgroup> sa: array<array<f32, 65>, 16>;
var<workgroup> sb: array<array<array<f32, 65>, 16>, 2>;

alias Tile = array<array<f32, 4>, 4>;

// acc += this invocation's 4x4 of the slice product sa · sb[which].
fn mma(acc: ptr<function, Tile>, which: u32, ty: u32, tx: u32) {
    for (var kk = 0u; kk < BK; kk++) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            av[i] = sa[kk][ty * 4u + i];
            bv[i] = sb[which][kk][tx * 4u + i];
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                (*acc)[i][j] = fma(av[i], bv[j], (*acc)[i][j]);
            }
        }
    }
}

// Element (k, col) of op(W) for the weight block at off, zero outside (K, N).
fn load_w(off: u32, k: u32, col: u32) -> f32 {
    if (k >= pg.k || col >= pg.n) { return 0.0; }
    if ((pg.flags & TRANS_B) != 0u) { return b[off + col * pg.k + k]; }
    return b[off + k * pg.n + col];
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(16, 16)
fn experts_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    // Dispatched for an upper bound of row tiles: the extra workgroups leave.
    let r = wg.x + wg.y * nwg.x;
    if (r >= tiles[pg.experts]) { return; }
    // The expert of tile r: the last e with tiles[e] <= r (experts without rows own no tiles).
    var e = 0u;
    var hi = pg.experts;
    while (hi - e > 1u) {
        let mid = (e + hi) / 2u;
        if (tiles[mid] <= r) { e = mid; } else { hi = mid; }
    }
    let base = offsets[e];
    let n_e = offsets[e + 1u] - base;
    let row0 = (r - tiles[e]) * BM;   // within the expert's rows
    let col0 = wg.z * BN;
    let two = (pg.flags & SWIGLU) != 0u;
    let trans = (pg.flags & TRANS_B) != 0u;
    let w0 = pg.b_off + e * pg.b_es;
    let w1 = pg.b_off2 + e * pg.b_es;
    var acc0: Tile;
    var acc1: Tile;
    for (var k0 = 0u; k0 < pg.k; k0 += BK) {
        // 1024 elements of each tile, 4 per invocation, consecutive ones along memory.
        for (var i = 0u; i < 4u; i++) {
            let el = li + i * 256u;
            let ar = el / BK;
            let ak = el % BK;
            sa[ak][ar] = 0.0;
            if (row0 + ar < n_e && k0 + ak < pg.k) { sa[ak][ar] = a[pg.a_off + (base + row0 + ar) * pg.k + k0 + ak]; }
            let bk = select(el / BN, el % BK, trans);
            let bc = select(el % BN, el / BK, trans);
            sb[0][bk][bc] = load_w(w0, k0 + bk, col0 + bc);
            if (two) { sb[1][bk][bc] = load_w(w1, k0 + bk, col0 + bc); }
        }
        workgroupBarrier();
        mma(&acc0, 0u, lid.y, lid.x);
        if (two) { mma(&acc1, 1u, lid.y, lid.x); }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        if (row >= n_e) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col >= pg.n) { continue; }
            let at = (base + row) * pg.n + col;
            let v = acc0[i][j];
            if (two) {
                let u = acc1[i][j];
                c[at] = v;
                c[pg.sec + at] = u;
                c[2u * pg.sec + at] = v * sigmoid(v) * u;
            } else if ((pg.flags & SWIGLU_BWD) != 0u) {
                let g = aux[at];
                let u = aux[pg.sec + at];
                let s = sigmoid(g);
                c[at] = v * u * s * (1.0 + g * (1.0 - s));
                c[pg.sec + at] = v * g * s;
            } else if ((pg.flags & ACC) != 0u) {
                c[at] += v;
            } else {
                c[at] = v;
            }
        }
    }
}

@compute @workgroup_size(16, 16)
fn experts_wgrad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let e = wg.z;
    let base = offsets[e];
    let n_e = offsets[e + 1u] - base;
    if (n_e == 0u) { return; }
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    var acc: Tile;
    for (var k0 = 0u; k0 < n_e; k0 += BK) {
        // Both operands are read along their rows (M resp. N consecutive).
        for (var i = 0u; i < 4u; i++) {
            let el = li + i * 256u;
            let r = el % BM;
            let kk = el / BM;
            let row = base + k0 + kk;
            let in_k = k0 + kk < n_e;
            sa[kk][r] = 0.0;
            sb[0][kk][r] = 0.0;
            if (in_k && row0 + r < pg.m) { sa[kk][r] = a[pg.a_off + row * pg.m + row0 + r]; }
            if (in_k && col0 + r < pg.n) { sb[0][kk][r] = b[pg.b_off + row * pg.n + col0 + r]; }
        }
        workgroupBarrier();
        mma(&acc, 0u, lid.y, lid.x);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        if (row >= pg.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col >= pg.n) { continue; }
            c[pg.c_off + (e * pg.m + row) * pg.n + col] += acc[i][j];
        }
    }
}
