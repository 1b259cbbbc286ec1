//! What the container's command is: its argument vector, environment, working directory
//! and user, from the caller's settings over the image's config (an imported image's
//! `Env`, `Entrypoint`, `Cmd`, `WorkingDir`, `User`), by Docker's rules.

use std::path::{Path, PathBuf};

use super::builder::{Container, User};
use super::ident;
use crate::error::ConfigError;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An environment being assembled: a later value of a key replaces an earlier one in
/// place (in linear time, for images with huge environments).
#[derive(Default)]
struct EnvList {
    vars: Vec<(String, String)>,
    index: std::collections::HashMap<String, usize>,
}

impl EnvList {
    fn set(&mut self, k: &str, v: &str) {
        match self.index.get(k) {
            Some(&i) => self.vars[i].1 = v.to_string(),
            None => {
                self.index.insert(k.to_string(), self.vars.len());
                self.vars.push((k.to_string(), v.to_string()));
            }
        }
    }
}

fn check_env(k: &str, v: &str) -> Result<(), ConfigError> {
    if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
        return Err(ConfigError::BadEnv(format!("{k}={v}")));
    }
    Ok(())
}

/// The command's environment: the caller's (unless cleared), the image's `Env` over it,
/// the variables set on the container over both, and a default `PATH` if none is set.
pub(crate) fn environment(c: &Container) -> Result<Vec<String>, ConfigError> {
    let mut env = EnvList::default();
    if c.inherit_env {
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
                env.set(k, v);
            }
        }
    }
    for kv in c
        .image
        .config()
        .map(|c| c.env.as_slice())
        .unwrap_or_default()
    {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ConfigError::BadEnv(kv.clone()))?;
        check_env(k, v)?;
        env.set(k, v);
    }
    for (k, v) in &c.env {
        check_env(k, v)?;
        env.set(k, v);
    }
    if !env.index.contains_key("PATH") {
        env.set("PATH", DEFAULT_PATH);
    }
    Ok(env
        .vars
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect())
}

/// The command to run: the entrypoint (the caller's, else the image's) followed by the
/// command given, else by the image's `Cmd` (unless the caller replaced the entrypoint),
/// as Docker runs it.
pub(crate) fn command(c: &Container, argv: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let config = c.image.config();
    let entrypoint = match (&c.entrypoint, config) {
        (Some(e), _) => e.clone(),
        (None, Some(cfg)) => cfg.entrypoint.clone(),
        (None, None) => Vec::new(),
    };
    let cmd = match (argv.is_empty(), c.entrypoint.is_some(), config) {
        (false, ..) => argv,
        (true, false, Some(cfg)) => cfg.cmd.clone(),
        _ => Vec::new(),
    };
    let full: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if let Some(bad) = full.iter().find(|a| a.contains('\0')) {
        return Err(ConfigError::BadString {
            what: "argument",
            value: bad.clone(),
        });
    }
    match full.first().map(String::as_str) {
        None if config.is_some() && c.entrypoint.is_none() => Err(ConfigError::NoCommand),
        None | Some("") => Err(ConfigError::EmptyCommand),
        Some(_) => Ok(full),
    }
}

/// The working directory, and whether it is created when missing: the caller's (which
/// must exist), else the image's `WorkingDir` (created, as Docker does; a relative one is
/// taken from `/`), else `/`.
pub(crate) fn workdir(c: &Container) -> Result<(PathBuf, bool), ConfigError> {
    if let Some(w) = &c.workdir {
        if !w.is_absolute() {
            return Err(ConfigError::RelativeWorkdir(w.clone()));
        }
        return Ok((w.clone(), false));
    }
    match c.image.config().and_then(|cfg| cfg.working_dir.as_deref()) {
        Some(w) if w.contains('\0') => Err(ConfigError::BadString {
            what: "working directory",
            value: w.to_string(),
        }),
        Some(w) => Ok((Path::new("/").join(w), true)),
        None => Ok((PathBuf::from("/"), false)),
    }
}

/// On an image with a config, `HOME` is the user's home from the image's passwd (as
/// Docker sets it), unless the caller or the image's `Env` set it.
pub(crate) fn with_home(
    c: &Container,
    mut env: Vec<String>,
    ids: Option<&ident::Ids>,
) -> Vec<String> {
    let (Some(config), Some(home)) = (c.image.config(), ids.and_then(|i| i.home.as_deref())) else {
        return env;
    };
    let set = c.env.iter().any(|(k, _)| k == "HOME")
        || config.env.iter().any(|kv| kv.starts_with("HOME="));
    if !set {
        env.retain(|kv| !kv.starts_with("HOME="));
        env.push(format!("HOME={home}"));
    }
    env
}

/// The user to run as: the caller's, else the image's `User`, resolved in the image.
pub(crate) fn user_ids(
    c: &Container,
    image: &crate::Image,
) -> Result<Option<ident::Ids>, ConfigError> {
    match (
        &c.user,
        c.image.config().and_then(|cfg| cfg.user.as_deref()),
    ) {
        (Some(User::Id(uid, gid)), _) => Ok(Some(ident::Ids {
            uid: *uid,
            gid: *gid,
            groups: vec![*gid],
            home: None,
        })),
        (Some(User::Name(name)), _) => ident::resolve(image, name).map(Some),
        (None, Some(spec)) => ident::resolve(image, spec).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::ImageConfig;
    use crate::Image;

    fn image() -> Image {
        Image::rootfs("/nonexistent").with_config(ImageConfig {
            env: vec!["PATH=/img".into(), "A=image".into(), "A=image2".into()],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["cmd".into()],
            working_dir: Some("srv".into()),
            ..ImageConfig::default()
        })
    }

    fn argv(c: &Container, args: &[&str]) -> Result<Vec<String>, ConfigError> {
        command(c, args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn dockers_command_rules() {
        let c = Container::new(image());
        assert_eq!(argv(&c, &[]).unwrap(), ["/entry", "cmd"]);
        assert_eq!(argv(&c, &["x"]).unwrap(), ["/entry", "x"]);
        let e = c.clone().entrypoint(["/other"]);
        assert_eq!(argv(&e, &[]).unwrap(), ["/other"]);
        let none = c.clone().entrypoint(Vec::<String>::new());
        assert_eq!(argv(&none, &["ls"]).unwrap(), ["ls"]);
        assert!(matches!(argv(&none, &[]), Err(ConfigError::EmptyCommand)));
        let bare = Container::new(Image::rootfs("/x").with_config(ImageConfig {
            env: vec!["A=1".into()],
            ..ImageConfig::default()
        }));
        assert!(matches!(argv(&bare, &[]), Err(ConfigError::NoCommand)));
        let host = Container::new(Image::host());
        assert!(matches!(argv(&host, &[]), Err(ConfigError::EmptyCommand)));
        assert_eq!(argv(&host, &["true"]).unwrap(), ["true"]);
    }

    #[test]
    fn the_callers_environment_and_workdir_win() {
        let c = Container::new(image()).env_clear().env("B", "caller");
        assert_eq!(
            environment(&c).unwrap(),
            ["PATH=/img", "A=image2", "B=caller"]
        );
        let c = c.env("A", "caller").env("PATH", "/mine");
        assert_eq!(
            environment(&c).unwrap(),
            ["PATH=/mine", "A=caller", "B=caller"]
        );
        let plain = Container::new(Image::host()).env_clear();
        assert_eq!(
            environment(&plain).unwrap(),
            [format!("PATH={DEFAULT_PATH}")]
        );
        assert_eq!(
            workdir(&Container::new(image())).unwrap(),
            ("/srv".into(), true)
        );
        let w = Container::new(image()).workdir("/w");
        assert_eq!(workdir(&w).unwrap(), ("/w".into(), false));
        assert_eq!(
            workdir(&Container::new(Image::host())).unwrap(),
            ("/".into(), false)
        );
    }
}
