// GEMM core: the tiled product of matmul.wgsl, experts.wgsl and attention.wgsl. Each of their
// modules is this file followed by the op's own file (composed with concat! in the .rs: one source,
// no text splicing), so the three share this code rather than copies of it. WGSL has no generics or
// function pointers: the op supplies the operands and the epilogue as three functions of fixed
// names, and a module with several products picks among them with an `override` constant.
//
// One workgroup computes a BM x BN block of C = op(A) (M, K) · op(B) (K, N) through BK-deep slices
// staged in workgroup memory; each invocation owns a TM x TN register tile. Shared tiles are K-major
// rows of vec4s (sa[k][m / 4], sb[k][n / 4]) padded by one vec4, so the transposing stores of
// K-contiguous operands spread over the banks and the inner loop reads vec4s. Invocation (tx, ty)
// owns rows (i * WY + ty) * 4 + 0..3 for i < TM / 4 and columns (j * WX + tx) * 4 + 0..3 for j < TN /
// 4: a warp's vec4 reads of sb are contiguous, of sa broadcast. Each invocation stages four
// elements of each operand per slice, consecutive invocations along the operand's contiguous axis
// (coalesced global loads), and issues the next slice's loads before multiplying the current one
// (register prefetch). The register tile's products and its stores are written out with literal
// indices (TM, TN in {4, 8}), so the tile stays in registers even where loops are not unrolled.
//
// The op supplies, block-absolute coordinates:
//   fn load_a(m: u32, k: u32) -> f32          op(A)[m, k], 0 outside op(A)
//   fn load_b(k: u32, n: u32) -> f32          op(B)[k, n], 0 outside op(B)
//   fn store_c(m: u32, n: u32, v: vec4<f32>)  the results C[m, n..n+3]; it checks m and each column
// and runs, per workgroup (k0, k1 workgroup-uniform):
//   gemm_begin(li, row0, col0, a_kfast, b_kfast)   block origin; whether A, B are contiguous along K
//   acc = gemm_mainloop(acc, k0, k1)                acc += the product over depth k0..k1 (repeatable)
//   gemm_store(acc)
// The host sets BM, BN, BK, TM, TN (matmul.rs `Tiles`, checked there: TM, TN in {4, 8}, BM * BK =
// BN * BK = 4 * WG), MODE where the op has one, and BF16 for mixed precision (`Precision::Bf16`:
// both operands rounded to bfloat16 as they are loaded, products and sums in f32). No bindings
// here: the op declares its own.

override BM: u32;
override BN: u32;
override BK: u32;
override TM: u32;
override TN: u32;
// Derived; the host sets only the five above.
override WX: u32 = BN / TN;       // invocations along N
override WY: u32 = BM / TM;       // invocations along M
override WG: u32 = WX * WY;
override SA: u32 = BM / 4u + 1u;  // row strides of the shared tiles in vec4s, one of padding
override SB: u32 = BN / 4u + 1u;
// The product, in a module with several (experts.wgsl, attention.wgsl give the values). Declared
// here because naga 30 fails on a named override declared after an override-sized array.
override MODE: u32 = 0u;
override BF16: bool = false;

var<workgroup> sa: array<vec4<f32>, BK * SA>;
var<workgroup> sb: array<vec4<f32>, BK * SB>;

alias Acc = array<array<vec4<f32>, 2>, 8>;  // [TM][TN / 4]

var<private> gm_tx: u32;
var<private> gm_ty: u32;
var<private> gm_row0: u32;
var<private> gm_col0: u32;
// (m, k) within the A tile and (n, k) within the B tile of this invocation's four staged elements.
var<private> gm_a: array<vec2<u32>, 4>;
var<private> gm_b: array<vec2<u32>, 4>;

// Position (major, k) of staged element e < 4 * WG in a tile `rows` wide along its other axis.
fn gm_slot(e: u32, rows: u32, kfast: bool) -> vec2<u32> {
    if (kfast) { return vec2(e / BK, e % BK); }
    return vec2(e % rows, e / rows);
}

fn gemm_begin(li: u32, row0: u32, col0: u32, a_kfast: bool, b_kfast: bool) {
    gm_tx = li % WX;
    gm_ty = li / WX;
    gm_row0 = row0;
    gm_col0 = col0;
    gm_a[0] = gm_slot(li, BM, a_kfast);
    gm_a[1] = gm_slot(li + WG, BM, a_kfast);
    gm_a[2] = gm_slot(li + 2u * WG, BM, a_kfast);
    gm_a[3] = gm_slot(li + 3u * WG, BM, a_kfast);
    gm_b[0] = gm_slot(li, BN, b_kfast);
    gm_b[1] = gm_slot(li + WG, BN, b_kfast);
    gm_b[2] = gm_slot(li + 2u * WG, BN, b_kfast);
    gm_b[3] = gm_slot(li + 3u * WG, BN, b_kfast);
}

// An operand as the product reads it: itself, or with BF16 rounded to bfloat16 (nearest, ties to
// even: add 0x7fff plus the lowest kept bit, drop the low 16 bits; a carry into the exponent gives
// the next power of two or infinity); infinities and NaNs pass unchanged. cpu::matmul rounds alike.
fn gm_input(x: f32) -> f32 {
    if (!BF16) { return x; }
    let b = bitcast<u32>(x);
    if ((b & 0x7f800000u) == 0x7f800000u) { return x; }
    return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}

fn gm_fetch_a1(s: vec2<u32>, k0: u32, k1: u32) -> f32 {
    if (k0 + s.y >= k1) { return 0.0; }
    return gm_input(load_a(gm_row0 + s.x, k0 + s.y));
}

fn gm_fetch_b1(s: vec2<u32>, k0: u32, k1: u32) -> f32 {
    if (k0 + s.y >= k1) { return 0.0; }
    return gm_input(load_b(k0 + s.y, gm_col0 + s.x));
}

// The slice at depth k0 of this invocation's staged elements; 0 at depths k1 and beyond.
fn gm_fetch_a(k0: u32, k1: u32) -> vec4<f32> {
    return vec4(gm_fetch_a1(gm_a[0], k0, k1), gm_fetch_a1(gm_a[1], k0, k1), gm_fetch_a1(gm_a[2], k0, k1), gm_fetch_a1(gm_a[3], k0, k1));
}

fn gm_fetch_b(k0: u32, k1: u32) -> vec4<f32> {
    return vec4(gm_fetch_b1(gm_b[0], k0, k1), gm_fetch_b1(gm_b[1], k0, k1), gm_fetch_b1(gm_b[2], k0, k1), gm_fetch_b1(gm_b[3], k0, k1));
}

fn gm_stage_a(s: vec2<u32>, v: f32) {
    sa[s.y * SA + s.x / 4u][s.x % 4u] = v;
}

fn gm_stage_b(s: vec2<u32>, v: f32) {
    sb[s.y * SB + s.x / 4u][s.x % 4u] = v;
}

fn gemm_mainloop(acc_in: Acc, k0: u32, k1: u32) -> Acc {
    var acc = acc_in;
    var ra = gm_fetch_a(k0, k1);
    var rb = gm_fetch_b(k0, k1);
    for (var k = k0; k < k1; k += BK) {
        gm_stage_a(gm_a[0], ra.x);
        gm_stage_a(gm_a[1], ra.y);
        gm_stage_a(gm_a[2], ra.z);
        gm_stage_a(gm_a[3], ra.w);
        gm_stage_b(gm_b[0], rb.x);
        gm_stage_b(gm_b[1], rb.y);
        gm_stage_b(gm_b[2], rb.z);
        gm_stage_b(gm_b[3], rb.w);
        workgroupBarrier();
        // Issued before the products so that their latency hides behind them.
        ra = gm_fetch_a(k + BK, k1);
        rb = gm_fetch_b(k + BK, k1);
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = sa[kk * SA + gm_ty];
            let b0 = sb[kk * SB + gm_tx];
            acc[0][0] = fma(vec4(a0.x), b0, acc[0][0]);
            acc[1][0] = fma(vec4(a0.y), b0, acc[1][0]);
            acc[2][0] = fma(vec4(a0.z), b0, acc[2][0]);
            acc[3][0] = fma(vec4(a0.w), b0, acc[3][0]);
            if (TN == 8u) {
                let b1 = sb[kk * SB + WX + gm_tx];
                acc[0][1] = fma(vec4(a0.x), b1, acc[0][1]);
                acc[1][1] = fma(vec4(a0.y), b1, acc[1][1]);
                acc[2][1] = fma(vec4(a0.z), b1, acc[2][1]);
                acc[3][1] = fma(vec4(a0.w), b1, acc[3][1]);
            }
            if (TM == 8u) {
                let a1 = sa[kk * SA + WY + gm_ty];
                acc[4][0] = fma(vec4(a1.x), b0, acc[4][0]);
                acc[5][0] = fma(vec4(a1.y), b0, acc[5][0]);
                acc[6][0] = fma(vec4(a1.z), b0, acc[6][0]);
                acc[7][0] = fma(vec4(a1.w), b0, acc[7][0]);
                if (TN == 8u) {
                    let b1 = sb[kk * SB + WX + gm_tx];
                    acc[4][1] = fma(vec4(a1.x), b1, acc[4][1]);
                    acc[5][1] = fma(vec4(a1.y), b1, acc[5][1]);
                    acc[6][1] = fma(vec4(a1.z), b1, acc[6][1]);
                    acc[7][1] = fma(vec4(a1.w), b1, acc[7][1]);
                }
            }
        }
        workgroupBarrier();
    }
    return acc;
}

// The four rows r..r+3 of one column group at c.
fn gm_store4(r: u32, c: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    store_c(r, c, v0);
    store_c(r + 1u, c, v1);
    store_c(r + 2u, c, v2);
    store_c(r + 3u, c, v3);
}

fn gemm_store(acc: Acc) {
    let r0 = gm_row0 + gm_ty * 4u;
    let c0 = gm_col0 + gm_tx * 4u;
    gm_store4(r0, c0, acc[0][0], acc[1][0], acc[2][0], acc[3][0]);
    if (TN == 8u) {
        gm_store4(r0, c0 + WX * 4u, acc[0][1], acc[1][1], acc[2][1], acc[3][1]);
    }
    if (TM == 8u) {
        let r1 = r0 + WY * 4u;
        gm_store4(r1, c0, acc[4][0], acc[5][0], acc[6][0], acc[7][0]);
        if (TN == 8u) {
            gm_store4(r1, c0 + WX * 4u, acc[4][1], acc[5][1], acc[6][1], acc[7][1]);
        }
    }
}
