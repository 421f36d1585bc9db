//! `#[plugin(...)]`: registers a sweetspot plugin in one attribute (re-exported as
//! `sweetspot_core::plugin`; see `sweetspot_core::registry`).
//!
//! On the impl of a config trait (`SamplerConfig`, `RewardModelConfig`, `PairStrategyConfig`,
//! `PreferenceLossConfig`) it writes `#[typetag::serde(name = ...)]` (what a recipe's
//! `type = "..."` deserializes through) and the `PluginInfo` entry (`inventory::submit!`) from
//! the same name, the kind following from the trait, so the two can never disagree.

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ItemImpl, LitStr, MetaNameValue, Token, parse_macro_input};

/// The attribute's arguments: `name = "...", description = "...", example = "..."`.
struct Args {
    name: LitStr,
    description: Expr,
    example: Expr,
}

/// A string literal, also as a `macro_rules!` argument (which arrives in an invisible group).
fn lit_str(e: &Expr) -> Option<LitStr> {
    match e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.clone()),
        Expr::Group(g) => lit_str(&g.expr),
        _ => None,
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated(input)?;
        let (mut name, mut description, mut example) = (None, None, None);
        for p in pairs {
            let key = p
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            match key.as_str() {
                "name" => match lit_str(&p.value) {
                    Some(s) => name = Some(s),
                    None => {
                        return Err(syn::Error::new_spanned(
                            &p.value,
                            "`name` is a string literal",
                        ));
                    }
                },
                "description" => description = Some(p.value),
                "example" => example = Some(p.value),
                _ => {
                    return Err(syn::Error::new_spanned(
                        &p.path,
                        "unknown argument: give name, description and example",
                    ));
                }
            }
        }
        let missing = |what: &str| syn::Error::new(input.span(), format!("`{what}` is missing"));
        Ok(Self {
            name: name.ok_or_else(|| missing("name"))?,
            description: description.ok_or_else(|| missing("description"))?,
            example: example.ok_or_else(|| missing("example"))?,
        })
    }
}

/// Registers the plugin whose config trait this impl implements:
/// `#[sweetspot_core::plugin(name = "quantile", description = "...", example = "type = ...")]`.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as Args);
    let item = parse_macro_input!(item as ItemImpl);
    let Some((trait_path, _)) = &item.trait_ else {
        return syn::Error::new_spanned(
            &item.self_ty,
            "#[plugin] goes on an impl of a sweetspot config trait (SamplerConfig, ...)",
        )
        .to_compile_error()
        .into();
    };
    let Args {
        name,
        description,
        example,
    } = args;
    quote! {
        #[::typetag::serde(name = #name)]
        #item

        ::sweetspot_core::inventory::submit! {
            ::sweetspot_core::PluginInfo {
                kind: <dyn #trait_path as ::sweetspot_core::registry::ConfigKind>::KIND,
                name: #name,
                description: #description,
                crate_name: env!("CARGO_PKG_NAME"),
                example: #example,
            }
        }
    }
    .into()
}
