//! Requests that change instances run in a worker process (`berth daemon-worker`), one per
//! request, as LXD's `forkstart` does: the daemon is multi-threaded (tokio), and a container is
//! started from a single-threaded process (its user namespace and `setns` need one). The worker
//! is the CLI's own in-process path: it reads one [`Job`] as JSON on standard input, performs it
//! with an executor, and writes one JSON [`Line`] per progress event and a last one with the
//! answer. A daemon killed meanwhile leaves the worker to finish, and the instance as the
//! executor leaves it (with its lock, its row, and what `list` shows).

use berth_api::{
    Error, Event, ImageBuild, InstanceCreate, InstanceDelete, InstanceExec, InstanceRun,
    InstanceSet, InstanceStateChange, Response,
};
use berth_host::dirs::Dirs;
use berth_host::executor::Executor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One request for a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case", deny_unknown_fields)]
pub enum Job {
    /// Make and start an instance.
    Create {
        /// The request.
        create: InstanceCreate,
    },
    /// Change an instance's state.
    ChangeState {
        /// The instance.
        name: String,
        /// The request.
        change: InstanceStateChange,
    },
    /// Delete an instance.
    Delete {
        /// The instance.
        name: String,
        /// The request.
        delete: InstanceDelete,
    },
    /// Change a container's limits.
    Set {
        /// The instance.
        name: String,
        /// The request.
        set: InstanceSet,
    },
    /// Run a command in a new application container on the worker's standard streams (as
    /// [`Job::Exec`]).
    Run {
        /// The request.
        run: InstanceRun,
    },
    /// Run a command in an instance on the worker's standard streams (an exec job comes in
    /// [`JOB_ENV`] and answers in the file [`ANSWER_ENV`] names, as its streams are the
    /// command's).
    Exec {
        /// The instance.
        name: String,
        /// The request.
        exec: InstanceExec,
    },
    /// Build an image.
    ImageBuild {
        /// The request.
        build: ImageBuild,
    },
    /// Import, as image `name`, the archive the daemon received into the folder `upload`
    /// (removed afterwards).
    ImageImport {
        /// The image.
        name: String,
        /// The folder the archive's files are in.
        upload: PathBuf,
        /// What the client said the disk came from.
        from: String,
    },
    /// Take as instance `name` the transfer archive the daemon received into the folder
    /// `upload` (removed afterwards): the receiving end of `berth copy`.
    InstanceReceive {
        /// The instance.
        name: String,
        /// The folder the archive's files are in.
        upload: PathBuf,
        /// A copy's new identity, or a moved guest's own.
        identity: berth_host::vms::transfer::Identity,
    },
}

impl Job {
    /// The instance (or image) it is about.
    pub(crate) fn instance(&self) -> &str {
        match self {
            Job::Create { create } => &create.name,
            Job::ChangeState { name, .. }
            | Job::Delete { name, .. }
            | Job::Set { name, .. }
            | Job::Exec { name, .. }
            | Job::ImageImport { name, .. }
            | Job::InstanceReceive { name, .. } => name,
            Job::Run { run } => run.name.as_deref().unwrap_or("(new)"),
            Job::ImageBuild { build } => build.image_name(),
        }
    }

    /// Whether it is about an image (else an instance).
    pub(crate) fn is_image(&self) -> bool {
        matches!(self, Job::ImageBuild { .. } | Job::ImageImport { .. })
    }

    /// The API's path of what it works on.
    pub(crate) fn resource(&self) -> String {
        let kind = if self.is_image() {
            "images"
        } else {
            "instances"
        };
        format!("/1.0/{kind}/{}", self.instance())
    }

    /// What it does, in words.
    pub(crate) fn description(&self) -> String {
        let n = self.instance();
        match self {
            Job::Create { .. } => format!("creating instance {n}"),
            Job::ChangeState { change, .. } => format!("{} instance {n}", change.action),
            Job::Delete { .. } => format!("deleting instance {n}"),
            Job::Set { .. } => format!("changing the limits of instance {n}"),
            Job::Exec { .. } => format!("running a command in instance {n}"),
            Job::Run { .. } => format!("running a command in a new container {n}"),
            Job::ImageBuild { build } => format!("building image {n} ({})", build.recipe),
            Job::ImageImport { .. } => format!("importing image {n}"),
            Job::InstanceReceive { .. } => format!("receiving instance {n}"),
        }
    }
}

/// The environment variable an exec job comes in.
pub const JOB_ENV: &str = "BERTH_WORKER_JOB";
/// The environment variable naming the file an exec job's answer goes to.
pub const ANSWER_ENV: &str = "BERTH_WORKER_ANSWER";

/// One line a worker writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// Progress.
    Event(Event),
    /// The answer, last.
    Answer(Response<Value>),
}

fn value<T: Serialize>(v: Result<T, Error>) -> Result<Value, Error> {
    v.and_then(|x| serde_json::to_value(x).map_err(|e| Error::internal(format!("an answer: {e}"))))
}

fn perform_here(ex: &Executor, job: &Job, events: &mut dyn FnMut(Event)) -> Result<Value, Error> {
    match job {
        Job::Create { create } => value(ex.create(create, events)),
        Job::ChangeState { name, change } => value(ex.change_state(name, change, events)),
        Job::Delete { name, delete } => value(ex.delete(name, delete)),
        Job::Set { name, set } => value(ex.set(name, set)),
        Job::Exec { name, exec } => value(ex.exec(name, exec)),
        Job::Run { run } => value(ex.run(run)),
        Job::ImageBuild { build } => value(ex.image_build(build, events)),
        Job::ImageImport { name, upload, from } => {
            value(ex.image_upload(name, upload, from.clone(), events))
        }
        Job::InstanceReceive {
            name,
            upload,
            identity,
        } => value(ex.instance_upload(name, upload, *identity, events)),
    }
}

/// `berth daemon-worker`: the job in [`JOB_ENV`] (an exec: its streams are this process's,
/// its answer goes to the file in [`ANSWER_ENV`]), else the job on standard input, answered on
/// standard output.
pub fn main(dirs: &Dirs) -> std::io::Result<()> {
    let (Some(job), Some(answer)) = (std::env::var_os(JOB_ENV), std::env::var_os(ANSWER_ENV))
    else {
        return run(dirs, &mut std::io::stdin(), &mut std::io::stdout());
    };
    let mut out = Vec::new();
    run(dirs, &mut job.as_encoded_bytes(), &mut out)?;
    // Only the last line (the answer): an exec reports no progress.
    let last = out
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or(&[]);
    std::fs::write(answer, last)
}

/// The answer an exec worker left in `path`.
pub fn exec_answer(path: &Path) -> Result<berth_api::ExecExit, Error> {
    let text = std::fs::read(path).map_err(|e| {
        Error::internal(format!(
            "the exec's worker left no answer in {}: {e}",
            path.display()
        ))
    })?;
    match serde_json::from_slice::<Line>(&text) {
        Ok(Line::Answer(a)) => serde_json::from_value(a.into_result()?)
            .map_err(|e| Error::internal(format!("the exec's worker answered oddly: {e}"))),
        _ => Err(Error::internal(format!(
            "the exec's worker left an unreadable answer in {}",
            path.display()
        ))),
    }
}

/// The worker's side: perform the job on standard input for `dirs`, writing lines to `out`.
pub fn run(dirs: &Dirs, input: &mut dyn Read, out: &mut dyn Write) -> std::io::Result<()> {
    let mut text = Vec::new();
    input
        .take(crate::body::MAX_BODY as u64 * 2)
        .read_to_end(&mut text)?;
    let answer = match serde_json::from_slice::<Job>(&text) {
        Err(e) => Err(Error::internal(format!(
            "the worker's job is unreadable: {e}"
        ))),
        Ok(job) => Executor::open(dirs).and_then(|ex| {
            perform_here(&ex, &job, &mut |ev| {
                if let Ok(line) = serde_json::to_string(&Line::Event(ev)) {
                    let _ = writeln!(out, "{line}");
                }
            })
        }),
    };
    let last = Line::Answer(match answer {
        Ok(v) => Response::ok(v),
        Err(e) => Response::error(e),
    });
    writeln!(out, "{}", serde_json::to_string(&last).unwrap_or_default())?;
    out.flush()
}

/// The daemon's side: run `job` in a worker (`exe daemon-worker`) on `dirs`, and its answer.
/// `started` gets the worker's pid (and answers whether to end it at once: the job was
/// cancelled meanwhile); `events` gets its progress.
pub fn perform(
    exe: &Path,
    dirs: &Dirs,
    job: &Job,
    started: &mut dyn FnMut(u32) -> bool,
    events: &mut dyn FnMut(Event),
) -> Result<Value, Error> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "{what} the request's worker ({}): {e}",
            exe.display()
        ))
    };
    let mut child = Command::new(exe)
        .arg("daemon-worker")
        .env("BERTH_DIR", &dirs.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed("starting", &e))?;
    if started(child.id()) {
        terminate(child.id());
    }
    let job_text = serde_json::to_vec(job).map_err(|e| failed("writing to", &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&job_text)
            .map_err(|e| failed("writing to", &e))?;
    }
    let mut answer = None;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Event(ev)) => {
                    tracing::debug!(instance = %ev.instance, "{}", ev.message);
                    events(ev);
                }
                Ok(Line::Answer(a)) => answer = Some(a),
                Err(e) => tracing::warn!("a worker's line is unreadable ({e}): {line}"),
            }
        }
    }
    let status = child.wait().map_err(|e| failed("waiting for", &e))?;
    match answer {
        Some(a) => a.into_result(),
        None => Err(failed("no answer from", &status)),
    }
}

/// Ask the worker `pid` to stop (SIGTERM: it ends where it stands, as a CLI command would; the
/// instance is then as a cut-short command leaves it).
pub fn terminate(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_answers_a_job_on_its_last_line() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            root: d.path().to_path_buf(),
        };
        let job = serde_json::to_vec(&Job::Delete {
            name: "web".into(),
            delete: InstanceDelete::default(),
        })
        .unwrap();
        let mut out = Vec::new();
        run(&dirs, &mut job.as_slice(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let last: Line = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let Line::Answer(a) = last else {
            panic!("{text}")
        };
        assert_eq!(
            a.into_result().unwrap_err().kind,
            berth_api::ErrorKind::NotFound
        );
        let mut out = Vec::new();
        run(&dirs, &mut &b"{\"job\":\"explode\"}"[..], &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("unreadable"));
    }
}
