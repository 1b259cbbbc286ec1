//! Tests declared with `#[pristine::test]`: registered at link time (`inventory`) and
//! merged into a [`Harness`](super::Harness) when it lists or runs its tests.

use super::harness::{Ctx, TestResult};

/// One `#[pristine::test]` function, as the attribute registers it.
#[doc(hidden)]
pub struct Registered {
    /// The function's name.
    pub name: &'static str,
    /// `module_path!()` where it is declared.
    pub module: &'static str,
    /// The group it joins (`""`: the harness's first, unnamed group).
    pub group: &'static str,
    /// Declared with `ignore` or `#[ignore]`.
    pub ignored: bool,
    /// Where it is declared, for error messages.
    pub file: &'static str,
    /// Line of the declaration.
    pub line: u32,
    /// Calls the function.
    pub body: fn(&Ctx) -> TestResult,
}

inventory::collect!(Registered);

impl Registered {
    /// The test's name: its module path below the crate, then the function's name, as
    /// libtest names `#[test]` functions (`db::sees_the_seed`).
    pub(crate) fn test_name(&self) -> String {
        match self.module.split_once("::") {
            Some((_crate, rest)) => format!("{rest}::{}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// Every registered test, in declaration order (file, then line).
pub(crate) fn all() -> Vec<&'static Registered> {
    let mut tests: Vec<&'static Registered> = inventory::iter::<Registered>.into_iter().collect();
    tests.sort_by_key(|t| (t.file, t.line));
    tests
}

/// What a `#[pristine::test]` function may return.
#[doc(hidden)]
pub trait TestOutput {
    /// As a [`TestResult`].
    fn into_test_result(self) -> TestResult;
}

impl TestOutput for () {
    fn into_test_result(self) -> TestResult {
        Ok(())
    }
}

impl<E> TestOutput for Result<(), E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn into_test_result(self) -> TestResult {
        self.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(module: &'static str) -> Registered {
        Registered {
            name: "sees_the_seed",
            module,
            group: "",
            ignored: false,
            file: "tests/x.rs",
            line: 1,
            body: |_| Ok(()),
        }
    }

    #[test]
    fn names_follow_libtest() {
        assert_eq!(registered("db_tests").test_name(), "sees_the_seed");
        assert_eq!(
            registered("db_tests::accounts").test_name(),
            "accounts::sees_the_seed"
        );
    }

    #[test]
    fn outputs_convert() {
        assert!(().into_test_result().is_ok());
        assert!(Ok::<(), std::io::Error>(()).into_test_result().is_ok());
        let err = Err::<(), _>("boom").into_test_result().unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
