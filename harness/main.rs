//! The `pristine` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pristine::{Bind, Container, Image, Keep, Stdio, Upper};

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
}

#[derive(clap::Args)]
struct RunArgs {
    /// `host` (the host's root filesystem) or a rootfs directory.
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
    /// Working directory inside the container.
    #[arg(long, default_value = "/")]
    workdir: PathBuf,
    /// Hostname inside the container (default: pristine-ID).
    #[arg(long)]
    hostname: Option<String>,
    /// Kill the whole container after this long (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Keep the upper layer after the container ends and print what changed.
    #[arg(long)]
    keep: bool,
    /// Size limit of the tmpfs upper layer (tmpfs syntax: 512m, 4g, 10%).
    #[arg(long, value_name = "SIZE", default_value = "4g")]
    upper_size: String,
    /// Put the upper layer on disk in the store instead of on a tmpfs.
    #[arg(long)]
    upper_on_disk: bool,
    /// Store directory (default: $PRISTINE_STORE, or target/pristine under cargo, or
    /// ~/.cache/pristine).
    #[arg(long)]
    store: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_bind(s: &str) -> Result<Bind, String> {
    s.parse().map_err(|e: pristine::ConfigError| e.to_string())
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
    humantime::parse_duration(s)
        .map_err(|e| format!("bad duration {s:?}: {e} (examples: 500ms, 10s, 2m)"))
}

fn print_error(err: &dyn std::error::Error) {
    eprintln!("pristine: error: {err}");
    let mut source = err.source();
    if source.is_some() {
        eprintln!("  caused by:");
    }
    while let Some(s) = source {
        eprintln!("    - {s}");
        source = s.source();
    }
}

fn run(args: RunArgs) -> ExitCode {
    let mut image: Image = match args.image.parse() {
        Ok(i) => i,
        Err(never) => match never {},
    };
    for layer in args.layers {
        image = image.layer(layer);
    }
    let mut c = Container::new(image)
        .stdio(Stdio::Inherit)
        .workdir(args.workdir)
        .upper(if args.upper_on_disk {
            Upper::Disk
        } else {
            Upper::Tmpfs(args.upper_size)
        });
    if args.clear_env {
        c = c.env_clear();
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
                eprintln!(
                    "pristine: timed out after {:.1?}; the container was killed",
                    out.duration
                );
            }
            if let Some(kept) = &out.kept {
                eprintln!("pristine: kept upper layer: {}", kept.dir.display());
                match kept.diff() {
                    Ok(changes) => changes.iter().for_each(|c| eprintln!("{c}")),
                    Err(e) => eprintln!("pristine: error: listing changes: {e}"),
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

fn main() -> ExitCode {
    pristine::main_if_requested();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Diff { path } => match pristine::diff::diff_kept(&path) {
            Ok(changes) => {
                for c in changes {
                    println!("{c}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_error(&e);
                ExitCode::from(1)
            }
        },
    }
}
