//! Apple's limits on the asset packs of one app record: 100 packs and 200 GB (each pack counted
//! at its largest uploaded version). The planner checks a release's usage against them once, over
//! every tier (one app record holds them all); a build refuses a plan whose recorded usage is
//! over them.

use serde::{Deserialize, Serialize};

use omnipack_manifest::format_bytes;

/// Asset packs per app record.
pub const MAX_ASSET_PACKS: usize = 100;
/// Bytes of asset packs per app record (200 GB).
pub const MAX_ASSET_PACK_BYTES: u64 = 200_000_000_000;

/// What a release puts in its app record: one asset pack per bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppStoreUsage {
    /// Asset packs (bundles of every tier).
    pub asset_packs: usize,
    /// Their bytes (planned weight bytes).
    pub bytes: u64,
}

/// A limit passed or nearly reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitProblem {
    /// What is over (or near) the limit.
    pub message: String,
    /// How to fix it (for a limit passed).
    pub help: Option<String>,
}

/// The usage checked against the limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitCheck {
    /// Limits passed: the release cannot be uploaded.
    pub over: Vec<LimitProblem>,
    /// Limits more than 80% used.
    pub near: Vec<LimitProblem>,
}

/// Checks `usage` against the App Store's limits (errors past them, warnings past 80%).
pub fn check(usage: &AppStoreUsage) -> LimitCheck {
    let mut c = LimitCheck::default();
    let packs = usage.asset_packs;
    if packs > MAX_ASSET_PACKS {
        c.over.push(LimitProblem {
            message: format!(
                "the plan has {packs} asset packs; the App Store allows {MAX_ASSET_PACKS} per app"
            ),
            help: Some(
                "use fewer formats per component or fewer tiers (`omnipack plan` lists the bundles)"
                    .into(),
            ),
        });
    } else if packs * 5 > MAX_ASSET_PACKS * 4 {
        c.near.push(LimitProblem {
            message: format!(
                "the plan has {packs} asset packs, over 80% of the App Store's {MAX_ASSET_PACKS} per app"
            ),
            help: None,
        });
    }
    let total = usage.bytes;
    if total > MAX_ASSET_PACK_BYTES {
        c.over.push(LimitProblem {
            message: format!(
                "the bundles total {} ({total} bytes); the App Store allows 200 GB of asset packs per app",
                format_bytes(total)
            ),
            help: Some("use smaller formats or fewer variants".into()),
        });
    } else if total > MAX_ASSET_PACK_BYTES / 5 * 4 {
        c.near.push(LimitProblem {
            message: format!(
                "the bundles total {} ({total} bytes), over 80% of the App Store's 200 GB per app",
                format_bytes(total)
            ),
            help: None,
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(asset_packs: usize, each: u64) -> AppStoreUsage {
        AppStoreUsage {
            asset_packs,
            bytes: asset_packs as u64 * each,
        }
    }

    #[test]
    fn app_store_limits() {
        assert_eq!(check(&usage(80, 1)), LimitCheck::default());
        let c = check(&usage(81, 1));
        assert!(c.over.is_empty());
        assert_eq!(c.near.len(), 1);
        assert!(!check(&usage(101, 1)).over.is_empty());
        let c = check(&usage(2, 81_000_000_000));
        assert!(c.over.is_empty());
        assert!(c.near[0].message.contains("80%"), "{c:?}");
        assert!(!check(&usage(3, 67_000_000_000)).over.is_empty());
    }
}
