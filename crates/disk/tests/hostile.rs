//! Malformed and hostile images: each gets a clear error naming the problem, never a panic,
//! unbounded memory, or a read outside the allowed folders.

mod common;

use berth_disk::image::Chain;
use berth_disk::ops::{self, ConvertOptions};
use berth_disk::qcow2::check::Repair;
use berth_disk::qcow2::refcount::Qcow2Mut;
use berth_disk::qcow2::Qcow2File;
use berth_disk::{Error, Format};
use common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn base_image(d: &Dir, name: &str) -> std::path::PathBuf {
    let p = d.p(name);
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "64M"]);
    qemu_io(&p, "qcow2", &["write -P 1 0 128k"]);
    p
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn open_err(path: &Path) -> String {
    let e = Chain::open(path, None, false, &policy()).expect_err("hostile image must be refused");
    format!("{:#}", anyhow_chain(&e))
}

fn anyhow_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[test]
fn absurd_table_sizes_and_offsets_are_named() {
    let d = Dir::new();
    let cases: [(&str, u64, Vec<u8>, &str); 7] = [
        ("l1size", 36, u32::MAX.to_be_bytes().to_vec(), "l1_size"),
        (
            "rtoff",
            48,
            (1u64 << 50).to_be_bytes().to_vec(),
            "refcount_table_offset",
        ),
        (
            "rtclusters",
            56,
            (1u32 << 30).to_be_bytes().to_vec(),
            "refcount_table_clusters",
        ),
        (
            "l1off",
            40,
            (1u64 << 45).to_be_bytes().to_vec(),
            "l1_table_offset",
        ),
        (
            "clusterbits",
            20,
            30u32.to_be_bytes().to_vec(),
            "cluster_bits",
        ),
        (
            "snapshots",
            60,
            1_000_000u32.to_be_bytes().to_vec(),
            "nb_snapshots",
        ),
        (
            "refcountorder",
            96,
            7u32.to_be_bytes().to_vec(),
            "refcount_order",
        ),
    ];
    for (name, at, bytes, field) in cases {
        let img = base_image(&d, &format!("{name}.qcow2"));
        patch(&img, at, &bytes);
        let msg = open_err(&img);
        assert!(msg.contains(field), "{name}: {msg}");
        assert!(
            msg.contains(img.to_str().unwrap()),
            "{name} names the file: {msg}"
        );
        // Every entry point refuses it the same way.
        assert!(ops::check(&img, Repair::None).is_err(), "{name}");
        assert!(ops::info(&img, None, false, &policy()).is_err(), "{name}");
    }
}

#[test]
fn tables_pointing_past_the_end_or_into_the_header_are_refused() {
    let d = Dir::new();
    let img = base_image(&d, "l1entry.qcow2");
    let q = Qcow2File::open(&img, false).unwrap();
    let l1_off = q.header.l1_table_offset;
    drop(q);
    patch(&img, l1_off, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    let msg = open_err(&img);
    assert!(
        msg.contains("L1 entry 0") && msg.contains("past the end"),
        "{msg}"
    );

    let img = base_image(&d, "l1header.qcow2");
    patch(&img, l1_off, &(512u64 | (1 << 63)).to_be_bytes());
    let msg = open_err(&img);
    assert!(msg.contains("L1 entry 0"), "{msg}");

    let img = d.p("truncated.qcow2");
    std::fs::write(
        &img,
        &std::fs::read(base_image(&d, "full.qcow2")).unwrap()[..50],
    )
    .unwrap();
    let msg = open_err(&img);
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn overlapping_tables_are_reported_as_corruption_by_check() {
    let d = Dir::new();
    let img = base_image(&d, "overlap.qcow2");
    let q = Qcow2File::open(&img, false).unwrap();
    let rt = q.header.refcount_table_offset;
    drop(q);
    // L1 table placed on top of the refcount table.
    patch(&img, 40, &rt.to_be_bytes());
    let r = match ops::check(&img, Repair::None) {
        Ok(r) => r,
        Err(e) => {
            // Refusing to open it at all is also acceptable, as long as it is named.
            assert!(anyhow_chain(&e).contains("L1"), "{e}");
            return;
        }
    };
    assert!(r.corruptions > 0, "{:?}", r.messages);
    assert_eq!(r.exit_code(), 2);
    assert_eq!(
        qemu_img(&["check", img.to_str().unwrap()]).status.code(),
        Some(2)
    );
}

#[test]
fn backing_files_outside_allowed_folders_are_refused() {
    let d = Dir::new();
    std::fs::create_dir(d.p("sub")).unwrap();
    std::fs::write(d.p("outside.raw"), vec![0u8; 65536]).unwrap();
    for (name, backing, want) in [
        ("shadow", "/etc/shadow", "outside the allowed folders"),
        ("dotdot", "../outside.raw", "outside the allowed folders"),
        ("missing", "nothere.qcow2", "does not exist"),
        ("proto", "nbd://127.0.0.1:10809/x", "not a plain file path"),
        (
            "json",
            "json:{\"driver\":\"file\"}",
            "not a plain file path",
        ),
    ] {
        let img = d.p(&format!("sub/{name}.qcow2"));
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            backing,
            "-F",
            "raw",
            img.to_str().unwrap(),
            "64k",
        ]);
        let msg = open_err(&img);
        let shown = &backing[..backing.find('"').unwrap_or(backing.len())];
        assert!(msg.contains(want) && msg.contains(shown), "{name}: {msg}");
        assert!(ops::info(&img, None, true, &policy()).is_err());
        let err = ops::convert(
            &ConvertOptions::new(img.clone(), d.p(&format!("{name}.out")), Format::Raw),
            &policy(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(anyhow_chain(&err).contains(shown), "{err}");
        assert!(!d.p(&format!("{name}.out")).exists());
    }
    // An explicitly allowed folder makes ../outside.raw acceptable.
    let img = d.p("sub/dotdot.qcow2");
    let allow = berth_disk::BackingPolicy::new(None, vec![d.0.path().to_path_buf()]);
    assert!(Chain::open(&img, None, false, &allow).is_ok());
}

#[test]
fn backing_format_is_never_probed() {
    let d = Dir::new();
    let base = base_image(&d, "base.qcow2");
    let top = d.p("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    // Drop the recorded format.
    let mut m = Qcow2Mut::new(Qcow2File::open(&top, true).unwrap()).unwrap();
    m.q.header.backing_format = None;
    m.q.header
        .extensions
        .retain(|e| e.kind != berth_disk::qcow2::header::EXT_BACKING_FORMAT);
    m.write_header().unwrap();
    drop(m);
    let msg = open_err(&top);
    assert!(
        msg.contains("without a backing format") && msg.contains("never probes"),
        "{msg}"
    );
}

#[test]
fn backing_loops_and_deep_chains_are_refused() {
    let d = Dir::new();
    let (a, b) = (d.p("a.qcow2"), d.p("b.qcow2"));
    qemu_img_ok(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "1M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        b.to_str().unwrap(),
    ]);
    qemu_img_ok(&[
        "rebase",
        "-u",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        a.to_str().unwrap(),
    ]);
    let msg = open_err(&b);
    assert!(msg.contains("loops"), "{msg}");
    // A self-reference.
    let s = d.p("self.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "self.qcow2",
        "-F",
        "qcow2",
        s.to_str().unwrap(),
        "1M",
    ]);
    assert!(open_err(&s).contains("loops"));
}

#[test]
fn hostile_compressed_entries_fail_cleanly() {
    let d = Dir::new();
    let raw = d.p("r.raw");
    std::fs::write(&raw, vec![b'a'; 1 << 20]).unwrap();
    let img = d.p("c.qcow2");
    qemu_img_ok(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let q = Qcow2File::open(&img, false).unwrap();
    let l2_off = q.l1[0] & berth_disk::qcow2::OFFSET_MASK;
    drop(q);
    // First L2 entry: compressed, pointing far past the end of the file.
    let entry = berth_disk::qcow2::L2Entry::encode_compressed(1 << 40, 1000, 16);
    patch(&img, l2_off, &entry.to_be_bytes());
    let r = ops::check(&img, Repair::None).unwrap();
    assert!(
        r.corruptions > 0 && r.messages.iter().any(|m| m.contains("past the end")),
        "{:?}",
        r.messages
    );
    let out = d.p("out.raw");
    let res = ops::convert(
        &ConvertOptions::new(img.clone(), out.clone(), Format::Raw),
        &policy(),
        &mut |_, _| {},
    );
    assert!(
        res.is_err(),
        "reading a compressed cluster past EOF must fail"
    );
    assert!(!out.exists(), "no half-written destination");
}
