//! `pristine wrap`: run an unmodified test binary's tests each in its own container, as a
//! nextest wrapper script (nextest runs `WRAPPER TESTBIN ARGS…`).
//!
//! Listing (`--list`) runs straight on the host, so discovery stays fast and touches no
//! kernel feature; every other invocation (nextest runs one test per process) runs in a
//! container of the given image, with the caller's working directory, environment and
//! stdio, and the test binary visible at its own path (carried into images other than the
//! host's).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::carry;
use super::harness::{parse_keep, KEEP_ENV};
use super::report::render_diff;
use crate::{Base, Bind, Container, Image, Keep, Stdio, Upper};

/// The arguments of `pristine wrap` (a `clap` argument group; flatten or use as a
/// subcommand's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct WrapArgs {
    /// `host` (the host's root filesystem), a rootfs directory, or a named image (its
    /// config's environment, working directory and user apply; its entrypoint does not).
    #[arg(long, default_value = "host")]
    pub image: String,
    /// A read-only layer directory stacked on the image (repeatable, bottom first).
    #[arg(long = "layer", value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// A host path mounted into the container, bypassing copy-on-write (repeatable).
    #[arg(long = "bind", value_name = "SRC:DST[:ro]", value_parser = parse_bind)]
    pub binds: Vec<Bind>,
    /// An environment variable for the test (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Kill the test with its container after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Keep the upper layer of failed tests and print what changed (also PRISTINE_KEEP=failed).
    #[arg(long)]
    pub keep_failed: bool,
    /// Carry the test binary, its ELF interpreter and libraries into the image (default:
    /// only for images other than `host`).
    #[arg(long)]
    pub carry: bool,
    /// Put the upper layer on disk in the store instead of on a tmpfs.
    #[arg(long)]
    pub upper_on_disk: bool,
    /// Store directory (default: $PRISTINE_STORE, or target/pristine under cargo).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// The test binary and its arguments, as nextest passes them.
    #[arg(last = true, required = true, value_name = "TESTBIN")]
    pub command: Vec<OsString>,
}

fn parse_bind(s: &str) -> Result<Bind, String> {
    s.parse().map_err(|e: crate::ConfigError| e.to_string())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// Whether this invocation only lists tests (`--list`, as nextest's discovery does).
pub fn is_listing(args: &[OsString]) -> bool {
    args.iter().any(|a| a == "--list")
}

/// Runs `pristine wrap`: the test binary on the host for `--list`, otherwise in a
/// container. Returns the test binary's exit code (128+N if killed by signal N; 124 and a
/// message if it timed out; 125 if the container could not be started).
pub fn run(args: WrapArgs) -> ExitCode {
    let (bin, rest) = match args.command.split_first() {
        Some((b, r)) => (PathBuf::from(b), r.to_vec()),
        None => {
            say!("pristine wrap: no test binary given");
            return ExitCode::from(125);
        }
    };
    if is_listing(&rest) {
        let err = std::process::Command::new(&bin).args(&rest).exec();
        say!("pristine wrap: failed to run {}: {err}", bin.display());
        return ExitCode::from(125);
    }
    match run_in_container(&args, &bin, &rest) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say!("pristine wrap: {e}");
            ExitCode::from(125)
        }
    }
}

fn run_in_container(
    args: &WrapArgs,
    bin: &std::path::Path,
    rest: &[OsString],
) -> Result<u8, String> {
    let mut image = match args.image.as_str() {
        "host" => Image::host(),
        spec => {
            let store = match &args.store {
                Some(dir) => crate::Store::open(dir),
                None => crate::Store::open_default(),
            }
            .map_err(|e| e.to_string())?;
            crate::layers::resolve_image(&store, spec).map_err(|e| e.to_string())?
        }
    };
    for l in &args.layers {
        image = image.layer(l);
    }
    let bin = std::fs::canonicalize(bin)
        .map_err(|e| format!("failed to find the test binary {}: {e}", bin.display()))?;
    let carry = args.carry || *image.base() != Base::Host;
    let keep = match std::env::var(KEEP_ENV).ok().and_then(|v| parse_keep(&v)) {
        _ if args.keep_failed => Keep::OnFailure,
        Some(k) => k,
        None => Keep::Never,
    };
    // The test binary is the command: an image's entrypoint would run instead of it.
    let mut c = Container::new(image)
        .entrypoint(Vec::<String>::new())
        .stdio(Stdio::Inherit)
        .keep(keep);
    if let Some(t) = args.timeout {
        c = c.timeout(t);
    }
    if let Some(s) = &args.store {
        c = c.store(s);
    }
    if args.upper_on_disk {
        c = c.upper(Upper::Disk);
    }
    for b in &args.binds {
        c = c.bind(b.clone());
    }
    for (k, v) in &args.env {
        c = c.env(k, v);
    }
    let mut argv: Vec<OsString> = if carry {
        let carried = carry::carry(&bin).map_err(|e| e.to_string())?;
        for b in carried.binds {
            c = c.bind(b);
        }
        carried.argv.into_iter().map(OsString::from).collect()
    } else {
        // The host's libc is there, but the binary's directory may not be (the container's
        // /tmp is a fresh tmpfs): bind the binary itself.
        let target = format!("{}/bin", carry::CARRY_DIR);
        c = c.bind(Bind {
            source: bin.clone(),
            target: target.clone().into(),
            readonly: true,
        });
        vec![target.into()]
    };
    argv.extend(rest.iter().cloned());
    let cwd = std::env::current_dir()
        .map_err(|e| format!("failed to read the working directory: {e}"))?;
    c = super::harness::keep_workdir(c, &cwd, !carry);
    crate::forward_signals_to_foreground();
    let out = c
        .run(&argv)
        .map_err(|e| format!("failed to run {} in a container: {e}", bin.display()))?;
    if out.timed_out {
        say!(
            "pristine wrap: {} timed out and was killed with its container {}",
            bin.display(),
            out.id
        );
    }
    if let Some(limit) = out.oom_killed {
        say!(
            "pristine wrap: {} killed: out of memory, limit {}",
            bin.display(),
            crate::size::human(limit)
        );
    }
    if let Some(k) = &out.kept {
        say!("pristine wrap: kept upper layer: {}", k.upper().display());
        let diff = k.diff().map_err(|e| e.to_string());
        put!(
            std::io::stderr(),
            "{}",
            render_diff(diff.as_deref().map_err(Clone::clone))
        );
    }
    Ok(match (out.timed_out, out.status.code()) {
        (true, _) => 124,
        (false, c) => u8::try_from(c).unwrap_or(1),
    })
}
