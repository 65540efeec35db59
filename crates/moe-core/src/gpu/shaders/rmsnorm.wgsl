// RMSNorm on the GPU (see cpu/rmsnorm.rs): out = x * rstd * w, rstd = 1 / sqrt(mean(x²) + eps).
// Forward and dx: one workgroup of 64 per row, its sums reduced in workgroup memory. dw (a sum over
// rows): one workgroup of 256 per channel, each invocation striding over rows, then a tree sum, so
// the result is deterministic without atomics or scratch.
//
// Shapes: N rows of C channels, each tensor a view at its offset in the Params.
// Bindings, in each CPU function's argument order less what the kernel does not read:
//   rmsnorm_forward:
//     0 pf        FwdParams   uniform
//     1 out       f32 (N, C)  read_write
//     2 rstd_out  f32 (N)     read_write
//     3 x         f32 (N, C)  read
//     4 w         f32 (C)     read
//   rmsnorm_backward_dx:
//     0 pb        BwdParams   uniform
//     1 dx        f32 (N, C)  read_write
//     2 dout      f32 (N, C)  read
//     3 x         f32 (N, C)  read
//     4 w         f32 (C)     read
//     5 rstd      f32 (N)     read
//   rmsnorm_backward_dw:
//     0 pb        BwdParams   uniform
//     1 dw        f32 (C)     read_write
//     2 dout      f32 (N, C)  read
//     3 x         f32 (N, C)  read
//     4 rstd_dw   f32 (N)     read

struct FwdParams {
    n: u32, c: u32, eps: u32, out_off: u32,
    rstd_off: u32, x_off: u32, w_off: u32, _pad: u32,
}

struct BwdParams {
    n: u32, c: u32, dx_off: u32, dw_off: u32,
    dout_off: u32, x_off: u32, w_off: u32, rstd_off: u32,
    acc: u32, _pad0: u32, _pad1: u32, _pad2: u32,   // acc: dx += (1) or dx = (0)
}

@group(0) @binding(0) var<uniform> pf: FwdParams;
@group(0) @binding(0) var<uniform> pb: BwdParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> rstd_dw: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;

const ROW_WG: u32 = 64u;
const COL_WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

// Sum of v over the first `size` invocations (a power of two), returned to all of them.
fn reduce_sum(li: u32, v: f32, size: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = size / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier(); // red is free again for the next reduction
    return total;
}

// out (N, C) = x * rstd * w;  rstd (N) = 1 / sqrt(sum(x²) / C + eps)
@compute @workgroup_size(64)
fn rmsnorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= pf.n) { return; }
    let x0 = pf.x_off + row * pf.c;
    var ss = 0.0;
    for (var i = li; i < pf.c; i += ROW_WG) {
        let v = x[x0 + i];
        ss += v * v;
    }
    let r = 1.0 / sqrt(reduce_sum(li, ss, ROW_WG) / f32(pf.c) + bitcast<f32>(pf.eps));
    if (li == 0u) { rstd_out[pf.rstd_off + row] = r; }
    for (var i = li; i < pf.c; i += ROW_WG) {
        out[pf.out_off + row * pf.c + i] = x[x0 + i] * r * w[pf.w_off + i];
    }
}

// With g = dout * w:  dx += rstd * g - x * rstd³ * <g, x> / C  (dx = when acc is 0)
@compute @workgroup_size(64)
fn rmsnorm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= pb.n) { return; }
    let d0 = pb.dout_off + row * pb.c;
    let x0 = pb.x_off + row * pb.c;
    var gx = 0.0;
    for (var i = li; i < pb.c; i += ROW_WG) {
        gx += dout[d0 + i] * w[pb.w_off + i] * x[x0 + i];
    }
    gx = reduce_sum(li, gx, ROW_WG) / f32(pb.c);
    let r = rstd[pb.rstd_off + row];
    for (var i = li; i < pb.c; i += ROW_WG) {
        let at = pb.dx_off + row * pb.c + i;
        let v = r * dout[d0 + i] * w[pb.w_off + i] - x[x0 + i] * r * r * r * gx;
        if (pb.acc != 0u) { dx[at] += v; } else { dx[at] = v; }
    }
}

// dw (C) += sum over rows of dout * x * rstd
@compute @workgroup_size(256)
fn rmsnorm_backward_dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) li: u32) {
    let ch = wid.x + wid.y * nwg.x;
    if (ch >= pb.c) { return; }
    var acc = 0.0;
    for (var row = li; row < pb.n; row += COL_WG) {
        acc += dout[pb.dout_off + row * pb.c + ch] * x[pb.x_off + row * pb.c + ch] * rstd_dw[pb.rstd_off + row];
    }
    let total = reduce_sum(li, acc, COL_WG);
    if (li == 0u) { dw[pb.dw_off + ch] += total; }
}
