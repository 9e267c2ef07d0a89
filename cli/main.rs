//! `lstore`: the command line. It parses arguments, calls the library and
//! formats what comes back; nothing else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use lstore::{DiskUsage, ImageSummary, Removal, Store, StoreOptions, Stored};

mod progress;
mod size;

#[derive(Parser)]
#[command(
    name = "lstore",
    version,
    about = "A content-addressed container image store"
)]
struct Cli {
    /// Store root (default: $LSTORE_ROOT, else /var/lib/lstore for root,
    /// else $XDG_DATA_HOME/lstore).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// A user without subordinate ids: keep file owners their namespace
    /// cannot map in the user.containers.override_stat xattr (as
    /// containers/storage's ignore_chown_errors) instead of failing (load,
    /// pull, commit).
    /// The variable takes 1/0, true/false, yes/no, on/off.
    #[arg(
        long,
        global = true,
        env = "LSTORE_IGNORE_CHOWN_ERRORS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    ignore_chown_errors: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
}

/// How to reach a registry (pull, push, login).
#[derive(clap::Args)]
struct RegistryArgs {
    /// Allow plain HTTP with this registry (loopback ones always may).
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CA certificates to trust besides the system's.
    #[arg(long, value_name = "FILE", env = "SSL_CERT_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Pull an image from a registry.
    Pull {
        reference: String,
        /// OS/ARCH[/VARIANT] to pick from a multi-platform index.
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Layers downloaded at once.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
        /// Refuse a layer whose uncompressed tar is larger than this
        /// (bytes, or with a suffix: 512M, 64G).
        #[arg(long, value_name = "BYTES", value_parser = size::parse_size)]
        max_layer_size: Option<u64>,
        /// No progress output: print only the pulled reference.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Push an image to a registry (as REF, or as DEST).
    Push {
        reference: String,
        /// Where to push it (default: REF).
        dest: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Blobs pushed at once.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Store credentials for a registry in ~/.docker/config.json.
    Login {
        registry: String,
        #[arg(short, long)]
        username: Option<String>,
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        connection: RegistryArgs,
    },
    /// Remove stored credentials for a registry.
    Logout { registry: String },
    /// Load images from a docker-archive tar or an OCI layout (dir or tar).
    Load {
        #[arg(short = 'i', long = "input", value_name = "PATH")]
        input: PathBuf,
        /// Name the image of a single-image archive.
        #[arg(long)]
        tag: Option<String>,
        /// Refuse a layer whose uncompressed tar is larger than this
        /// (bytes, or with a suffix: 512M, 64G).
        #[arg(long, value_name = "BYTES", value_parser = size::parse_size)]
        max_layer_size: Option<u64>,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Save images as an OCI layout tar (docker load and skopeo read it).
    Save {
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// List images, one row per tag.
    Images {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show an image as JSON.
    Inspect { reference: String },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove image names; images no name holds are removed.
    Rmi {
        #[arg(required = true)]
        references: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Image commands (`lstore image rm`).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Remove everything no tag, mount or running command uses.
    Gc {
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Mount an image (read-only, or copy-on-write with --rw).
    Mount {
        reference: String,
        target: PathBuf,
        #[arg(long)]
        rw: bool,
    },
    /// Unmount what `lstore mount` mounted.
    Umount { target: PathBuf },
    /// Store the changes made through a --rw mount as a new layer and image.
    Commit {
        target: PathBuf,
        reference: String,
        /// Compression of the new layer.
        #[arg(long, value_enum, default_value = "gzip")]
        compression: LayerCompression,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List live mounts.
    Mounts {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Re-verify digests and the indexes; exit 1 if anything is wrong or
    /// left over (files no image needs).
    Fsck {
        /// Repair what can be repaired and remove the leftovers.
        #[arg(long)]
        repair: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print a store setting (all of them without KEY), or set it:
    /// `lstore config keep-layer-blobs false`.
    Config {
        key: Option<String>,
        value: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Disk use: blobs, layers, shared and unique bytes.
    Df {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Measure how fast an image is stored: each run loads or pulls it into
    /// a fresh scratch store (not the store at --root).
    Bench {
        /// A docker-archive, an OCI layout (folder or tar), or else an image
        /// reference to pull.
        input: String,
        /// Scratch stores in a fresh folder inside DIR instead of a tmpfs.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Size of the scratch tmpfs (as the kernel reads it: 512m, 8g).
        #[arg(long, default_value = "8g", conflicts_with = "dir")]
        size: String,
        /// Runs after dropping the page cache (as root).
        #[arg(long, default_value_t = 3)]
        cold: usize,
        /// Runs with the input in the page cache.
        #[arg(long, default_value_t = 3)]
        warm: usize,
        /// Passed to `lstore pull`.
        #[arg(long)]
        plain_http: bool,
        /// Passed to `lstore pull` (OS/ARCH[/VARIANT]).
        #[arg(long)]
        platform: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Serve the store over the OCI distribution API (a registry, a mirror,
    /// a pull-through cache). Prints `listening on IP:PORT` once it accepts
    /// connections; runs until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Serve containerd's snapshots API on a unix socket, for containerd's
    /// `[proxy_plugins.lstore] type = "snapshot"`: containerd keeps its
    /// layers in lstore. Prints `listening on PATH` once it accepts
    /// requests; runs until SIGTERM or SIGINT.
    Snapshotter {
        /// The unix socket to listen on.
        #[arg(long, value_name = "PATH", default_value = lstore::snapshotter::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Run a command (default: $SHELL) in the user namespace and mount
    /// namespace where a user's store is used, like `podman unshare`; its
    /// exit status is lstore's. As root: just runs it.
    Unshare {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:5050")]
    addr: std::net::SocketAddr,
    /// Refuse every write (push, delete) with DENIED.
    #[arg(long)]
    read_only: bool,
    /// Registry hosts whose images win when several share a name, in order.
    #[arg(long = "namespace", value_name = "HOST")]
    namespaces: Vec<String>,
    /// Pull a manifest the store lacks from this registry (pull-through).
    #[arg(long, value_name = "REGISTRY")]
    upstream: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Basic authentication against this htpasswd file (bcrypt entries).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS.
    #[arg(long)]
    insecure: bool,
    /// Drop an upload no request used for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    upload_timeout: u64,
    /// Cut a request body that sends nothing for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// How the upstream is reached.
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum LayerCompression {
    Gzip,
    Zstd,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Same as `lstore rmi`.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other failure: clap's first line is the
            // error itself; usage and hints follow on later lines.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("error: {message} (see lstore --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// A user's commands run in their namespace (see `lstore::userns`).
fn enter_user_namespace() -> lstore::Result<()> {
    if lstore::userns::needs_entry() {
        lstore::userns::enter()?;
    }
    Ok(())
}

fn open(
    root: Option<PathBuf>,
    max_layer_size: Option<u64>,
    ignore_chown_errors: bool,
) -> lstore::Result<Store> {
    let root = root.unwrap_or_else(Store::default_root);
    enter_user_namespace()?;
    let mut opts = StoreOptions {
        on_wait: Arc::new(|msg: &str| eprintln!("{msg}")),
        ignore_chown_errors,
        ..StoreOptions::default()
    };
    if let Some(max) = max_layer_size {
        opts.limits.max_layer_size = max;
    }
    Store::open(&root, opts)
}

fn print_json<T: serde::Serialize>(value: &T) -> lstore::Result<()> {
    let s =
        serde_json::to_string_pretty(value).map_err(|e| lstore::Error::Invalid(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn run(cli: Cli) -> lstore::Result<()> {
    // Commands that do not touch the store do not open (or create) it.
    let command = match cli.command {
        Command::Login {
            registry,
            username,
            password,
            password_stdin,
            connection,
        } => return login(registry, username, password, password_stdin, &connection),
        Command::Logout { registry } => return logout(&registry),
        // Its stores are scratch stores of its own.
        Command::Bench {
            input,
            dir,
            size,
            cold,
            warm,
            plain_http,
            platform,
            format,
        } => {
            let mut pull_args = Vec::new();
            if plain_http {
                pull_args.push("--plain-http".to_string());
            }
            if let Some(p) = platform {
                pull_args.extend(["--platform".to_string(), p]);
            }
            let opts = lstore::bench::BenchOptions {
                input,
                scratch: match dir {
                    Some(dir) => lstore::bench::Scratch::Dir(dir),
                    None => lstore::bench::Scratch::Tmpfs { size },
                },
                cold,
                warm,
                pull_args,
                lstore: std::env::current_exe()
                    .map_err(|e| lstore::Error::io("find the lstore binary", e))?,
            };
            let report = lstore::bench::run(&opts)?;
            if format == Format::Json {
                return print_json(&report);
            }
            print_bench(&report);
            return Ok(());
        }
        Command::Unshare { command } => {
            let root = cli.root.unwrap_or_else(Store::default_root);
            let root = std::path::absolute(&root)
                .map_err(|e| lstore::Error::io(format!("{}", root.display()), e))?;
            enter_user_namespace()?;
            let code = lstore::userns::run_inside(&command, &root)?;
            std::process::exit(code);
        }
        other => other,
    };
    // Load and pull read untrusted layers: their size bound is an option.
    let max_layer_size = match &command {
        Command::Load { max_layer_size, .. } | Command::Pull { max_layer_size, .. } => {
            *max_layer_size
        }
        _ => None,
    };
    let store = open(cli.root, max_layer_size, cli.ignore_chown_errors)?;
    match command {
        Command::Load {
            input,
            tag,
            quiet,
            format,
            max_layer_size: _,
        } => {
            let progress = progress::Progress::new(quiet || format == Format::Json);
            let stored = store.load(&input, tag.as_deref(), &progress)?;
            progress.summary("load");
            if format == Format::Json {
                return print_json(&stored);
            }
            print_loaded(&stored);
        }
        Command::Pull {
            reference,
            platform,
            registry,
            jobs,
            quiet,
            format,
            max_layer_size: _,
        } => {
            let opts = lstore::PullOptions {
                platform: platform
                    .as_deref()
                    .map(lstore::Platform::parse)
                    .transpose()
                    .map_err(|e| lstore::Error::Invalid(e.to_string()))?,
                client: client_options(&registry),
                jobs,
            };
            let progress = progress::Progress::new(quiet || format == Format::Json);
            let pulled = store.pull(&reference, &opts, &progress)?;
            if format == Format::Json {
                return print_json(&pulled);
            }
            if quiet {
                // As `docker pull -q`: the full reference, nothing else.
                println!("{}", lstore::Reference::parse(&pulled.reference)?);
            } else if pulled.up_to_date {
                println!("Image is up to date for {}", pulled.reference);
            } else {
                progress.summary("pull");
                println!("Digest: {}", pulled.digest);
                println!("Pulled {} ({})", pulled.reference, pulled.id);
            }
        }
        Command::Push {
            reference,
            dest,
            registry,
            jobs,
            quiet,
            format,
        } => {
            let opts = lstore::PushOptions {
                client: client_options(&registry),
                jobs,
            };
            let progress = PushLines {
                quiet: quiet || format == Format::Json,
            };
            let started = std::time::Instant::now();
            let pushed = store.push(&reference, dest.as_deref(), &opts, &progress)?;
            if format == Format::Json {
                return print_json(&pushed);
            }
            if !quiet {
                let count = |f: fn(&lstore::BlobOutcome) -> bool| {
                    pushed.blobs.iter().filter(|b| f(&b.outcome)).count()
                };
                eprintln!(
                    "push: {} uploaded, {} blobs mounted, {} already there, {:.2}s",
                    human(pushed.bytes_uploaded),
                    count(|o| matches!(o, lstore::BlobOutcome::Mounted { .. })),
                    count(|o| *o == lstore::BlobOutcome::Exists),
                    started.elapsed().as_secs_f64()
                );
            }
            println!(
                "{}: digest: {} size: {}",
                pushed.reference, pushed.digest, pushed.size
            );
        }
        // Handled before the store is opened.
        Command::Login { .. }
        | Command::Logout { .. }
        | Command::Bench { .. }
        | Command::Unshare { .. } => {}
        Command::Save { output, references } => {
            store.save(&references, &output)?;
        }
        Command::Images { format } => {
            let rows = store.images()?;
            if format == Format::Json {
                return print_json(&rows);
            }
            print_images(&rows);
        }
        Command::Inspect { reference } => print_json(&store.inspect(&reference)?)?,
        Command::Tag { source, target } => store.tag(&source, &target)?,
        Command::Rmi { references, format }
        | Command::Image {
            command: ImageCommand::Rm { references, format },
        } => {
            let report = store.rmi(&references)?;
            if format == Format::Json {
                print_json(&report)?;
            } else {
                print_removal(&report);
            }
            // As `docker rmi`: the others were removed, the status says
            // that not all were.
            if !report.not_removed.is_empty() {
                let errors: Vec<&str> = report
                    .not_removed
                    .iter()
                    .map(|n| n.error.as_str())
                    .collect();
                return Err(lstore::Error::Invalid(errors.join("; ")));
            }
        }
        Command::Gc { dry_run, format } => {
            let report = store.gc(dry_run)?;
            if format == Format::Json {
                return print_json(&report);
            }
            print_removal(&report);
        }
        Command::Mount {
            reference,
            target,
            rw,
        } => {
            let m = store.mount(&reference, &target, rw)?;
            println!("{}", m.target);
        }
        Command::Umount { target } => store.umount(&target)?,
        Command::Commit {
            target,
            reference,
            compression,
            format,
        } => {
            let compression = match compression {
                LayerCompression::Gzip => lstore::Compression::Gzip,
                LayerCompression::Zstd => lstore::Compression::Zstd,
            };
            let committed = store.commit(&target, &reference, compression)?;
            if format == Format::Json {
                return print_json(&committed);
            }
            println!("Committed {} ({})", committed.reference, committed.id);
            println!("Digest: {}", committed.digest);
        }
        Command::Mounts { format } => {
            let mounts = store.mounts()?;
            if format == Format::Json {
                return print_json(&mounts);
            }
            println!("{:<40} {:<30} {:<14} MODE", "TARGET", "IMAGE", "IMAGE ID");
            for m in mounts {
                let mode = if m.rw { "rw" } else { "ro" };
                println!(
                    "{:<40} {:<30} {:<14} {mode}",
                    m.target,
                    m.reference,
                    m.id.short()
                );
            }
        }
        Command::Fsck { repair, format } => {
            let report = store.fsck(repair)?;
            if format == Format::Json {
                print_json(&report)?;
            } else {
                for p in &report.problems {
                    let fixed = if p.repaired { " (repaired)" } else { "" };
                    println!("{}{fixed}", p.what);
                }
                for l in &report.leftovers {
                    let fixed = if l.removed { " (removed)" } else { "" };
                    println!("leftover: {}{fixed}", l.what);
                }
                let verdict = match (report.damage_left(), report.leftovers_left()) {
                    (0, 0) => "clean",
                    (0, _) => "leftovers found",
                    _ => "problems found",
                };
                println!(
                    "checked {} blobs ({}), {} layers ({} shared files), {} images: {verdict}",
                    report.blobs_checked,
                    human(report.bytes_hashed),
                    report.layers_checked,
                    report.shared_files_checked,
                    report.images_checked,
                );
            }
            match (report.damage_left(), report.leftovers_left()) {
                (0, 0) => {}
                (0, n) => {
                    return Err(lstore::Error::Invalid(format!(
                        "fsck found {n} leftovers and no damage; lstore fsck --repair \
                         removes them"
                    )))
                }
                (n, 0) => return Err(lstore::Error::Invalid(format!("fsck found {n} problems"))),
                (n, m) => {
                    return Err(lstore::Error::Invalid(format!(
                        "fsck found {n} problems and {m} leftovers"
                    )))
                }
            }
        }
        Command::Config { key, value, format } => {
            let listing = key.is_none();
            let settings = match (key, value) {
                (None, _) => store.config_list()?,
                (Some(k), None) => vec![store.config_get(&k)?],
                (Some(k), Some(v)) => {
                    let s = store.config_set(&k, &v)?;
                    if format != Format::Json {
                        print_setting_note(&s);
                    }
                    vec![s]
                }
            };
            if format == Format::Json {
                return print_json(&settings);
            }
            for s in &settings {
                if listing {
                    println!("{} {}", s.key, s.value);
                } else {
                    println!("{}", s.value);
                }
            }
        }
        Command::Df { format } => {
            let du = store.df()?;
            if format == Format::Json {
                return print_json(&du);
            }
            print_df(&du);
        }
        Command::Serve(a) => {
            let opts = lstore::serve::ServeOptions {
                addr: a.addr,
                read_only: a.read_only,
                namespaces: a.namespaces,
                upstream: a.upstream,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                htpasswd: a.htpasswd,
                insecure: a.insecure,
                upload_timeout: std::time::Duration::from_secs(a.upload_timeout),
                body_timeout: std::time::Duration::from_secs(a.body_timeout),
                pull: lstore::PullOptions {
                    client: client_options(&a.registry),
                    ..Default::default()
                },
            };
            lstore::serve::serve(store, opts, &mut |bound| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening on {bound}");
                let _ = out.flush();
            })?;
        }
        Command::Snapshotter { socket } => {
            let opts = lstore::snapshotter::SnapshotterOptions { socket };
            lstore::snapshotter::serve(store, opts, &mut |path| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening on {}", path.display());
                let _ = out.flush();
            })?;
        }
    }
    Ok(())
}

/// Push progress as Docker words it, one line per blob on stderr.
struct PushLines {
    quiet: bool,
}

impl lstore::PushProgress for PushLines {
    fn blob_done(&self, _index: usize, desc: &lstore::Descriptor, outcome: &lstore::BlobOutcome) {
        if self.quiet {
            return;
        }
        let name = desc.digest.short();
        match outcome {
            lstore::BlobOutcome::Exists => eprintln!("{name}: already exists"),
            lstore::BlobOutcome::Mounted { from } => {
                eprintln!("{name}: mounted from {from}")
            }
            lstore::BlobOutcome::Uploaded => {
                eprintln!("{name}: pushed ({})", human(desc.size))
            }
            lstore::BlobOutcome::Refetched { from } => {
                eprintln!(
                    "{name}: pushed ({}, blob dropped here, fetched again from {from})",
                    human(desc.size)
                )
            }
            lstore::BlobOutcome::Rebuilt { original } => {
                eprintln!(
                    "{name}: pushed ({}, rebuilt with gzip: blob {} was dropped here)",
                    human(desc.size),
                    original.short()
                )
            }
        }
    }
}

fn login(
    registry: String,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
    connection: &RegistryArgs,
) -> lstore::Result<()> {
    let username = match username {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = match (password, password_stdin) {
        (Some(p), false) => p,
        (None, true) => {
            let mut p = String::new();
            std::io::stdin()
                .read_line(&mut p)
                .map_err(|e| lstore::Error::io("read password", e))?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => prompt("Password: ")?,
        (Some(_), true) => {
            return Err(lstore::Error::Invalid(
                "--password and --password-stdin are exclusive".into(),
            ))
        }
    };
    let client = lstore::RegistryClient::new(client_options(connection))?;
    let host = client.login(&registry, &username, &password)?;
    println!("Login Succeeded ({host})");
    Ok(())
}

fn logout(registry: &str) -> lstore::Result<()> {
    let client = lstore::RegistryClient::new(lstore::ClientOptions::default())?;
    if client.logout(registry)? {
        println!("Removed login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

fn client_options(args: &RegistryArgs) -> lstore::ClientOptions {
    let mut options = lstore::ClientOptions {
        plain_http: args.plain_http,
        ca_file: args.ca_file.clone(),
        ..Default::default()
    };
    // LSTORE_HTTP_TIMEOUT (seconds): how long a stalled connection is
    // waited for, instead of 60 s (slow links, tests).
    if let Some(seconds) = std::env::var("LSTORE_HTTP_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
    {
        options.read_timeout = std::time::Duration::from_secs(seconds);
    }
    options
}

fn prompt(what: &str) -> lstore::Result<String> {
    eprint!("{what}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| lstore::Error::io("read from standard input", e))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Sizes as Docker prints them (decimal units).
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[u]
    }
}

fn print_loaded(stored: &[Stored]) {
    for s in stored {
        if s.names.is_empty() {
            println!("Loaded image ID: {}", s.id);
        }
        for n in &s.names {
            println!("Loaded image: {n}");
        }
    }
}

fn print_images(rows: &[ImageSummary]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<40} {:<16} {:<14} {:<22} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
    );
    for r in rows {
        let created = r
            .created
            .as_deref()
            .map(|c| c.get(..19).unwrap_or(c).replace('T', " "))
            .unwrap_or_else(|| "N/A".into());
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:<14} {:<22} {:>10}",
            r.repository.as_deref().unwrap_or("<none>"),
            r.tag.as_deref().unwrap_or("<none>"),
            r.id.short(),
            created,
            human(r.size)
        );
    }
}

fn print_removal(r: &Removal) {
    for t in &r.untagged {
        println!("Untagged: {t}");
    }
    let (deleted, freed) = if r.dry_run {
        ("Would delete", "Would free")
    } else {
        ("Deleted", "Freed")
    };
    for d in &r.deleted_images {
        println!("{deleted}: {d}");
    }
    println!(
        "{freed} {} ({} blobs, {} layers, {} leftovers)",
        human(r.freed_bytes),
        r.deleted_blobs,
        r.deleted_layers,
        r.leftovers
    );
    if r.dropped_layer_blobs > 0 {
        let dropped = if r.dry_run { "Would drop" } else { "Dropped" };
        println!(
            "{dropped} {} layer blobs of stored layers (keep-layer-blobs false; included above)",
            r.dropped_layer_blobs
        );
    }
    if r.refcount_fixes > 0 {
        println!("Corrected {} reference counts", r.refcount_fixes);
    }
    let kept = if r.dry_run { "Would keep" } else { "Kept" };
    for k in &r.kept_mounted {
        println!(
            "{kept}: layer {} (the mount at {} uses it)",
            k.chain_id, k.mount_point
        );
    }
    if !r.kept_mounted.is_empty() {
        println!(
            "{} layers in use by mounts stay until unmounted; gc then frees them",
            r.kept_mounted.len()
        );
    }
}

/// What a new value means for what is already stored (on stderr, so
/// that stdout is the value alone).
fn print_setting_note(s: &lstore::Setting) {
    match (s.key.as_str(), s.value.as_str()) {
        ("keep-layer-blobs", "false") => eprintln!(
            "layer blobs are dropped once their layers are stored; lstore gc drops those \
             of the layers stored already"
        ),
        ("keep-layer-blobs", _) => eprintln!(
            "layer blobs are kept from now on; blobs dropped before stay dropped (rmi and \
             pull an image again to get them back)"
        ),
        _ => {}
    }
}

fn print_df(du: &DiskUsage) {
    println!("{:<10} {:>8} {:>12}", "TYPE", "COUNT", "SIZE");
    println!("{:<10} {:>8} {:>12}", "Images", du.images, "");
    println!(
        "{:<10} {:>8} {:>12}",
        "Blobs",
        du.blobs,
        human(du.blob_bytes)
    );
    println!(
        "{:<10} {:>8} {:>12}",
        "Layers",
        du.layers,
        human(du.layer_bytes)
    );
    println!();
    println!("Shared:   {}", human(du.shared_bytes));
    println!("Unique:   {}", human(du.unique_bytes));
    println!("Unused:   {}", human(du.unused_bytes));
    if du.dropped_layer_blobs > 0 {
        println!(
            "Dropped layer blobs: {} not stored ({} blobs, keep-layer-blobs false)",
            human(du.dropped_blob_bytes),
            du.dropped_layer_blobs
        );
    }
    println!(
        "Files shared across layers: {} (saves {})",
        du.shared_files,
        human(du.sharing_saved_bytes)
    );
    if du.unindexed_layers > 0 {
        println!(
            "Layers not shared: {} (extracted before file sharing; see docs/space.md)",
            du.unindexed_layers
        );
    }
    if du.containerd_layers > 0 {
        println!(
            "Held:     {} (layers containerd holds that no image uses: {})",
            human(du.containerd_bytes),
            du.containerd_layers
        );
    }
    let _ = std::io::stderr().is_terminal();
}

fn print_bench(r: &lstore::bench::BenchReport) {
    let i = &r.image;
    let m = &r.machine;
    let size = r
        .store_on
        .size
        .as_deref()
        .map(|s| format!(" of {s}"))
        .unwrap_or_default();
    println!("lstore extraction benchmark");
    println!("  command:  {}", r.command);
    println!(
        "  image:    {} layers, {} compressed, {} uncompressed tar, {} files",
        i.layers,
        human(i.blob_bytes),
        human(i.tar_bytes),
        i.files
    );
    println!(
        "  store on: {}{size} at {}",
        r.store_on.filesystem, r.store_on.path
    );
    println!(
        "  machine:  {} cores, {}, {} RAM, kernel {}",
        m.cores,
        m.cpu.as_deref().unwrap_or("unknown CPU"),
        m.memory_bytes.map_or("unknown".to_string(), |b| format!(
            "{:.0} GiB",
            b as f64 / 1073741824.0
        )),
        m.kernel
    );
    println!("  lstore:   {}", r.lstore_version);
    println!();
    println!(
        "{:<6} {:>9} {:>12} {:>12} {:>12} {:>12}",
        "run", "seconds", "tar MB/s", "blob MB/s", "files/s", "peak RSS"
    );
    for run in &r.runs {
        println!(
            "{:<6} {:>9.3} {:>12.1} {:>12.1} {:>12.0} {:>8.0} MiB",
            run_kind(run.kind),
            run.seconds,
            run.tar_mb_per_s,
            run.blob_mb_per_s,
            run.files_per_s,
            run.peak_rss_bytes as f64 / 1048576.0
        );
    }
    for md in &r.medians {
        println!(
            "median {} ({} runs): {:.3} s, {:.1} MB/s tar, {:.1} MB/s blobs, {:.0} files/s",
            run_kind(md.kind),
            md.runs,
            md.seconds,
            md.tar_mb_per_s,
            md.blob_mb_per_s,
            md.files_per_s
        );
    }
}

fn run_kind(kind: lstore::bench::RunKind) -> &'static str {
    match kind {
        lstore::bench::RunKind::Cold => "cold",
        lstore::bench::RunKind::Warm => "warm",
    }
}
