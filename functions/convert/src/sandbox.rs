//! The box ffmpeg and ffprobe run in: they parse hostile files, so a bug
//! in a demuxer must not reach the network, other users' uploads, the
//! state directory or the compile cache.
//!
//! Layers, each used where the kernel allows it (found once at start-up and
//! logged):
//! - **Landlock**: the child may read and execute the system's programs and
//!   libraries, read the one spooled upload, and nothing else on disk; it
//!   may neither connect nor bind TCP, nor signal the host.
//! - **seccomp**: `socket`, `ptrace` and `process_vm_*` fail, so no network
//!   of any kind and no peeking into the host's memory.
//! - **a network namespace** of its own (needs CAP_SYS_ADMIN): no interfaces
//!   at all.
//! - **rlimits**: CPU time, address space, no file writes, no core dumps.
//!
//! Everything is prepared in the parent; between fork and exec the child
//! only makes system calls (nothing allocates there).

use landlock::{
    ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::process::Command;

/// The Landlock ABI whose rights are asked for (kernels with less grant
/// what they have).
const LANDLOCK_ABI: ABI = ABI::V6;

/// Directories whose files the child may read and execute: the program
/// and its shared libraries.
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin"];

/// Single files the child may read: the loader's cache, time zone, random
/// numbers, and what ffmpeg reads to count CPUs.
const SYSTEM_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/urandom",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
];

/// What one child may use of the machine.
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    pub cpu_secs: u64,
    pub address_space: u64,
}

/// The protections this machine allows.
#[derive(Debug, Clone)]
pub struct Sandbox {
    landlock: bool,
    seccomp: Option<Arc<BpfProgram>>,
    net_namespace: bool,
    /// Where the programs live, when not under [`SYSTEM_DIRS`].
    program_dirs: Vec<PathBuf>,
}

impl Sandbox {
    /// Tries each layer on `programs` (`-version`) and keeps those under
    /// which they all run.
    pub async fn detect(programs: &[&Path]) -> Sandbox {
        let program_dirs = programs
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok().or_else(|| which(p)))
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .filter(|dir| !SYSTEM_DIRS.iter().any(|s| dir.starts_with(s)))
            .collect();
        let none = Sandbox {
            landlock: false,
            seccomp: None,
            net_namespace: false,
            program_dirs,
        };
        let seccomp = match socket_filter() {
            Ok(filter) => Some(Arc::new(filter)),
            Err(e) => {
                tracing::warn!("cannot build the seccomp filter for ffmpeg: {e}");
                None
            }
        };
        let landlock = Sandbox {
            landlock: true,
            ..none.clone()
        }
        .runs(programs)
        .await;
        let seccomp_runs = Sandbox {
            seccomp: seccomp.clone(),
            ..none.clone()
        }
        .runs(programs)
        .await;
        let net_namespace = Sandbox {
            net_namespace: true,
            ..none.clone()
        }
        .runs(programs)
        .await;
        Sandbox {
            landlock,
            seccomp: seccomp.filter(|_| seccomp_runs),
            net_namespace,
            ..none
        }
    }

    async fn runs(&self, programs: &[&Path]) -> bool {
        for program in programs {
            let mut command = Command::new(program);
            command
                .arg("-version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let limits = Rlimits {
                cpu_secs: 10,
                address_space: 1 << 30,
            };
            if self.confine(&mut command, None, limits).is_err() {
                return false;
            }
            if !matches!(command.status().await, Ok(status) if status.success()) {
                return false;
            }
        }
        true
    }

    /// One line for the log: which protections are on.
    pub fn describe(&self) -> String {
        let on_off = |on: bool| if on { "on" } else { "off" };
        format!(
            "ffmpeg sandbox: Landlock (files: the upload only; no TCP) {}, seccomp (no sockets, no ptrace) {}, own network namespace {}{}",
            on_off(self.landlock),
            on_off(self.seccomp.is_some()),
            on_off(self.net_namespace),
            if self.net_namespace {
                ""
            } else {
                " (needs CAP_SYS_ADMIN)"
            }
        )
    }

    /// Sets `command` up to run boxed, reading only `input` beyond the
    /// system's files.
    pub fn confine(
        &self,
        command: &mut Command,
        input: Option<&Path>,
        limits: Rlimits,
    ) -> std::io::Result<()> {
        let ruleset = if self.landlock {
            Some(self.ruleset(input)?)
        } else {
            None
        };
        let seccomp = self.seccomp.clone();
        let net_namespace = self.net_namespace;
        let caps = [
            (libc::RLIMIT_CPU, limits.cpu_secs),
            (libc::RLIMIT_AS, limits.address_space),
            (libc::RLIMIT_FSIZE, 0),
            (libc::RLIMIT_CORE, 0),
        ];
        // SAFETY: the closure runs in the forked child before exec and only
        // makes system calls (setrlimit, unshare, prctl, landlock, seccomp);
        // it allocates nothing and takes no lock.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                for (resource, value) in caps {
                    let limit = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    if libc::setrlimit(resource, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if net_namespace && libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = &ruleset
                    && libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(filter) = &seccomp {
                    seccompiler::apply_filter(filter).map_err(std::io::Error::other)?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The Landlock ruleset for one child, as a file descriptor.
    fn ruleset(&self, input: Option<&Path>) -> std::io::Result<OwnedFd> {
        let fail = |e: landlock::RulesetError| std::io::Error::other(e.to_string());
        let read_execute = AccessFs::from_read(LANDLOCK_ABI);
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(LANDLOCK_ABI))
            .map_err(fail)?
            .handle_access(AccessNet::from_all(LANDLOCK_ABI))
            .map_err(fail)?
            .scope(Scope::from_all(LANDLOCK_ABI))
            .map_err(fail)?
            .create()
            .map_err(fail)?;
        let dirs = SYSTEM_DIRS
            .iter()
            .map(PathBuf::from)
            .chain(self.program_dirs.iter().cloned());
        for dir in dirs {
            if let Ok(fd) = PathFd::new(&dir) {
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, read_execute))
                    .map_err(fail)?;
            }
        }
        for file in SYSTEM_FILES {
            let Ok(fd) = PathFd::new(file) else {
                continue;
            };
            let access = if Path::new(file).is_dir() {
                AccessFs::ReadFile | AccessFs::ReadDir
            } else if file.starts_with("/dev/") {
                AccessFs::ReadFile | AccessFs::WriteFile
            } else {
                AccessFs::ReadFile.into()
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(fail)?;
        }
        if let Some(input) = input {
            let fd = PathFd::new(input).map_err(|e| std::io::Error::other(e.to_string()))?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, AccessFs::ReadFile))
                .map_err(fail)?;
        }
        Option::<OwnedFd>::from(ruleset)
            .ok_or_else(|| std::io::Error::other("Landlock is not supported by this kernel"))
    }
}

/// A filter under which `socket`, `ptrace` and `process_vm_{read,write}v`
/// fail with EACCES and every other system call is allowed.
fn socket_filter() -> Result<BpfProgram, String> {
    let denied = [
        libc::SYS_socket,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
    ];
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        denied.into_iter().map(|call| (call, Vec::new())).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// `name` looked up on `PATH`.
fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return None;
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}
