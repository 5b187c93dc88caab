//! Running the generator from a test and reading its JSON line.

use std::process::Command;

/// Runs `cmd` (the generator with `--json`), echoes its stdout and stderr (shown with
/// `--nocapture`), and returns its exit status and its JSON line, the last line of stdout.
pub fn status_and_json(cmd: &mut Command) -> (i32, serde_json::Value) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON line ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), json)
}
