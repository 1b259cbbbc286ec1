//! Recipes: how an image is made (a base plus layers of build steps), in Rust or TOML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::BuildError;

/// One build step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Run a command in a throwaway container over the layers below.
    Run {
        /// The command and its arguments.
        argv: Vec<String>,
        /// Environment (the build does not inherit the caller's; `PATH` has a default).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// Working directory inside the container.
        #[serde(default = "root_dir")]
        workdir: PathBuf,
        /// Run as this user of the image (default root). Rootless, the caller is mapped to
        /// it, so files an earlier step created (as root) belong to it in this step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Copy a host file or directory into the layer.
    Copy {
        /// Host path (relative paths are relative to the recipe file, or the current
        /// directory for recipes made in Rust).
        from: PathBuf,
        /// Absolute destination inside the image.
        to: PathBuf,
    },
}

fn root_dir() -> PathBuf {
    PathBuf::from("/")
}

/// One layer: a name (for people; the key is what identifies it) and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[must_use]
pub struct LayerSpec {
    /// A human-readable name, shown by `pristine layers`.
    pub name: String,
    /// Steps, in order.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    /// How long each run step may take (default 10 minutes).
    #[serde(
        default,
        with = "humantime_serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Keep the setuid/setgid bits and device nodes the steps made (default: the bits are
    /// stripped when the layer is published, and a device node fails the build). Only the
    /// store's owner can reach a layer either way (the store is 0700).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_setuid: bool,
    /// The most disk space the layer may take (default [`DEFAULT_LAYER_MAX_SIZE`], 16 GiB;
    /// `max_size = "2g"` in TOML). Checked after every step: a build whose layer grew past
    /// it fails and publishes nothing. Not part of the layer's key.
    #[serde(
        default,
        with = "size_serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<crate::Size>,
}

/// The default bound of a layer's size ([`LayerSpec::max_size`](struct@LayerSpec)).
pub const DEFAULT_LAYER_MAX_SIZE: crate::Size = crate::Size::mib(16 * 1024);

mod size_serde_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<crate::Size>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::Size>, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        crate::duration::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

impl LayerSpec {
    /// A layer without steps yet.
    pub fn new(name: impl Into<String>) -> Self {
        LayerSpec {
            name: name.into(),
            steps: Vec::new(),
            timeout: None,
            keep_setuid: false,
            max_size: None,
        }
    }

    /// Adds a step that runs `argv` with no extra environment, in `/`.
    pub fn run<I, S>(self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.run_with(argv, [] as [(String, String); 0], "/")
    }

    /// Adds a step that runs `argv` with `env`, in `workdir`.
    pub fn run_with<I, S, E, K, V>(mut self, argv: I, env: E, workdir: impl Into<PathBuf>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        E: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.steps.push(Step::Run {
            argv: argv.into_iter().map(Into::into).collect(),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            workdir: workdir.into(),
            user: None,
        });
        self
    }

    /// Makes the last run step run as `user` (a name from the image's `/etc/passwd`).
    pub fn as_user(mut self, user: impl Into<String>) -> Self {
        if let Some(Step::Run { user: u, .. }) = self.steps.last_mut() {
            *u = Some(user.into());
        }
        self
    }

    /// Adds a step that copies a host file or directory to `to` in the image.
    pub fn copy(mut self, from: impl Into<PathBuf>, to: impl Into<PathBuf>) -> Self {
        self.steps.push(Step::Copy {
            from: from.into(),
            to: to.into(),
        });
        self
    }

    /// Bounds the disk space the layer may take (see
    /// [`LayerSpec::max_size`](struct@LayerSpec)).
    pub fn max_size(mut self, size: crate::Size) -> Self {
        self.max_size = Some(size);
        self
    }

    /// Keeps the setuid/setgid bits and device nodes the steps make (see
    /// [`LayerSpec::keep_setuid`](struct@LayerSpec)).
    pub fn keep_setuid(mut self) -> Self {
        self.keep_setuid = true;
        self
    }

    /// Sets the time limit of each run step.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// What a recipe starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseSpec {
    /// The host's root filesystem.
    Host,
    /// A root filesystem directory.
    Rootfs(PathBuf),
    /// A named image in the store (built, imported or pulled earlier), or a registry
    /// reference, pulled if not held.
    Image(String),
}

/// How to make an image: a base and layers, built bottom-up, each layer cached by a key
/// that covers its parent, its steps and the content of every copied file.
///
/// ```no_run
/// use pristine::{LayerSpec, Recipe, Store};
///
/// let image = Recipe::host()
///     .layer(LayerSpec::new("greeting").run(["sh", "-c", "echo hello > /etc/greeting"]))
///     .build(&Store::open_default()?)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[must_use]
pub struct Recipe {
    /// Name under which the built image is recorded in the store (`pristine images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The base.
    pub base: BaseSpec,
    /// Layers, bottom first.
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerSpec>,
    /// On the host base: what of the host the layers depend on, `pkg:NAME` (a Debian
    /// package and everything it depends on, by version) or absolute paths (by content).
    /// The host base's key covers these instead of every installed package, so that an
    /// unrelated package install leaves the layers cached. See [`Recipe::host_inputs`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_inputs: Vec<String>,
    /// Directory that relative `copy` sources are resolved against.
    #[serde(skip)]
    pub context: Option<PathBuf>,
}

impl Recipe {
    /// A recipe over the host's root filesystem.
    pub fn host() -> Self {
        Self::over(BaseSpec::Host)
    }

    /// A recipe over a rootfs directory.
    pub fn rootfs(dir: impl Into<PathBuf>) -> Self {
        Self::over(BaseSpec::Rootfs(dir.into()))
    }

    /// A recipe over a named image of the store, or over a registry reference
    /// (`postgres:16`, `localhost:5000/app@sha256:…`), pulled into the store at the first
    /// build (see [`crate::pull`]) and used as held afterwards.
    pub fn image(name: impl Into<String>) -> Self {
        Self::over(BaseSpec::Image(name.into()))
    }

    fn over(base: BaseSpec) -> Self {
        Recipe {
            name: None,
            base,
            layers: Vec::new(),
            host_inputs: Vec::new(),
            context: None,
        }
    }

    /// Declares what of the host the layers depend on, for a recipe over the host: the key
    /// of the host base then covers the architecture, the OS release, the passwd and group
    /// entries of the users the steps run as, and these inputs: `pkg:NAME` for a Debian
    /// package with its dependencies (by installed version), or an absolute path (a file or
    /// directory, by content). Without it, the key covers every installed package.
    /// Neither includes inode numbers or times: the same packages give the same key on
    /// every machine.
    ///
    /// ```
    /// let r = pristine::Recipe::host().host_inputs(["pkg:postgresql-15", "/etc/postgresql-common"]);
    /// ```
    pub fn host_inputs<I, S>(mut self, inputs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.host_inputs.extend(inputs.into_iter().map(Into::into));
        self
    }

    /// The users the steps run as (for the host base's key).
    pub(crate) fn step_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .layers
            .iter()
            .flat_map(|l| &l.steps)
            .filter_map(|s| match s {
                Step::Run { user, .. } => user.clone(),
                Step::Copy { .. } => None,
            })
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Records the built image under `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: LayerSpec) -> Self {
        self.layers.push(layer);
        self
    }

    /// Reads a recipe from a TOML file:
    ///
    /// ```toml
    /// name = "seeded-db"
    /// base = "host"            # or { rootfs = "path" } or { image = "name" }
    ///
    /// [[layer]]
    /// name = "seed"
    /// timeout = "2m"
    /// [[layer.step]]
    /// run = { argv = ["sh", "-c", "mkdir -p /srv && cp /seed.sql /srv/"], env = { A = "b" }, workdir = "/", user = "root" }
    /// [[layer.step]]
    /// copy = { from = "seed.sql", to = "/seed.sql" }
    /// ```
    ///
    /// Relative `copy` sources are relative to the file's directory; a missing `name`
    /// defaults to the file's stem.
    pub fn from_toml_file(path: &Path) -> Result<Self, BuildError> {
        let text = std::fs::read_to_string(path).map_err(|source| BuildError::Io {
            op: "read recipe",
            path: path.to_path_buf(),
            source,
        })?;
        let mut recipe: Recipe = toml::from_str(&text).map_err(|e| BuildError::BadRecipe {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if recipe.name.is_none() {
            recipe.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        recipe.context = Some(std::fs::canonicalize(dir).map_err(|source| BuildError::Io {
            op: "resolve recipe directory",
            path: dir.to_path_buf(),
            source,
        })?);
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// Checks what can be checked without building.
    pub(crate) fn validate(&self, origin: &Path) -> Result<(), BuildError> {
        let bad = |reason: String| BuildError::BadRecipe {
            path: origin.to_path_buf(),
            reason,
        };
        if let Some(name) = &self.name {
            super::catalog::check_image_name(name).map_err(bad)?;
        }
        if !self.host_inputs.is_empty() && self.base != BaseSpec::Host {
            return Err(bad(
                "host_inputs is for recipes over the host (base = \"host\")".into(),
            ));
        }
        for input in &self.host_inputs {
            super::hostkey::check_input(input).map_err(bad)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, step) in layer.steps.iter().enumerate() {
                match step {
                    Step::Run { argv, workdir, .. } => {
                        if argv.is_empty() {
                            return Err(bad(format!(
                                "layer {i} ({}) step {j}: empty command",
                                layer.name
                            )));
                        }
                        if !workdir.is_absolute() {
                            return Err(bad(format!(
                                "layer {i} ({}) step {j}: workdir must be absolute",
                                layer.name
                            )));
                        }
                    }
                    Step::Copy { to, .. } => {
                        if !to.is_absolute()
                            || to
                                .components()
                                .any(|c| c == std::path::Component::ParentDir)
                        {
                            return Err(bad(format!(
                                "layer {i} ({}) step {j}: copy destination {} must be absolute, without '..'",
                                layer.name,
                                to.display()
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Resolves a copy source against the recipe's context directory.
    pub(crate) fn source_path(&self, from: &Path) -> PathBuf {
        if from.is_absolute() {
            from.to_path_buf()
        } else {
            self.context
                .clone()
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_default()
                .join(from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_recipes_and_rejects_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.toml");
        std::fs::write(
            &file,
            r#"
base = "host"
[[layer]]
name = "seed"
timeout = "2m"
[[layer.step]]
run = { argv = ["sh", "-c", "true"], env = { A = "b" } }
[[layer.step]]
copy = { from = "seed.sql", to = "/seed.sql" }
"#,
        )
        .unwrap();
        let r = Recipe::from_toml_file(&file).unwrap();
        assert_eq!(r.name.as_deref(), Some("db"));
        assert_eq!(r.layers[0].timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            r.layers[0].steps[0],
            Step::Run {
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                env: [("A".to_string(), "b".to_string())].into(),
                workdir: "/".into(),
                user: None,
            }
        );
        assert_eq!(
            r.source_path(Path::new("seed.sql")),
            dir.path().canonicalize().unwrap().join("seed.sql")
        );

        for (bad, needle) in [
            ("base = 3", "base"),
            ("base = \"host\"\n[[layer]]\nname = \"x\"\n[[layer.step]]\nrun = { argv = [] }", "empty command"),
            ("base = \"host\"\n[[layer]]\nname = \"x\"\n[[layer.step]]\ncopy = { from = \"a\", to = \"rel\" }", "absolute"),
            ("name = \"a/b\"\nbase = \"host\"", "name"),
            // A misspelt or misplaced key is an error, not a silently empty layer.
            ("base = \"host\"\n[[layers]]\nname = \"x\"", "unknown field `layers`"),
            ("base = \"host\"\n[[layer]]\nname = \"x\"\nrun = [\"true\"]", "unknown field `run`"),
            ("base = \"host\"\n[[layer]]\nname = \"x\"\n[[layer.step]]\nrun = { argv = [\"true\"], envv = {} }", "unexpected keys in table: envv"),
        ] {
            std::fs::write(&file, bad).unwrap();
            let err = Recipe::from_toml_file(&file).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
