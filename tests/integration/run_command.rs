//! The run command as a user runs it: `scripts/run`, then the README's grpcurl walkthrough with
//! a real grpcurl, then Ctrl-C, after which none of its processes may be left.

use std::{process::Command, time::Duration};

use devstack::{LogSink, ManagedProcess, repo_root, walkthrough};

use crate::common::{eventually, grpcurl};

/// The first build of the release binaries may happen here.
const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs one README command with the walkthrough's shell variables set.
fn sh(command: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let grpcurl = grpcurl();
    let path = format!(
        "{}:{}",
        grpcurl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut shell = Command::new("bash");
    shell.arg("-c").arg(command).env("PATH", path);
    for (name, value) in vars {
        shell.env(name, value);
    }
    let output = shell.output().expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn field(line: &str, label: &str) -> Option<String> {
    let rest = line.trim().strip_prefix(label)?;
    Some(rest.trim().to_string())
}

/// Processes whose command line or working directory mentions `dir`.
fn processes_using(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(path.join("cwd")).unwrap_or_default();
        if cmdline.contains(dir) || cwd.to_string_lossy().contains(dir) {
            found.push(format!("{}: {cmdline}", path.display()));
        }
    }
    found
}

#[tokio::test]
async fn the_readme_walkthrough_works_against_the_run_command() {
    let commands = walkthrough::readme_commands();
    let method = |m: &str| -> Vec<String> {
        commands
            .iter()
            .filter(|c| c.ends_with(m))
            .cloned()
            .collect()
    };
    let create = method("task.v1.TaskService/CreateTask");
    let get = method("task.v1.TaskService/GetTask");
    let update = method("task.v1.TaskService/UpdateTask");
    let list = method("task.v1.TaskService/ListTasks");
    let complete = method("task.v1.TaskService/UpdateTaskStatus");
    let notifications = method("notification.v1.NotificationService/ListNotifications");
    assert_eq!(
        commands.len(),
        9,
        "the README walkthrough changed: {commands:#?}"
    );
    assert_eq!(
        (
            create.len(),
            get.len(),
            update.len(),
            list.len(),
            complete.len(),
            notifications.len()
        ),
        (2, 1, 2, 1, 1, 2)
    );

    // A port already served by someone else: the run command stops at once and names it.
    // The port may still be held by a closing connection of an earlier test; it frees itself.
    let squatter = eventually(Duration::from_secs(120), || async {
        std::net::TcpListener::bind("127.0.0.1:50052").ok()
    })
    .await;
    let mut refused = Command::new(repo_root().join("scripts/run"));
    refused
        .current_dir(repo_root())
        .env_remove("TASK_API_COMPONENTS");
    let mut refused = ManagedProcess::spawn("scripts/run", refused, LogSink::Capture).unwrap();
    let status = eventually(READY_TIMEOUT, || {
        let status = refused.exit_status();
        async move { status }
    })
    .await;
    assert!(!status.success());
    // What the run command tells its user is the behaviour under test.
    assert!(
        refused.log_contains("port 50052 is already in use"),
        "{}",
        refused.log_tail(10)
    );
    drop(squatter);

    let mut script = Command::new(repo_root().join("scripts/run"));
    script
        .current_dir(repo_root())
        .env_remove("TASK_API_COMPONENTS");
    let mut stack_run = ManagedProcess::spawn("scripts/run", script, LogSink::Capture).unwrap();
    // The ready line and the banner after it are what the run command shows its user (and the
    // banner is where the walkthrough's API key comes from).
    stack_run
        .wait_for_log("==> ready:", READY_TIMEOUT)
        .await
        .unwrap();
    // The banner follows the ready line.
    stack_run
        .wait_for_log("logs follow", Duration::from_secs(10))
        .await
        .unwrap();
    let banner = stack_run.log_tail(200);
    let key = banner
        .lines()
        .find_map(|l| field(l, "API key"))
        .expect("the banner prints the API key");
    let workdir = banner
        .lines()
        .find_map(|l| field(l, "working directory"))
        .expect("the banner prints the working directory");
    for (printed, readme) in [
        (&create[0], "CreateTask"),
        (&list[0], "ListTasks"),
        (&complete[0], "UpdateTaskStatus"),
    ] {
        assert!(
            banner.contains(printed.as_str()),
            "the {readme} command is printed as in the README"
        );
    }

    let key = key.as_str();
    let (ok, out) = sh(&create[0], &[("TASK_API_KEY", key)]);
    assert!(ok, "{out}");
    let task = json(&out);
    let id = task["id"].as_str().unwrap().to_string();
    let etag = task["etag"].as_str().unwrap().to_string();
    assert_eq!(task["title"], "Learn Dapr building blocks");
    assert_eq!(task["priority"], 2);
    assert_eq!(task["status"], "TASK_STATUS_PENDING");
    let vars = [
        ("TASK_API_KEY", key),
        ("TASK_ID", id.as_str()),
        ("ETAG", etag.as_str()),
    ];

    let (ok, out) = sh(&get[0], &vars);
    assert!(ok, "{out}");
    assert_eq!(json(&out)["etag"], etag.as_str());

    let (ok, out) = sh(&update[0], &vars);
    assert!(ok, "{out}");
    let updated = json(&out);
    assert_eq!(updated["priority"], 5);
    let new_etag = updated["etag"].as_str().unwrap().to_string();
    assert_ne!(new_etag, etag);

    let (ok, out) = sh(&update[1], &vars);
    assert!(!ok, "a stale ETag must fail: {out}");
    assert!(out.contains("Aborted"), "{out}");
    assert!(out.contains(&new_etag), "the current ETag is named: {out}");

    let (ok, out) = sh(&list[0], &vars);
    assert!(ok, "{out}");
    assert!(
        json(&out)["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str())
    );

    let (ok, out) = sh(&complete[0], &vars);
    assert!(ok, "{out}");
    assert_eq!(json(&out)["status"], "TASK_STATUS_COMPLETED");

    let (received, out) = eventually(Duration::from_secs(20), || async {
        let (ok, out) = sh(&notifications[0], &vars);
        assert!(ok, "{out}");
        let list = json(&out)["notifications"].as_array()?.clone();
        Some((list, out))
    })
    .await;
    assert_eq!(received.len(), 1, "{out}");
    assert_eq!(received[0]["taskId"], id.as_str());
    assert_eq!(received[0]["type"], "task_completed");
    // The prefix is how the run command's user tells the apps' logs apart.
    assert!(
        stack_run.log_contains("[notification-service]"),
        "app logs are prefixed"
    );

    // Due in 20 s with a reminder at 10 s: both notified, through the scheduler's jobs.
    let (ok, out) = sh(&create[1], &vars);
    assert!(ok, "{out}");
    let due = json(&out);
    assert!(
        due["dueAt"].is_string() && due["remindAt"].is_string(),
        "{out}"
    );
    let due_id = due["id"].as_str().unwrap().to_string();
    let due_vars = [("DUE_ID", due_id.as_str())];
    let (kinds, out) = eventually(Duration::from_secs(45), || async {
        let (ok, out) = sh(&notifications[1], &due_vars);
        assert!(ok, "{out}");
        let mut kinds: Vec<String> = json(&out)["notifications"]
            .as_array()?
            .iter()
            .map(|n| n["type"].as_str().unwrap_or("").to_string())
            .collect();
        kinds.sort();
        (kinds.len() == 2).then_some((kinds, out))
    })
    .await;
    assert_eq!(kinds, ["task_due", "task_reminder"], "{out}");

    // Ctrl-C: everything stops, cleanly, and nothing is left behind.
    stack_run.signal(libc::SIGINT);
    let status = eventually(Duration::from_secs(60), || {
        let status = stack_run.exit_status();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(0), "{}", stack_run.log_tail(30));
    // The run command's last word to its user; the processes and ports are checked below.
    assert!(stack_run.log_contains("==> stopped"));
    let left = processes_using(&workdir);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    for port in [50051, 50052, 3500, 3501, 50001, 50002] {
        devstack::ensure_free(port, "after scripts/run stopped").unwrap();
    }
}
