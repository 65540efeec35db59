// Rotary position embedding on the GPU (see cpu/rope.rs), rotate-half convention. One invocation
// per pair (j, j + D/2) of a head vector of token t at position p, angle a (tables cos, sin (S', D/2)):
//   forward:  out_j = x_j cos a - x_{j+D/2} sin a;   out_{j+D/2} = x_{j+D/2} cos a + x_j sin a
//   backward (the transpose, R(-a)):  dx_j = g_j cos a + g_{j+D/2} sin a;  dx_{j+D/2} = g_{j+D/2} cos a - g_j sin a
//
// Shapes: T tokens in sequences of S, H heads of D; token t sits at position pos0 + t % S < S'.
// Bindings:
//   rope_forward, rope_backward (which binds dx, dout as out, x):
//     0 p      Params         uniform
//     1 out    f32 (T, H, D)  read_write
//     2 x      f32 (T, H, D)  read
//     3 cos_t  f32 (S', D/2)  read
//     4 sin_t  f32 (S', D/2)  read

struct Params {
    t: u32, s: u32, h: u32, d: u32,
    pos0: u32, out_off: u32, x_off: u32, cos_off: u32,
    sin_off: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> cos_t: array<f32>;
@group(0) @binding(4) var<storage, read> sin_t: array<f32>;

const WG: u32 = 256u;

// Rotates pair i of (T, H, D/2) by sign * angle; token t sits at position pos0 + t % S.
fn rotate(i: u32, sign: f32) {
    let half = p.d / 2u;
    let j = i % half;
    let t = i / (p.h * half);
    let a = p.x_off + (i / half) * p.d + j;   // element j of head vector (t, i / half % H)
    let o = p.out_off + (i / half) * p.d + j;
    let tab = (p.pos0 + t % p.s) * half + j;
    let c = cos_t[p.cos_off + tab];
    let sn = sign * sin_t[p.sin_off + tab];
    let x0 = x[a];
    let x1 = x[a + half];
    out[o] = x0 * c - x1 * sn;
    out[o + half] = x1 * c + x0 * sn;
}

@compute @workgroup_size(256)
fn rope_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.t * p.h * (p.d / 2u)) { return; }
    rotate(i, 1.0);
}

@compute @workgroup_size(256)
fn rope_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.t * p.h * (p.d / 2u)) { return; }
    rotate(i, -1.0);
}
