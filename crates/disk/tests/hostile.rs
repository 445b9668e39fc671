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

/// Every command that reads guest data or changes the image refuses `img`, naming `want`; only
/// check still opens it, and reports the damage as qemu-img does.
fn refused_everywhere_but_check(d: &Dir, img: &Path, want: &[&str]) {
    let named = |what: &str, e: Error| {
        let msg = anyhow_chain(&e);
        assert!(
            want.iter().all(|w| msg.contains(w)),
            "{what}: {msg} lacks {want:?}"
        );
    };
    named(
        "open",
        Chain::open(img, None, false, &policy()).unwrap_err(),
    );
    named(
        "info",
        ops::info(img, None, false, &policy())
            .map(|_| ())
            .unwrap_err(),
    );
    named(
        "map",
        ops::map(img, None, &policy()).map(|_| ()).unwrap_err(),
    );
    let out = d.p("copied-out.raw");
    named(
        "convert",
        ops::convert(
            &ConvertOptions::new(img, out.clone(), Format::Raw),
            &policy(),
            &mut |_, _| {},
        )
        .map(|_| ())
        .unwrap_err(),
    );
    assert!(!out.exists(), "no destination from a refused source");
    named(
        "snapshot",
        ops::snapshot_create(img, "s").map(|_| ()).unwrap_err(),
    );
    named(
        "resize",
        ops::resize(img, None, ops::NewSize::Grow(1 << 20), false, &policy())
            .map(|_| ())
            .unwrap_err(),
    );
    let r = ops::check(img, Repair::None).expect("check opens damaged images");
    assert!(r.corruptions > 0, "{:?}", r.messages);
    assert_eq!(
        qemu_img(&["check", img.to_str().unwrap()]).status.code(),
        Some(2),
        "qemu-img agrees the image is corrupt"
    );
}

fn layout(img: &Path) -> (u64, u64, u64, u64) {
    let q = Qcow2File::open(img, false).unwrap();
    let mask = berth_disk::qcow2::OFFSET_MASK;
    let l2 = q.l1[0] & mask;
    (
        q.header.l1_table_offset,
        l2,
        q.header.refcount_table_offset,
        q.reftable[0] & mask,
    )
}

const COPIED: u64 = 1 << 63;

#[test]
fn an_l2_table_that_is_the_l1_table_is_refused_at_open() {
    let d = Dir::new();
    let img = base_image(&d, "l2isl1.qcow2");
    let (l1, ..) = layout(&img);
    patch(&img, l1, &(l1 | COPIED).to_be_bytes());
    refused_everywhere_but_check(
        &d,
        &img,
        &["L2 table of L1 entry 0", "overlaps the L1 table"],
    );
}

#[test]
fn guest_data_in_a_metadata_cluster_is_refused_at_open() {
    let d = Dir::new();
    for (name, pick, what) in [
        ("dataisrt", 2usize, "the refcount table"),
        ("dataisl1", 0, "the L1 table"),
        ("dataisrb", 3, "the refcount block"),
    ] {
        let img = base_image(&d, &format!("{name}.qcow2"));
        let offs = layout(&img);
        let target = [offs.0, offs.1, offs.2, offs.3][pick];
        // The second data cluster of the first L2 table now points at metadata.
        patch(&img, offs.1 + 8, &(target | COPIED).to_be_bytes());
        refused_everywhere_but_check(&d, &img, &["entry 1 of the L2 table", "guest data", what]);
    }
}

#[test]
fn a_refcount_block_that_is_an_l2_table_is_refused_at_open() {
    let d = Dir::new();
    let img = base_image(&d, "rbisl2.qcow2");
    let (_, l2, rt, _) = layout(&img);
    patch(&img, rt, &l2.to_be_bytes());
    refused_everywhere_but_check(&d, &img, &["L2 table of L1 entry 0", "refcount block"]);
}

#[test]
fn a_snapshot_l1_table_on_the_active_one_is_refused_at_open() {
    let d = Dir::new();
    let img = base_image(&d, "snapl1.qcow2");
    let s = img.to_str().unwrap();
    qemu_img_ok(&["snapshot", "-c", "before", s]);
    qemu_io(&img, "qcow2", &["write -P 2 64k 64k"]);
    // A healthy snapshot shares its L2 table and data clusters with the active L1: accepted.
    Chain::open(&img, None, false, &policy()).expect("shared clusters of a snapshot are fine");
    let q = Qcow2File::open(&img, false).unwrap();
    let (l1, snaps_at) = (q.header.l1_table_offset, q.header.snapshots_offset);
    drop(q);
    patch(&img, snaps_at, &l1.to_be_bytes());
    let msg = open_err(&img);
    assert!(
        msg.contains("L1 table of snapshot 0") && msg.contains("overlaps the L1 table"),
        "{msg}"
    );
}

#[test]
fn healthy_images_of_every_layout_pass_the_overlap_check() {
    let d = Dir::new();
    let raw = d.p("r.raw");
    std::fs::write(&raw, noise(3 << 20, 7)).unwrap();
    let r = raw.to_str().unwrap();
    let mut made = Vec::new();
    for (name, args) in [
        ("compressed", vec!["-c", "-o", "cluster_size=4096"]),
        ("small", vec!["-o", "cluster_size=512"]),
        ("big", vec!["-o", "cluster_size=2M"]),
        ("refbits", vec!["-o", "refcount_bits=1"]),
    ] {
        let p = d.p(&format!("{name}.qcow2"));
        let mut a = vec!["convert", "-O", "qcow2"];
        a.extend(args);
        a.extend([r, p.to_str().unwrap()]);
        qemu_img_ok(&a);
        made.push(p);
    }
    let bm = base_image(&d, "bitmap.qcow2");
    qemu_img_ok(&["bitmap", "--add", bm.to_str().unwrap(), "b0"]);
    made.push(bm);
    for p in &made {
        Chain::open(p, None, false, &policy())
            .unwrap_or_else(|e| panic!("{}: {}", p.display(), anyhow_chain(&e)));
    }
}
