//! Network namespaces for process clusters (FAULT-SCENARIOS.md "NS"; needs root): every storage
//! node and coordinator runs in a namespace of its own with one veth pair into a Linux bridge in
//! the test's namespace, on a /24 of the test's own, so faults are cut in the kernel's network
//! rather than in a proxy:
//! - [`Net::isolate`]: the node's veth is set down at the bridge (a pulled cable: whatever either
//!   side sends is dropped, open connections go silent, nobody is told);
//! - [`Net::one_way`]: a blackhole route in the node's namespace toward each coordinator (requests
//!   arrive and are applied, replies are lost — S08);
//! - [`Net::cut`]: blackhole routes both ways between two hosts (a bridge partition is two cuts —
//!   S07).
//!
//! The test process reaches every host through the bridge. The metadata store (PostgreSQL on the
//! test's loopback) is reached through a [`crate::proxy::TcpProxy`] on the bridge's address.
//! Everything is removed on drop; namespaces left by a test process that died are removed by the
//! next [`Net::new`].

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where a process runs: a namespace (`None`: the test's own) and the address it binds.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: Option<String>,
    pub ip: String,
}

impl Host {
    /// The test's own namespace, on 127.0.0.1.
    pub fn loopback() -> Host {
        Host {
            ns: None,
            ip: "127.0.0.1".into(),
        }
    }

    /// `program` run in this host's namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        match &self.ns {
            None => Command::new(program),
            Some(ns) => {
                // `ip netns exec` enters the namespace and execs the program: the child's pid is
                // the server's, so signals reach it directly.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        }
    }
}

/// Runs `ip args…`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process may create namespaces (root).
pub fn available() -> bool {
    rustix::process::geteuid().is_root() && Command::new("ip").arg("-V").output().is_ok()
}

const PREFIX: &str = "pdbt";

/// Removes namespaces and bridges left by test processes that are gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // pdbt<pid in hex>g<n>-<host>
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((tag, _)) = rest.split_once('-') else {
            continue;
        };
        let Some(pid) = tag
            .split('g')
            .next()
            .and_then(|p| u32::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("{PREFIX}{tag}")]);
        }
    }
}

struct Member {
    ns: String,
    ip: String,
    /// The veth end at the bridge.
    port: String,
}

/// A bridge and the namespaces on it (one test's network).
pub struct Net {
    /// `<pid in hex>g<n>`: names stay unique within a process too (the kernel removes a
    /// namespace asynchronously, so the next test's could collide with the last one's).
    tag: String,
    bridge: String,
    subnet: String,
    pub gateway: String,
    members: BTreeMap<String, Member>,
    /// (host, toward) pairs with a blackhole route in `host`'s namespace.
    routes: Vec<(String, String)>,
}

impl Net {
    /// A bridge on a /24 derived from this process's pid and a counter, holding the gateway address.
    pub fn new() -> Result<Net> {
        anyhow::ensure!(available(), "network namespaces need root and iproute2");
        sweep_stale();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let pid = std::process::id();
        let tag = format!("{pid:x}g{n}");
        let subnet = format!("10.{}.{}", 100 + ((pid >> 8) * 10 + n) % 150, pid & 255);
        let bridge = format!("{PREFIX}{tag}");
        let net = Net {
            tag,
            gateway: format!("{subnet}.1"),
            bridge: bridge.clone(),
            subnet,
            members: BTreeMap::new(),
            routes: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(net)
    }

    /// A namespace for process `name`, on the bridge with the next address.
    pub fn host(&mut self, name: &str) -> Result<Host> {
        if let Some(m) = self.members.get(name) {
            return Ok(Host {
                ns: Some(m.ns.clone()),
                ip: m.ip.clone(),
            });
        }
        let idx = self.members.len() + 2;
        anyhow::ensure!(idx < 250, "too many hosts");
        let ns = format!("{PREFIX}{}-{name}", self.tag);
        let port = format!("{PREFIX}{}h{idx}", self.tag);
        let addr = format!("{}.{idx}", self.subnet);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &port, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        self.members.insert(
            name.into(),
            Member {
                ns: ns.clone(),
                ip: addr.clone(),
                port,
            },
        );
        Ok(Host {
            ns: Some(ns),
            ip: addr,
        })
    }

    fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .get(name)
            .with_context(|| format!("no host {name} on the test network"))
    }

    /// Cuts `name` off from everyone (its veth down at the bridge).
    pub fn isolate(&self, name: &str) -> Result<()> {
        ip(&["link", "set", &self.member(name)?.port, "down"])
    }

    /// Undoes [`Net::isolate`].
    pub fn rejoin(&self, name: &str) -> Result<()> {
        ip(&["link", "set", &self.member(name)?.port, "up"])
    }

    /// Drops whatever `from` sends to `to` (a blackhole route in `from`'s namespace).
    pub fn drop_from(&mut self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.member(from)?, self.member(to)?);
        ip(&[
            "-n",
            &f.ns,
            "route",
            "add",
            "blackhole",
            &format!("{}/32", t.ip),
        ])?;
        self.routes.push((from.into(), to.into()));
        Ok(())
    }

    /// Drops traffic both ways between `a` and `b`.
    pub fn cut(&mut self, a: &str, b: &str) -> Result<()> {
        self.drop_from(a, b)?;
        self.drop_from(b, a)
    }

    /// Removes every blackhole route.
    pub fn restore_routes(&mut self) -> Result<()> {
        for (from, to) in std::mem::take(&mut self.routes) {
            let (f, t) = (self.member(&from)?, self.member(&to)?);
            ip(&[
                "-n",
                &f.ns,
                "route",
                "del",
                "blackhole",
                &format!("{}/32", t.ip),
            ])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for m in self.members.values() {
            let _ = ip(&["netns", "del", &m.ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
