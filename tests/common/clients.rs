//! Container tools as clients of a registry, each with private state in a
//! temp dir so that nothing of the machine's own podman or containerd is
//! read or changed: podman with its own storage.conf, registries.conf and
//! containers.conf; containerd as its own daemon (root, state, socket),
//! driven with ctr and a hosts directory of registry mirrors.

use super::lstore::Output;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long containerd may take to answer on its socket (a bound, not a
/// pause: the wait ends as soon as it answers).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a clean-up command, whatever comes of it: it runs in `drop`, where
/// a panic (say, the tool is missing) during a failing test would abort.
fn clean_up(command: &mut Command) {
    let _ = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn must_succeed(out: Output, what: &str) -> Output {
    assert!(
        out.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// Lazily unmounts whatever a tool left mounted on or below `dir`, deepest
/// first, so removing the temp dir never walks into a mounted tree.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|target| target.starts_with(&prefix) || Path::new(target) == dir)
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = Command::new("umount").arg("-l").arg(target).status();
    }
}

// ------------------------------------------------------------------ podman

/// podman with its own image store (overlay driver) and registry settings.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// `insecure` lists registries (`HOST:PORT`) spoken to over plain HTTP
    /// or without verifying their certificate.
    pub fn new(insecure: &[&str]) -> Podman {
        let mut registries = String::from("unqualified-search-registries = []\n");
        for host in insecure {
            registries.push_str(&format!(
                "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        Podman::with_registries(&registries)
    }

    /// Images of `upstream` are pulled from `mirror` first (both `HOST:PORT`,
    /// plain HTTP), as a `[[registry.mirror]]` in registries.conf says.
    pub fn mirrored(upstream: &str, mirror: &str) -> Podman {
        Podman::with_registries(&format!(
            "unqualified-search-registries = []\n\
             [[registry]]\nprefix = \"{upstream}\"\nlocation = \"{upstream}\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ))
    }

    /// podman that also reads the read-only image store at `image_store`
    /// (`additionalimagestores` in its storage.conf), as a user points
    /// podman at `<lstore root>/containers-storage`.
    pub fn with_image_store(image_store: &Path, insecure: &[&str]) -> Podman {
        let podman = Podman::new(insecure);
        let conf = podman.dir.path().join("storage.conf");
        let mut text = fs::read_to_string(&conf).expect("storage.conf");
        text.push_str(&format!(
            "[storage.options]\nadditionalimagestores = [\"{}\"]\n",
            image_store.display()
        ));
        fs::write(&conf, text).expect("storage.conf");
        podman
    }

    /// The layer folders in podman's own store (its graphroot's `overlay/`,
    /// less the `l/` links folder).
    pub fn own_layer_dirs(&self) -> Vec<String> {
        let dir = self.dir.path().join("root/overlay");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "l" && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A container of `reference` (`podman create --pull=never`) mounted
    /// with `podman mount`: podman 4.3 cannot `podman image mount` an image
    /// of an additional store. Unmounted and removed on drop.
    pub fn container_mount(&self, reference: &str) -> PodmanMount<'_> {
        let id = self
            .ok(&["create", "--pull=never", reference])
            .stdout
            .trim()
            .to_string();
        let out = self.ok(&["mount", &id]);
        PodmanMount {
            podman: self,
            reference: id,
            path: PathBuf::from(out.stdout.trim()),
            container: true,
        }
    }

    /// podman whose registries.conf is `registries`.
    fn with_registries(registries: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("lstore-podman-")
            .tempdir()
            .expect("podman dir");
        let path = |name: &str| dir.path().join(name);
        fs::write(
            path("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                path("root").display(),
                path("run").display()
            ),
        )
        .expect("storage.conf");
        fs::write(path("registries.conf"), registries).expect("registries.conf");
        // No journald events and no state under /run/libpod.
        fs::write(
            path("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n\
                 tmp_dir = \"{}\"\n",
                path("tmp").display()
            ),
        )
        .expect("containers.conf");
        Podman { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let path = |name: &str| self.dir.path().join(name);
        let mut command = Command::new("podman");
        command
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", path("registries.conf"))
            .env("CONTAINERS_CONF", path("containers.conf"))
            .env("TMPDIR", self.dir.path())
            .env_remove("REGISTRY_AUTH_FILE");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(
            &mut self.command(args),
            &format!("podman {}", args.join(" ")),
        )
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        must_succeed(self.run(args), &format!("podman {}", args.join(" ")))
    }

    /// `podman image inspect REF`: the one image's object.
    pub fn inspect(&self, reference: &str) -> Value {
        let out = self.ok(&["image", "inspect", reference]);
        let parsed: Value = serde_json::from_str(&out.stdout).expect("podman inspect JSON");
        parsed[0].clone()
    }

    /// `podman image mount REF`: the image's root filesystem, unmounted when
    /// the returned guard is dropped.
    pub fn mount(&self, reference: &str) -> PodmanMount<'_> {
        let out = self.ok(&["image", "mount", reference]);
        PodmanMount {
            podman: self,
            reference: reference.to_string(),
            path: PathBuf::from(out.stdout.trim()),
            container: false,
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        clean_up(&mut self.command(&["image", "unmount", "--all", "--force"]));
        unmount_below(self.dir.path());
    }
}

/// An image mounted by `podman image mount`, or a container by `podman
/// mount`.
pub struct PodmanMount<'a> {
    podman: &'a Podman,
    reference: String,
    path: PathBuf,
    container: bool,
}

impl PodmanMount<'_> {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PodmanMount<'_> {
    /// Unmounts now (and removes the container), checking that podman did.
    pub fn unmount(mut self) {
        let reference = std::mem::take(&mut self.reference);
        if self.container {
            self.podman.ok(&["umount", &reference]);
            self.podman.ok(&["rm", &reference]);
        } else {
            self.podman.ok(&["image", "unmount", &reference]);
        }
    }
}

impl Drop for PodmanMount<'_> {
    fn drop(&mut self) {
        if self.reference.is_empty() {
            return;
        }
        if self.container {
            clean_up(&mut self.podman.command(&["umount", &self.reference]));
            clean_up(&mut self.podman.command(&["rm", "-f", &self.reference]));
        } else {
            clean_up(&mut self.podman.command(&["image", "unmount", &self.reference]));
        }
    }
}

// -------------------------------------------------------------- containerd

/// A containerd daemon of its own (CRI only if asked), its socket, root and state in a
/// temp dir, and a hosts directory for `ctr --hosts-dir`. Killed on drop.
pub struct Containerd {
    dir: TempDir,
    child: Child,
}

/// The proxy snapshotter name `with_lstore_snapshotter` configures.
pub const LSTORE_SNAPSHOTTER: &str = "lstore";

/// The containerd namespace the tests use.
pub const CTR_NAMESPACE: &str = "lstore-test";

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with("")
    }

    /// A containerd with `lstore snapshotter` on `socket` as its proxy
    /// snapshotter `lstore`.
    pub fn with_lstore_snapshotter(socket: &Path) -> Containerd {
        Containerd::start_with(&format!(
            "[proxy_plugins.{LSTORE_SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            socket.display()
        ))
    }

    /// As `with_lstore_snapshotter`, with containerd's CRI plugin on (its
    /// image service, as the kubelet uses it) pulling with the `lstore`
    /// snapshotter. It has no network to set up pods with: its CNI folders
    /// are empty, which is enough for image pulls. Its images are in the
    /// `k8s.io` namespace (`ctr_in`).
    pub fn with_lstore_cri(socket: &Path) -> Containerd {
        Containerd::start_config(
            &format!(
                "[proxy_plugins.{LSTORE_SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                socket.display()
            ),
            true,
        )
    }

    fn start_with(extra: &str) -> Containerd {
        Containerd::start_config(extra, false)
    }

    fn start_config(extra: &str, cri: bool) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("lstore-containerd-")
            .tempdir()
            .expect("containerd dir");
        let path = |name: &str| dir.path().join(name);
        let disabled = if cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\", "
        };
        // CRI: the lstore snapshotter, empty CNI folders, its streaming
        // server on loopback (a port of its choosing); no AppArmor profile.
        let cri_section = if cri {
            fs::create_dir_all(path("cni-bin")).expect("cni dir");
            fs::create_dir_all(path("cni-conf")).expect("cni dir");
            format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
                 stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  \
                 disable_apparmor = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
                 snapshotter = \"{LSTORE_SNAPSHOTTER}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  \
                 bin_dir = \"{bin}\"\n  conf_dir = \"{conf}\"\n",
                bin = path("cni-bin").display(),
                conf = path("cni-conf").display(),
            )
        } else {
            String::new()
        };
        // The CRI plugin reads mirrors from `config_path`; ctr is given the
        // same folder with --hosts-dir (it resolves on the client side).
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [{disabled}\
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             {cri_section}\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{hosts}\"\n{extra}",
            root = path("root").display(),
            state = path("state").display(),
            sock = path("containerd.sock").display(),
            hosts = path("hosts").display(),
        );
        fs::write(path("config.toml"), config).expect("containerd config");
        fs::create_dir_all(path("hosts")).expect("hosts dir");
        let child = Containerd::spawn(dir.path());
        let mut containerd = Containerd { dir, child };
        containerd.wait_ready();
        containerd
    }

    fn spawn(dir: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .expect("containerd log");
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start containerd")
    }

    /// Stops containerd (SIGKILL) and starts it again on the same root,
    /// state and config.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Containerd::spawn(self.dir.path());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        while !self.ctr(&["version"]).success() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The hosts directory (`config_path`, `ctr --hosts-dir`).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Makes `mirror` (`HOST:PORT`, plain HTTP) the mirror of `upstream`
    /// for pulls and tag resolution, as a node's hosts.toml does.
    pub fn mirror(&self, upstream: &str, mirror: &str) {
        let dir = self.hosts_dir().join(upstream);
        fs::create_dir_all(&dir).expect("hosts.toml dir");
        fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .expect("hosts.toml");
    }

    /// containerd's gRPC socket (where CRI is served too).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Makes `host` (`HOST:PORT`) a plain-HTTP registry for pulls and tag
    /// resolution (hosts.toml).
    pub fn plain_http(&self, host: &str) {
        let dir = self.hosts_dir().join(host);
        fs::create_dir_all(&dir).expect("hosts.toml dir");
        fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .expect("hosts.toml");
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(CTR_NAMESPACE, args)
    }

    fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .args(["-n", namespace])
            .args(args);
        command
    }

    /// `ctr --address SOCK -n NAMESPACE ARGS…`, which must succeed.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        let what = format!("ctr -n {namespace} {}", args.join(" "));
        must_succeed(run(&mut self.ctr_command_in(namespace, args), &what), &what)
    }

    /// `ctr --address SOCK -n lstore-test ARGS…`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(
            &mut self.ctr_command(args),
            &format!("ctr {}", args.join(" ")),
        )
    }

    pub fn ctr_ok(&self, args: &[&str]) -> Output {
        must_succeed(self.ctr(args), &format!("ctr {}", args.join(" ")))
    }

    /// `ctr --address SOCK -n lstore-test ARGS…` started in the
    /// background, its stdout and stderr written to `log`.
    pub fn ctr_spawn(&self, args: &[&str], log: &Path) -> Child {
        let file = fs::File::create(log).expect("ctr log");
        self.ctr_command(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start ctr {}: {e}", args.join(" ")))
    }

    /// `ctr images pull --hosts-dir … REF`.
    pub fn pull(&self, reference: &str) -> Output {
        let hosts = self.hosts_dir();
        let hosts = hosts.to_str().expect("utf-8 path");
        self.ctr_ok(&["images", "pull", "--hosts-dir", hosts, reference])
    }

    /// The manifest digest `ctr images ls` gives for `reference`.
    pub fn image_digest(&self, reference: &str) -> String {
        let out = self.ctr_ok(&["images", "ls"]);
        out.stdout
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&reference))
            .and_then(|fields| fields.get(2).map(|d| d.to_string()))
            .unwrap_or_else(|| panic!("ctr images ls has no {reference}:\n{}", out.stdout))
    }

    /// `ctr images mount REF TARGET` (read-only) on a temp dir, unmounted
    /// (and its snapshot removed) when the guard is dropped.
    pub fn mount(&self, reference: &str) -> CtrMount<'_> {
        let target = tempfile::Builder::new()
            .prefix("lstore-ctr-mnt-")
            .tempdir()
            .expect("mount point");
        let path = target.path().to_str().expect("utf-8 path").to_string();
        self.ctr_ok(&["images", "mount", reference, &path]);
        CtrMount {
            containerd: self,
            target,
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(self.dir.path());
    }
}

/// An image mounted by `ctr images mount`.
pub struct CtrMount<'a> {
    containerd: &'a Containerd,
    target: TempDir,
}

impl CtrMount<'_> {
    pub fn path(&self) -> &Path {
        self.target.path()
    }
}

impl Drop for CtrMount<'_> {
    fn drop(&mut self) {
        let path = self.target.path().to_str().expect("utf-8 path").to_string();
        clean_up(
            &mut self
                .containerd
                .ctr_command(&["images", "unmount", "--rm", &path]),
        );
        // Whatever ctr did, nothing stays mounted on the temp dir.
        unmount_below(self.target.path());
    }
}
