//! The executor without QEMU or root: names are taken before anything is made, one command at
//! a time works on an instance, and a creation cut short is shown and cleared.

use berth_api::{ErrorKind, InstanceCreate, InstanceDelete, InstanceType, Status};
use berth_host::dirs::Dirs;
use berth_host::executor::Executor;
use berth_state::{InstanceRow, Store};

fn vm_request(name: &str) -> InstanceCreate {
    serde_json::from_value(serde_json::json!({
        "name": name, "image": "debian-12", "type": "vm"
    }))
    .unwrap()
}

fn setup() -> (tempfile::TempDir, Dirs, Executor) {
    let d = tempfile::tempdir().unwrap();
    let dirs = Dirs {
        root: d.path().to_path_buf(),
    };
    let ex = Executor::open(&dirs).unwrap();
    (d, dirs, ex)
}

/// What a `berth launch` killed right after it took the name leaves: a row with no record, a
/// folder, a registered machine-id.
fn cut_short(dirs: &Dirs, name: &str) {
    let store = Store::open(&dirs.root).unwrap();
    store
        .insert_instance(&InstanceRow {
            name: name.into(),
            kind: "vm".into(),
            image: "debian-12".into(),
            spec: String::new(),
            desired: "creating".into(),
            note: String::new(),
            created_at: 1,
        })
        .unwrap();
    berth_host::machine_ids::allocate(&store, "vm", name).unwrap();
    std::fs::create_dir_all(dirs.root.join("instances").join(name)).unwrap();
    std::fs::write(
        dirs.root.join("instances").join(name).join("disk.qcow2"),
        "x",
    )
    .unwrap();
}

#[test]
fn a_creation_cut_short_is_listed_as_broken_and_delete_clears_it() {
    let (_d, dirs, ex) = setup();
    cut_short(&dirs, "web");
    let all = ex.list().unwrap();
    assert_eq!(all.len(), 1);
    let i = &all[0];
    assert_eq!(
        (i.name.as_str(), i.instance_type, i.state.state),
        ("web", InstanceType::Vm, Status::Broken)
    );
    assert!(
        i.state.reason.contains("delete --force web"),
        "{}",
        i.state.reason
    );
    assert!(i.vm.is_none() && i.container.is_none());
    // Only delete applies to it.
    let start = berth_api::InstanceStateChange {
        action: berth_api::StateAction::Start,
        force: false,
        timeout_seconds: None,
        wait_seconds: None,
    };
    let e = ex.change_state("web", &start, &mut |_| {}).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("delete --force web"), "{e}");
    // The name stays taken until it is cleared.
    let e = ex.create(&vm_request("web"), &mut |_| {}).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    ex.delete("web", &InstanceDelete { force: true }).unwrap();
    assert!(ex.list().unwrap().is_empty());
    assert!(!dirs.root.join("instances/web").exists());
    let store = Store::open(&dirs.root).unwrap();
    assert!(store.machine_ids().unwrap().is_empty());
}

#[test]
fn a_name_being_worked_on_is_a_conflict_and_a_bad_request_changes_nothing() {
    let (_d, dirs, ex) = setup();
    let held = berth_host::locks::acquire(&dirs, "web", "create").unwrap();
    let e = ex.create(&vm_request("web"), &mut |_| {}).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(e.message.contains("is busy"), "{e}");
    drop(held);
    let mut bad = vm_request("../web");
    let e = ex.create(&bad, &mut |_| {}).unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::Invalid, Some("name"))
    );
    bad.name = "web".into();
    bad.cloud_init = Some(berth_api::Blob::Text("#cloud-config\nusers: 3\n".into()));
    let e = ex.create(&bad, &mut |_| {}).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("cloud_init"), "{e}");
    // No image: refused by the driver, and the name it had taken is free again.
    let e = ex.create(&vm_request("web"), &mut |_| {}).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(ex.list().unwrap().is_empty());
    let e = ex.info("web").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[test]
fn commands_in_an_unfinished_instance_or_a_taken_name_are_refused() {
    let (_d, dirs, ex) = setup();
    cut_short(&dirs, "web");
    let exec = berth_api::InstanceExec {
        command: vec!["true".into()],
        interactive: false,
    };
    assert_eq!(ex.exec("web", &exec).unwrap_err().kind, ErrorKind::Conflict);
    assert_eq!(
        ex.exec("nothing", &exec).unwrap_err().kind,
        ErrorKind::NotFound
    );
    // `run` refuses a name an instance has, and a name that is not one, before anything is made.
    let run = |name: &str| {
        serde_json::from_value::<berth_api::InstanceRun>(serde_json::json!({
            "image": "debian-12", "name": name, "command": ["true"], "rm": true
        }))
        .unwrap()
    };
    let e = ex.run(&run("web")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
    let e = ex.run(&run("../web")).unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::Invalid, Some("name"))
    );
    assert_eq!(ex.list().unwrap().len(), 1);
    // The console of something that never ran.
    assert_eq!(
        ex.console_log("nothing", 0, 10).unwrap_err().kind,
        ErrorKind::NotFound
    );
}
