//! The client against a live daemon router on a unix socket (no guests: its worker program
//! does not exist, so changes end as failed operations).

use berth_api::{ErrorKind, InstanceCreate, InstanceDelete};
use berth_client::Remote;
use berth_host::dirs::Dirs;

fn serve(dirs: &Dirs) -> std::path::PathBuf {
    let sock = dirs.root.join("berth.sock");
    let (tx, rx) = std::sync::mpsc::channel();
    let (dirs, path) = (dirs.clone(), sock.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = berth_daemon::bind_unix(&path).unwrap();
            tx.send(()).unwrap();
            axum::serve(l, berth_daemon::router(dirs, "/nonexistent/berth".into()))
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap();
    sock
}

#[test]
fn the_client_reads_answers_errors_and_operations() {
    let d = tempfile::tempdir().unwrap();
    let dirs = Dirs {
        root: d.path().to_path_buf(),
    };
    let remote = Remote::unix(serve(&dirs)).unwrap();
    assert_eq!(remote.server().unwrap().api_version, "1.0");
    assert!(remote.list().unwrap().is_empty());
    assert_eq!(remote.info("web").unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(
        remote
            .delete("web", &InstanceDelete::default())
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    // A bad name is refused before anything is sent.
    assert_eq!(
        remote.info("../etc").unwrap_err().field.as_deref(),
        Some("name")
    );
    let create: InstanceCreate =
        serde_json::from_str(r#"{"name":"web","image":"debian-12","type":"container"}"#).unwrap();
    let e = remote.create(&create, &mut |_| {}).unwrap_err();
    assert!(e.message.contains("/nonexistent/berth"), "{e}");
}

#[test]
fn a_daemon_that_is_not_there_is_named() {
    let d = tempfile::tempdir().unwrap();
    let remote = Remote::unix(d.path().join("berth.sock")).unwrap();
    let e = remote.list().unwrap_err();
    assert!(e.message.contains("cannot be reached"), "{e}");
    assert!(e.message.contains("berth.sock"), "{e}");
}
