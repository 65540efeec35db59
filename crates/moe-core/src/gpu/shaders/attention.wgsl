// Causal grouped-query attention on the GPU (see cpu/attention.rs). Layouts: q, out, dout, dq
// (T, H*D); k, v, dk, dv (T, KV*D); probs (B, H, S, S), zero above the diagonal; T = B*S. Query
// head h reads kv head h / (H/KV); scale = 1/sqrt(D).
//
// Every product is a GEMM within one (sequence, head), tiled like matmul.wgsl: a workgroup owns a
// 64x64 output tile, stages 16-deep slices of both operands in workgroup memory, and each of its
// 256 invocations accumulates a 4x4 register tile. Tiles are aligned, so tile (i0, j0) lies wholly
// above the diagonal iff j0 > i0: those are skipped, and `prob` masks the rest.
//
// Forward:   attn_scores   probs = scale q k^T below the diagonal, 0 above
//            attn_softmax  each row of probs over j <= i, in place
//            attn_pv       out = probs v
// Backward, with dP = dO V^T, delta_i = sum_j P_ij dP_ij, dS = P (dP - delta):
//            attn_delta    delta (B, H, S), into a scratch view
//            attn_dq       dq = scale dS K
//            attn_dk       dk = scale sum over the group's heads of dS^T Q
//            attn_dv       dv = sum over the group's heads of P^T dO
// dS is never stored: attn_dq and attn_dk recompute dP tile by tile. Every output element has one
// owning workgroup that loops over heads and positions in a fixed order: deterministic sums.
//
// Bindings, output first; each tensor a view at its offset in the Params (o_off: out's in the
// forward, dout's in the backward):
//   attn_scores (attn_softmax binds 0 and 1 only):
//     0   p        Params                      uniform
//     1   probs_w  f32 (B, H, S, S)            read_write
//     2   q        f32 (T, H*D)                read
//     3   k        f32 (T, KV*D)               read
//   attn_pv:
//     0   p        Params                      uniform
//     1   out      f32 (T, H*D)                read_write
//     2   probs    f32 (B, H, S, S)            read
//     3   v        f32 (T, KV*D)               read
//   attn_delta:
//     0   p        Params                      uniform
//     1   delta_w  f32 delta (B, H, S)         read_write
//     2   probs    f32 (B, H, S, S)            read
//     3   v        f32 (T, KV*D)               read
//     4   dout     f32 (T, H*D)                read
//   attn_dq:
//     0   p        Params                      uniform
//     1   dq       f32 (T, H*D)                read_write
//     2   probs    f32 (B, H, S, S)            read
//     3   v        f32 (T, KV*D)               read
//     4   dout     f32 (T, H*D)                read
//     5   delta    f32 (B, H, S)               read
//     6   k_dq     f32 k (T, KV*D)             read
//   attn_dk:
//     0   p        Params                      uniform
//     1   dk       f32 (T, KV*D)               read_write
//     2-5          as attn_dq
//     6   q_dk     f32 q (T, H*D)              read
//   attn_dv:
//     0   p        Params                      uniform
//     1   dv       f32 (T, KV*D)               read_write
//     2   probs    f32 (B, H, S, S)            read
//     3   dout_dv  f32 dout (T, H*D)           read

struct Params {
    s: u32, h: u32, kv: u32, d: u32,
    scale: u32, rows: u32, q_off: u32, k_off: u32,
    v_off: u32, p_off: u32, o_off: u32, dq_off: u32,
    dk_off: u32, dv_off: u32, dl_off: u32, _pad1: u32,
}
// rows = B*H*S; scale: f32 bits.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> probs_w: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read_write> dq: array<f32>;
@group(0) @binding(1) var<storage, read_write> dk: array<f32>;
@group(0) @binding(1) var<storage, read_write> dv: array<f32>;
@group(0) @binding(1) var<storage, read_write> delta_w: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> dout_dv: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> delta: array<f32>;
@group(0) @binding(6) var<storage, read> k_dq: array<f32>;
@group(0) @binding(6) var<storage, read> q_dk: array<f32>;

const TILE: u32 = 64u;
const BK: u32 = 16u;
alias Tile = array<array<f32, 4>, 4>;

// A slice of op(A) (64 rows) and op(B) (64 columns), 16 deep; +1 column avoids bank conflicts.
var<workgroup> sa: array<array<f32, 65>, 16>;
var<workgroup> sb: array<array<f32, 65>, 16>;
var<workgroup> red_delta: array<array<f32, 64>, 16>;
var<workgroup> red_row: array<f32, 256>;

// The invocation: index li, owner of tile rows ty*4 .. ty*4+3 and columns tx*4 .. tx*4+3.
var<private> li: u32;
var<private> ty: u32;
var<private> tx: u32;

fn start(lid: vec3<u32>) {
    li = lid.y * 16u + lid.x;
    ty = lid.y;
    tx = lid.x;
}

// acc[a][c] += sum_kk sa[kk][ty*4+a] * sb[kk][tx*4+c]
fn mac(acc: ptr<function, Tile>) {
    for (var kk = 0u; kk < BK; kk++) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            av[i] = sa[kk][ty * 4u + i];
            bv[i] = sb[kk][tx * 4u + i];
        }
        for (var a = 0u; a < 4u; a++) {
            for (var c = 0u; c < 4u; c++) {
                (*acc)[a][c] = fma(av[a], bv[c], (*acc)[a][c]);
            }
        }
    }
}

// Offset of (position i of sequence b, head hh, column c) in a (T, heads*D) tensor.
fn at(b: u32, i: u32, heads: u32, hh: u32, c: u32) -> u32 {
    return ((b * p.s + i) * heads + hh) * p.d + c;
}

fn inside(i: u32, c: u32) -> bool {
    return i < p.s && c < p.d;
}

// P_ij of sequence b, head hh: zero above the diagonal and past the sequence.
fn prob(b: u32, hh: u32, i: u32, j: u32) -> f32 {
    if (i >= p.s || j > i) { return 0.0; }
    return probs[p.p_off + ((b * p.h + hh) * p.s + i) * p.s + j];
}

fn head_of(z: u32) -> vec3<u32> {
    // workgroup z = b*H + h  ->  (b, h, kv head g)
    let hh = z % p.h;
    return vec3<u32>(z / p.h, hh, hh / (p.h / p.kv));
}

// ---------------------------------------------------------------------------------------------
// Forward

// probs[b, h, i, j] = scale q_i . k_j for j <= i, 0 above. Grid (S/64 j-tiles, S/64 i-tiles, B*H).
@compute @workgroup_size(16, 16)
fn attn_scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    start(lid);
    let bhg = head_of(wg.z);
    let i0 = wg.y * TILE;
    let j0 = wg.x * TILE;
    var acc: Tile;
    if (j0 <= i0) {
        for (var c0 = 0u; c0 < p.d; c0 += BK) {
            for (var e = li; e < TILE * BK; e += 256u) {
                let r = e / BK;
                let c = c0 + e % BK;
                sa[e % BK][r] = select(0.0, q[p.q_off + at(bhg.x, i0 + r, p.h, bhg.y, c)], inside(i0 + r, c));
                sb[e % BK][r] = select(0.0, k[p.k_off + at(bhg.x, j0 + r, p.kv, bhg.z, c)], inside(j0 + r, c));
            }
            workgroupBarrier();
            mac(&acc);
            workgroupBarrier();
        }
    }
    let scale = bitcast<f32>(p.scale);
    for (var a = 0u; a < 4u; a++) {
        let i = i0 + ty * 4u + a;
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx * 4u + c;
            if (i < p.s && j < p.s) {
                probs_w[p.p_off + ((bhg.x * p.h + bhg.y) * p.s + i) * p.s + j] = select(0.0, scale * acc[a][c], j <= i);
            }
        }
    }
}

// Max (take_max) or sum of x over the 256 invocations, returned to all of them.
fn reduce_row(x: f32, take_max: bool) -> f32 {
    red_row[li] = x;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            red_row[li] = select(red_row[li] + red_row[li + w], max(red_row[li], red_row[li + w]), take_max);
        }
        workgroupBarrier();
    }
    let r = red_row[0];
    workgroupBarrier(); // red_row is rewritten by the next reduction
    return r;
}

// p_ij = exp(x_ij - max_j x_ij) / sum_j exp(x_ij - max), j <= i, in place. One workgroup per row.
@compute @workgroup_size(256)
fn attn_softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    li = lid.x;
    let r = wg.x + wg.y * nw.x; // row (b*H + h)*S + i
    if (r >= p.rows) { return; }
    let i = r % p.s;
    let base = p.p_off + r * p.s;
    var mx = -3.4028235e38;
    for (var j = li; j <= i; j += 256u) { mx = max(mx, probs_w[base + j]); }
    mx = reduce_row(mx, true);
    var sum = 0.0;
    for (var j = li; j <= i; j += 256u) {
        let e = exp(probs_w[base + j] - mx);
        probs_w[base + j] = e;
        sum += e;
    }
    sum = reduce_row(sum, false);
    // Each invocation rescales the entries it wrote itself.
    for (var j = li; j <= i; j += 256u) { probs_w[base + j] /= sum; }
}

// out[b, i, h, :] = sum_{j <= i} P_ij v[b, j, g, :]. Grid (D/64, S/64, B*H).
@compute @workgroup_size(16, 16)
fn attn_pv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    start(lid);
    let bhg = head_of(wg.z);
    let i0 = wg.y * TILE;
    let d0 = wg.x * TILE;
    var acc: Tile;
    for (var j0 = 0u; j0 < min(i0 + TILE, p.s); j0 += BK) {
        for (var e = li; e < TILE * BK; e += 256u) {
            sa[e % BK][e / BK] = prob(bhg.x, bhg.y, i0 + e / BK, j0 + e % BK);
            let j = j0 + e / TILE;
            let c = d0 + e % TILE;
            sb[e / TILE][e % TILE] = select(0.0, v[p.v_off + at(bhg.x, j, p.kv, bhg.z, c)], inside(j, c));
        }
        workgroupBarrier();
        mac(&acc);
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        for (var c = 0u; c < 4u; c++) {
            let i = i0 + ty * 4u + a;
            let col = d0 + tx * 4u + c;
            if (inside(i, col)) { out[p.o_off + at(bhg.x, i, p.h, bhg.y, col)] = acc[a][c]; }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward

// dP_ij = dO_i . V_j over the tile at (i0, j0), D in 16-deep slices.
fn dp_tile(b: u32, hh: u32, g: u32, i0: u32, j0: u32) -> Tile {
    var acc: Tile;
    for (var c0 = 0u; c0 < p.d; c0 += BK) {
        for (var e = li; e < TILE * BK; e += 256u) {
            let r = e / BK;
            let c = c0 + e % BK;
            sa[e % BK][r] = select(0.0, dout[p.o_off + at(b, i0 + r, p.h, hh, c)], inside(i0 + r, c));
            sb[e % BK][r] = select(0.0, v[p.v_off + at(b, j0 + r, p.kv, g, c)], inside(j0 + r, c));
        }
        workgroupBarrier();
        mac(&acc);
        workgroupBarrier();
    }
    return acc;
}

// dS_ij = P_ij (dP_ij - delta_i) over the tile at (i0, j0); zero wherever P is masked.
fn ds_tile(b: u32, hh: u32, g: u32, i0: u32, j0: u32) -> Tile {
    var ds = dp_tile(b, hh, g, i0, j0);
    for (var a = 0u; a < 4u; a++) {
        let i = i0 + ty * 4u + a;
        let dl = select(0.0, delta[p.dl_off + (b * p.h + hh) * p.s + i], i < p.s);
        for (var c = 0u; c < 4u; c++) {
            ds[a][c] = prob(b, hh, i, j0 + tx * 4u + c) * (ds[a][c] - dl);
        }
    }
    return ds;
}

// delta[b, h, i] = sum_{j <= i} P_ij dP_ij, written at delta_w[dl_off + (b*H + h)*S + i]. Grid (1, S/64, B*H).
@compute @workgroup_size(16, 16)
fn attn_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    start(lid);
    let bhg = head_of(wg.z);
    let i0 = wg.y * TILE;
    var rs: array<f32, 4>;
    for (var j0 = 0u; j0 <= i0; j0 += TILE) {
        let dp = dp_tile(bhg.x, bhg.y, bhg.z, i0, j0);
        for (var a = 0u; a < 4u; a++) {
            for (var c = 0u; c < 4u; c++) {
                rs[a] += prob(bhg.x, bhg.y, i0 + ty * 4u + a, j0 + tx * 4u + c) * dp[a][c];
            }
        }
    }
    // Each row's partial sums sit with the 16 invocations of one ty: add them in a fixed order.
    for (var a = 0u; a < 4u; a++) { red_delta[tx][ty * 4u + a] = rs[a]; }
    workgroupBarrier();
    if (li < TILE && i0 + li < p.s) {
        var sum = 0.0;
        for (var t = 0u; t < 16u; t++) { sum += red_delta[t][li]; }
        delta_w[p.dl_off + (bhg.x * p.h + bhg.y) * p.s + i0 + li] = sum;
    }
}

// dq[b, i, h, :] = scale sum_{j <= i} dS_ij k[b, j, g, :]. Grid (D/64, S/64, B*H).
@compute @workgroup_size(16, 16)
fn attn_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    start(lid);
    let bhg = head_of(wg.z);
    let i0 = wg.y * TILE;
    let d0 = wg.x * TILE;
    var acc: Tile;
    for (var j0 = 0u; j0 <= i0; j0 += TILE) {
        let ds = ds_tile(bhg.x, bhg.y, bhg.z, i0, j0);
        // acc += dS K over the tile's 64 keys, 16 at a time: dS columns 16s .. 16s+15 are held
        // by the invocations with tx / 4 == s, which stage them as sa[j][i].
        for (var s = 0u; s < 4u; s++) {
            if (tx / 4u == s) {
                for (var a = 0u; a < 4u; a++) {
                    for (var c = 0u; c < 4u; c++) { sa[(tx % 4u) * 4u + c][ty * 4u + a] = ds[a][c]; }
                }
            }
            for (var e = li; e < TILE * BK; e += 256u) {
                let j = j0 + s * BK + e / TILE;
                let c = d0 + e % TILE;
                sb[e / TILE][e % TILE] = select(0.0, k_dq[p.k_off + at(bhg.x, j, p.kv, bhg.z, c)], inside(j, c));
            }
            workgroupBarrier();
            mac(&acc);
            workgroupBarrier();
        }
    }
    let scale = bitcast<f32>(p.scale);
    for (var a = 0u; a < 4u; a++) {
        for (var c = 0u; c < 4u; c++) {
            let i = i0 + ty * 4u + a;
            let col = d0 + tx * 4u + c;
            if (inside(i, col)) { dq[p.dq_off + at(bhg.x, i, p.h, bhg.y, col)] = scale * acc[a][c]; }
        }
    }
}

// dk[b, j, g, :] = scale sum_{h in group g} sum_{i >= j} dS^h_ij q[b, i, h, :]. Grid (D/64, S/64, B*KV).
@compute @workgroup_size(16, 16)
fn attn_dk(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    start(lid);
    let b = wg.z / p.kv;
    let g = wg.z % p.kv;
    let group = p.h / p.kv;
    let j0 = wg.y * TILE;
    let d0 = wg.x * TILE;
    var acc: Tile;
    for (var hh = g * group; hh < (g + 1u) * group; hh++) {
        for (var i0 = j0; i0 < p.s; i0 += TILE) {
            let ds = ds_tile(b, hh, g, i0, j0);
            // acc += dS^T Q over the tile's 64 queries, 16 at a time: dS rows 16s .. 16s+15 are
            // held by the invocations with ty / 4 == s, which stage them as sa[i][j].
            for (var s = 0u; s < 4u; s++) {
                if (ty / 4u == s) {
                    for (var a = 0u; a < 4u; a++) {
                        for (var c = 0u; c < 4u; c++) { sa[(ty % 4u) * 4u + a][tx * 4u + c] = ds[a][c]; }
                    }
                }
                for (var e = li; e < TILE * BK; e += 256u) {
                    let i = i0 + s * BK + e / TILE;
                    let c = d0 + e % TILE;
                    sb[e / TILE][e % TILE] = select(0.0, q_dk[p.q_off + at(b, i, p.h, hh, c)], inside(i, c));
                }
                workgroupBarrier();
                mac(&acc);
                workgroupBarrier();
            }
        }
    }
    let scale = bitcast<f32>(p.scale);
    for (var a = 0u; a < 4u; a++) {
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + ty * 4u + a;
            let col = d0 + tx * 4u + c;
            if (inside(j, col)) { dk[p.dk_off + at(b, j, p.kv, g, col)] = scale * acc[a][c]; }
        }
    }
}

// dv[b, j, g, :] = sum_{h in group g} sum_{i >= j} P^h_ij dout[b, i, h, :]. Grid (D/64, S/64, B*KV).
@compute @workgroup_size(16, 16)
fn attn_dv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    start(lid);
    let b = wg.z / p.kv;
    let g = wg.z % p.kv;
    let group = p.h / p.kv;
    let j0 = wg.y * TILE;
    let d0 = wg.x * TILE;
    var acc: Tile;
    for (var hh = g * group; hh < (g + 1u) * group; hh++) {
        for (var i0 = j0; i0 < p.s; i0 += BK) {
            for (var e = li; e < TILE * BK; e += 256u) {
                let i = i0 + e / TILE;
                let c = d0 + e % TILE;
                sa[e / TILE][e % TILE] = prob(b, hh, i, j0 + e % TILE);
                sb[e / TILE][e % TILE] = select(0.0, dout_dv[p.o_off + at(b, i, p.h, hh, c)], inside(i, c));
            }
            workgroupBarrier();
            mac(&acc);
            workgroupBarrier();
        }
    }
    for (var a = 0u; a < 4u; a++) {
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + ty * 4u + a;
            let col = d0 + tx * 4u + c;
            if (inside(j, col)) { dv[p.dv_off + at(b, j, p.kv, g, col)] = acc[a][c]; }
        }
    }
}
