//! A pod's network: a network namespace of its own (its containers share its loopback, as in
//! a pod), and forwarders that carry connections from an address inside it to a server outside:
//! on the host's loopback (the control plane) or in another pod's namespace.
//!
//! Nothing leaves the machine: each namespace has only a loopback interface. A socket keeps the
//! namespace it was created in, so a listener opened by a thread that entered the pod's
//! namespace accepts there, while the forwarder connects from wherever its target lives.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::process::CommandExt,
    process::Command,
    sync::Arc,
};

use crate::Error;

/// A network namespace, alive while this handle (or a process in it) is.
#[derive(Clone)]
pub struct PodNetwork {
    fd: Arc<OwnedFd>,
}

/// Where a forwarded connection goes.
#[derive(Clone)]
pub enum Target {
    /// A server in the namespace the tests run in (the control plane's).
    Host(SocketAddr),
    /// A server inside another pod's namespace.
    Pod(PodNetwork, SocketAddr),
}

impl PodNetwork {
    /// A new namespace with its loopback up and `extra` addresses on it (e.g. the `kubernetes`
    /// Service's cluster IP, so the pod reaches the API server where a pod would).
    pub fn new(extra: &[std::net::Ipv4Addr]) -> Result<Self, Error> {
        let extra = extra.to_vec();
        std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            // SAFETY: plain system calls on this thread, which ends right after.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                interface_up("lo", None)?;
                for (i, address) in extra.iter().enumerate() {
                    interface_up(&format!("lo:{}", i + 1), Some(*address))?;
                }
                let fd = libc::open(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(OwnedFd::from_raw_fd(fd))
            }
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))
        .and_then(|r| r)
        .map(|fd| Self { fd: Arc::new(fd) })
        .map_err(Error::io("a pod network namespace"))
    }

    /// Makes `command` run inside this namespace.
    pub fn enter(&self, command: &mut Command) {
        let fd = self.fd.clone();
        // SAFETY: setns(2) between fork and exec, on a descriptor kept open by `fd`.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Forwards every connection to `listen` (inside this namespace) to `target`, for as long as
    /// the tokio runtime this is called in runs.
    pub fn forward(&self, listen: SocketAddr, target: Target) -> Result<(), Error> {
        let listener = self.inside(move || TcpListener::bind(listen))?;
        listener
            .set_nonblocking(true)
            .map_err(Error::io("a forwarder"))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(Error::io("a forwarder"))?;
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = target.connect().await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(())
    }

    /// GET `path` from the server on this namespace's loopback at `port` (a container's port).
    pub async fn get(&self, port: u16, path: &str) -> Result<crate::http::Response, Error> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let what = || format!("port {port} in a pod network namespace");
        let stream = Target::Pod(self.clone(), address)
            .connect()
            .await
            .map_err(|source| Error::Http {
                what: what(),
                source,
            })?;
        crate::http::get_on(stream, port, path)
            .await
            .map_err(|source| Error::Http {
                what: what(),
                source,
            })
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let fd = self.fd.clone();
        std::thread::spawn(move || {
            // SAFETY: setns(2) on this short-lived thread only.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))
        .and_then(|r| r)
        .map_err(Error::io("a socket in a pod network namespace"))
    }
}

impl Target {
    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            Target::Host(address) => tokio::net::TcpStream::connect(address).await,
            Target::Pod(network, address) => {
                let address = *address;
                let stream = network
                    .inside(move || TcpStream::connect(address))
                    .map_err(std::io::Error::other)?;
                stream.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(stream)
            }
        }
    }
}

/// Brings up `name` (e.g. "lo", or an alias "lo:1" given `address`) in the current thread's
/// network namespace, with the old interface ioctls: no netlink needed.
unsafe fn interface_up(name: &str, address: Option<std::net::Ipv4Addr>) -> std::io::Result<()> {
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned here.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    if let Some(address) = address {
        let mut sockaddr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sockaddr.sin_family = libc::AF_INET as libc::sa_family_t;
        sockaddr.sin_addr.s_addr = u32::from(address).to_be();
        // SAFETY: sockaddr_in fits in the ifreq's sockaddr slot.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &sockaddr as *const libc::sockaddr_in as *const u8,
                &mut request.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut u8,
                std::mem::size_of::<libc::sockaddr_in>(),
            );
        }
        ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &mut request)?;
        // One address, not its class's whole network (10.0.0.0/8 would otherwise be local).
        sockaddr.sin_addr.s_addr = u32::MAX;
        // SAFETY: as above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &sockaddr as *const libc::sockaddr_in as *const u8,
                &mut request.ifr_ifru.ifru_netmask as *mut libc::sockaddr as *mut u8,
                std::mem::size_of::<libc::sockaddr_in>(),
            );
        }
        ioctl(socket.as_raw_fd(), libc::SIOCSIFNETMASK, &mut request)?;
    }
    ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request)?;
    unsafe {
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request)
}

fn ioctl(fd: RawFd, request: libc::Ioctl, ifreq: &mut libc::ifreq) -> std::io::Result<()> {
    // SAFETY: the interface requests take a pointer to an ifreq.
    if unsafe { libc::ioctl(fd, request, ifreq as *mut libc::ifreq) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The pods' network: a bridge in a namespace of its own, and in each pod an `eth0` on it with
/// the IP the cluster gave the pod, so pods reach each other on their own addresses (the
/// sidecars' internal gRPC port is the same in every pod, as in a cluster). iproute2's `ip`
/// makes the links; a `sleep` process holds the bridge's namespace, the way a pod's pause
/// container holds a pod's.
pub struct PodLan {
    network: PodNetwork,
    holder: crate::ManagedProcess,
    links: u32,
}

impl PodLan {
    pub fn new() -> Result<Self, Error> {
        let network = PodNetwork::new(&[])?;
        let mut sleep = Command::new("sleep");
        sleep.arg("infinity");
        network.enter(&mut sleep);
        let holder = crate::ManagedProcess::spawn("pod-network", sleep, crate::LogSink::Capture)?;
        network.ip(&["link", "add", "br0", "type", "bridge"])?;
        network.ip(&["link", "set", "br0", "up"])?;
        Ok(Self {
            network,
            holder,
            links: 0,
        })
    }

    /// Gives `pod` an `eth0` with `address`/24 on the bridge.
    pub fn attach(&mut self, pod: &PodNetwork, address: std::net::Ipv4Addr) -> Result<(), Error> {
        self.links += 1;
        let peer = format!("pod{}", self.links);
        let holder = self.holder.pid().to_string();
        pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &holder,
        ])?;
        pod.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        self.network.ip(&["link", "set", &peer, "master", "br0"])?;
        self.network.ip(&["link", "set", &peer, "up"])
    }
}

impl PodNetwork {
    /// Runs `ip args...` inside this namespace.
    fn ip(&self, args: &[&str]) -> Result<(), Error> {
        let mut command = Command::new("ip");
        command.args(args);
        self.enter(&mut command);
        let output = command.output().map_err(|source| Error::NotRunnable {
            what: "ip (iproute2)",
            program: "ip".into(),
            install: "apt-get install -y iproute2".into(),
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::Io {
            what: format!("the pod network (ip {})", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        })
    }
}
