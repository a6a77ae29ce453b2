//! Hosts whose links can be cut: one Linux network namespace per host,
//! joined by veth pairs to a bridge in the test's own namespace.
//!
//! A partition test needs processes that keep running and accepting
//! connections while they cannot reach each other — what loopback cannot
//! give. Each host `i` gets a namespace with the address `10.<net>.<i+10>`
//! on a veth whose other end sits on the bridge, where the test (and every
//! client it starts) has `10.<net>.1`: the test reaches every host, and the
//! hosts reach each other through the bridge.
//!
//! Links are cut inside the namespaces with blackhole routes: packets from
//! `i` to `j` are dropped without a word, as a failed switch or a firewall
//! drops them, and TCP connections between them hang until their own
//! timeouts notice — the same as a real partition. The test's side keeps
//! reaching both, so it decides where its clients stand by which host they
//! connect to.
//!
//! Needs root (or `CAP_NET_ADMIN`) and iproute2's `ip`: [`Network::available`]
//! says whether this machine allows it, so a test can say it is skipped.
//! Everything is removed on drop, and namespaces left by a test process
//! that died are swept at the next start (their names carry the PID).

use std::process::Command;

/// The prefix of every namespace and link this module makes.
const PREFIX: &str = "sbp";

/// Why a network could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// An `ip` command failed (its words).
    #[error("`ip {command}` failed: {output}")]
    Ip {
        /// The arguments.
        command: String,
        /// What it printed.
        output: String,
    },
    /// `ip` could not be run at all.
    #[error("cannot run `ip` (iproute2): {0}")]
    Missing(#[from] std::io::Error),
}

/// A bridge and one namespace per host.
#[derive(Debug)]
pub struct Network {
    id: String,
    net: u8,
    hosts: usize,
    /// Blackholed (from, to) pairs.
    cut: std::collections::BTreeSet<(usize, usize)>,
}

fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let output = Command::new("ip").args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Ip {
            command: args.join(" "),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn ip_output(args: &[&str]) -> Result<String, NetworkError> {
    let output = Command::new("ip").args(args).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Network {
    /// Whether namespaces can be made here; `Err` says why not.
    ///
    /// # Errors
    ///
    /// The failure of making and removing a namespace.
    pub fn available() -> Result<(), NetworkError> {
        let probe = format!("{PREFIX}{}p{}", std::process::id(), next_instance());
        ip(&["netns", "add", &probe])?;
        ip(&["netns", "del", &probe])
    }

    /// A bridge and `hosts` namespaces, each host reachable from here and
    /// from every other host.
    ///
    /// # Errors
    ///
    /// When a namespace, link or address cannot be made (what was made is
    /// removed).
    pub fn create(hosts: usize) -> Result<Network, NetworkError> {
        sweep();
        let pid = std::process::id();
        // The PID keeps test processes apart, the instance a process's
        // networks (tests of one binary run in parallel); names stay within
        // the 15 bytes a link name may have.
        let instance = next_instance() % 10;
        let net = u8::try_from((pid * 10 + instance) % 200).unwrap_or(0) + 20;
        let network = Network {
            id: format!("{PREFIX}{pid}x{instance}"),
            net,
            hosts,
            cut: std::collections::BTreeSet::new(),
        };
        network.build()?;
        Ok(network)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.id)
    }

    /// The namespace of host `i`.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.id)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.id)
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.net, i + 10)
    }

    /// The command prefix that runs a program on host `i` (for
    /// [`ServerOptions::launcher`](crate::server::ServerOptions::launcher)).
    pub fn launcher(&self, i: usize) -> Vec<String> {
        vec![
            "ip".to_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.namespace(i),
        ]
    }

    fn build(&self) -> Result<(), NetworkError> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.1/24", self.net),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..self.hosts {
            let (ns, veth) = (self.namespace(i), self.veth(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["link", "set", "lo", "up"])?;
            inside(&[
                "addr",
                "add",
                &format!("{}/24", self.address(i)),
                "dev",
                "eth0",
            ])?;
            inside(&["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn blackhole(&mut self, from: usize, to: usize, on: bool) -> Result<(), NetworkError> {
        if from == to || on == self.cut.contains(&(from, to)) {
            return Ok(());
        }
        let target = format!("{}/32", self.address(to));
        let verb = if on { "add" } else { "del" };
        ip(&[
            "netns",
            "exec",
            &self.namespace(from),
            "ip",
            "route",
            verb,
            "blackhole",
            &target,
        ])?;
        if on {
            self.cut.insert((from, to));
        } else {
            self.cut.remove(&(from, to));
        }
        Ok(())
    }

    /// Cuts the link between hosts `a` and `b` (both directions).
    ///
    /// # Errors
    ///
    /// When a route cannot be changed.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), NetworkError> {
        self.blackhole(a, b, true)?;
        self.blackhole(b, a, true)
    }

    /// Cuts host `i` off from every other host (the test still reaches it).
    ///
    /// # Errors
    ///
    /// When a route cannot be changed.
    pub fn isolate(&mut self, i: usize) -> Result<(), NetworkError> {
        for other in 0..self.hosts {
            self.cut(i, other)?;
        }
        Ok(())
    }

    /// Restores every link.
    ///
    /// # Errors
    ///
    /// When a route cannot be changed.
    pub fn heal(&mut self) -> Result<(), NetworkError> {
        for (from, to) in self.cut.clone() {
            self.blackhole(from, to, false)?;
        }
        Ok(())
    }

    fn remove(&self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the namespaces and links of test processes that are gone.
fn sweep() {
    let Ok(listing) = ip_output(&["netns", "list"]) else {
        return;
    };
    let mut dead = std::collections::BTreeSet::new();
    for name in listing.split_whitespace() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(pid) = digits.parse::<u32>()
            && !crate::process::exists(pid)
        {
            dead.insert(pid);
            let _ = ip(&["netns", "del", name]);
        }
    }
    for pid in dead {
        for instance in 0..10 {
            let id = format!("{PREFIX}{pid}x{instance}");
            let _ = ip(&["link", "del", &format!("{id}b")]);
            for i in 0..16 {
                let _ = ip(&["link", "del", &format!("{id}v{i}")]);
            }
        }
    }
}

/// A number per network (or probe) this process makes.
fn next_instance() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
