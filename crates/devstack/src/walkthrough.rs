//! The README's grpcurl walkthrough, read from the README itself so that what the run command
//! prints, what the README shows and what the walkthrough test runs are the same commands.
//!
//! The walkthrough is the README text between `<!-- walkthrough:begin -->` and
//! `<!-- walkthrough:end -->`; every line there that starts with `grpcurl` (continued by a
//! trailing backslash) is one command.

use crate::resources::repo_root;

const BEGIN: &str = "<!-- walkthrough:begin -->";
const END: &str = "<!-- walkthrough:end -->";

/// The walkthrough's commands, in order.
pub fn commands(readme: &str) -> Vec<String> {
    let Some(start) = readme.find(BEGIN) else {
        return Vec::new();
    };
    let section = &readme[start + BEGIN.len()..];
    let section = &section[..section.find(END).unwrap_or(section.len())];
    let mut commands = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        let trimmed = line.trim();
        match current.as_mut() {
            Some(command) => command.push_str(trimmed.trim_end_matches('\\').trim_end()),
            None if trimmed.starts_with("grpcurl ") => {
                current = Some(trimmed.trim_end_matches('\\').trim_end().to_string());
            }
            None => continue,
        }
        if trimmed.ends_with('\\') {
            if let Some(command) = current.as_mut() {
                command.push(' ');
            }
        } else if let Some(command) = current.take() {
            commands.push(command);
        }
    }
    commands
}

/// The walkthrough of the repository's README.
pub fn readme_commands() -> Vec<String> {
    std::fs::read_to_string(repo_root().join("README.md"))
        .map(|readme| commands(&readme))
        .unwrap_or_default()
}

/// The first command that calls `method` (e.g. `task.v1.TaskService/CreateTask`).
pub fn command_for<'a>(commands: &'a [String], method: &str) -> Option<&'a str> {
    commands
        .iter()
        .find(|c| c.ends_with(method) || c.contains(&format!("{method} ")))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands_between_the_markers() {
        let readme = "intro\n```sh\ngrpcurl -plaintext outside\n```\n<!-- walkthrough:begin -->\n```sh\n# create\ngrpcurl -plaintext \\\n  -d '{}' localhost:50051 task.v1.TaskService/CreateTask\nTASK_ID=x\ngrpcurl -plaintext localhost:50051 task.v1.TaskService/ListTasks\n```\n<!-- walkthrough:end -->\ngrpcurl after\n";
        let found = commands(readme);
        assert_eq!(
            found,
            [
                "grpcurl -plaintext -d '{}' localhost:50051 task.v1.TaskService/CreateTask",
                "grpcurl -plaintext localhost:50051 task.v1.TaskService/ListTasks",
            ]
        );
        assert!(command_for(&found, "task.v1.TaskService/ListTasks").is_some());
        assert!(command_for(&found, "task.v1.TaskService/GetTask").is_none());
    }
}
