// Elementwise helpers of the model step (gpu/elementwise.rs): the residual add and the finiteness
// flags that replace the CPU's per-layer `check_finite` without a readback per layer.
//
// Shapes: n elements of x from x_off and of y from y_off; flags (L + 1): one per layer output, one
// for the losses.
// Bindings:
//   add_inplace:
//     0 p      Params               uniform
//     1 x      f32 (n)              read
//     2 y      f32 (n)              read_write
//   finite_flags:
//     0 p      Params               uniform
//     1 x      f32 (n)              read
//     2 flags  atomic<u32> (L + 1)  read_write

struct Params { n: u32, x_off: u32, slot: u32, y_off: u32 }
@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// y[y_off + i] += x[x_off + i]
@compute @workgroup_size(256)
fn add_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nw.x) * 256u + li;
    if (i < p.n) { y[p.y_off + i] += x[p.x_off + i]; }
}

@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;

// Inf and NaN have all exponent bits set. Tested on the bits: a driver may assume no NaN or Inf
// in float arithmetic and fold a float comparison away (naga declares nothing otherwise).
fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// flags[slot] = 1 if any of x[x_off .. x_off + n] is NaN or infinite.
@compute @workgroup_size(256)
fn finite_flags(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nw.x) * 256u + li;
    if (i < p.n && !is_finite(x[p.x_off + i])) { atomicOr(&flags[p.slot], 1u); }
}
