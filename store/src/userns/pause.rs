//! The pause process that holds a user's namespaces, and joining it.
//!
//! Starting one (the `lstore` process has one thread here, so `fork` is
//! safe): the child becomes a session leader named `lstore-pause`, makes a
//! user namespace and has it mapped (by `newuidmap`/`newgidmap`, run by a
//! helper it forks that stays outside, or by itself when only its own id
//! is mapped), makes a mount namespace, says "ok" on a pipe and sleeps.
//! Every command then `setns`es into its user and mount namespaces.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::idmap::{self, SubRange};
use super::UsernsError;

/// The pause process's name (its `/proc/PID/comm`).
const PAUSE_NAME: &str = "lstore-pause";

fn setup(reason: impl Into<String>) -> UsernsError {
    UsernsError::Setup(reason.into())
}

fn os_error(what: &str) -> UsernsError {
    setup(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// The ids to map: the user's own and their subordinate ranges.
struct Maps {
    uid: u32,
    gid: u32,
    uid_ranges: Vec<SubRange>,
    gid_ranges: Vec<SubRange>,
}

impl Maps {
    fn of_this_user() -> Maps {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let name = user_name(uid).unwrap_or_default();
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
        let (uid_ranges, gid_ranges) = if name.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (
                idmap::ranges_for(&read("/etc/subuid"), &name, uid),
                idmap::ranges_for(&read("/etc/subgid"), &name, uid),
            )
        };
        // Both or neither: a uid range without a gid range (or the other
        // way round) would map some owners and not others.
        if uid_ranges.is_empty() || gid_ranges.is_empty() {
            return Maps {
                uid,
                gid,
                uid_ranges: Vec::new(),
                gid_ranges: Vec::new(),
            };
        }
        Maps {
            uid,
            gid,
            uid_ranges,
            gid_ranges,
        }
    }

    fn uid_args(&self) -> Vec<String> {
        idmap::map_args(self.uid, &self.uid_ranges)
    }

    fn gid_args(&self) -> Vec<String> {
        idmap::map_args(self.gid, &self.gid_ranges)
    }
}

/// The user's login name, from the password database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the result points into
    // `buf`, read before `buf` is dropped.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `$XDG_RUNTIME_DIR/lstore/pause.pid`, else `/run/user/UID/lstore/`,
/// else `/tmp/lstore-run-UID/`. A runtime folder counts only when it is
/// absolute, the user's and mode 0700; the `/tmp` one is made 0700 by us
/// or refused: in a shared folder, another user could plant a pid there.
fn pid_file() -> Result<PathBuf, UsernsError> {
    let uid = rustix::process::getuid().as_raw();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| is_private_dir(d, uid))
        .or_else(|| {
            Some(PathBuf::from(format!("/run/user/{uid}"))).filter(|d| is_private_dir(d, uid))
        });
    let dir = match runtime {
        Some(d) => d.join("lstore"),
        None => PathBuf::from(format!("/tmp/lstore-run-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(format!("cannot create {}: {e}", dir.display()))),
    }
    if !is_private_dir(&dir, uid) {
        return Err(setup(format!(
            "{} is not a folder of this user with mode 0700",
            dir.display()
        )));
    }
    Ok(dir.join("pause.pid"))
}

/// An absolute path to a real folder (not a symlink) owned by `uid`, mode 0700.
fn is_private_dir(dir: &Path, uid: u32) -> bool {
    dir.is_absolute()
        && std::fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o7777 == 0o700)
}

/// The pid of this user's running pause process named in `file` (a
/// zombie is gone: it holds no namespace to join).
fn live_pause(file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let comm = std::fs::read_to_string(proc_dir.join("comm")).ok()?;
    let owner = std::fs::metadata(&proc_dir).ok()?.uid();
    let alive =
        comm.trim() == PAUSE_NAME && owner == rustix::process::getuid().as_raw() && !is_zombie(pid);
    alive.then_some(pid)
}

/// Whether `/proc/PID/stat` gives state `Z` (the state follows the
/// command name, which may itself hold `)`).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .is_some_and(|end| stat[end + 1..].trim_start().starts_with('Z'))
    })
}

/// Whether the pause process maps exactly the ids `maps` asks for (the
/// user's subordinate ids may have changed since it started).
fn maps_match(pid: i32, maps: &Maps) -> bool {
    let read = |what: &str| std::fs::read_to_string(format!("/proc/{pid}/{what}")).ok();
    match (read("uid_map"), read("gid_map")) {
        (Some(u), Some(g)) => {
            idmap::same_map(&u, &maps.uid_args()) && idmap::same_map(&g, &maps.gid_args())
        }
        _ => false,
    }
}

pub(super) fn join_or_start() -> Result<(), UsernsError> {
    let file = pid_file()?;
    let maps = Maps::of_this_user();
    // One starter at a time: the others wait and join its process.
    let lock_path = file.with_extension("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| setup(format!("{}: {e}", lock_path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| setup(format!("lock {}: {e}", lock_path.display())))?;
    let pid = match live_pause(&file) {
        Some(pid) if maps_match(pid, &maps) => pid,
        stale => {
            // Made with other ranges: its mounts go with it, as with
            // `podman system migrate`.
            if let Some(old) = stale.and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(old, rustix::process::Signal::KILL);
            }
            let pid = start(&maps)?;
            let tmp = file.with_extension("pid.tmp");
            std::fs::write(&tmp, format!("{pid}\n"))
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(|e| setup(format!("write {}: {e}", file.display())))?;
            pid
        }
    };
    drop(lock);
    join(pid)
}

/// Enters the user and mount namespaces of `pid`, keeping the cwd.
fn join(pid: i32) -> Result<(), UsernsError> {
    let cwd = std::env::current_dir().ok();
    // The cwd itself, for when its path cannot be walked from inside (a
    // folder below one the user may not enter, as `sudo -u` leaves it).
    let cwd_fd = File::open(".").ok();
    let open = |ns: &str| {
        File::open(format!("/proc/{pid}/ns/{ns}"))
            .map_err(|e| setup(format!("open the pause process's {ns} namespace: {e}")))
    };
    let user = open("user")?;
    let mnt = open("mnt")?;
    // SAFETY: plain syscalls on fds we own.
    if unsafe { libc::setns(user.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
        return Err(os_error(
            "join the user namespace (is lstore running threads?)",
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(os_error("join the mount namespace"));
    }
    // Joining a mount namespace moves the cwd to its root.
    if let Some(cwd) = cwd {
        if let Err(e) = std::env::set_current_dir(&cwd) {
            // SAFETY: fchdir on a directory fd we own.
            let back = cwd_fd
                .as_ref()
                .is_some_and(|fd| unsafe { libc::fchdir(fd.as_raw_fd()) } == 0);
            if !back {
                return Err(setup(format!("return to {}: {e}", cwd.display())));
            }
        }
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), UsernsError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds, which become ours.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe"));
    }
    // SAFETY: fresh fds owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Forks the pause process; returns its pid once its namespaces are ready.
fn start(maps: &Maps) -> Result<i32, UsernsError> {
    if threads() != 1 {
        return Err(setup(
            "the namespaces must be made before any thread starts",
        ));
    }
    let (read_end, write_end) = pipe()?;
    // SAFETY: one thread: the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    if pid == 0 {
        drop(read_end);
        let mut report = File::from(write_end);
        match become_pause(maps) {
            Ok(()) => {
                let _ = report.write_all(b"ok");
                drop(report);
                sleep_forever();
            }
            Err(e) => {
                let _ = report.write_all(e.to_string().as_bytes());
                // SAFETY: ends the child without running the parent's exit code.
                unsafe { libc::_exit(1) };
            }
        }
    }
    drop(write_end);
    let mut answer = String::new();
    let _ = File::from(read_end).read_to_string(&mut answer);
    if answer == "ok" {
        return Ok(pid);
    }
    let mut status = 0;
    // SAFETY: reaps the failed child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Err(if answer.is_empty() {
        setup("the pause process died")
    } else {
        setup(answer.trim_start_matches("user namespace: ").to_string())
    })
}

/// In the forked child: a new session, the namespaces, mapped.
fn become_pause(maps: &Maps) -> Result<(), UsernsError> {
    // SAFETY: plain syscalls.
    unsafe {
        libc::setsid();
        let name = CString::new(PAUSE_NAME).expect("no NUL");
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    if maps.uid_ranges.is_empty() {
        // SAFETY: plain syscall.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(os_error("unshare the user namespace"));
        }
        map_own_ids(maps)?;
    } else {
        map_with_helper(maps)?;
    }
    // SAFETY: plain syscalls; the mount calls take valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os_error("unshare the mount namespace"));
        }
        // Our mounts stay ours; the host's still show up.
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(os_error("make / a slave mount"));
        }
        let _ = libc::chdir(root.as_ptr());
    }
    Ok(())
}

/// Without subordinate ids: the process maps its own id to 0 itself.
fn map_own_ids(maps: &Maps) -> Result<(), UsernsError> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| setup(format!("write /proc/self/{file}: {e}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {} 1\n", maps.uid))?;
    write("gid_map", format!("0 {} 1\n", maps.gid))
}

/// With subordinate ids: a helper left outside the new namespace runs
/// newuidmap and newgidmap on this process once it has unshared.
fn map_with_helper(maps: &Maps) -> Result<(), UsernsError> {
    let (read_end, write_end) = pipe()?;
    let me = std::process::id();
    // SAFETY: one thread (the pause child of a one-thread process).
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        return Err(os_error("fork"));
    }
    if helper == 0 {
        drop(write_end);
        let mut go = [0u8; 1];
        let code = match File::from(read_end).read(&mut go) {
            Ok(1) => run_map_tools(me, maps),
            _ => 10,
        };
        // SAFETY: ends the helper without running the parent's exit code.
        unsafe { libc::_exit(code) };
    }
    drop(read_end);
    let mut go = File::from(write_end);
    // SAFETY: plain syscall.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    let unshare_error = std::io::Error::last_os_error();
    if unshared == 0 {
        let _ = go.write_all(b"1");
    }
    drop(go);
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(helper, &mut status, 0) };
    if unshared != 0 {
        return Err(setup(format!(
            "unshare the user namespace: {unshare_error}"
        )));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    match code {
        0 => Ok(()),
        1 => Err(setup("newuidmap failed (check /etc/subuid)")),
        2 => Err(setup("newgidmap failed (check /etc/subgid)")),
        3 => Err(setup(
            "newuidmap/newgidmap not found: install the uidmap package",
        )),
        _ => Err(setup("the id-mapping helper failed")),
    }
}

/// In the helper: maps `pid`'s ids; exit code 0, or which tool failed.
fn run_map_tools(pid: u32, maps: &Maps) -> i32 {
    let run = |tool: &str, args: Vec<String>| {
        std::process::Command::new(tool)
            .arg(pid.to_string())
            .args(args)
            .status()
    };
    match run("newuidmap", maps.uid_args()) {
        Ok(s) if s.success() => {}
        Ok(_) => return 1,
        Err(_) => return 3,
    }
    match run("newgidmap", maps.gid_args()) {
        Ok(s) if s.success() => 0,
        Ok(_) => 2,
        Err(_) => 3,
    }
}

/// The pause process's life once ready: no files of the command that
/// started it stay open (its caller may be waiting for their end).
fn sleep_forever() -> ! {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: replaces the standard fds with /dev/null.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: closes every fd above stderr; nothing here uses them.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    loop {
        // SAFETY: waits for a signal; the default actions end the process.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_runtime_folder_must_be_absolute_the_users_and_0700() {
        let uid = rustix::process::getuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(is_private_dir(dir.path(), uid));
        assert!(!is_private_dir(dir.path(), uid + 1));
        assert!(!is_private_dir(Path::new("relative"), uid));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!is_private_dir(dir.path(), uid));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(!is_private_dir(&link, uid));
    }

    #[test]
    fn an_exited_unreaped_child_is_a_zombie() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not reaped yet: it stays a zombie once it has exited.
        let mut zombie = false;
        for _ in 0..500 {
            zombie = is_zombie(pid);
            if zombie {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(zombie, "pid {pid} never showed state Z");
        child.wait().unwrap();
        assert!(!is_zombie(std::process::id() as i32));
    }
}
