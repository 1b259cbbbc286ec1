//! `#[pristine::test]`: declares a test function of a pristine harness target (re-exported
//! as `pristine::test`; see `pristine::testing` for the harness).
//!
//! ```ignore
//! #[pristine::test]
//! fn writes_are_private() -> pristine::testing::TestResult {
//!     std::fs::write("/etc/motd", "mine")?; // inside this test's own container
//!     Ok(())
//! }
//!
//! #[pristine::test(group = "db")]
//! #[ignore]
//! fn slow(ctx: &pristine::testing::Ctx) {
//!     assert!(ctx.service_log("postgres").contains("ready"));
//! }
//! ```
//!
//! The function keeps its name and can still be called; the attribute also registers it
//! (through `inventory`) with every `Harness` of the binary, in the group it names (default:
//! the first, unnamed one). It takes no argument or a `&Ctx`, and returns `()` (fail by
//! panicking) or a `Result<(), E>` whose error converts into a boxed error.

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, FnArg, ItemFn, Lit, Meta, Token};

/// Declares a test that runs in its own container: see the crate documentation.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What the attribute's arguments say.
#[derive(Default)]
struct Options {
    group: String,
    ignored: bool,
}

fn parse_options(args: proc_macro2::TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    for meta in metas {
        match &meta {
            Meta::Path(p) if p.is_ident("ignore") => options.ignored = true,
            Meta::NameValue(nv) if nv.path.is_ident("group") => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => options.group = s.value(),
                other => {
                    return Err(Error::new(
                        other.span(),
                        "`group` takes a string: #[pristine::test(group = \"db\")]",
                    ))
                }
            },
            _ => {
                return Err(Error::new(
                    meta.span(),
                    "unknown argument: #[pristine::test] takes `group = \"NAME\"` and `ignore`",
                ))
            }
        }
    }
    Ok(options)
}

fn expand(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let mut options = parse_options(args)?;
    let mut func: ItemFn = syn::parse2(item)?;
    // `#[ignore]` (with or without a reason) works as on an ordinary test.
    let before = func.attrs.len();
    func.attrs.retain(|a| !a.path().is_ident("ignore"));
    options.ignored |= func.attrs.len() != before;
    if let Some(a) = func.attrs.iter().find(|a| a.path().is_ident("test")) {
        return Err(Error::new(
            a.span(),
            "#[pristine::test] replaces #[test]: remove the #[test] attribute",
        ));
    }
    let sig = &func.sig;
    if sig.asyncness.is_some() {
        return Err(Error::new(
            sig.asyncness.span(),
            "#[pristine::test] functions are not async: start a runtime in the body if needed",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(
            sig.generics.span(),
            "#[pristine::test] functions take no generic parameters",
        ));
    }
    let ident = &sig.ident;
    let call = match sig.inputs.len() {
        0 => quote! { #ident() },
        1 if matches!(sig.inputs[0], FnArg::Typed(_)) => quote! { #ident(ctx) },
        _ => {
            return Err(Error::new(
                sig.inputs.span(),
                "#[pristine::test] functions take no argument or one `&pristine::testing::Ctx`",
            ))
        }
    };
    let name = ident.to_string();
    let group = &options.group;
    let ignored = options.ignored;
    Ok(quote! {
        #func

        ::pristine::testing::__private::inventory::submit! {
            ::pristine::testing::__private::Registered {
                name: #name,
                module: ::core::module_path!(),
                group: #group,
                ignored: #ignored,
                file: ::core::file!(),
                line: ::core::line!(),
                body: |ctx: &::pristine::testing::Ctx| {
                    let _ = ctx;
                    ::pristine::testing::__private::TestOutput::into_test_result(#call)
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn error_of(args: &str, item: &str) -> String {
        match expand(args.parse().unwrap(), item.parse().unwrap()) {
            Ok(tokens) => panic!("expanded: {tokens}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn registers_the_function_and_keeps_it() {
        let out = expand(
            "group = \"db\"".parse().unwrap(),
            "#[ignore] fn sees(ctx: &Ctx) -> TestResult { Ok(()) }"
                .parse()
                .unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("fn sees"), "{out}");
        assert!(!out.contains("# [ignore]"), "{out}");
        for part in [
            "name : \"sees\"",
            "group : \"db\"",
            "ignored : true",
            "sees (ctx)",
        ] {
            assert!(out.contains(part), "{part} missing: {out}");
        }
        let out = expand(
            proc_macro2::TokenStream::new(),
            "fn plain() {}".parse().unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(
            out.contains("ignored : false") && out.contains("plain ()"),
            "{out}"
        );
    }

    #[test]
    fn misuse_is_a_clear_compile_error() {
        assert!(error_of("", "#[test] fn t() {}").contains("replaces #[test]"));
        assert!(error_of("", "async fn t() {}").contains("not async"));
        assert!(error_of("", "fn t<T>() {}").contains("no generic"));
        assert!(error_of("", "fn t(a: u8, b: u8) {}").contains("no argument or one"));
        assert!(error_of("group = 1", "fn t() {}").contains("takes a string"));
        assert!(error_of("retries = 3", "fn t() {}").contains("unknown argument"));
    }
}
