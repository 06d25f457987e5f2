//! Free loopback ports.
//!
//! A port is found free by binding it and letting it go, so another process could take it before
//! ours binds. Two things keep that from happening:
//! - Ports are drawn below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`),
//!   where the kernel never picks the source port of an outgoing connection or the port of a bind
//!   to port 0. Drawn from that range, a port handed to a test could be taken by any of the many
//!   connections the tests open before its server bound it (a daprd then failed to start with
//!   "address already in use").
//! - Ports handed out by this process are remembered, so parallel tests in one test binary never
//!   receive the same one.
//!
//! Another process drawing ports the same way can still take one first; Redis and PostgreSQL then
//! start on another ([`on_fresh_port`]).

use std::{
    collections::HashSet,
    hash::{BuildHasher, Hasher},
    net::TcpListener,
    ops::RangeInclusive,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::Error;

/// The lowest port handed out: above the well-known and commonly configured ones.
const LOWEST: u16 = 10_000;
/// The kernel's default start of the ephemeral range, when it cannot be read.
const EPHEMERAL_DEFAULT_START: u16 = 32_768;
const ATTEMPTS: usize = 256;

/// A loopback TCP port that was free a moment ago, lies outside the kernel's ephemeral range,
/// and was not handed out before by this process.
pub fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let range = below_ephemeral(ephemeral_start());
    for _ in 0..ATTEMPTS {
        let port = match &range {
            Some(range) => draw(range),
            // No room below the ephemeral range: whatever the kernel picks.
            None => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(Error::io("a free loopback port"))?
                .port(),
        };
        let mut seen = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            seen.insert(port);
            return Ok(port);
        }
    }
    Err(Error::Io {
        what: "a free loopback port".into(),
        source: std::io::Error::other(format!("no unused port after {ATTEMPTS} attempts")),
    })
}

/// Where the kernel's ephemeral range starts.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_DEFAULT_START)
}

/// The ports handed out when the ephemeral range starts at `start`: none when that leaves fewer
/// than a thousand.
fn below_ephemeral(start: u16) -> Option<RangeInclusive<u16>> {
    (start > LOWEST.saturating_add(1_000)).then(|| LOWEST..=start - 1)
}

/// A port drawn at random from `range`: processes that hand out ports at the same time (two
/// test binaries, the run command beside the tests) start from different places.
fn draw(range: &RangeInclusive<u16>) -> u16 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let span = u64::from(range.end() - range.start()) + 1;
    range.start() + (hasher.finish() % span) as u16
}

/// Fails with a clear message when something already listens on `port`; any other failure to
/// bind (out of file descriptors, say) keeps its own error, so it is not taken for a busy port.
pub fn ensure_free(port: u16, what: &str) -> Result<(), Error> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortInUse {
            port,
            what: what.to_string(),
        }),
        Err(source) => Err(Error::Io {
            what: format!("binding port {port} ({what})"),
            source,
        }),
    }
}

/// How many fresh ports a server is offered before its start fails.
const FRESH_PORT_TRIES: usize = 3;

/// Runs `start` on a fresh port, and again on another when the port was taken before the server
/// bound it. Within this process a port is never handed out twice, but another process drawing
/// ports the same way (the `devstack` command a test runs, a second test binary) can take one in
/// that moment.
pub(crate) async fn on_fresh_port<T>(
    mut start: impl AsyncFnMut(u16) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut tries = 1;
    loop {
        match start(free_port()?).await {
            Err(Error::PortInUse { .. }) if tries < FRESH_PORT_TRIES => tries += 1,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() {
        let range = below_ephemeral(ephemeral_start());
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        if let Some(range) = range {
            assert!(ports.iter().all(|p| range.contains(p)), "{ports:?}");
        }
    }

    #[tokio::test]
    async fn a_port_taken_before_the_server_bound_it_is_replaced_by_another() {
        let mut offered = Vec::new();
        let started = on_fresh_port(async |port| {
            offered.push(port);
            if offered.len() == 1 {
                Err(Error::PortInUse {
                    port,
                    what: "a test".into(),
                })
            } else {
                Ok(port)
            }
        })
        .await
        .unwrap();
        assert_eq!(offered.len(), 2);
        assert_eq!(started, offered[1]);
        assert_ne!(offered[0], offered[1]);
    }

    #[tokio::test]
    async fn a_start_that_keeps_finding_its_port_taken_fails_after_a_few_ports() {
        let mut tries = 0;
        let result: Result<(), Error> = on_fresh_port(async |port| {
            tries += 1;
            Err(Error::PortInUse {
                port,
                what: "a test".into(),
            })
        })
        .await;
        assert!(matches!(result, Err(Error::PortInUse { .. })), "{result:?}");
        assert_eq!(tries, FRESH_PORT_TRIES);
    }

    #[test]
    fn a_busy_port_is_reported_as_in_use() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let result = ensure_free(port, "a test");
        assert!(
            matches!(result, Err(Error::PortInUse { port: p, .. }) if p == port),
            "{result:?}"
        );
    }

    #[test]
    fn a_narrow_room_below_the_ephemeral_range_is_not_used() {
        assert_eq!(below_ephemeral(32_768), Some(10_000..=32_767));
        assert_eq!(below_ephemeral(10_500), None);
        assert_eq!(below_ephemeral(1_024), None);
    }
}
