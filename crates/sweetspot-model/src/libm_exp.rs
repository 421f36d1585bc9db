//! glibc's `expf` and `exp` evaluated in AVX-512 lanes, bit for bit what [`f32::exp`] and
//! [`f64::exp`] return on the running machine: for SwiGLU's logistic in f32 inference and the
//! sampler's weights, whose results are pinned (samples, scores and their checksums), where a
//! call per element was several percent of the time.
//!
//! On x86-64 Linux, Rust's `exp` calls the C library's. glibc (2.28 on) computes both with ARM's
//! optimized-routines algorithms, built for CPUs with FMA as `__expf_fma` and `__exp_fma`
//! (chosen at load time), which is what runs on an AVX-512 CPU:
//!
//! - `expf(x)`: in f64, `k = round(x · 32/ln 2)` by adding and subtracting 1.5 · 2^52, `r = x ·
//!   32/ln 2 - k`, `2^(k/32)` from a 32-entry table and the exponent bits, and a degree-3
//!   polynomial in `r`; the product rounded once to f32. Special branch: `|x| ≥ 88` (and
//!   infinities, NaN).
//! - `exp(x)`: `k = round(x · 128/ln 2)` the same way, `r = x - k · ln 2/128` in two steps (high
//!   and low parts of `ln 2/128`), `2^(k/128)` from a 128-entry table of (tail, bits) pairs and
//!   the exponent bits, and a degree-5 polynomial. Special branches: `|x| < 2^-54` and `|x| ≥
//!   512` (and infinities, NaN).
//!
//! Each lane does the same operations in the same order, with a fused multiply-add exactly where
//! glibc's build fused one (read from its machine code: the functions' comments below), and the
//! constants and tables as the library holds them. A lane whose input takes a special branch is
//! recomputed with the scalar call.
//!
//! The bits are glibc's only where the running libm is that code, so the lanes are used only
//! after a one-time check in each process ([`OnceLock`]) finds them equal to the scalar call on a
//! few thousand inputs (the whole range, the special branches' bounds, the callers' ranges);
//! otherwise (another libm or version, a CPU without AVX-512) every element goes through the
//! scalar call. Either way the results are the running machine's `exp`.

use std::sync::OnceLock;

/// Every `x` of `xs` replaced by `x.exp()` ([`f32::exp`]'s bits).
pub(crate) fn expf_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if f32_lanes() {
        // SAFETY: `f32_lanes` holds only where the CPU has AVX512F.
        unsafe { avx512::expf_in_place(xs) };
        return;
    }
    for x in xs {
        *x = x.exp();
    }
}

/// `out[i] = (xs[i] as f64 / t - shift).exp()` ([`f64::exp`]'s bits): a row of logits' softmax
/// weights at temperature `t`, relative to the largest (`shift`).
///
/// # Panics
/// When `out` is not as long as `xs`.
pub(crate) fn exp_scaled(xs: &[f32], t: f64, shift: f64, out: &mut [f64]) {
    assert_eq!(xs.len(), out.len(), "exp_scaled: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if f64_lanes() {
        // SAFETY: `f64_lanes` holds only where the CPU has AVX512F.
        unsafe { avx512::exp_scaled(xs, t, shift, out) };
        return;
    }
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = (x as f64 / t - shift).exp();
    }
}

/// Whether [`expf_in_place`] uses the lanes: AVX512F, and the lanes give the scalar call's bits
/// on every probe (checked once).
fn f32_lanes() -> bool {
    static USE: OnceLock<bool> = OnceLock::new();
    *USE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let probes = probes();
            let mut got = probes.clone();
            // SAFETY: the CPU has AVX512F.
            unsafe { avx512::expf_in_place(&mut got) };
            return probes
                .iter()
                .zip(&got)
                .all(|(&x, y)| std::hint::black_box(x).exp().to_bits() == y.to_bits());
        }
        false
    })
}

/// Whether [`exp_scaled`] uses the lanes (as [`f32_lanes`], over several temperatures and
/// shifts so the arguments are not all f32 values).
fn f64_lanes() -> bool {
    static USE: OnceLock<bool> = OnceLock::new();
    *USE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let probes = probes();
            let mut got = vec![0f64; probes.len()];
            return [(1.0, 0.0), (0.7, 0.3), (1.3, -2.9), (0.05, 13.0)]
                .into_iter()
                .all(|(t, shift)| {
                    // SAFETY: the CPU has AVX512F.
                    unsafe { avx512::exp_scaled(&probes, t, shift, &mut got) };
                    probes.iter().zip(&got).all(|(&x, y)| {
                        let want = (std::hint::black_box(x) as f64 / t - shift).exp();
                        want.to_bits() == y.to_bits()
                    })
                });
        }
        false
    })
}

/// The self-checks' inputs: 4096 bit patterns spread over all of f32 (both signs, every
/// exponent), 4000 values in [-200, 200] (SwiGLU's gates, the sampler's weights' arguments),
/// each special branch's bounds with their neighbours, infinities and NaN, and [`EXPF_HARD`] and
/// [`EXP_HARD`].
fn probes() -> Vec<f32> {
    let mut p: Vec<f32> = (0..4096u32)
        .map(|i| f32::from_bits(i.wrapping_mul(0x000F_FFFB)))
        .collect();
    p.extend((0..4000).map(|i| i as f32 * 0.100_03 - 200.0));
    let bounds = [
        0.0,
        f32::MIN_POSITIVE,
        1e-30,
        f32::from_bits(0x2480_0000), // 2^-54: exp's small-argument branch
        88.0,                        // expf's special branch
        88.722_83,
        103.278_92,
        103.972_08,
        512.0, // exp's large-argument branch
        708.0,
        709.78,
        745.13,
        1024.0,
        f32::MAX,
        f32::INFINITY,
    ];
    for b in bounds {
        for v in [b, b.next_up(), b.next_down()] {
            p.extend([v, -v]);
        }
    }
    p.extend([f32::NAN, -f32::NAN, f32::from_bits(1)]);
    p.extend(
        EXPF_HARD
            .iter()
            .chain(&EXP_HARD)
            .map(|&b| f32::from_bits(b)),
    );
    p
}

/// Inputs (f32 bits) where another `expf` most likely gives other bits than glibc's (found by
/// a scan of all f32 on glibc 2.36): the two where the same formula without fused multiply-adds
/// (glibc's own build for CPUs without FMA) rounds differently, the 16 whose f64 value before
/// the rounding to f32 is nearest a midpoint between two f32 values (the slightest change in
/// the arithmetic moves them), and 32 where glibc's result is not the correctly rounded one,
/// which a correctly rounded `expf` gives (one input is in both of the last two groups). At
/// random, a correctly rounded `expf` differs on about one input in 13,000; the build without
/// FMA on only those two of all 2^32.
const EXPF_HARD: [u32; 49] = [
    0x4202422f, 0xc27c65d9, 0x3e73ade2, 0xbfde3004, 0xb3000000, 0xbbe861b2, 0x3d8932e8, 0x400d98c7,
    0x3b37991a, 0xba253b54, 0x337fffff, 0x33800000, 0x343fffff, 0x34dffffd, 0x37ff7f01, 0x356ffff9,
    0x3b0b4517, 0x3fbe11a6, 0x3bb49cd7, 0x3c286001, 0x3cd8c2f5, 0x3d6e6d78, 0x3e0e6eec, 0x3e9e973d,
    0x3f14398e, 0x3f969415, 0x4011e514, 0x408c3ab8, 0x410a693b, 0x4184ef00, 0x4201b804, 0x427fcc63,
    0xbb40abef, 0xbba1399f, 0xbbd73cd2, 0xbc05d976, 0xbc637064, 0xbcc7514d, 0xbd0f5053, 0xbd6b10f9,
    0xbdc6dfc7, 0xbe298f72, 0xbe992f21, 0xbf24de5e, 0xbf94c494, 0xc00fefdf, 0xc08dd862, 0xc10a3ba9,
    0xc188d8e6,
];

/// Inputs (f32 bits, as `f64` arguments) where another `exp` most likely gives other bits than
/// glibc's: 32 where the same formula without fused multiply-adds (glibc's own build for CPUs
/// without FMA) rounds differently and 32 where glibc's result is not the correctly rounded one
/// (one input is in both); each kind is about one input in 1,400 at random.
const EXP_HARD: [u32; 63] = [
    0x432a2088, 0x42fa1bb9, 0x43273169, 0xc22eeb5f, 0x41fd6029, 0xc2624e3a, 0x430bbf0b, 0x432ed79e,
    0x41dba966, 0x422574aa, 0xc32de024, 0x4307d538, 0x42be699e, 0x42a3fbf2, 0x4232209c, 0x42f2a410,
    0x4332e0bd, 0xc29ebefd, 0xc2de70f5, 0x4320491d, 0x42b4fa65, 0x40ae1c12, 0x40eda09e, 0x421f4331,
    0x42ce5444, 0xc29ba5c0, 0xc3000612, 0xc2a99f6d, 0x433b8ed0, 0x42261c06, 0xc234e6ca, 0x3f1bf500,
    0xc338ac3c, 0xc0bf6ed6, 0x42707e81, 0x4028de78, 0x41c4c900, 0xc30d8be8, 0xc314d4b2, 0xc2ac9731,
    0x42e8c817, 0x4339f664, 0xc306f5f2, 0xc318d44b, 0x433f86f0, 0x43091c42, 0xc127db7c, 0xc3473e78,
    0x433229eb, 0x42b2a7ea, 0x42ac0c88, 0x42529e04, 0x3eef6aa0, 0x41eda18c, 0xc21b9a47, 0xc2e73a37,
    0x429ae640, 0xc14a9b30, 0x430e9fd3, 0x41457295, 0xc305a907, 0xc32a8d0f, 0xc2ed07e2,
];

/// Bits of 2^(i/32), i = 0..32, less `i << 47` (as glibc's `__exp2f_data` holds them: adding
/// `k << 47` for `k = i mod 32` gives the bits of 2^(k/32)).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const EXPF_TABLE: [u64; 32] = [
    0x3ff0_0000_0000_0000, 0x3fef_d9b0_d315_8574, 0x3fef_b558_6cf9_890f, 0x3fef_9301_d012_5b51,
    0x3fef_72b8_3c7d_517b, 0x3fef_5487_3168_b9aa, 0x3fef_387a_6e75_6238, 0x3fef_1e9d_f51f_dee1,
    0x3fef_06fe_0a31_b715, 0x3fee_f1a7_373a_a9cb, 0x3fee_dea6_4c12_3422, 0x3fee_ce08_6061_892d,
    0x3fee_bfda_d536_2a27, 0x3fee_b42b_569d_4f82, 0x3fee_ab07_dd48_5429, 0x3fee_a47e_b03a_5585,
    0x3fee_a09e_667f_3bcd, 0x3fee_9f75_e8ec_5f74, 0x3fee_a114_73eb_0187, 0x3fee_a589_994c_ce13,
    0x3fee_ace5_422a_a0db, 0x3fee_b737_b0cd_c5e5, 0x3fee_c491_82a3_f090, 0x3fee_d503_b23e_255d,
    0x3fee_e89f_995a_d3ad, 0x3fee_ff76_f2fb_5e47, 0x3fef_199b_dd85_529c, 0x3fef_3720_dcef_9069,
    0x3fef_5818_dcfb_a487, 0x3fef_7c97_337b_9b5f, 0x3fef_a4af_a2a4_90da, 0x3fef_d076_5b6e_4540,
];

/// Pairs (tail, bits) for i = 0..128, as glibc's `__exp_data` holds them: bits of a double `H`
/// near 2^(i/128), less `i << 45`, and the tail, the relative error `T` with 2^(i/128) =
/// `H · (1 + T)`, which the polynomial's sum starts from.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
static EXP_TABLE: [u64; 256] = [
    0x0000_0000_0000_0000, 0x3ff0_0000_0000_0000, 0x3c9b_3b4f_1a88_bf6e, 0x3fef_f63d_a9fb_3335,
    0xbc71_6013_9cd8_dc5d, 0x3fef_ec9a_3e77_8061, 0xbc90_5e7a_1087_66d1, 0x3fef_e315_e86e_7f85,
    0x3c8c_d252_3567_f613, 0x3fef_d9b0_d315_8574, 0xbc8b_ce80_23f9_8efa, 0x3fef_d06b_29dd_f6de,
    0x3c60_f74e_61e6_c861, 0x3fef_c745_1875_9bc8, 0x3c90_a3e4_5b33_d399, 0x3fef_be3e_cac6_f383,
    0x3c97_9aa6_5d83_7b6d, 0x3fef_b558_6cf9_890f, 0x3c8e_b51a_92fd_effc, 0x3fef_ac92_2b72_47f7,
    0x3c3e_be3d_702f_9cd1, 0x3fef_a3ec_32d3_d1a2, 0xbc6a_0334_8990_6e0b, 0x3fef_9b66_affe_d31b,
    0xbc95_5652_2a2f_bd0e, 0x3fef_9301_d012_5b51, 0xbc50_80ef_8c4e_ea55, 0x3fef_8abd_c06c_31cc,
    0xbc91_c923_b9d5_f416, 0x3fef_829a_aea9_2de0, 0x3c80_d3e3_e95c_55af, 0x3fef_7a98_c8a5_8e51,
    0xbc80_1b15_eaa5_9348, 0x3fef_72b8_3c7d_517b, 0xbc8f_1ff0_55de_323d, 0x3fef_6af9_388c_8dea,
    0x3c8b_898c_3f13_53bf, 0x3fef_635b_eb6f_cb75, 0xbc96_d99c_7611_eb26, 0x3fef_5be0_8404_5cd4,
    0x3c9a_ecf7_3e3a_2f60, 0x3fef_5487_3168_b9aa, 0xbc8f_e782_cb86_389d, 0x3fef_4d50_22fc_d91d,
    0x3c8a_6f41_44a6_c38d, 0x3fef_463b_8862_8cd6, 0x3c80_7a05_b0e4_047d, 0x3fef_3f49_917d_dc96,
    0x3c96_8efd_e3a8_a894, 0x3fef_387a_6e75_6238, 0x3c87_5e18_f274_487d, 0x3fef_31ce_4fb2_a63f,
    0x3c80_472b_981f_e7f2, 0x3fef_2b45_65e2_7cdd, 0xbc96_b87b_3f71_085e, 0x3fef_24df_e1f5_6381,
    0x3c82_f7e1_6d09_ab31, 0x3fef_1e9d_f51f_dee1, 0xbc3d_219b_1a6f_bffa, 0x3fef_187f_d0da_d990,
    0x3c8b_3782_720c_0ab4, 0x3fef_1285_a6e4_030b, 0x3c6e_1492_89ce_cb8f, 0x3fef_0caf_a93e_2f56,
    0x3c83_4d75_4db0_abb6, 0x3fef_06fe_0a31_b715, 0x3c86_4201_e2ac_744c, 0x3fef_0170_fc4c_d831,
    0x3c8f_dd39_5dd3_f84a, 0x3fee_fc08_b264_16ff, 0xbc86_a380_3b8e_5b04, 0x3fee_f6c5_5f92_9ff1,
    0xbc92_4aed_cc4b_5068, 0x3fee_f1a7_373a_a9cb, 0xbc99_07f8_1b51_2d8e, 0x3fee_ecae_6d05_d866,
    0xbc71_d1e8_3e94_36d2, 0x3fee_e7db_34e5_9ff7, 0xbc99_1919_b3ce_1b15, 0x3fee_e32d_c313_a8e5,
    0x3c85_9f48_a72a_4c6d, 0x3fee_dea6_4c12_3422, 0xbc93_1260_7a28_698a, 0x3fee_da45_04ac_801c,
    0xbc58_a78f_4817_895b, 0x3fee_d60a_21f7_2e2a, 0xbc7c_2c9b_6749_9a1b, 0x3fee_d1f5_d950_a897,
    0x3c43_63ed_60c2_ac11, 0x3fee_ce08_6061_892d, 0x3c96_6609_3b06_64ef, 0x3fee_ca41_ed1d_0057,
    0x3c6e_cce1_daa1_0379, 0x3fee_c6a2_b5c1_3cd0, 0x3c93_ff8e_3f0f_1230, 0x3fee_c32a_f0d7_d3de,
    0x3c76_90ce_bb7a_afb0, 0x3fee_bfda_d536_2a27, 0x3c93_1dbd_eb54_e077, 0x3fee_bcb2_99fd_dd0d,
    0xbc8f_9434_0071_a38e, 0x3fee_b9b2_769d_2ca7, 0xbc87_decc_dc93_a349, 0x3fee_b6da_a2cf_6642,
    0xbc78_dec6_bd0f_385f, 0x3fee_b42b_569d_4f82, 0xbc86_1246_ec7b_5cf6, 0x3fee_b1a4_ca5d_920f,
    0x3c93_3505_18fd_d78e, 0x3fee_af47_36b5_27da, 0x3c7b_98b7_2f8a_9b05, 0x3fee_ad12_d497_c7fd,
    0x3c90_63e1_e21c_5409, 0x3fee_ab07_dd48_5429, 0x3c34_c785_5019_c6ea, 0x3fee_a926_8a59_46b7,
    0x3c94_32e6_2b64_c035, 0x3fee_a76f_15ad_2148, 0xbc8c_e44a_6199_769f, 0x3fee_a5e1_b976_dc09,
    0xbc8c_33c5_3bef_4da8, 0x3fee_a47e_b03a_5585, 0xbc84_5378_892b_e9ae, 0x3fee_a346_34cc_c320,
    0xbc93_cedd_7856_5858, 0x3fee_a238_8255_2225, 0x3c57_10aa_807e_1964, 0x3fee_a155_d44c_a973,
    0xbc93_b3ef_bf5e_2228, 0x3fee_a09e_667f_3bcd, 0xbc6a_12ad_8734_b982, 0x3fee_a012_750b_dabf,
    0xbc63_67ef_b86d_a9ee, 0x3fee_9fb2_3c65_1a2f, 0xbc80_dc3d_54e0_8851, 0x3fee_9f7d_f951_9484,
    0xbc78_1f64_7e5a_3ecf, 0x3fee_9f75_e8ec_5f74, 0xbc86_ee4a_c08b_7db0, 0x3fee_9f9a_48a5_8174,
    0xbc86_1932_1e55_e68a, 0x3fee_9feb_5642_67c9, 0x3c90_9ccb_5e09_d4d3, 0x3fee_a069_4fde_5d3f,
    0xbc7b_32dc_b94d_a51d, 0x3fee_a114_73eb_0187, 0x3c94_ecfd_5467_c06b, 0x3fee_a1ed_0130_c132,
    0x3c65_ebe1_abd6_6c55, 0x3fee_a2f3_36cf_4e62, 0xbc88_a1c5_2fb3_cf42, 0x3fee_a427_543e_1a12,
    0xbc93_69b6_f13b_3734, 0x3fee_a589_994c_ce13, 0xbc80_5e84_3a19_ff1e, 0x3fee_a71a_4623_c7ad,
    0xbc94_d450_d872_576e, 0x3fee_a8d9_9b44_92ed, 0x3c90_ad67_5b0e_8a00, 0x3fee_aac7_d98a_6699,
    0x3c8d_b72f_c1f0_eab4, 0x3fee_ace5_422a_a0db, 0xbc65_b660_9cc5_e7ff, 0x3fee_af32_16b5_448c,
    0x3c7b_f683_59f3_5f44, 0x3fee_b1ae_9915_7736, 0xbc93_091f_a71e_3d83, 0x3fee_b45b_0b91_ffc6,
    0xbc5d_a9b8_8b6c_1e29, 0x3fee_b737_b0cd_c5e5, 0xbc6c_23f9_7c90_b959, 0x3fee_ba44_cbc8_520f,
    0xbc92_4343_22f4_f9aa, 0x3fee_bd82_9fde_4e50, 0xbc85_ca6c_d766_8e4b, 0x3fee_c0f1_70ca_07ba,
    0x3c71_affc_2b91_ce27, 0x3fee_c491_82a3_f090, 0x3c6d_d235_e10a_73bb, 0x3fee_c863_19e3_2323,
    0xbc87_c504_2262_2263, 0x3fee_cc66_7b5d_e565, 0x3c8b_1c86_e3e2_31d5, 0x3fee_d09b_ec4a_2d33,
    0xbc91_bbd1_d3bc_bb15, 0x3fee_d503_b23e_255d, 0x3c90_cc31_9cee_31d2, 0x3fee_d99e_1330_b358,
    0x3c84_6984_6e73_5ab3, 0x3fee_de6b_5579_fdbf, 0xbc82_dfcd_978e_9db4, 0x3fee_e36b_bfd3_f37a,
    0x3c8c_1a77_92cb_3387, 0x3fee_e89f_995a_d3ad, 0xbc90_7b8f_4ad1_d9fa, 0x3fee_ee07_298d_b666,
    0xbc55_c3d9_56dc_aeba, 0x3fee_f3a2_b84f_15fb, 0xbc90_a40e_3da6_f640, 0x3fee_f972_8de5_593a,
    0xbc68_d6f4_38ad_9334, 0x3fee_ff76_f2fb_5e47, 0xbc91_eee2_6b58_8a35, 0x3fef_05b0_30a1_064a,
    0x3c74_ffd7_0a5f_ddcd, 0x3fef_0c1e_904b_c1d2, 0xbc91_bdfb_fa92_98ac, 0x3fef_12c2_5bd7_1e09,
    0x3c73_6eae_30af_0cb3, 0x3fef_199b_dd85_529c, 0x3c8e_e332_5c9f_fd94, 0x3fef_20ab_5fff_d07a,
    0x3c84_e08f_d109_59ac, 0x3fef_27f1_2e57_d14b, 0x3c63_cdaf_384e_1a67, 0x3fef_2f6d_9406_e7b5,
    0x3c67_6b2c_6c92_1968, 0x3fef_3720_dcef_9069, 0xbc80_8a18_83cc_b5d2, 0x3fef_3f0b_555d_c3fa,
    0xbc8f_ad5d_3fff_fa6f, 0x3fef_472d_4a07_897c, 0xbc90_0dae_3875_a949, 0x3fef_4f87_080d_89f2,
    0x3c74_a385_a63d_07a7, 0x3fef_5818_dcfb_a487, 0xbc82_919e_2040_220f, 0x3fef_60e3_16c9_8398,
    0x3c8e_5a50_d5c1_92ac, 0x3fef_69e6_03db_3285, 0x3c84_3a59_ac01_6b4b, 0x3fef_7321_f301_b460,
    0xbc82_d521_07b4_3e1f, 0x3fef_7c97_337b_9b5f, 0xbc89_2ab9_3b47_0dc9, 0x3fef_8646_14f5_a129,
    0x3c74_b604_603a_88d3, 0x3fef_902e_e78b_3ff6, 0x3c83_c5ec_519d_7271, 0x3fef_9a51_fbc7_4c83,
    0xbc8f_f712_8fd3_91f0, 0x3fef_a4af_a2a4_90da, 0xbc8d_ae98_e223_747d, 0x3fef_af48_2d8e_67f1,
    0x3c8e_c3bc_41aa_2008, 0x3fef_ba1b_ee61_5a27, 0x3c84_2b94_c3a9_eb32, 0x3fef_c52b_376b_ba97,
    0x3c8a_64a9_31d1_85ee, 0x3fef_d076_5b6e_4540, 0xbc8e_37ba_e43b_e3ed, 0x3fef_dbfd_ad9c_be14,
    0x3c77_893b_4d91_cd9d, 0x3fef_e7c1_819e_90d8, 0x3c53_05c1_4160_cc89, 0x3fef_f3c2_2b8f_71f1,
];

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{EXP_TABLE, EXPF_TABLE};

    /// `expf`'s constants: 32/ln 2, the rounding shift 1.5 · 2^52, the polynomial's coefficients
    /// (of r^3, r^2, r).
    const F_INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
    const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
    const F_C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
    const F_C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
    const F_C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);
    /// The bits of 88.0 (`|x|` at or above it takes `expf`'s special branch).
    const F_SPECIAL: i32 = 0x42b0_0000;

    /// `exp`'s constants: 128/ln 2, -ln 2/128 in a high and a low part, the polynomial's
    /// coefficients of r^2 to r^5.
    const INV_LN2_N: f64 = f64::from_bits(0x4067_1547_652b_82fe);
    const NEG_LN2_HI_N: f64 = f64::from_bits(0xbf76_2e42_fefa_0000);
    const NEG_LN2_LO_N: f64 = f64::from_bits(0xbd0c_f79a_bc9e_3b3a);
    const C2: f64 = f64::from_bits(0x3fdf_ffff_ffff_fdbd);
    const C3: f64 = f64::from_bits(0x3fc5_5555_5555_543c);
    const C4: f64 = f64::from_bits(0x3fa5_5555_cf17_2b91);
    const C5: f64 = f64::from_bits(0x3f81_1111_67a4_d017);
    /// `exp`'s main path takes |x| with exponent field in [0x3c9, 0x408): 2^-54 <= |x| < 512.
    const MAIN_LO: i64 = 0x3c9 << 52;
    const MAIN_SPAN: i64 = 0x3f << 52;

    /// `expf` of 8 values on its main path; `t` holds [`EXPF_TABLE`] in four vectors. glibc's
    /// `__expf_fma` fuses the products with 32/ln 2 into both the rounding (`x · 32/ln 2 +
    /// shift`) and the remainder (`x · 32/ln 2 - k`), and all three polynomial steps
    /// (`C0 r + C1`, `C2 r + 1`, then `(C0 r + C1) r² + (C2 r + 1)`); `r²` and the final
    /// product with the scale are plain.
    #[target_feature(enable = "avx512f")]
    fn expf8(x: __m256, t: &[__m512i; 4]) -> __m256 {
        let xd = _mm512_cvtps_pd(x);
        let inv = _mm512_set1_pd(F_INV_LN2_N);
        let shift = _mm512_set1_pd(SHIFT);
        let z = _mm512_fmadd_pd(inv, xd, shift);
        let ki = _mm512_castpd_si512(z);
        let kd = _mm512_sub_pd(z, shift);
        let r = _mm512_fmsub_pd(inv, xd, kd);
        // Entry k mod 32 of the table: bits 0-3 pick within a half, bit 4 the half.
        let i = _mm512_and_si512(ki, _mm512_set1_epi64(31));
        let lo = _mm512_permutex2var_epi64(t[0], i, t[1]);
        let hi = _mm512_permutex2var_epi64(t[2], i, t[3]);
        let bits =
            _mm512_mask_blend_epi64(_mm512_test_epi64_mask(i, _mm512_set1_epi64(16)), lo, hi);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(bits, _mm512_slli_epi64::<47>(ki)));
        let p = _mm512_fmadd_pd(_mm512_set1_pd(F_C0), r, _mm512_set1_pd(F_C1));
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(_mm512_set1_pd(F_C2), r, _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(p, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    }

    /// [`super::expf_in_place`] in vectors of 16; lanes with `|x| ≥ 88` (and the last
    /// `len % 16` elements) through the scalar call.
    ///
    /// # Safety
    /// The CPU has AVX512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn expf_in_place(xs: &mut [f32]) {
        // SAFETY: the table is 32 values, four loads of 8.
        let t = unsafe {
            let p = EXPF_TABLE.as_ptr() as *const __m512i;
            [0, 1, 2, 3].map(|j| _mm512_loadu_si512(p.add(j)))
        };
        let abs = _mm512_set1_epi32(0x7fff_ffff);
        let special_at = _mm512_set1_epi32(F_SPECIAL);
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            // SAFETY: `c` holds 16 values.
            let x = unsafe { _mm512_loadu_ps(p) };
            let magnitude = _mm512_and_si512(_mm512_castps_si512(x), abs);
            let special = _mm512_cmpge_epi32_mask(magnitude, special_at);
            let lo = expf8(_mm512_castps512_ps256(x), &t);
            let hi = expf8(
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
                &t,
            );
            let inputs: [f32; 16] = if special != 0 {
                c.try_into().expect("16 values")
            } else {
                [0.0; 16]
            };
            // SAFETY: as the load.
            unsafe {
                _mm256_storeu_ps(p, lo);
                _mm256_storeu_ps(p.add(8), hi);
            }
            let mut rest = special;
            while rest != 0 {
                let j = rest.trailing_zeros() as usize;
                c[j] = inputs[j].exp();
                rest &= rest - 1;
            }
        }
        for x in chunks.into_remainder() {
            *x = x.exp();
        }
    }

    /// `exp` of 8 values on its main path. glibc's `__exp_fma` fuses the rounding (`x · 128/ln 2`
    /// plus the shift), both steps of the remainder (`x + k · -ln2hi`, then that plus `k ·
    /// -ln2lo`), the polynomial's `C2 + r C3` and `C4 + r C5`, its two sums (`(tail + r) + r²
    /// (C2 + r C3)`, then that plus `r⁴ (C4 + r C5)`) and the scaling (`scale + scale · tmp`);
    /// `tail + r`, `r²` and `r⁴` are plain.
    #[target_feature(enable = "avx512f")]
    fn exp8(x: __m512d) -> __m512d {
        let shift = _mm512_set1_pd(SHIFT);
        let z = _mm512_fmadd_pd(x, _mm512_set1_pd(INV_LN2_N), shift);
        let ki = _mm512_castpd_si512(z);
        let kd = _mm512_sub_pd(z, shift);
        let r = _mm512_fmadd_pd(kd, _mm512_set1_pd(NEG_LN2_HI_N), x);
        let r = _mm512_fmadd_pd(kd, _mm512_set1_pd(NEG_LN2_LO_N), r);
        // Pair k mod 128 of the table.
        let at = _mm512_slli_epi64::<1>(_mm512_and_si512(ki, _mm512_set1_epi64(127)));
        let table = EXP_TABLE.as_ptr() as *const i64;
        // SAFETY: the indices are even and below 256, the table's length; the tails are at
        // even indices, the bits after them.
        let (tail, bits) = unsafe {
            (
                _mm512_i64gather_epi64::<8>(at, table),
                _mm512_i64gather_epi64::<8>(at, table.add(1)),
            )
        };
        let sbits = _mm512_add_epi64(bits, _mm512_slli_epi64::<45>(ki));
        let a = _mm512_fmadd_pd(r, _mm512_set1_pd(C3), _mm512_set1_pd(C2));
        let tmp = _mm512_add_pd(r, _mm512_castsi512_pd(tail));
        let r2 = _mm512_mul_pd(r, r);
        let b = _mm512_fmadd_pd(r, _mm512_set1_pd(C5), _mm512_set1_pd(C4));
        let tmp = _mm512_fmadd_pd(a, r2, tmp);
        let r4 = _mm512_mul_pd(r2, r2);
        let tmp = _mm512_fmadd_pd(r4, b, tmp);
        let scale = _mm512_castsi512_pd(sbits);
        _mm512_fmadd_pd(scale, tmp, scale)
    }

    /// [`super::exp_scaled`] in vectors of 8; lanes off `exp`'s main path (and the last
    /// `len % 8` elements) through the scalar call.
    ///
    /// # Safety
    /// The CPU has AVX512F; `out` is as long as `xs`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_scaled(xs: &[f32], t: f64, shift: f64, out: &mut [f64]) {
        let scalar = |x: f32| (x as f64 / t - shift).exp();
        let (tv, sv) = (_mm512_set1_pd(t), _mm512_set1_pd(shift));
        let abs = _mm512_set1_epi64(i64::MAX);
        let (main_lo, main_span) = (_mm512_set1_epi64(MAIN_LO), _mm512_set1_epi64(MAIN_SPAN));
        let mut x8 = xs.chunks_exact(8);
        let mut o8 = out.chunks_exact_mut(8);
        for (x, o) in (&mut x8).zip(&mut o8) {
            // SAFETY: `x` and `o` hold 8 values.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr()) };
            let arg = _mm512_sub_pd(_mm512_div_pd(_mm512_cvtps_pd(v), tv), sv);
            let magnitude = _mm512_and_si512(_mm512_castpd_si512(arg), abs);
            // Off the main path: the exponent field, less 0x3c9, is not below 0x3f (unsigned).
            let special = _mm512_cmpge_epu64_mask(_mm512_sub_epi64(magnitude, main_lo), main_span);
            // SAFETY: as the load.
            unsafe { _mm512_storeu_pd(o.as_mut_ptr(), exp8(arg)) };
            let mut rest = special;
            while rest != 0 {
                let j = rest.trailing_zeros() as usize;
                o[j] = scalar(x[j]);
                rest &= rest - 1;
            }
        }
        for (o, &x) in o8.into_remainder().iter_mut().zip(x8.remainder()) {
            *o = scalar(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A xorshift stream (the same inputs on every run).
    fn stream(mut s: u64) -> impl FnMut() -> u64 {
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    fn check_f32(xs: &[f32]) {
        let mut got = xs.to_vec();
        expf_in_place(&mut got);
        for (&x, y) in xs.iter().zip(got) {
            assert_eq!(
                y.to_bits(),
                x.exp().to_bits(),
                "expf({x:e}) ({:#x})",
                x.to_bits()
            );
        }
    }

    fn check_f64(xs: &[f32], t: f64, shift: f64) {
        let mut got = vec![0f64; xs.len()];
        exp_scaled(xs, t, shift, &mut got);
        for (&x, y) in xs.iter().zip(got) {
            let want = (x as f64 / t - shift).exp();
            assert_eq!(y.to_bits(), want.to_bits(), "exp({x:e} / {t} - {shift})");
        }
    }

    /// On x86-64 glibc (2.28 on) with AVX-512 the lanes pass their check, else the tests below
    /// would test only the scalar loop. A glibc whose `expf` or `exp` computes otherwise fails
    /// here: its results are still what callers get (through the scalar loop), but the speed is
    /// gone and this module needs the new code's constants and order of operations.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn the_lanes_are_in_use_on_glibc_with_avx512() {
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(f32_lanes(), "expf's lanes differ from this libm's expf");
            assert!(f64_lanes(), "exp's lanes differ from this libm's exp");
        }
    }

    /// One in 1021 of all f32 bit patterns (every exponent, both signs, varied mantissas), the
    /// probes, and a dense sweep of SwiGLU's `-|x|` for |x| up to 100.
    #[test]
    fn expf_is_the_scalar_call() {
        let spread: Vec<f32> = (0..(1u64 << 32) / 1021)
            .map(|i| f32::from_bits((i * 1021 + 7) as u32))
            .collect();
        check_f32(&spread);
        check_f32(&probes());
        let mut next = stream(1);
        let gates: Vec<f32> = (0..1 << 20)
            .map(|_| -((next() >> 40) as f32 / (1u64 << 24) as f32 * 100.0))
            .collect();
        check_f32(&gates);
        // Every length's tail (the scalar remainder) and special lanes at every position.
        for n in 0..40 {
            let mut xs: Vec<f32> = (0..n).map(|i| -(i as f32) * 0.37).collect();
            if n > 0 {
                xs[n / 2] = [f32::NAN, f32::NEG_INFINITY, 95.0, -120.0][n % 4];
            }
            check_f32(&xs);
        }
    }

    /// Millions of sampler-like rows (logits in [-40, 40] at several temperatures, relative to
    /// the row's largest), arbitrary f64 arguments in [-800, 800] (f32 values less random
    /// shifts), the probes, and every special branch.
    #[test]
    fn exp_is_the_scalar_call() {
        let mut next = stream(2);
        let mut uniform =
            move |lo: f32, hi: f32| lo + (next() >> 40) as f32 / (1u64 << 24) as f32 * (hi - lo);
        for &t in &[0.05, 0.3, 0.7, 1.0, 1.5] {
            let row: Vec<f32> = (0..1 << 19).map(|_| uniform(-40.0, 40.0)).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
            check_f64(&row, t, max);
        }
        for _ in 0..8 {
            let xs: Vec<f32> = (0..1 << 18).map(|_| uniform(-800.0, 800.0)).collect();
            check_f64(&xs, 1.0, uniform(-1.0, 1.0) as f64 * 0.123_456_789);
        }
        for (t, shift) in [
            (1.0, 0.0),
            (0.9, 1e-17),
            (1.0, 512.0),
            (1.0, -512.0),
            (0.5, 354.0),
        ] {
            check_f64(&probes(), t, shift);
        }
        let mut row = vec![-1.5f32; 37];
        for (j, v) in [
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
            0.0,
            -0.0,
            1e-20,
            -700.0,
        ]
        .into_iter()
        .enumerate()
        {
            row[j * 5] = v;
        }
        check_f64(&row, 1.0, 0.0);
    }

    /// All 2^32 f32 inputs (15 to 30 s on two cores in release: `cargo test --release -p
    /// sweetspot-model libm_exp -- --ignored`).
    #[test]
    #[ignore]
    fn expf_is_the_scalar_call_everywhere() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let per = (1u64 << 32).div_ceil(threads);
        std::thread::scope(|s| {
            for k in 0..threads {
                s.spawn(move || {
                    let end = ((k + 1) * per).min(1 << 32);
                    let mut buf = vec![0f32; 1 << 16];
                    let mut start = k * per;
                    while start < end {
                        let n = (end - start).min(buf.len() as u64) as usize;
                        let xs = &mut buf[..n];
                        for (i, x) in xs.iter_mut().enumerate() {
                            *x = f32::from_bits((start + i as u64) as u32);
                        }
                        expf_in_place(xs);
                        for (i, y) in xs.iter().enumerate() {
                            let x = f32::from_bits((start + i as u64) as u32);
                            assert_eq!(y.to_bits(), x.exp().to_bits(), "expf({x:e})");
                        }
                        start += n as u64;
                    }
                });
            }
        });
    }
}
