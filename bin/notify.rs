//! systemd's notification protocol (`sd_notify`): READY, STATUS, WATCHDOG and STOPPING
//! datagrams to `$NOTIFY_SOCKET`. A no-op when the variable is unset (not under systemd).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager, if there is one.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            let addr = if let Some(name) = p.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&p).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { socket }
    }

    /// Sends `state` (e.g. `READY=1\nSTATUS=streaming`); errors are logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Some((s, addr)) = &self.socket {
            if let Err(e) = s.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }
    }

    /// Half of `$WATCHDOG_USEC`, the interval to ping at, when the watchdog is on.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
