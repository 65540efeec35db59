//! `prepare` end to end on every input format, the split guarantees, the dataset read back through
//! memory maps, and every bad input refused with its code, naming file, line and field, leaving
//! nothing that looks like a dataset.

use moe_data::prepare::{prepare, PrepareOptions, Progress};
use moe_data::source::Fields;
use moe_data::{Dataset, Split, SplitFractions, Tok, TokenizerSpec};
use std::path::{Path, PathBuf};

fn opts(inputs: &[&Path], out: &Path, tokenizer: TokenizerSpec) -> PrepareOptions {
    PrepareOptions {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        out: out.to_path_buf(),
        tokenizer,
        fields: Fields::default(),
        splits: SplitFractions::default(),
        force: false,
        bpe_max_bytes: None,
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// All tokens of a domain's split.
fn tokens(ds: &Dataset, domain: &str, split: Split) -> Vec<u32> {
    let d = ds.domain(domain).unwrap();
    let mut out = vec![0; ds.tokens(d, split) as usize];
    ds.read(d, split, 0, &mut out).unwrap();
    out
}

fn code<T>(r: moe_data::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{} {e}", e.code()),
    }
}

#[test]
fn folder_of_domains_with_split_folders_and_binary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("texts");
    for i in 0..40 {
        write(&root.join(format!("poems/p{i:02}.txt")), &format!("roses are red, poem {i}\n"));
    }
    write(&root.join("code/src/a.js"), "let a = 1;\n");
    write(&root.join("code/src/b.js"), "let b = 2;\n");
    write(&root.join("code/test/c.js"), "let c = 3;\n"); // an explicit test document
    write(&root.join("code/validation/d.js"), "let d = 4;\n");
    std::fs::write(root.join("code/src/logo.png"), [0x89u8, 0x50, 0x00, 0x01]).unwrap();
    std::fs::write(root.join("code/src/latin1.txt"), [0x63u8, 0xe9, 0x0a]).unwrap();
    let out = tmp.path().join("ds");
    let p = prepare(&opts(&[&root], &out, TokenizerSpec::Byte), &Progress::default()).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("skipped 1 binary and 1 non-UTF-8")), "{:?}", p.warnings);
    let ds = Dataset::open(&out).unwrap();
    let names: Vec<&str> = ds.manifest.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["code", "poems"]);
    let code = &ds.manifest.domains[0];
    assert_eq!((code.train.documents, code.validation.documents, code.test.documents), (2, 1, 1));
    // Byte tokenizer: one token per byte plus end-of-text (id 0) after each document.
    let test = tokens(&ds, "code", Split::Test);
    let tok = Tok::from_file(&out, None).unwrap();
    assert_eq!(test.len(), "let c = 3;\n".len() + 1);
    assert_eq!(*test.last().unwrap(), tok.eos());
    assert_eq!(tok.decode(&test[..test.len() - 1]).unwrap(), "let c = 3;\n");
    // 40 poems: the hash holds some out, and every split is non-empty.
    let poems = &ds.manifest.domains[1];
    assert_eq!(poems.train.documents + poems.validation.documents + poems.test.documents, 40);
    assert!(poems.validation.documents > 0 && poems.test.documents > 0);
    ds.verify().unwrap();
    assert_eq!(ds.manifest.dtype, "uint16");
}

#[test]
fn jsonl_gz_with_fields_and_a_domain_for_a_whole_file() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let rows: String = (0..30).map(|i| format!("{{\"body\": \"row {i} of the mixed file\", \"topic\": \"{}\"}}\n", if i % 2 == 0 { "even" } else { "odd" })).collect();
    let gz = tmp.path().join("mixed.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(rows.as_bytes()).unwrap();
    enc.finish().unwrap();
    let plain = tmp.path().join("notes.jsonl");
    write(&plain, &(0..5).map(|i| format!("{{\"body\": \"note {i}\", \"split\": \"{}\"}}\n", ["train", "train", "val", "test", "train"][i])).collect::<String>());
    let out = tmp.path().join("ds");
    let mut o = opts(&[&gz], &out, TokenizerSpec::Bpe { vocab_size: 300 });
    o.inputs.push(format!("diary={}", plain.display()));
    o.fields = Fields { text: "body".into(), domain: "topic".into(), ..Fields::default() };
    o.splits = SplitFractions { validation: 0.2, test: 0.2 };
    prepare(&o, &Progress::default()).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let names: Vec<&str> = ds.manifest.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["even", "odd", "diary"]);
    let diary = &ds.manifest.domains[2];
    assert_eq!((diary.train.documents, diary.validation.documents, diary.test.documents), (3, 1, 1), "explicit split fields");
    let tok = Tok::from_file(&out, None).unwrap();
    assert!(tok.vocab_size() > 257, "a BPE was trained");
    let all: Vec<u32> = tokens(&ds, "even", Split::Train);
    let text = tok.decode(&all).unwrap();
    assert!(text.contains("of the mixed file"));
    // Again without force: refused; with force: replaced.
    assert!(code(prepare(&o, &Progress::default())).starts_with("DATASET_EXISTS"));
    o.force = true;
    prepare(&o, &Progress::default()).unwrap();
}

#[test]
fn parquet_rows() {
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shard-00.parquet");
    let schema = Arc::new(parse_message_type("message doc { required binary text (UTF8); required binary domain (UTF8); }").unwrap());
    let mut w = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, Arc::new(WriterProperties::builder().build())).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let texts: Vec<ByteArray> = (0..12).map(|i| ByteArray::from(format!("parquet document {i}").as_str())).collect();
    let domains: Vec<ByteArray> = (0..12).map(|i| ByteArray::from(if i < 6 { "a" } else { "b" })).collect();
    for col in [&texts, &domains] {
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<parquet::data_type::ByteArrayType>().write_batch(col, None, None).unwrap();
        c.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
    let out = tmp.path().join("ds");
    prepare(&opts(&[&path], &out, TokenizerSpec::Byte), &Progress::default()).unwrap();
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.manifest.domains.len(), 2);
    let a = &ds.manifest.domains[0];
    assert_eq!(a.train.documents + a.validation.documents + a.test.documents, 6);
    assert!(a.validation.documents >= 1 && a.test.documents >= 1, "6 documents: at least one held out each");
}

#[test]
fn the_embedded_corpus_keeps_its_manifest_splits() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    prepare(&opts(&[&data], &out, TokenizerSpec::Byte), &Progress::default()).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("MANIFEST.json")).unwrap()).unwrap();
    for d in &ds.manifest.domains {
        let m = &manifest["domains"][&d.name]["docs"];
        for (split, entry) in [("train", &d.train), ("validation", &d.validation), ("test", &d.test)] {
            assert_eq!(entry.documents as usize, m[split].as_array().unwrap().len(), "{} {split}", d.name);
        }
    }
}

#[test]
fn bad_inputs_are_refused_with_file_line_and_field_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    let run = |files: &[(&str, &str)]| {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let paths: Vec<PathBuf> = files.iter().map(|(n, t)| {
            let p = dir.path().join(n);
            write(&p, t);
            p
        }).collect();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let r = code(prepare(&opts(&refs, &out, TokenizerSpec::Byte), &Progress::default()));
        assert!(!out.exists(), "a failed prepare left {}", out.display());
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("partial")).collect();
        assert!(leftovers.is_empty(), "partial folders left: {leftovers:?}");
        r
    };
    let e = run(&[("a.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"broken\"\n")]);
    assert!(e.starts_with("CORPUS_FORMAT") && e.contains("a.jsonl:2: not JSON"), "{e}");
    let e = run(&[("a.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n")]);
    assert!(e.starts_with("CORPUS_FORMAT") && e.contains("a.jsonl:2: field \"text\" is missing"), "{e}");
    let e = run(&[("a.jsonl", "{\"text\": 7}\n")]);
    assert!(e.contains("a.jsonl:1: field \"text\" is not a string (got a number)"), "{e}");
    let e = run(&[("a.jsonl", "[1, 2]\n")]);
    assert!(e.contains("a.jsonl:1: a row must be a JSON object"), "{e}");
    let e = run(&[("a.jsonl", "{\"text\": \"x\", \"split\": \"holdout\"}\n")]);
    assert!(e.contains("field \"split\" is \"holdout\""), "{e}");
    let e = run(&[("a.jsonl", "\n\n")]);
    assert!(e.starts_with("CORPUS_EMPTY"), "{e}");
    let e = run(&[("a.txt", "plain")]);
    assert!(e.starts_with("INVALID_CONFIG") && e.contains("not an input"), "{e}");
    assert!(code(prepare(&opts(&[&tmp.path().join("nope")], &out, TokenizerSpec::Byte), &Progress::default())).starts_with("CORPUS_MISSING"));
    let mut o = opts(&[], &out, TokenizerSpec::Byte);
    o.inputs.push(tmp.path().join("nope.jsonl").display().to_string());
    o.splits = SplitFractions { validation: 0.7, test: 0.5 };
    assert!(code(prepare(&o, &Progress::default())).starts_with("INVALID_CONFIG"));
}

#[test]
fn a_cancelled_prepare_leaves_no_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("a.jsonl");
    write(&input, &(0..100).map(|i| format!("{{\"text\": \"doc {i}\"}}\n")).collect::<String>());
    let out = tmp.path().join("ds");
    let p = Progress::default();
    p.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(code(prepare(&opts(&[&input], &out, TokenizerSpec::Byte), &p)).starts_with("CANCELLED"));
    assert!(!out.exists());
}
