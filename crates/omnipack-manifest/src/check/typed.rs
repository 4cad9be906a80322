//! The manifest as the semantic rules read it: the typed model ([`crate::model`]) with the
//! defaults of [`crate::resolved`], tier by tier and component by component.
//!
//! The schema check reports every problem of the merged tree first. A manifest it rejects may
//! still hold many good tiers and components, so each one is typed on its own, with the keys
//! the schema reported as unknown left out: one broken item does not hide the problems of the
//! others. An item in which the schema rejected a value (or that does not deserialise) is known
//! to the rules by its name only, so that duplicate names and references to it are still
//! checked; its other rules wait until its schema errors are fixed (serde would accept some
//! values the schema rejects, such as a list for a mapping, and the rules would misread them).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::model::{Component, Manifest, ManifestVersion, Tier};
use crate::node::{self, Segment};
use crate::resolved::{ResolvedComponent, resolve};

/// A component as written and with its defaults applied.
pub(crate) struct TypedComponent {
    /// As written (what is absent is `None`).
    pub written: Component,
    /// With every default applied.
    pub resolved: ResolvedComponent,
}

/// One element of `tiers` or `components`.
pub(crate) struct Item<T> {
    /// Its `name`, when that is a string (even if the rest of the item is broken).
    pub name: Option<String>,
    /// The item, when it deserialises.
    pub typed: Option<T>,
}

/// The manifest as the semantic rules read it.
pub(crate) struct TypedManifest {
    /// The whole manifest, or why it does not deserialise.
    pub whole: Result<Manifest, serde_json::Error>,
    /// True when `package` is written (not absent, not left empty).
    pub package_written: bool,
    /// Every element of `tiers`, in order.
    pub tiers: Vec<Item<Tier>>,
    /// Every element of `components`, in order.
    pub components: Vec<Item<TypedComponent>>,
}

/// Just the name of an item whose other keys may be broken.
#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

impl TypedManifest {
    /// Types the merged `json`, leaving out `unknown_keys` (the JSON pointer of a mapping,
    /// and the keys in it the schema does not know). `rejected` are the manifest paths (such
    /// as `tiers[0].memory_limit`) of the values the schema rejected.
    pub(crate) fn new(
        json: &Value,
        unknown_keys: &[(String, Vec<String>)],
        rejected: &[String],
    ) -> TypedManifest {
        let json = without_keys(json, unknown_keys);
        let whole = Manifest::deserialize(json.as_ref());
        let (package_written, tiers, components) = match &whole {
            Ok(m) if rejected.is_empty() => (
                m.package.is_some(),
                m.tiers.iter().flatten().cloned().map(Item::typed).collect(),
                m.components
                    .iter()
                    .flatten()
                    .cloned()
                    .map(Item::typed)
                    .collect(),
            ),
            // Item by item.
            _ => {
                let rejected = rejected_items(rejected);
                (
                    json.get("package").is_some_and(|p| !p.is_null()),
                    section(&json, "tiers", &rejected),
                    section(&json, "components", &rejected),
                )
            }
        };
        TypedManifest {
            whole,
            package_written,
            tiers,
            components: with_defaults(components),
        }
    }

    /// The names of every tier, in order.
    pub(crate) fn tier_names(&self) -> Vec<&str> {
        self.tiers
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect()
    }

    /// The names of every component, in order.
    pub(crate) fn component_names(&self) -> Vec<&str> {
        self.components
            .iter()
            .filter_map(|c| c.name.as_deref())
            .collect()
    }

    /// The tiers that deserialise, with their index in `tiers`.
    pub(crate) fn typed_tiers(&self) -> impl Iterator<Item = (usize, &Tier)> {
        self.tiers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.typed.as_ref().map(|t| (i, t)))
    }

    /// The components that deserialise, with their index in `components`.
    pub(crate) fn typed_components(&self) -> impl Iterator<Item = (usize, &TypedComponent)> {
        self.components
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.typed.as_ref().map(|c| (i, c)))
    }
}

impl<T> Item<T> {
    /// An item that deserialised.
    fn typed(item: T) -> Self
    where
        T: Named,
    {
        Item {
            name: Some(item.name().to_string()),
            typed: Some(item),
        }
    }

    /// An item typed on its own: `typed` when it deserialises and the schema did not reject
    /// it, `name` either way.
    fn from_json(v: &Value, rejected: bool) -> Self
    where
        T: for<'de> Deserialize<'de>,
    {
        Item {
            name: NameOnly::deserialize(v).ok().map(|n| n.name),
            typed: if rejected {
                None
            } else {
                T::deserialize(v).ok()
            },
        }
    }
}

/// Items that have a name.
trait Named {
    fn name(&self) -> &str;
}

impl Named for Tier {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for Component {
    fn name(&self) -> &str {
        &self.name
    }
}

/// The typed components with their defaults, as [`resolve`] applies them.
fn with_defaults(components: Vec<Item<Component>>) -> Vec<Item<TypedComponent>> {
    let valid: Vec<Component> = components.iter().filter_map(|c| c.typed.clone()).collect();
    let mut resolved = resolve(&Manifest {
        omnipack: ManifestVersion,
        package: None,
        extends: None,
        runtime_overhead: None,
        tiers: None,
        components: Some(valid),
    })
    .components
    .into_iter();
    components
        .into_iter()
        .map(|c| Item {
            name: c.name,
            typed: c.typed.and_then(|written| {
                resolved
                    .next()
                    .map(|resolved| TypedComponent { written, resolved })
            }),
        })
        .collect()
}

/// The items of the list at `key`, each typed on its own unless `rejected` names it.
fn section<T: Named + for<'de> Deserialize<'de>>(
    json: &Value,
    key: &str,
    rejected: &[(String, usize)],
) -> Vec<Item<T>> {
    let items = match json.get(key) {
        Some(Value::Array(items)) => items.as_slice(),
        _ => &[],
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| Item::from_json(v, rejected.contains(&(key.to_string(), i))))
        .collect()
}

/// The items (section and index, such as `("tiers", 0)`) that hold one of the `rejected`
/// manifest paths.
fn rejected_items(rejected: &[String]) -> Vec<(String, usize)> {
    rejected
        .iter()
        .filter_map(|p| match node::parse_path(p)?.as_slice() {
            [Segment::Key(section), Segment::Index(i), ..] => Some((section.clone(), *i)),
            _ => None,
        })
        .collect()
}

/// `json` without the `keys` of each mapping at a JSON pointer (borrowed when there are none).
fn without_keys<'a>(json: &'a Value, keys: &[(String, Vec<String>)]) -> Cow<'a, Value> {
    if keys.is_empty() {
        return Cow::Borrowed(json);
    }
    let mut json = json.clone();
    for (pointer, names) in keys {
        if let Some(Value::Object(map)) = json.pointer_mut(pointer) {
            for name in names {
                map.remove(name);
            }
        }
    }
    Cow::Owned(json)
}
