//! `bench/disk`: berth against qemu-img on the same files in the same run.
//!
//! Rows: 1 GiB raw with mixed data and holes -> qcow2; that qcow2 -> raw; the same raw ->
//! compressed qcow2; create + 4 KiB random writes (berth's crash-safe writer in process against
//! qemu-io running the same writes in one process). qemu-img convert runs with `-t writeback`
//! so that, like berth, it flushes its output (its default `unsafe` never does). Each row is the median of RUNS runs
//! (default 5, berth and qemu-img alternating, `sync` before each) and prints berth/qemu-img.

use berth_disk::ops::{self, ConvertOptions, CreateOptions};
use berth_disk::{BackingPolicy, Format};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Flush dirty pages so one tool's writeback does not land in the other's time.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Time berth and the anchor alternately (so drift in the machine's state hits both alike) and
/// return both medians.
fn pair(runs: usize, mut ours: impl FnMut(), mut theirs: impl FnMut()) -> (Duration, Duration) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..runs {
        settle();
        let t = Instant::now();
        ours();
        a.push(t.elapsed());
        settle();
        let t = Instant::now();
        theirs();
        b.push(t.elapsed());
    }
    (median(a), median(b))
}

fn qemu(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

fn rm(p: &Path) {
    let _ = std::fs::remove_file(p);
}

fn convert(src: &Path, dst: &Path, fmt: Format, compress: bool) {
    ops::convert(
        &ConvertOptions {
            compress,
            force: true,
            ..ConvertOptions::new(src, dst, fmt)
        },
        &BackingPolicy::default(),
        &mut |_, _| {},
    )
    .expect("berth convert");
}

/// 1 GiB: 64 KiB blocks alternating random data, text-like data, and holes.
fn make_source(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(1 << 30).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; 65536];
    for i in 0..(1u64 << 30) / 65536 {
        match i % 4 {
            0 | 1 => {
                for b in block.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = if i % 4 == 0 {
                        x as u8
                    } else {
                        b"berth qcow2 text "[(x % 17) as usize]
                    };
                }
                f.write_all_at(&block, i * 65536).unwrap();
            }
            _ => {}
        }
    }
    f.sync_all().unwrap();
}

fn row(name: &str, ours: Duration, theirs: Duration) {
    println!(
        "{name:<38} berth {:>8.3} s   qemu-img {:>8.3} s   ratio {:>5.2}",
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let src = p("src.raw");
    make_source(&src);
    println!("bench/disk: median of {runs} runs per row, berth and qemu-img alternating, sync before each;");
    println!(
        "1 GiB source (1/4 random, 1/4 text, 1/2 holes), page cache warm. berth fsyncs what it"
    );
    println!("writes, so qemu-img runs with -t writeback to flush too (its default -t unsafe never does).");

    // Destinations are removed before every run of either tool.
    let (ours, theirs) = pair(
        runs,
        || {
            rm(&p("b.qcow2"));
            convert(&src, &p("b.qcow2"), Format::Qcow2, false)
        },
        || {
            rm(&p("q.qcow2"));
            qemu(&[
                "convert",
                "-t",
                "writeback",
                "-O",
                "qcow2",
                &s(&src),
                &s(&p("q.qcow2")),
            ])
        },
    );
    row("convert raw -> qcow2", ours, theirs);

    let (ours, theirs) = pair(
        runs,
        || {
            rm(&p("b.raw"));
            convert(&p("q.qcow2"), &p("b.raw"), Format::Raw, false)
        },
        || {
            rm(&p("q.raw"));
            qemu(&[
                "convert",
                "-t",
                "writeback",
                "-O",
                "raw",
                &s(&p("q.qcow2")),
                &s(&p("q.raw")),
            ])
        },
    );
    row("convert qcow2 -> raw", ours, theirs);

    let (ours, theirs) = pair(
        runs,
        || {
            rm(&p("bc.qcow2"));
            convert(&src, &p("bc.qcow2"), Format::Qcow2, true)
        },
        || {
            rm(&p("qc.qcow2"));
            qemu(&[
                "convert",
                "-t",
                "writeback",
                "-c",
                "-O",
                "qcow2",
                &s(&src),
                &s(&p("qc.qcow2")),
            ])
        },
    );
    row("convert --compress raw -> qcow2", ours, theirs);

    // 4096 random 4 KiB writes into a fresh 1 GiB image, each tool in one process.
    let n = 4096u64;
    let mut x = 88172645463325252u64;
    let offsets: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % ((1 << 30) / 4096)) * 4096
        })
        .collect();
    let script = p("cmds");
    let mut f = std::fs::File::create(&script).unwrap();
    for &o in &offsets {
        writeln!(f, "write -q -P 0x5a {o} 4k").unwrap();
    }
    writeln!(f, "flush").unwrap();
    drop(f);
    let (ours, theirs) = pair(
        runs,
        || {
            let img = p("bw.qcow2");
            rm(&img);
            let o = CreateOptions::new(img.clone(), Format::Qcow2, Some(1 << 30));
            ops::create(&o, &BackingPolicy::default()).unwrap();
            let mut w = berth_disk::image::safe_writer(&img, &BackingPolicy::default()).unwrap();
            let buf = vec![0x5au8; 4096];
            for &o in &offsets {
                w.write(&buf, o).unwrap();
            }
            w.sync().unwrap();
        },
        || {
            let img = p("qw.qcow2");
            rm(&img);
            qemu(&["create", "-q", "-f", "qcow2", &s(&img), "1G"]);
            let st = Command::new("qemu-io")
                .args(["-f", "qcow2", "-t", "writeback", &s(&img)])
                .stdin(std::fs::File::open(&script).unwrap())
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        },
    );
    row("create + 4096 random 4 KiB writes", ours, theirs);
    let same = Command::new("qemu-img")
        .args(["compare", &s(&p("bw.qcow2")), &s(&p("qw.qcow2"))])
        .output()
        .unwrap();
    assert!(
        same.status.success(),
        "berth and qemu-io wrote different content"
    );
}
