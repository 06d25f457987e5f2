//! Free loopback ports.
//!
//! A port is found free by binding it and letting it go, so another process could take it before
//! ours binds. Ports handed out by this process are remembered so that parallel tests in one test
//! binary never receive the same one.

use std::{
    collections::HashSet,
    net::TcpListener,
    sync::{Mutex, OnceLock},
};

use crate::Error;

/// A loopback TCP port that was free a moment ago and was not handed out before by this process.
pub fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::io("a free loopback port"))?
            .port();
        let mut seen = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Io {
        what: "a free loopback port".into(),
        source: std::io::Error::other("no unused port after 64 attempts"),
    })
}

/// Fails with a clear message when something already listens on `port`.
pub fn ensure_free(port: u16, what: &str) -> Result<(), Error> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::PortInUse {
            port,
            what: what.to_string(),
        }),
    }
}
