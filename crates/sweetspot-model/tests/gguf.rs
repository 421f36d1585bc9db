//! GGUF parsing and dequantization against gguf-py (fixtures from
//! `scripts/make_gguf_fixtures.py`): every supported type, random blocks, exact f32 equality.

use std::path::PathBuf;

use sweetspot_model::gguf::Gguf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn dequantization_matches_gguf_py() {
    let gguf = Gguf::open(&fixtures().join("quants.gguf")).unwrap();
    let expected = std::fs::read(fixtures().join("quants_expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let mut checked = 0;
    for (name, view) in st.tensors() {
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let info = &gguf.tensors[&name];
        assert_eq!(info.dims, vec![512, 4], "{name}");
        let got = gguf.dequantize(&name).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad = got.iter().zip(&want).position(|(a, b)| {
            a.to_bits() != b.to_bits() && (a - b).abs() > 1e-6 * b.abs().max(1.0)
        });
        assert!(
            bad.is_none(),
            "{name}: element {:?} differs",
            bad.map(|i| (i, got[i], want[i]))
        );
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn truncated_or_foreign_files_are_clean_errors() {
    let bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    let p = std::path::Path::new("cut.gguf");
    let err = Gguf::parse(p, bytes[..100].to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    let err = Gguf::parse(p, b"not a gguf file at all".to_vec())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad magic"), "{err}");
    // Tensor data cut off: refused when the header is read, naming the tensor whose extent
    // the file cannot back (nothing is allocated from its dimensions).
    let err = Gguf::parse(p, bytes[..bytes.len() - 100].to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor `t.bf16`") && err.contains("past the end of the file"),
        "{err}"
    );
}
