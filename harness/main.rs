//! The `pristine` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pristine::layers::{Catalog, Recipe, StderrProgress};
use pristine::{Bind, BuildError, Container, Keep, Size, Stdio, Store, Upper, User};

/// Prints a line to stdout; a closed pipe (`pristine images | head`) ends the output
/// quietly instead of panicking: the command then returns `Err(Closed)` and exits as it
/// would have.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(Closed::from)?
    };
}

/// Prints a line to stderr, ignoring a closed stderr (`2>&1 | head`).
macro_rules! say {
    ($($arg:tt)*) => {
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    };
}

/// Standard output is gone (or failed): stop printing.
struct Closed;

impl From<std::io::Error> for Closed {
    fn from(_: std::io::Error) -> Self {
        Closed
    }
}

/// What printing a listing ended with.
enum Listing {
    Failed(BuildError),
    Closed,
}

impl From<BuildError> for Listing {
    fn from(e: BuildError) -> Self {
        Listing::Failed(e)
    }
}

impl From<pristine::store::StoreError> for Listing {
    fn from(e: pristine::store::StoreError) -> Self {
        Listing::Failed(e.into())
    }
}

impl From<Closed> for Listing {
    fn from(_: Closed) -> Self {
        Listing::Closed
    }
}

/// The exit code of a listing command: 0, also when the reader went away early.
fn listed(r: Result<(), Listing>) -> ExitCode {
    match r {
        Ok(()) | Err(Listing::Closed) => ExitCode::SUCCESS,
        Err(Listing::Failed(e)) => fail(&e, 1),
    }
}

/// Throwaway copy-on-write Linux containers for tests.
#[derive(Parser)]
#[command(name = "pristine", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a throwaway container.
    Run(Box<RunArgs>),
    /// Print what a kept container changed (A added, C changed, D deleted).
    Diff {
        /// A kept container directory, as printed by `pristine run --keep`.
        path: PathBuf,
    },
    /// Run a test binary's tests each in its own container (a nextest wrapper script).
    Wrap(pristine::testing::wrap::WrapArgs),
    /// Build the layers of a recipe file (TOML); cached layers are reused.
    Build {
        /// The recipe.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List named images.
    Images {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show where the store keeps its data and whether copy-up there is a reflink.
    Store {
        /// Make and mount a reflink image for this store if its filesystem cannot reflink
        /// (as root; the default store gets one on first use anyway).
        #[arg(long, conflicts_with = "unmount")]
        mount: bool,
        /// Unmount the store's reflink image (e.g. before `cargo clean`); the next run
        /// mounts it again.
        #[arg(long)]
        unmount: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List stored layers.
    Layers {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove layers no named image uses, and leftovers of killed runs.
    Gc {
        /// Only remove layers unused for this long (e.g. 7d).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Keep the N most recently used of the layers no named image uses (for CI caches:
        /// what the last runs used stays, older builds go).
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// An interactive shell in a throwaway container of IMAGE.
    Shell {
        /// `host`, a rootfs directory, or a named image.
        #[arg(default_value = "host")]
        image: String,
        /// A host path mounted into the container (repeatable).
        #[arg(long = "bind", value_name = "SRC:DST[:ro]", value_parser = parse_bind)]
        binds: Vec<Bind>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Pull an image from an OCI registry (Docker Hub by default) as a named image.
    Pull {
        /// The reference: [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. postgres:16.
        reference: String,
        /// Name for the image (default: made from the reference, e.g. `postgres-16`).
        #[arg(long)]
        name: Option<String>,
        /// Log in as USER instead of using the credentials files, with the password read
        /// from the first line of standard input (`USER:PASSWORD` also works, but puts the
        /// password where every user of the machine can read it, in the process list).
        #[arg(long, value_name = "USER[:PASSWORD]")]
        creds: Option<String>,
        /// Speak plain HTTP to a registry that is not on this machine (loopback registries
        /// get plain HTTP anyway). Only for a registry you trust on a network you trust.
        #[arg(long)]
        insecure_http: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Import an OCI image layout or `docker save` archive as a named image.
    Import {
        /// The archive (.tar or .tar.gz).
        file: PathBuf,
        /// Name for the image (default: the archive's reference or file name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Save layers with their keys to a store archive, for other machines' `pristine load`
    /// (CI jobs that run the tests of one build): every layer of the store, or those of the
    /// named images.
    Save {
        /// The archive to write.
        file: PathBuf,
        /// Only these images' layers and records (default: every layer, named or not).
        #[arg(long = "image", value_name = "NAME")]
        images: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Load a store archive written by `pristine save`: each layer is verified against the
    /// archive's digests and added under its key, unless the store has it already.
    Load {
        /// The archive.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Export a named image as an OCI image layout archive (`podman load` reads it).
    Export {
        /// The image.
        image: String,
        /// The archive to write.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(clap::Args)]
struct StoreArg {
    /// Store directory (default: $PRISTINE_STORE, or target/pristine under cargo, or
    /// ~/.cache/pristine).
    #[arg(long = "store", value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl StoreArg {
    fn open(&self) -> Result<Store, pristine::store::StoreError> {
        match &self.dir {
            Some(d) => Store::open(d),
            None => Store::open_default(),
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// `host` (the host's root filesystem), a rootfs directory, or a named image.
    #[arg(long, default_value = "host")]
    image: String,
    /// A read-only layer directory stacked on the image (repeatable, bottom first).
    #[arg(long = "layer", value_name = "DIR")]
    layers: Vec<PathBuf>,
    /// A host path mounted into the container, bypassing copy-on-write (repeatable).
    #[arg(long = "bind", value_name = "SRC:DST[:ro]", value_parser = parse_bind)]
    binds: Vec<Bind>,
    /// An environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Start the command with only --env variables (and a default PATH).
    #[arg(long)]
    clear_env: bool,
    /// Working directory inside the container (default: the image's WorkingDir, else /).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Run this program instead of the image's Entrypoint (`''` for none); the command
    /// after `--` are its arguments, and the image's Cmd is not used.
    #[arg(long, value_name = "PROGRAM")]
    entrypoint: Option<String>,
    /// Hostname inside the container (default: pristine-ID).
    #[arg(long)]
    hostname: Option<String>,
    /// Limit the container's memory (e.g. 256m, 2g); needs root.
    #[arg(long, value_name = "SIZE")]
    memory: Option<Size>,
    /// Limit the number of processes and threads in the container; needs root.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Run the command as this user: NAME, UID, NAME:GROUP or UID:GID, names from the
    /// image's /etc/passwd and /etc/group (default: the image's User, else root).
    #[arg(long, value_parser = parse_user)]
    user: Option<User>,
    /// Kill the whole container after this long (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Run unconfined: every capability, no seccomp filter, /proc unmasked, setuid
    /// binaries honoured. As root the command is then host root; only for trusted commands.
    #[arg(long)]
    privileged: bool,
    /// Keep this capability (e.g. CAP_SYS_ADMIN, NET_ADMIN) on top of the default set and
    /// open the system calls that go with it (repeatable).
    #[arg(long = "cap-add", value_name = "CAP", value_parser = parse_cap)]
    cap_add: Vec<String>,
    /// Keep the upper layer after the container ends and print what changed.
    #[arg(long)]
    keep: bool,
    /// Put the upper layer on a tmpfs of this size (e.g. 512m, 4g). Default: in the store
    /// when the image has stored layers and the store reflinks, else a 4g tmpfs. Not with
    /// --keep or --upper-on-disk, whose upper layer is on disk in the store.
    #[arg(long, value_name = "SIZE")]
    upper_size: Option<Size>,
    /// Size limit of the container's /tmp (a tmpfs; default 1g).
    #[arg(long, value_name = "SIZE")]
    tmp_size: Option<Size>,
    /// Size limit of the container's /dev/shm (a tmpfs; default 64m).
    #[arg(long, value_name = "SIZE")]
    shm_size: Option<Size>,
    /// Put the upper layer on disk in the store instead of on a tmpfs.
    #[arg(long)]
    upper_on_disk: bool,
    /// Store directory (default: $PRISTINE_STORE, or target/pristine under cargo, or
    /// ~/.cache/pristine).
    #[arg(long)]
    store: Option<PathBuf>,
    /// The command and its arguments (default: the image's Cmd, after its Entrypoint).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_bind(s: &str) -> Result<Bind, String> {
    s.parse().map_err(|e: pristine::ConfigError| e.to_string())
}

fn parse_cap(s: &str) -> Result<String, String> {
    pristine::parse_capability(s)
        .ok_or_else(|| format!("unknown capability {s:?}: expected a name such as CAP_SYS_ADMIN"))
}

fn parse_user(s: &str) -> Result<User, String> {
    let (u, g) = s.split_once(':').unwrap_or((s, "x"));
    if u.is_empty() || g.is_empty() {
        return Err(format!(
            "bad user {s:?}: expected NAME, UID, NAME:GROUP or UID:GID"
        ));
    }
    Ok(
        match s.split_once(':').map(|(u, g)| (u.parse(), g.parse())) {
            Some((Ok(u), Ok(g))) => User::Id(u, g),
            // Names and bare uids are resolved in the image's /etc/passwd and /etc/group.
            _ => User::Name(s.to_string()),
        },
    )
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "bad environment assignment {s:?}: expected KEY=VALUE"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    pristine::duration::parse_duration(s).map_err(|e| e.to_string())
}

fn print_error(err: &dyn std::error::Error) {
    say!("pristine: error: {err}");
    let mut source = err.source();
    if source.is_some() {
        say!("  caused by:");
    }
    while let Some(s) = source {
        say!("    - {s}");
        source = s.source();
    }
}

/// The upper layer asked for: `--upper-size` only limits a tmpfs upper; an upper on disk
/// (`--upper-on-disk`, `--keep`) is refused with it rather than silently left unlimited.
fn upper_of(args: &RunArgs) -> Result<Upper, String> {
    let on_disk = args.upper_on_disk || args.keep;
    match (args.upper_size, on_disk) {
        (Some(size), true) => Err(format!(
            "--upper-size {size} limits a tmpfs upper layer, but with {} the upper layer is on disk in the store, where pristine cannot limit its size; drop --upper-size, or put the store on a file system of the size you want",
            if args.keep { "--keep" } else { "--upper-on-disk" }
        )),
        (_, true) => Ok(Upper::Disk),
        (Some(size), false) => Ok(Upper::Tmpfs(size)),
        (None, false) => Ok(Upper::Auto),
    }
}

fn run(mut args: RunArgs) -> ExitCode {
    // Checked before the store is opened (or made): bad input leaves no trace.
    let upper = match upper_of(&args) {
        Ok(u) => u,
        Err(e) => {
            say!("pristine: error: {e}");
            return ExitCode::from(125);
        }
    };
    let mut image = match resolve(&args.image, args.store.clone()) {
        Ok(i) => i,
        Err(e) => return fail(&e, 125),
    };
    for layer in std::mem::take(&mut args.layers) {
        image = image.layer(layer);
    }
    let mut c = Container::new(image)
        .stdio(Stdio::Inherit)
        .upper(upper)
        .tmp_size(args.tmp_size.unwrap_or(pristine::DEFAULT_TMP_SIZE))
        .shm_size(args.shm_size.unwrap_or(pristine::DEFAULT_SHM_SIZE));
    if args.clear_env {
        c = c.env_clear();
    }
    if let Some(w) = args.workdir {
        c = c.workdir(w);
    }
    match args.entrypoint.as_deref() {
        Some("") => c = c.entrypoint(Vec::<String>::new()),
        Some(e) => c = c.entrypoint([e]),
        None => {}
    }
    for (k, v) in args.env {
        c = c.env(k, v);
    }
    for b in args.binds {
        c = c.bind(b);
    }
    if let Some(h) = args.hostname {
        c = c.hostname(h);
    }
    if let Some(u) = args.user {
        c = c.user(u);
    }
    if let Some(m) = args.memory {
        c = c.memory_limit(m.get());
    }
    if args.privileged {
        c = c.privileged();
    }
    for cap in args.cap_add {
        c = c.cap_add(cap);
    }
    if let Some(n) = args.pids {
        c = c.pids_limit(n);
    }
    if let Some(t) = args.timeout {
        c = c.timeout(t);
    }
    if args.keep {
        c = c.keep(Keep::Always);
    }
    if let Some(s) = args.store {
        c = c.store(s);
    }
    pristine::forward_signals_to_foreground();
    match c.run(&args.command) {
        Ok(out) => {
            if out.timed_out {
                say!(
                    "pristine: timed out after {:.1?}; the container was killed",
                    out.duration
                );
            }
            if let Some(n) = out.pids_limit_hit {
                say!("pristine: the container reached its pids limit ({n}): a fork or clone failed with EAGAIN");
            }
            if let Some(limit) = out.oom_killed {
                say!(
                    "pristine: killed: out of memory, limit {}",
                    pristine::human_size(limit)
                );
            }
            if let Some(kept) = &out.kept {
                say!("pristine: kept upper layer: {}", kept.dir.display());
                match kept.diff() {
                    Ok(changes) => changes.iter().for_each(|c| {
                        say!("{c}");
                    }),
                    Err(e) => {
                        say!("pristine: error: listing changes: {e}");
                    }
                }
            }
            ExitCode::from(out.status.code().clamp(0, 255) as u8)
        }
        Err(e) => {
            print_error(&e);
            match e {
                pristine::Error::Exec { errno, .. } if errno == libc::ENOENT => ExitCode::from(127),
                pristine::Error::Exec { .. } => ExitCode::from(126),
                _ => ExitCode::from(125),
            }
        }
    }
}

/// `host`, a rootfs directory or a named image. The host image needs no store until the
/// container runs (which checks the rest of the input first).
fn resolve(spec: &str, store: Option<PathBuf>) -> Result<pristine::Image, BuildError> {
    match spec {
        "host" => Ok(pristine::Image::host()),
        name => StoreArg { dir: store }
            .open()
            .map_err(BuildError::from)
            .and_then(|s| pristine::layers::resolve_image(&s, name)),
    }
}

/// `pristine shell`: a shell of the image's own, without its entrypoint.
fn shell(image: String, binds: Vec<Bind>, store: StoreArg) -> ExitCode {
    let argv = match resolve(&image, store.dir.clone()) {
        Ok(i) => i.shell(),
        Err(e) => return fail(&e, 125),
    };
    let Some(mut command) = argv else {
        say!("pristine: error: image {image:?} has no shell (looked for /bin/bash, /bin/sh and busybox): run one of its programs with `pristine run --image {image} -- PROGRAM`");
        return ExitCode::from(127);
    };
    command.push("-i".into());
    run(RunArgs {
        image,
        layers: Vec::new(),
        binds,
        env: Vec::new(),
        clear_env: false,
        workdir: None,
        entrypoint: Some(String::new()),
        hostname: None,
        user: None,
        memory: None,
        pids: None,
        timeout: None,
        privileged: false,
        cap_add: Vec::new(),
        keep: false,
        upper_size: None,
        tmp_size: None,
        shm_size: None,
        upper_on_disk: false,
        store: store.dir,
        command,
    })
}

fn fail(err: &dyn std::error::Error, code: u8) -> ExitCode {
    print_error(err);
    ExitCode::from(code)
}

fn age(secs_ago: u64) -> String {
    match secs_ago {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 10 * 1024 => format!("{b} B"),
        b if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        b if b < 10 * 1024 * 1024 * 1024 => format!("{} MiB", b / (1024 * 1024)),
        b => format!("{} GiB", b / (1024 * 1024 * 1024)),
    }
}

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

/// Builds a recipe file: each layer and step on stderr as it goes (the error, printed after,
/// carries a failed step's output); the summary on stdout.
fn build(file: &std::path::Path, store: &Store) -> Result<(), Listing> {
    let recipe = Recipe::from_toml_file(file)?;
    let mut progress = StderrProgress::new().failed_output(false);
    let built = recipe.build_with_progress(store, &mut progress)?;
    drop(progress);
    for l in &built.layers {
        out!(
            "{} {:<24} {} in {:.1?}",
            short(&l.key),
            l.name,
            if l.cached { "cached" } else { "built " },
            l.duration
        );
    }
    if let Some(name) = &recipe.name {
        out!("image {name}: {} layers", built.layers.len());
    }
    Ok(())
}

fn images(store: &Store) -> Result<(), Listing> {
    let catalog = Catalog::new(store)?;
    let now = pristine::layers::now_secs();
    out!(
        "{:<24} {:<12} {:>6} {:>10} {:>10}  BASE",
        "NAME",
        "TOP",
        "LAYERS",
        "SIZE",
        "CREATED"
    );
    for r in catalog.images()? {
        let bytes: u64 = r
            .layers
            .iter()
            .filter_map(|k| catalog.layer_meta(k).ok())
            .map(|m| m.size)
            .sum();
        out!(
            "{:<24} {:<12} {:>6} {:>10} {:>10}  {}",
            r.name,
            r.layers.last().map(|k| short(k)).unwrap_or("-"),
            r.layers.len(),
            size(bytes),
            age(now.saturating_sub(r.created)),
            r.base
        );
    }
    Ok(())
}

fn store_command(arg: &StoreArg, mount: bool, unmount: bool) -> ExitCode {
    let location = arg.dir.clone().unwrap_or_else(Store::default_location);
    // A closed stdout (`pristine store | head -0`) ends the output, not the command: its
    // work is done by then, and the exit code says how it went.
    if unmount {
        return match Store::unmount_image(&location) {
            Ok(true) => {
                let path = location.join("reflink");
                let _ = writeln!(std::io::stdout().lock(), "unmounted {}", path.display());
                ExitCode::SUCCESS
            }
            Ok(false) => {
                let path = location.display();
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "no reflink image of {path} is mounted"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                say!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let opened = match (mount, &arg.dir) {
        (true, _) => Store::open_with_image(&location),
        (false, _) => arg.open(),
    };
    match opened {
        Ok(s) => {
            let text = pristine::store::describe(&s);
            let _ = write!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&BuildError::from(e), 1),
    }
}

fn layers(store: &Store) -> Result<(), Listing> {
    let catalog = Catalog::new(store)?;
    let now = std::time::SystemTime::now();
    let now_secs = pristine::layers::now_secs();
    out!(
        "{:<12} {:<24} {:<12} {:>10} {:>10} {:>10}",
        "KEY",
        "NAME",
        "PARENT",
        "SIZE",
        "CREATED",
        "LAST USE"
    );
    for (m, used) in catalog.layers()? {
        let used = used
            .and_then(|u| now.duration_since(u).ok())
            .map(|d| age(d.as_secs()))
            .unwrap_or_else(|| "-".into());
        out!(
            "{:<12} {:<24} {:<12} {:>10} {:>10} {:>10}",
            short(&m.key),
            m.name,
            short(&m.parent),
            size(m.size),
            age(now_secs.saturating_sub(m.created)),
            used
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    pristine::main_if_requested();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Wrap(args) => pristine::testing::wrap::run(args),
        Command::Build { file, store } => listed(
            store
                .open()
                .map_err(Listing::from)
                .and_then(|s| build(&file, &s)),
        ),
        Command::Images { store } => {
            listed(store.open().map_err(Listing::from).and_then(|s| images(&s)))
        }
        Command::Layers { store } => {
            listed(store.open().map_err(Listing::from).and_then(|s| layers(&s)))
        }
        Command::Store {
            mount,
            unmount,
            store,
        } => store_command(&store, mount, unmount),
        Command::Gc {
            older_than,
            keep_last,
            dry_run,
            store,
        } => listed(gc(&store, older_than, keep_last, dry_run)),
        Command::Shell {
            image,
            binds,
            store,
        } => shell(image, binds, store),
        Command::Pull {
            reference,
            name,
            creds,
            insecure_http,
            store,
        } => listed((|| {
            let s = store.open()?;
            let mut opts = pristine::pull::PullOptions::new().insecure_http(insecure_http);
            if let Some(n) = name {
                opts = opts.name(n);
            }
            if let Some(c) = creds {
                let (user, password) = match c.split_once(':') {
                    Some((user, password)) => (user.to_string(), password.to_string()),
                    None => (c.clone(), password_from_stdin(&reference)?),
                };
                opts = opts.credentials(user, password);
            }
            let p = pristine::pull::pull(&s, &reference, &opts)
                .map_err(|e| BuildError::from(Box::new(e)))?;
            let digest = p
                .record
                .source
                .as_ref()
                .map_or("", |s| s.manifest_digest.as_str());
            out!(
                "pulled {} as {} ({} layers, {} downloaded) {digest}",
                reference,
                p.record.name,
                p.record.layers.len(),
                p.downloaded
            );
            Ok(())
        })()),
        Command::Import { file, name, store } => listed((|| {
            let s = store.open()?;
            let (r, old) = pristine::layers::import_image_replacing(&s, &file, name.as_deref())?;
            match old {
                Some(old) if old.layers == r.layers && old.config == r.config => {
                    out!("{} is already this image ({} layers)", r.name, r.layers.len())
                }
                Some(old) => out!(
                    "imported {} ({} layers), replacing the image of that name (top layer {}, {} layers)",
                    r.name,
                    r.layers.len(),
                    old.layers.last().map(|k| short(k)).unwrap_or("-"),
                    old.layers.len()
                ),
                None => out!("imported {} ({} layers)", r.name, r.layers.len()),
            }
            Ok(())
        })()),
        Command::Save {
            file,
            images,
            store,
        } => listed((|| {
            let s = store.open()?;
            ship_result(pristine::layers::save_store(&s, &images, &file)?, "saved")
        })()),
        Command::Load { file, store } => listed((|| {
            let s = store.open()?;
            ship_result(pristine::layers::load_store(&s, &file)?, "loaded")
        })()),
        Command::Export { image, file, store } => listed((|| {
            let s = store.open()?;
            pristine::layers::export_image(&s, &image, &file)?;
            out!("exported {image} to {}", file.display());
            Ok(())
        })()),
        Command::Diff { path } => match pristine::diff::diff_kept(&path) {
            Ok(changes) => {
                let _ = (|| -> Result<(), Closed> {
                    for c in changes {
                        out!("{c}");
                    }
                    Ok(())
                })();
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_error(&e);
                ExitCode::from(1)
            }
        },
    }
}

/// Prints what `save` or `load` did.
fn ship_result(r: pristine::layers::ShipReport, verb: &str) -> Result<(), Listing> {
    out!(
        "{verb} {} layers ({} already in the store), {} images{}",
        r.layers.len(),
        r.present.len(),
        r.images.len(),
        if r.images.is_empty() {
            String::new()
        } else {
            format!(": {}", r.images.join(", "))
        }
    );
    Ok(())
}

/// `pristine gc`: a dry run opens the store without its startup cleanup and changes
/// nothing.
fn gc(
    store: &StoreArg,
    older_than: Option<Duration>,
    keep_last: Option<usize>,
    dry_run: bool,
) -> Result<(), Listing> {
    let dir = store.dir.clone().unwrap_or_else(Store::default_location);
    let s = Store::open_existing(dir)?;
    let leftovers = s.leftovers(dry_run)?;
    let removed = Catalog::new(&s)?.gc(older_than, keep_last, dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for r in &removed {
        out!("{verb} {r}");
    }
    for id in &leftovers {
        out!("{verb} leftover container {id}");
    }
    out!(
        "{} layer/staging entries, {} leftover container directories",
        removed.len(),
        leftovers.len()
    );
    Ok(())
}

/// The password of `pull --creds USER`: the first line of standard input, without its
/// line ending (as `podman login --password-stdin` reads it). An empty one is an error.
fn password_from_stdin(reference: &str) -> Result<String, BuildError> {
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line).and_then(|_| {
        let password = line.trim_end_matches(['\n', '\r']);
        match password.is_empty() {
            true => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no password: give it on standard input (echo \"$PASSWORD\" | pristine pull \
                 --creds USER ...), or log in with podman login or docker login",
            )),
            false => Ok(password.to_string()),
        }
    });
    read.map_err(|source| {
        let e = pristine::pull::PullError::Io {
            reference: reference.to_string(),
            action: "read the --creds password from",
            path: "standard input".into(),
            source,
        };
        BuildError::from(Box::new(e))
    })
}
