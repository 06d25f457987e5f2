//! kubectl, pointed at one control plane.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::Error;

/// Runs kubectl with one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(program: &Path, kubeconfig: &Path) -> Self {
        Self {
            program: program.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// A kubectl command with the kubeconfig set, for callers that need the raw output.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl args...` and returns its standard output; a non-zero exit is an error that
    /// carries what kubectl printed.
    pub fn run(&self, args: &[&str]) -> Result<String, Error> {
        self.run_with_input(args, None)
    }

    /// The same, with `input` on standard input (`-f -`).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String, Error> {
        let mut command = self.command();
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let failed = |detail: String| Error::Kubectl {
            args: args.join(" "),
            detail,
        };
        let io = |what: &'static str| {
            move |source| Error::KubectlIo {
                args: args.join(" "),
                what,
                source,
            }
        };
        let mut child = command.spawn().map_err(io("to start"))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(io("writing its input"))?;
        }
        let output = child.wait_with_output().map_err(io("to end"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(stdout);
        }
        Err(failed(format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\n{}", stdout.trim())
            }
        )))
    }

    /// `kubectl get ... -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value, Error> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).map_err(|source| Error::KubectlJson {
            args: all.join(" "),
            source,
        })
    }

    /// Server-side apply of `yaml` (one or more documents).
    pub fn apply(&self, yaml: &str) -> Result<String, Error> {
        self.run_with_input(
            &[
                "apply",
                "--server-side",
                "--field-manager=devstack",
                "-f",
                "-",
            ],
            Some(yaml),
        )
    }
}

/// Writes a kubeconfig that reaches `server` with a bearer token.
pub fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> Result<(), Error> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\n\
         contexts:\n- name: local\n  context:\n    cluster: local\n    user: user\n    \
         namespace: default\ncurrent-context: local\n",
        ca = ca.display()
    );
    std::fs::write(path, text).map_err(Error::io(format!("{}", path.display())))
}
