//! Signals to the processes a test started (SIGTERM, SIGSTOP, SIGCONT...).

/// Runs `kill -NAME PID`; panics if it fails.
pub(crate) fn send(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
