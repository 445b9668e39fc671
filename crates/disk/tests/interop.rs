//! Interoperability with QEMU, both ways: images qemu-img/qemu-io write read correctly in berth,
//! and every image berth writes passes `qemu-img check` and compares equal in `qemu-img`.

mod common;

use berth_disk::ops::{
    self, CompareOutcome, ConvertOptions, CreateOptions, NewSize, Preallocation, RebaseOptions,
};
use berth_disk::qcow2::check::Repair;
use berth_disk::Format;
use common::*;
use std::path::Path;

fn berth_convert(src: &Path, dst: &Path, fmt: Format, compress: bool) -> ops::ConvertStats {
    ops::convert(
        &ConvertOptions {
            compress,
            ..ConvertOptions::new(src, dst, fmt)
        },
        &policy(),
        &mut |_, _| {},
    )
    .unwrap()
}

fn assert_berth_clean(path: &Path) {
    let r = ops::check(path, Repair::None).unwrap();
    assert_eq!(
        r.exit_code(),
        0,
        "berth check {}: {:?}",
        path.display(),
        r.messages
    );
}

fn assert_berth_same(a: &Path, b: &Path) {
    let o = ops::compare(a, None, b, None, false, &policy(), &mut |_, _| {}).unwrap();
    assert!(
        matches!(o, CompareOutcome::Identical { .. }),
        "{} vs {}: {o:?}",
        a.display(),
        b.display()
    );
}

/// Write a recognisable mix into a qemu image: data, a zero cluster, a partial cluster.
fn fill_with_qemu_io(path: &Path, size: u64) {
    let mid = size / 2 / 65536 * 65536;
    qemu_io(
        path,
        "qcow2",
        &[
            "write -P 0x11 0 12k",
            &format!("write -P 0x22 {mid} 200k"),
            &format!("write -z {} 64k", mid + 65536),
            &format!("write -P 0x33 {} 4k", size - 4096),
        ],
    );
}

#[test]
fn qemu_images_of_every_cluster_size_and_refcount_width_read_correctly() {
    let d = Dir::new();
    for (cs, rb) in [
        (4096u64, 1u32),
        (65536, 16),
        (2 << 20, 64),
        (8192, 8),
        (1 << 20, 2),
        (16384, 32),
        (32768, 4),
    ] {
        let img = d.p(&format!("q-{cs}-{rb}.qcow2"));
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs},refcount_bits={rb}"),
            img.to_str().unwrap(),
            "32M",
        ]);
        fill_with_qemu_io(&img, 32 << 20);
        assert_berth_clean(&img);
        // berth's flattening convert equals qemu-img's, byte for byte.
        let ours = d.p(&format!("b-{cs}-{rb}.raw"));
        let theirs = d.p(&format!("q-{cs}-{rb}.raw"));
        berth_convert(&img, &ours, Format::Raw, false);
        qemu_img_ok(&[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            theirs.to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
            "cluster {cs} refcount {rb}"
        );
        // info agrees on the fields both have.
        let ours_info =
            serde_json::to_value(&ops::info(&img, None, false, &policy()).unwrap()[0]).unwrap();
        let q = qemu_info(&img);
        for key in ["virtual-size", "cluster-size", "format", "dirty-flag"] {
            assert_eq!(ours_info[key], q[key], "{key} of {}", img.display());
        }
        for key in [
            "compat",
            "refcount-bits",
            "lazy-refcounts",
            "corrupt",
            "compression-type",
            "extended-l2",
        ] {
            assert_eq!(
                ours_info["format-specific"]["data"][key], q["format-specific"]["data"][key],
                "{key}"
            );
        }
    }
}

#[test]
fn qemu_compressed_images_and_version_2_images_read_correctly() {
    let d = Dir::new();
    let raw = d.p("src.raw");
    let mut data = common::noise(3 << 20, 7);
    data.extend(std::iter::repeat_n(b'x', 5 << 20));
    data.resize(16 << 20, 0);
    std::fs::write(&raw, &data).unwrap();
    for (name, opts) in [
        ("c64k.qcow2", "cluster_size=65536"),
        ("c4k.qcow2", "cluster_size=4096"),
        ("c2m.qcow2", "cluster_size=2097152"),
        ("v2.qcow2", "compat=0.10"),
    ] {
        let img = d.p(name);
        qemu_img_ok(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            opts,
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        assert_berth_clean(&img);
        assert_berth_same(&img, &raw);
        let back = d.p(&format!("{name}.raw"));
        berth_convert(&img, &back, Format::Raw, false);
        assert_eq!(std::fs::read(&back).unwrap(), data, "{name}");
    }
}

#[test]
fn qemu_backing_chains_read_correctly_and_map_like_qemu() {
    let d = Dir::new();
    let (base, mid, top) = (d.p("base.qcow2"), d.p("mid.qcow2"), d.p("top.qcow2"));
    qemu_img_ok(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"]);
    qemu_io(&base, "qcow2", &["write -P 1 0 2M", "write -P 2 4M 1M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        mid.to_str().unwrap(),
    ]);
    qemu_io(&mid, "qcow2", &["write -P 3 1M 2M", "write -z 4M 64k"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    qemu_io(&top, "qcow2", &["write -P 4 6M 64k"]);
    let flat_q = d.p("flat-q.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        top.to_str().unwrap(),
        flat_q.to_str().unwrap(),
    ]);
    assert_berth_same(&top, &flat_q);
    let flat_b = d.p("flat-b.qcow2");
    berth_convert(&top, &flat_b, Format::Qcow2, false);
    assert_qemu_clean(&flat_b);
    assert_qemu_same(&flat_b, &flat_q);
    assert!(qemu_info(&flat_b).get("backing-filename").is_none());

    let ours = serde_json::to_value(ops::map(&top, None, &policy()).unwrap()).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&qemu_img_ok(&[
        "map",
        "--output=json",
        top.to_str().unwrap(),
    ]))
    .unwrap();
    let strip = |v: &serde_json::Value| -> Vec<(u64, u64, u64, bool, bool, bool)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["depth"].as_u64().unwrap(),
                    e["present"].as_bool().unwrap(),
                    e["zero"].as_bool().unwrap(),
                    e["data"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&ours), strip(&theirs));

    let chain = ops::info(&top, None, true, &policy()).unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[0].backing_filename.as_deref(), Some("mid.qcow2"));
    assert_eq!(chain[1].backing_filename_format.as_deref(), Some("qcow2"));
}

#[test]
fn snapshots_are_shared_with_qemu_both_ways() {
    let d = Dir::new();
    let img = d.p("s.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"]);
    qemu_io(&img, "qcow2", &["write -P 0xa1 0 1M"]);
    // qemu's snapshot, berth applies it.
    qemu_img_ok(&["snapshot", "-c", "from-qemu", img.to_str().unwrap()]);
    qemu_io(&img, "qcow2", &["write -P 0xa2 0 1M"]);
    assert_berth_clean(&img);
    ops::snapshot_apply(&img, "from-qemu").unwrap();
    assert_qemu_clean(&img);
    qemu_io(&img, "qcow2", &["read -P 0xa1 0 1M"]);
    // berth's snapshot, qemu lists and applies it.
    let sn = ops::snapshot_create(&img, "from-berth").unwrap();
    assert_qemu_clean(&img);
    let listed = qemu_img_ok(&["snapshot", "-l", img.to_str().unwrap()]);
    assert!(
        listed.contains("from-berth") && listed.contains("from-qemu"),
        "{listed}"
    );
    ops::write(&img, None, 0, &mut &[0xa3u8; 65536][..], &policy()).unwrap();
    assert_qemu_clean(&img);
    qemu_io(
        &img,
        "qcow2",
        &["read -P 0xa3 0 64k", "read -P 0xa1 64k 960k"],
    );
    qemu_img_ok(&["snapshot", "-a", &sn.id, img.to_str().unwrap()]);
    qemu_io(&img, "qcow2", &["read -P 0xa1 0 1M"]);
    // Deleting either way keeps the image clean, and the data.
    ops::snapshot_delete(&img, "from-qemu").unwrap();
    assert_qemu_clean(&img);
    qemu_img_ok(&["snapshot", "-d", "from-berth", img.to_str().unwrap()]);
    assert_berth_clean(&img);
    assert!(ops::snapshot_list(&img).unwrap().is_empty());
    qemu_io(&img, "qcow2", &["read -P 0xa1 0 1M"]);
}

#[test]
fn berth_qcow2_is_thin_and_grows_with_data() {
    let d = Dir::new();
    let img = d.p("thin.qcow2");
    let size = ops::create(
        &CreateOptions::new(img.clone(), Format::Qcow2, Some(10 << 30)),
        &policy(),
    )
    .unwrap();
    assert_eq!(size, 10 << 30);
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len < 1 << 20, "a fresh 10 GiB qcow2 is {len} bytes");
    assert_qemu_clean(&img);
    ops::write(
        &img,
        None,
        3 << 30,
        &mut &common::noise(8 << 20, 1)[..],
        &policy(),
    )
    .unwrap();
    let grown = std::fs::metadata(&img).unwrap().len();
    assert!(grown > 8 << 20 && grown < 10 << 20, "{grown}");
    assert_qemu_clean(&img);
    let expect = d.p("expect.raw");
    let f = std::fs::File::create(&expect).unwrap();
    f.set_len(10 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&common::noise(8 << 20, 1), 3 << 30).unwrap();
    assert_qemu_same(&img, &expect);
}

#[test]
fn berth_creates_every_preallocation_and_cluster_size_qemu_accepts() {
    let d = Dir::new();
    for (fmt, pre, cs) in [
        (Format::Qcow2, Preallocation::Off, Some(4096)),
        (Format::Qcow2, Preallocation::Off, Some(2 << 20)),
        (Format::Qcow2, Preallocation::Metadata, None),
        (Format::Qcow2, Preallocation::Falloc, None),
        (Format::Qcow2, Preallocation::Full, None),
        (Format::Raw, Preallocation::Off, None),
        (Format::Raw, Preallocation::Falloc, None),
        (Format::Raw, Preallocation::Full, None),
    ] {
        let img = d.p(&format!("p-{fmt}-{pre:?}-{cs:?}"));
        ops::create(
            &CreateOptions {
                preallocation: pre,
                cluster_size: cs,
                ..CreateOptions::new(img.clone(), fmt, Some(32 << 20))
            },
            &policy(),
        )
        .unwrap();
        let info = qemu_info(&img);
        assert_eq!(info["format"], fmt.to_string());
        assert_eq!(info["virtual-size"], 32 << 20);
        if let Some(cs) = cs {
            assert_eq!(info["cluster-size"], cs);
        }
        if fmt == Format::Qcow2 {
            assert_qemu_clean(&img);
        }
        let actual = info["actual-size"].as_u64().unwrap();
        match pre {
            Preallocation::Off => assert!(
                actual < (1 << 20).max(4 * cs.unwrap_or(65536)),
                "{pre:?}: {actual}"
            ),
            Preallocation::Falloc | Preallocation::Full => {
                assert!(actual >= 32 << 20, "{fmt} {pre:?}: {actual}")
            }
            Preallocation::Metadata => {}
        }
        qemu_io(&img, &fmt.to_string(), &["read -P 0 0 32M"]);
    }
}

#[test]
fn berth_convert_round_trips_with_compression_and_stays_sparse() {
    let d = Dir::new();
    let raw = d.p("mixed.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&common::noise(2 << 20, 3), 1 << 20).unwrap();
    f.write_all_at(&vec![b'z'; 3 << 20], 20 << 20).unwrap();
    f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    let plain = d.p("plain.qcow2");
    let packed = d.p("packed.qcow2");
    let stats = berth_convert(&raw, &plain, Format::Qcow2, false);
    assert_eq!(stats.compressed_clusters, 0);
    let zstats = berth_convert(&raw, &packed, Format::Qcow2, true);
    assert!(zstats.compressed_clusters >= 48, "{zstats:?}");
    for img in [&plain, &packed] {
        assert_qemu_clean(img);
        assert_qemu_same(img, &raw);
        assert_berth_clean(img);
    }
    let q = qemu_img_ok(&["check", "--output=json", packed.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&q).unwrap();
    assert!(v["compressed-clusters"].as_u64().unwrap() >= 48, "{q}");
    assert!(std::fs::metadata(&packed).unwrap().len() < std::fs::metadata(&plain).unwrap().len());
    // qcow2 -> raw keeps holes.
    let back = d.p("back.raw");
    berth_convert(&packed, &back, Format::Raw, false);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&raw).unwrap());
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(&back).unwrap().blocks() * 512;
    assert!(used < 8 << 20, "raw output uses {used} bytes");
    // Destination exists: refused without force, nothing touched.
    let err = ops::convert(
        &ConvertOptions::new(raw.clone(), back.clone(), Format::Raw),
        &policy(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn resize_grows_and_shrinks_only_without_data_loss() {
    let d = Dir::new();
    for fmt in [Format::Qcow2, Format::Raw] {
        let img = d.p(&format!("r.{fmt}"));
        ops::create(
            &CreateOptions::new(img.clone(), fmt, Some(64 << 20)),
            &policy(),
        )
        .unwrap();
        ops::write(&img, None, 10 << 20, &mut &[7u8; 4096][..], &policy()).unwrap();
        assert_eq!(
            ops::resize(&img, None, NewSize::Grow(1 << 30), false, &policy()).unwrap(),
            (64 << 20) + (1 << 30)
        );
        assert_eq!(qemu_info(&img)["virtual-size"], (64u64 << 20) + (1 << 30));
        let err =
            ops::resize(&img, None, NewSize::Absolute(32 << 20), false, &policy()).unwrap_err();
        assert!(err.to_string().contains("--shrink"), "{err}");
        let err = ops::resize(&img, None, NewSize::Absolute(8 << 20), true, &policy()).unwrap_err();
        assert!(
            err.to_string().contains("lose data at offset 10485760"),
            "{err}"
        );
        ops::resize(&img, None, NewSize::Absolute(16 << 20), true, &policy()).unwrap();
        assert_eq!(qemu_info(&img)["virtual-size"], 16u64 << 20);
        qemu_io(
            &img,
            &fmt.to_string(),
            &["read -P 7 10M 4k", "read -P 0 0 10M"],
        );
        if fmt == Format::Qcow2 {
            assert_qemu_clean(&img);
        }
    }
}

#[test]
fn rebase_keeps_content_and_commit_merges_into_the_backing_file() {
    let d = Dir::new();
    let (a, b, top) = (d.p("a.qcow2"), d.p("b.qcow2"), d.p("top.qcow2"));
    qemu_img_ok(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "8M"]);
    qemu_io(&a, "qcow2", &["write -P 1 0 4M"]);
    qemu_img_ok(&["create", "-q", "-f", "qcow2", b.to_str().unwrap(), "8M"]);
    qemu_io(&b, "qcow2", &["write -P 1 0 1M", "write -P 9 1M 1M"]);
    ops::create(
        &CreateOptions {
            backing: Some("a.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            ..CreateOptions::new(top.clone(), Format::Qcow2, None)
        },
        &policy(),
    )
    .unwrap();
    assert_eq!(qemu_info(&top)["virtual-size"], 8u64 << 20);
    assert_eq!(qemu_info(&top)["backing-filename-format"], "qcow2");
    ops::write(&top, None, 6 << 20, &mut &[5u8; 65536][..], &policy()).unwrap();
    let before = d.p("before.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        top.to_str().unwrap(),
        before.to_str().unwrap(),
    ]);
    ops::rebase(
        &top,
        &RebaseOptions {
            backing: Some("b.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            unsafe_mode: false,
        },
        &policy(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(qemu_info(&top)["backing-filename"], "b.qcow2");
    assert_qemu_clean(&top);
    assert_qemu_same(&top, &before);
    // Commit into b: b now holds what top showed.
    ops::commit(&top, &policy(), &mut |_, _| {}).unwrap();
    assert_qemu_clean(&top);
    assert_qemu_clean(&b);
    assert_qemu_same(&b, &before);
    assert_qemu_same(&top, &before);
    // Standalone: rebase onto nothing.
    ops::rebase(
        &top,
        &RebaseOptions {
            backing: None,
            backing_format: None,
            unsafe_mode: false,
        },
        &policy(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(qemu_info(&top).get("backing-filename").is_none());
    assert_qemu_same(&top, &before);
    assert_qemu_clean(&top);
}

#[test]
fn check_finds_and_repairs_leaks_like_qemu() {
    let d = Dir::new();
    let img = d.p("leaky.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"]);
    qemu_io(&img, "qcow2", &["write -P 1 0 1M"]);
    // Leak two clusters: raise their refcounts behind QEMU's back by appending clusters whose
    // refcount is set but which nothing references.
    let q = berth_disk::qcow2::Qcow2File::open(&img, true).unwrap();
    let mut m = berth_disk::qcow2::refcount::Qcow2Mut::new(q).unwrap();
    m.alloc(2).unwrap();
    m.flush_refcounts().unwrap();
    drop(m);
    let out = qemu_img(&["check", img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "qemu sees leaks");
    let r = ops::check(&img, Repair::None).unwrap();
    assert_eq!((r.leaks, r.corruptions, r.exit_code()), (2, 0, 3));
    let r = ops::check(&img, Repair::Leaks).unwrap();
    assert_eq!((r.leaks, r.leaks_fixed, r.exit_code()), (0, 2, 0));
    assert_qemu_clean(&img);
    qemu_io(&img, "qcow2", &["read -P 1 0 1M"]);
}
