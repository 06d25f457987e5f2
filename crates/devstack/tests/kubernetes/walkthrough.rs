//! The README walkthrough, run inside a task-api pod's network namespace: `localhost:50051` is
//! that pod's task-api and `localhost:50001` its daprd, as for a user who port-forwards to it.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use devstack::{
    cache_dir,
    kubernetes::{ControlPlane, PodRun},
    repo_root, walkthrough,
};
use serde_json::Value;

/// Runs one README command in `run`'s pod with the walkthrough's shell variables set.
fn sh(run: &PodRun, command: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let bin = cache_dir().join("bin");
    assert!(
        bin.join("grpcurl").is_file(),
        "no grpcurl in {} (scripts/test installs it)",
        bin.display()
    );
    let mut shell = Command::new("bash");
    shell.arg("-c").arg(command).current_dir(repo_root());
    shell.env(
        "PATH",
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    for (name, value) in vars {
        shell.env(name, value);
    }
    run.network.enter(&mut shell);
    // The pod's traffic runs on this runtime's other tasks (the forwarders): let them.
    let output =
        tokio::task::block_in_place(|| shell.output()).unwrap_or_else(|e| panic!("bash: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The README's commands that call `method`, in order.
fn calling(commands: &[String], method: &str) -> Vec<String> {
    let word = format!("{method} ");
    commands
        .iter()
        .filter(|c| c.ends_with(method) || c.contains(&word))
        .cloned()
        .collect()
}

/// Polls the notifications command until `done` accepts the types listed, within `limit`.
async fn notifications(
    run: &PodRun,
    command: &str,
    vars: &[(&str, &str)],
    limit: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        let (ok, out) = sh(run, command, vars);
        assert!(ok, "{out}");
        let mut kinds: Vec<String> = json(&out)["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n["type"].as_str().unwrap_or_default().to_string())
            .collect();
        kinds.sort();
        if done(&kinds) {
            return kinds;
        }
        assert!(
            started.elapsed() < limit,
            "notifications after {limit:?}: {out}"
        );
        // Poll interval of a loop with a deadline, not synchronisation.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The walkthrough through `run` (a task-api pod); its notifications step as the cluster allows
/// it, through `notifier` (notification-service's pod).
pub async fn passes(plane: &ControlPlane, run: &PodRun, notifier: &PodRun) {
    let commands = walkthrough::readme_commands();
    let key = secret(plane, "task-api-auth", "api-key");
    let id = task_steps(run, &commands, &key);
    let listed = calling(&commands, "NotificationService/ListNotifications");
    assert_eq!(
        listed.len(),
        2,
        "the README walkthrough changed: {commands:#?}"
    );
    let vars = [("TASK_ID", id.as_str())];
    let listed = notifications_as_allowed(plane, run, notifier, &listed, &vars);
    let app_token = secret(plane, "notification-service-app-token", "token");
    let vars = [
        ("TASK_ID", id.as_str()),
        ("APP_API_TOKEN", app_token.as_str()),
    ];
    let limit = Duration::from_secs(20);
    let kinds = notifications(notifier, &listed[0], &vars, limit, |k| !k.is_empty()).await;
    assert_eq!(kinds, ["task_completed"]);
    // A task due in 20 s with a reminder at 10 s: the scheduler's jobs fire through the sidecar.
    let (ok, out) = sh(
        run,
        &calling(&commands, "TaskService/CreateTask")[1],
        &[("TASK_API_KEY", &key)],
    );
    assert!(ok, "{out}");
    let due = json(&out);
    let vars = [
        ("DUE_ID", text(&due["id"])),
        ("APP_API_TOKEN", app_token.as_str()),
    ];
    let limit = Duration::from_secs(45);
    let kinds = notifications(notifier, &listed[1], &vars, limit, |k| k.len() == 2).await;
    assert_eq!(kinds, ["task_due", "task_reminder"]);
}

/// Create, read, update (and the stale ETag refused), list, complete; returns the task's id.
fn task_steps(run: &PodRun, commands: &[String], key: &str) -> String {
    let create = calling(commands, "TaskService/CreateTask");
    let update = calling(commands, "TaskService/UpdateTask");
    assert!(
        create.len() == 2 && update.len() == 2,
        "the README walkthrough changed: {commands:#?}"
    );
    let (ok, out) = sh(run, &create[0], &[("TASK_API_KEY", key)]);
    assert!(ok, "{out}");
    let task = json(&out);
    let (id, etag) = (text(&task["id"]), text(&task["etag"]));
    let vars = [("TASK_API_KEY", key), ("TASK_ID", id), ("ETAG", etag)];
    for method in ["TaskService/GetTask", "TaskService/ListTasks"] {
        let (ok, out) = sh(run, &calling(commands, method)[0], &vars);
        assert!(ok && out.contains(id), "{method}: {out}");
    }
    let (ok, out) = sh(run, &update[0], &vars);
    assert!(ok && json(&out)["priority"] == 5, "{out}");
    let (ok, out) = sh(run, &update[1], &vars);
    assert!(
        !ok && out.contains("Aborted"),
        "a stale ETag must fail: {out}"
    );
    let (ok, out) = sh(
        run,
        &calling(commands, "TaskService/UpdateTaskStatus")[0],
        &vars,
    );
    assert!(
        ok && json(&out)["status"] == "TASK_STATUS_COMPLETED",
        "{out}"
    );
    id.to_string()
}

/// The README's ListNotifications through a sidecar, as the cluster answers it; returns the
/// commands rewritten to what works there (the app's port, with its app token).
fn notifications_as_allowed(
    plane: &ControlPlane,
    run: &PodRun,
    notifier: &PodRun,
    listed: &[String],
    vars: &[(&str, &str)],
) -> Vec<String> {
    // On Kubernetes the sidecar's API wants the app's token (dapr.io/api-token-secret), which
    // the self-hosted walkthrough does not send: as written, the command is refused.
    let (ok, out) = sh(run, &listed[0], vars);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    // With the token, task-api's sidecar forwards it, and notification-service's sidecar refuses
    // it: its Configuration lets task-api (by its Sentry identity) call notify and nothing else.
    let token = secret(plane, "dapr-api-token", "token");
    let with_token: Vec<String> = listed.iter().map(|c| with_api_token(c)).collect();
    let vars = [vars, &[("DAPR_API_TOKEN", token.as_str())]].concat();
    let (ok, out) = sh(run, &with_token[0], &vars);
    let denied = "access control policy has denied access to id: spiffe://public/ns/default/task-api \
                  operation: /notification.v1.NotificationService/ListNotifications";
    assert!(
        !ok && out.contains("PermissionDenied") && out.contains(denied),
        "{out}"
    );
    // So does notification-service's own sidecar (a local call has no identity the policy
    // allows).
    let (ok, out) = sh(notifier, &with_token[0], &vars);
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    // What remains is what the sidecar itself does: call the app's port with the app token.
    with_token.iter().map(|c| to_app_port(c)).collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A README command sent straight to notification-service's app port with its app token, as
/// its sidecar would send it.
fn to_app_port(command: &str) -> String {
    command
        .replace(
            "dapr-api-token: $DAPR_API_TOKEN",
            "dapr-api-token: $APP_API_TOKEN",
        )
        .replace("localhost:50001", "localhost:50052")
}

/// A README command with the header the Kubernetes section tells users to add when they call
/// through a sidecar.
pub fn with_api_token(command: &str) -> String {
    command.replacen(
        "grpcurl ",
        "grpcurl -H \"dapr-api-token: $DAPR_API_TOKEN\" ",
        1,
    )
}

fn secret(plane: &ControlPlane, name: &str, key: &str) -> String {
    let template = format!("go-template={{{{index .data \"{key}\" | base64decode}}}}");
    plane
        .kubectl()
        .run(&["get", "secret", name, "-o", &template])
        .unwrap_or_else(|e| panic!("Secret {name}: {e}"))
}
