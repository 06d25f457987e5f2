//! `task-api adopt`: makes tasks that another implementation stored listable.
//!
//! task-api lists tasks from its own index; the Python original kept none. Any task task-api
//! reads or changes is indexed on the way, and so is the task of any event of the original it
//! receives; this command does it for all the rest at once. It reads task ids, or state keys as
//! Redis lists them (`task-api||task-<id>`), one per line from standard input, and reads each
//! task through the sidecar:
//!
//! ```sh
//! redis-cli --scan --pattern 'task-api||task-*' | task-api adopt
//! ```
//!
//! It runs beside a serving task-api (same settings: `DAPR_GRPC_PORT` or `DAPR_GRPC_ENDPOINT`,
//! `STATE_STORE_NAME`), and may be run again: adopting a task twice changes nothing.

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    config::TaskApiConfig, domain::TaskId, secret::Secret, service::chain, sidecar::Sidecar,
    startup::task_api::use_cases,
};

/// Ids read per round.
const BATCH: usize = 200;

/// The id in a line: a bare id, `task-<id>`, or a prefixed state key `<prefix>||task-<id>`.
pub(crate) fn id_in(line: &str) -> Option<TaskId> {
    let key = line.trim();
    let key = key.rsplit("||").next().unwrap_or(key);
    let id = key.strip_prefix("task-").unwrap_or(key);
    TaskId::parse(id).ok()
}

pub async fn run(config: TaskApiConfig) -> ExitCode {
    let sidecar = match Sidecar::connect_lazy(&config.sidecar) {
        Ok(sidecar) => sidecar,
        Err(error) => {
            eprintln!("task-api adopt: {}", chain(&error));
            return ExitCode::from(2);
        }
    };
    if let Err(error) = sidecar.wait_until_answering(config.sidecar.wait).await {
        eprintln!("task-api adopt: {}", chain(&error));
        return ExitCode::FAILURE;
    }
    // Adopting reads and indexes; it changes no task, so it publishes and signs nothing.
    let tasks = use_cases(&config, &sidecar, &Secret::new("")).tasks;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let (mut adopted, mut read, mut skipped) = (0, 0, 0);
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => match id_in(&line) {
                    Some(id) => batch.push(id),
                    None => {
                        eprintln!("task-api adopt: not a task id or key, skipped: {line:?}");
                        skipped += 1;
                    }
                },
                Ok(None) => break,
                Err(error) => {
                    eprintln!("task-api adopt: reading standard input: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        read += batch.len();
        match tasks.adopt_ids(&batch).await {
            Ok(live) => adopted += live,
            Err(error) => {
                eprintln!(
                    "task-api adopt: stopped after {read} ids: {}",
                    chain(&error)
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{adopted} tasks listable; {} ids named no live task; {skipped} lines skipped",
        read - adopted
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_and_keys() {
        let id = "3f1c9a9e-2b7d-4e7c-9a51-0c0b5f6d2a11";
        for line in [
            id.to_string(),
            format!("task-{id}"),
            format!("task-api||task-{id}\n"),
        ] {
            assert_eq!(id_in(&line).unwrap().as_str(), id, "{line}");
        }
        assert!(id_in("a b").is_none());
    }
}
