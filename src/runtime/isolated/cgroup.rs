//! cgroup limits of a sandbox (docs/isolation.md, "Limits"): memory and CPU through a cgroup
//! of its own, nested in the server's cgroup, in addition to the rlimits — where the server
//! can create one. cgroup v1 (the `memory` and `cpu` hierarchies) and cgroup v2 (a unified
//! hierarchy with the `memory` and `cpu` controllers) are detected from `/proc/self/cgroup`;
//! without a writable controller the sandbox has rlimits only, and the log says which.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The limits a sandbox's cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Bytes of memory (resident, page cache included); past it the kernel's OOM killer ends
    /// the sandbox.
    pub memory_bytes: u64,
    /// Percent of one CPU (CFS quota per 100 ms period); 0: no CPU limit.
    pub cpu_percent: u32,
}

/// A sandbox's cgroup(s): removed when dropped (once the sandbox has ended).
#[derive(Debug)]
pub struct Cgroup {
    /// The directories created (v1: one per hierarchy; v2: one).
    dirs: Vec<PathBuf>,
    /// The memory controller's directory.
    memory: PathBuf,
    v2: bool,
    /// What to log: the kind and the paths.
    pub description: String,
}

const CG_ROOT: &str = "/sys/fs/cgroup";
const CFS_PERIOD_US: u64 = 100_000;

/// The server's cgroup path in `hierarchy` (a v1 controller name, or "" for v2) from
/// `/proc/self/cgroup`.
fn own_path(text: &str, hierarchy: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if hierarchy.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == hierarchy)
        };
        hit.then(|| path.to_string())
    })
}

/// The directory of the server's cgroup in the v1 hierarchy of `controller`, if mounted.
fn v1_dir(text: &str, controller: &str) -> Option<PathBuf> {
    let path = own_path(text, controller)?;
    // The hierarchy is mounted at /sys/fs/cgroup/<controller> (or a combined name such as
    // cpu,cpuacct with a <controller> link).
    let mount = Path::new(CG_ROOT).join(controller);
    mount
        .join("cgroup.procs")
        .exists()
        .then(|| mount.join(path.trim_start_matches('/')))
}

/// Remove the cgroups that sandboxes of a server which died without cleaning up (SIGKILL) left
/// in `parent`: `keel-sandbox-<pid>` whose process is gone. A live sandbox's cgroup is never
/// touched (its pid exists; and `rmdir` of a cgroup with a process fails anyway).
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("keel-sandbox-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
}

impl Cgroup {
    /// Create the cgroup of the sandbox `pid` with `limits` and move it there. `Err`: why no
    /// cgroup could be used (nothing is left behind).
    pub fn create(pid: i32, limits: CgroupLimits) -> Result<Cgroup, String> {
        let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let name = format!("keel-sandbox-{pid}");
        let mut cg = Cgroup {
            dirs: Vec::new(),
            memory: PathBuf::new(),
            v2: false,
            description: String::new(),
        };
        let r = if let Some(mem) = v1_dir(&text, "memory") {
            cg.create_v1(&text, mem, &name, pid, limits)
        } else if let Some(path) = own_path(&text, "") {
            cg.create_v2(&path, &name, pid, limits)
        } else {
            Err("no cgroup memory controller found".to_string())
        };
        // On failure `cg` is dropped here and removes what it created.
        r.map(|()| cg)
    }

    fn mkdir(&mut self, dir: PathBuf) -> Result<PathBuf, String> {
        if let Some(parent) = dir.parent() {
            sweep(parent);
        }
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    fn create_v1(&mut self, text: &str, mem: PathBuf, name: &str, pid: i32, l: CgroupLimits) -> Result<(), String> {
        let m = self.mkdir(mem.join(name))?;
        write(&m, "memory.limit_in_bytes", &l.memory_bytes.to_string())
            .map_err(|e| format!("{}/memory.limit_in_bytes: {e}", m.display()))?;
        // No swapping around the limit: where swap accounting exists, limit memory + swap too.
        let _ = write(&m, "memory.swappiness", "0");
        let _ = write(&m, "memory.memsw.limit_in_bytes", &l.memory_bytes.to_string());
        self.memory = m.clone();
        let mut desc = format!("cgroup v1 memory {} ({} MiB)", m.display(), l.memory_bytes >> 20);
        let mut procs = vec![m];
        if l.cpu_percent > 0 {
            let cpu = v1_dir(text, "cpu").ok_or("no cgroup v1 cpu hierarchy for the CPU limit")?;
            let c = self.mkdir(cpu.join(name))?;
            write(&c, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())
                .and_then(|()| {
                    write(
                        &c,
                        "cpu.cfs_quota_us",
                        &(CFS_PERIOD_US * l.cpu_percent as u64 / 100).to_string(),
                    )
                })
                .map_err(|e| format!("{}/cpu.cfs_quota_us: {e}", c.display()))?;
            desc.push_str(&format!(", cpu {} ({}% of a CPU)", c.display(), l.cpu_percent));
            procs.push(c);
        }
        for d in procs {
            write(&d, "cgroup.procs", &pid.to_string()).map_err(|e| format!("{}/cgroup.procs: {e}", d.display()))?;
        }
        self.description = desc;
        Ok(())
    }

    fn create_v2(&mut self, path: &str, name: &str, pid: i32, l: CgroupLimits) -> Result<(), String> {
        let own = Path::new(CG_ROOT).join(path.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!("cgroup v2 at {} has no memory controller", own.display()));
        }
        // The controllers must be enabled for the children (the server's cgroup must then
        // hold no processes itself unless it is the root: the kernel refuses otherwise).
        let want = if l.cpu_percent > 0 { "+memory +cpu" } else { "+memory" };
        write(&own, "cgroup.subtree_control", want)
            .map_err(|e| format!("enabling {want} in {}/cgroup.subtree_control: {e}", own.display()))?;
        let d = self.mkdir(own.join(name))?;
        self.v2 = true;
        write(&d, "memory.max", &l.memory_bytes.to_string()).map_err(|e| format!("{}/memory.max: {e}", d.display()))?;
        let _ = write(&d, "memory.swap.max", "0");
        let mut desc = format!("cgroup v2 {} (memory {} MiB", d.display(), l.memory_bytes >> 20);
        if l.cpu_percent > 0 {
            write(
                &d,
                "cpu.max",
                &format!("{} {CFS_PERIOD_US}", CFS_PERIOD_US * l.cpu_percent as u64 / 100),
            )
            .map_err(|e| format!("{}/cpu.max: {e}", d.display()))?;
            desc.push_str(&format!(", cpu {}% of a CPU", l.cpu_percent));
        }
        desc.push(')');
        write(&d, "cgroup.procs", &pid.to_string()).map_err(|e| format!("{}/cgroup.procs: {e}", d.display()))?;
        self.memory = d;
        self.description = desc;
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(self.memory.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Called once the sandbox has been reaped: the cgroup is empty (its last task may
        // take a moment to leave it; retry briefly).
        for d in self.dirs.iter().rev() {
            for _ in 0..100 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(2)),
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_cgroup_paths_are_read_per_hierarchy() {
        let text = "12:memory:/a/b\n4:cpu,cpuacct:/c\n0::/unified/x\n";
        assert_eq!(own_path(text, "memory").as_deref(), Some("/a/b"));
        assert_eq!(own_path(text, "cpu").as_deref(), Some("/c"));
        assert_eq!(own_path(text, "cpuacct").as_deref(), Some("/c"));
        assert_eq!(own_path(text, "").as_deref(), Some("/unified/x"));
        assert_eq!(own_path(text, "pids"), None);
    }
}
