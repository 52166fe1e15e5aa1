//! systemd readiness notification (`sd_notify`) without libsystemd: one
//! datagram to `$NOTIFY_SOCKET` when the service is ready and when it stops.

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let path = std::path::PathBuf::from(path);
    // Abstract sockets ("@name") are not supported here; systemd uses a path.
    if let Err(e) = socket.send_to(state.as_bytes(), &path) {
        eprintln!("tailord: sd_notify to {} failed: {e}", path.display());
    }
}

/// Tells systemd the daemon serves requests.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// Tells systemd the daemon is shutting down.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}
