//! A base recipe with ready-made services on it: the image to build and the services to
//! start in each test's container.

use std::sync::Arc;

use crate::layers::{BaseSpec, BuildError, Built, LayerSpec, Recipe};
use crate::testing::Service;
use crate::{Image, Store};

use super::ServicesError;

/// A ready-made service: build steps that initialise and seed it once over a base (frozen
/// into cached layers), and the [`Service`] that each test's container starts on them.
/// [`Postgres`](super::Postgres), [`Redis`](super::Redis) and [`Generic`](super::Generic)
/// implement it.
pub trait ReadyMade: std::fmt::Debug + Send + Sync {
    /// Its name: the service's name in the harness and the prefix of its layers' names
    /// (`NAME-init`, `NAME-seed`).
    fn name(&self) -> &str;
    /// The layers that prepare it over `base`, bottom first; each is named `NAME-…`. Checks
    /// what can be checked before building (e.g. on the host base, that its programs are
    /// installed).
    fn layers(&self, base: &BaseSpec) -> Result<Vec<LayerSpec>, ServicesError>;
    /// What of the host its layers depend on (`pkg:NAME`), on the host base.
    fn host_inputs(&self) -> Vec<String> {
        Vec::new()
    }
    /// The service each test starts.
    fn service(&self) -> Service;
    /// Says what went wrong when one of its layers failed to build.
    fn explain(&self, err: BuildError) -> ServicesError {
        let step = failed_layer(&err)
            .and_then(|l| l.strip_prefix(self.name())?.strip_prefix('-'))
            .unwrap_or("build")
            .to_string();
        ServicesError::Build {
            service: self.name().to_string(),
            step,
            source: Box::new(err),
        }
    }
}

/// The layer a build error is about, if any.
pub(crate) fn failed_layer(err: &BuildError) -> Option<&str> {
    match err {
        BuildError::StepFailed { layer, .. }
        | BuildError::Container { layer, .. }
        | BuildError::BadCopy { layer, .. }
        | BuildError::DeviceNode { layer, .. } => Some(layer),
        _ => None,
    }
}

/// Ready-made services on a base recipe.
///
/// ```no_run
/// use pristine::services::{Postgres, Redis, Stack};
/// use pristine::Store;
///
/// let stack = Stack::host()
///     .with(Postgres::new().migrations("migrations"))
///     .with(Redis::new().seed_commands("seed.redis"));
/// let image = stack.build(&Store::open_default()?)?; // for Container::new
/// let services = stack.services();                   // to start in each container
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Stack {
    base: Recipe,
    services: Vec<Arc<dyn ReadyMade>>,
}

impl Stack {
    /// Services over the host's root filesystem (their programs from the host's packages).
    pub fn host() -> Self {
        Self::new(Recipe::host())
    }

    /// Services over `base`: any recipe (`Recipe::image("name")` for a named or imported
    /// image, `Recipe::rootfs(dir)`, or one with layers of its own); their layers go on top.
    pub fn new(base: Recipe) -> Self {
        Stack {
            base,
            services: Vec::new(),
        }
    }

    /// Adds a service (its layers above those of the services added before).
    pub fn with(mut self, service: impl ReadyMade + 'static) -> Self {
        self.services.push(Arc::new(service));
        self
    }

    /// The recipe: the base and every service's layers. On the bare host base, the key
    /// covers the services' packages (`pkg:…`) rather than every installed package, when
    /// every service names them.
    pub fn recipe(&self) -> Result<Recipe, ServicesError> {
        let mut recipe = self.base.clone();
        let narrow = recipe.base == BaseSpec::Host
            && (recipe.layers.is_empty() || !recipe.host_inputs.is_empty());
        let mut inputs = Vec::new();
        let mut all_named = true;
        for s in &self.services {
            self.check_name(s.name())?;
            for layer in s.layers(&recipe.base)? {
                recipe = recipe.layer(layer);
            }
            let mine = s.host_inputs();
            all_named &= !mine.is_empty();
            inputs.extend(mine);
        }
        if narrow && all_named {
            recipe = recipe.host_inputs(inputs);
        }
        Ok(recipe)
    }

    fn check_name(&self, name: &str) -> Result<(), ServicesError> {
        let bad = |reason: &str| ServicesError::BadConfig {
            service: name.to_string(),
            reason: reason.into(),
        };
        if !super::plain_name(name) {
            return Err(bad(
                "a service's name must be 1 to 63 letters, digits, `_` or `-`",
            ));
        }
        if self.services.iter().filter(|o| o.name() == name).count() > 1 {
            return Err(bad(
                "two services of the stack have this name; rename one with `.name(…)`",
            ));
        }
        Ok(())
    }

    /// Builds what is not cached and returns the image.
    pub fn build(&self, store: &Store) -> Result<Image, ServicesError> {
        Ok(self.build_report(store)?.image)
    }

    /// Builds what is not cached; says which layers came from the cache.
    pub fn build_report(&self, store: &Store) -> Result<Built, ServicesError> {
        self.recipe()?
            .build_report(store)
            .map_err(|e| self.explain(e))
    }

    /// Builds in the default store (`Store::open_default`), as the harness does.
    pub fn build_default(&self) -> Result<Image, ServicesError> {
        self.build(&Store::open_default()?)
    }

    /// The services to start in each test's container, in the order they were added.
    pub fn services(&self) -> Vec<Service> {
        self.services.iter().map(|s| s.service()).collect()
    }

    fn explain(&self, err: BuildError) -> ServicesError {
        // The longest name that prefixes the layer's: `pg-x-seed` is `pg-x`'s, not `pg`'s.
        let owner = failed_layer(&err).and_then(|layer| {
            self.services
                .iter()
                .filter(|s| {
                    layer
                        .strip_prefix(s.name())
                        .is_some_and(|r| r.starts_with('-'))
                })
                .max_by_key(|s| s.name().len())
        });
        match owner {
            Some(s) => s.explain(err),
            None => ServicesError::Build {
                service: "stack".into(),
                step: "the base recipe".into(),
                source: Box::new(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Generic;

    #[test]
    fn a_failed_layer_is_blamed_on_the_service_whose_name_is_its_longest_prefix() {
        let stack = Stack::host()
            .with(Generic::new("pg", ["true"]))
            .with(Generic::new("pg-x", ["true"]));
        let err = BuildError::BadCopy {
            layer: "pg-x-setup".into(),
            from: "/nowhere".into(),
            to: "/x".into(),
            reason: "missing".into(),
        };
        match stack.explain(err) {
            ServicesError::Build { service, step, .. } => {
                assert_eq!((service.as_str(), step.as_str()), ("pg-x", "setup"));
            }
            other => panic!("{other:?}"),
        }
    }
}
