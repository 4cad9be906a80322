//! The diagnostic of a tier that does not fit: the smallest plan's breakdown and concrete
//! changes that lower its peak, each with its saving recomputed by the memory model.

use omnipack_manifest::{
    Format, KvFormat, Paging, ResolvedComponent, ResolvedManifest, ResolvedTier, Role, Runtime,
    SizeUnits,
};
use omnipack_summary::MemoryBreakdown;

use crate::bundles::bundle_id;
use crate::diag::PlanDiagnostic;
use crate::memory;
use crate::sizing::ComponentSizer;
use crate::tier_model::{TierComponent, TierModel};

/// The located diagnostic of tier `ti`, which does not fit even with the variants `ranks`
/// (its smallest plan), with suggestions.
pub(crate) fn does_not_fit(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    ti: usize,
    model: &TierModel,
    ranks: &[usize],
    mem: &MemoryBreakdown,
) -> PlanDiagnostic {
    let tier = &m.tiers[ti];
    let need = mem.peak_bytes.saturating_add(mem.min_headroom_bytes);
    let over = need.saturating_sub(tier.memory_limit);
    let units = m.size_units;
    let mut d = PlanDiagnostic::new(
        Some(format!("tiers[{ti}].memory_limit")),
        format!(
            "tier `{}` does not fit: peak {}{} exceeds memory_limit {} by {}",
            tier.name,
            units.format(mem.peak_bytes),
            if mem.min_headroom_bytes > 0 {
                format!(" + min_headroom {}", units.format(mem.min_headroom_bytes))
            } else {
                String::new()
            },
            units.format(tier.memory_limit),
            size_and_bytes(units, over),
        ),
    );
    d.notes.push(smallest_plan_line(m, model, ranks));
    d.notes.extend(breakdown_lines(units, mem));
    let s = Suggester {
        m,
        sizers,
        tier,
        model,
        ranks,
        mem,
        over,
    };
    d.help = s.suggestions();
    d
}

fn size_and_bytes(units: SizeUnits, n: u64) -> String {
    format!("{} ({n} bytes)", units.format(n))
}

/// `smallest plan found: text int4-g64, image_decoder int8-g64`.
fn smallest_plan_line(m: &ResolvedManifest, model: &TierModel, ranks: &[usize]) -> String {
    let chosen: Vec<String> = model
        .comps
        .iter()
        .zip(ranks)
        .map(|(c, &r)| {
            let o = &c.options[r];
            format!(
                "{} {}",
                m.components[c.index].name,
                bundle_id("", o.format, o.group_size, None).trim_start_matches('-')
            )
        })
        .collect();
    format!("smallest plan found: {}", chosen.join(", "))
}

fn breakdown_lines(units: SizeUnits, mem: &MemoryBreakdown) -> Vec<String> {
    [
        ("runtime_overhead_bytes", mem.runtime_overhead_bytes),
        ("weights_resident_bytes", mem.weights_resident_bytes),
        ("activations_bytes", mem.activations_bytes),
        ("kv_cache_bytes", mem.kv_cache_bytes),
        ("lazy_peak_bytes", mem.lazy_peak_bytes),
        ("peak_bytes", mem.peak_bytes),
    ]
    .into_iter()
    .map(|(name, v)| format!("{name:<24} {v:>14}  {}", units.format(v)))
    .collect()
}

/// Works out the changes that lower a tier's peak.
struct Suggester<'a> {
    m: &'a ResolvedManifest,
    sizers: &'a [ComponentSizer],
    tier: &'a ResolvedTier,
    model: &'a TierModel,
    ranks: &'a [usize],
    mem: &'a MemoryBreakdown,
    /// Bytes over the limit (peak + min_headroom - memory_limit).
    over: u64,
}

impl Suggester<'_> {
    /// A byte count in the manifest's units, rounded to two decimals: `18.00 MiB`.
    fn size(&self, n: u64) -> String {
        self.m.size_units.format(n)
    }

    /// A byte count as a value the manifest takes, in its units, rounded down (a suggested
    /// limit never exceeds what fits): `17.99 MiB`, or plain bytes below 1 KiB.
    fn size_floor(&self, n: u64) -> String {
        self.m.size_units.format_floor(n)
    }

    /// Every suggestion, ranked by the bytes it saves (largest first): per decode step a
    /// smaller KV format and fewer tokens; per component a smaller weight format (said to
    /// widen the component's list) and `cpu_and_ne` for Core ML; dropping a lazy component
    /// from the tier; a smaller `activation_memory`, `runtime_overhead` or `min_headroom`.
    /// Then all of the KV and weight changes together when none is enough alone, and the
    /// `memory_limit` that would fit.
    fn suggestions(&self) -> Vec<String> {
        let mut out = Vec::new();
        // Every change applied at once, to say whether they fit together.
        let mut combined = self.model.clone();
        for (k, tc) in self.model.comps.iter().enumerate() {
            if let Some(tokens) = tc.kv_tokens {
                combined.comps[k].kv_cache_bytes = self.kv_suggestions(k, tc, tokens, &mut out);
            }
        }
        for (k, resident) in self.weight_suggestions(&mut out) {
            let o = &mut combined.comps[k].options[self.ranks[k]];
            o.resident_bytes = o.resident_bytes.min(resident);
        }
        self.lazy_components(&mut out);
        self.activations(&mut out);
        self.runtime_overhead(&mut out);
        self.smaller_min_headroom(&mut out);
        let mut lines = rank_by_saving(out);
        lines.extend(self.all_together(&lines, &combined));
        lines.push(self.raise_memory_limit());
        lines
    }

    /// Each lazy component of the tier left out of it (`tiers[].components`): only the
    /// largest lazy load counts in the peak, so this saves something only for the largest.
    fn lazy_components(&self, out: &mut Vec<(u64, String)>) {
        if self.model.comps.len() < 2 {
            return;
        }
        for (k, tc) in self.model.comps.iter().enumerate() {
            if tc.always {
                continue;
            }
            let mut alt = self.model.clone();
            alt.comps.remove(k);
            let mut ranks = self.ranks.to_vec();
            ranks.remove(k);
            let saved = self
                .mem
                .peak_bytes
                .saturating_sub(alt.breakdown(&ranks).peak_bytes);
            if saved > 0 {
                out.push((
                    saved,
                    format!(
                        "leave lazy `{}` out of tier `{}` (its `components`) saves {} ({})",
                        self.m.components[tc.index].name,
                        self.tier.name,
                        self.size(saved),
                        self.verdict(saved)
                    ),
                ));
            }
        }
    }

    /// A smaller `activation_memory` per component that has one: the value that would fit
    /// when there is one, else what 0 would save.
    fn activations(&self, out: &mut Vec<(u64, String)>) {
        for (k, tc) in self.model.comps.iter().enumerate() {
            let act = tc.activation_bytes;
            if act == 0 {
                continue;
            }
            let name = &self.m.components[tc.index].name;
            let target = self.size_floor(act.saturating_sub(self.over));
            let t = parse_back(&target);
            let saved = self.mem.peak_bytes - self.peak_with(k, &|c| c.activation_bytes = t);
            if saved >= self.over {
                out.push((
                    saved,
                    format!(
                        "`activation_memory: {target}` for `{name}` (from {}) saves {} (enough on its own), if its runtime really needs no more: measure it",
                        self.size(act),
                        self.size(saved)
                    ),
                ));
            } else {
                let saved = self.mem.peak_bytes - self.peak_with(k, &|c| c.activation_bytes = 0);
                if saved > 0 {
                    out.push((
                        saved,
                        format!(
                            "`activation_memory` of `{name}` is {}: even 0 would save only {} (not enough on its own)",
                            self.size(act),
                            self.size(saved)
                        ),
                    ));
                }
            }
        }
    }

    /// A smaller `runtime_overhead` (the app and runtime baseline, counted once per tier).
    fn runtime_overhead(&self, out: &mut Vec<(u64, String)>) {
        let rt = self.model.runtime_overhead;
        if rt == 0 {
            return;
        }
        if rt >= self.over {
            let target = self.size_floor(rt - self.over);
            let saved = rt - parse_back(&target);
            out.push((
                saved,
                format!(
                    "`runtime_overhead: {target}` (from {}) saves {} (enough on its own), if the app and runtime really start that small: measure them on the device",
                    self.size(rt),
                    self.size(saved)
                ),
            ));
        } else {
            out.push((
                rt,
                format!(
                    "`runtime_overhead` is {}: even 0 would save only that (not enough on its own)",
                    self.size(rt)
                ),
            ));
        }
    }

    fn verdict(&self, saved: u64) -> &'static str {
        if saved >= self.over {
            "enough on its own"
        } else {
            "not enough on its own"
        }
    }

    /// The peak with component `k` of the tier changed by `f`.
    fn peak_with(&self, k: usize, f: &dyn Fn(&mut TierComponent)) -> u64 {
        let mut alt = self.model.clone();
        f(&mut alt.comps[k]);
        alt.breakdown(self.ranks).peak_bytes
    }

    /// The saving of component `k` with `kv` bytes of KV cache.
    fn saving_with_kv(&self, k: usize, kv: u64) -> u64 {
        self.mem.peak_bytes - self.peak_with(k, &|t| t.kv_cache_bytes = kv)
    }

    /// A smaller KV format and fewer tokens for decode step `k` (with `tokens` tokens);
    /// returns its KV bytes with all of these applied.
    fn kv_suggestions(
        &self,
        k: usize,
        tc: &TierComponent,
        tokens: u64,
        out: &mut Vec<(u64, String)>,
    ) -> u64 {
        let c = &self.m.components[tc.index];
        let mut combo = c.clone();
        if let Some(f) = self.smaller_kv_formats(k, c, tokens, out) {
            combo.kv_cache.format = f;
        }
        let combo_tokens = self.fewer_tokens(k, c, tokens, out).unwrap_or(tokens);
        memory::kv_cache_bytes(&combo, combo_tokens.min(tokens))
    }

    /// Each smaller KV format that saves something; returns the smallest format tried.
    fn smaller_kv_formats(
        &self,
        k: usize,
        c: &ResolvedComponent,
        tokens: u64,
        out: &mut Vec<(u64, String)>,
    ) -> Option<KvFormat> {
        if c.runtime == Runtime::Mlc {
            return None;
        }
        let smaller: &[KvFormat] = match c.kv_cache.format {
            KvFormat::F16 => &[KvFormat::U8, KvFormat::Nf4],
            KvFormat::U8 => &[KvFormat::Nf4],
            KvFormat::Nf4 => &[],
        };
        for &f in smaller {
            let mut alt = c.clone();
            alt.kv_cache.format = f;
            let saved = self.saving_with_kv(k, memory::kv_cache_bytes(&alt, tokens));
            if saved > 0 {
                out.push((
                    saved,
                    format!(
                        "`kv_cache.format: {f}` for `{}` saves {} ({})",
                        c.name,
                        self.size(saved),
                        self.verdict(saved)
                    ),
                ));
            }
        }
        smaller.last().copied()
    }

    /// Fewer resident pages (paged caches) or a tier `max_seq_len`: the KV cache is linear in
    /// the tokens. Returns the tokens suggested.
    fn fewer_tokens(
        &self,
        k: usize,
        c: &ResolvedComponent,
        tokens: u64,
        out: &mut Vec<(u64, String)>,
    ) -> Option<u64> {
        let per_token = memory::kv_cache_bytes(c, 1);
        if per_token == 0 || tokens <= 1 {
            return None;
        }
        let cut = self.over.div_ceil(per_token).min(tokens - 1);
        let target = tokens - cut;
        match c.kv_cache.paging {
            Some(p) if p.page_len > 0 => {
                let pages = (target / p.page_len).max(1);
                if pages >= p.resident_pages {
                    return None;
                }
                let t2 = memory::kv_tokens(
                    c.max_seq_len,
                    self.tier.max_seq_len,
                    Some(Paging {
                        resident_pages: pages,
                        ..p
                    }),
                )
                .unwrap_or(tokens);
                let saved = self.saving_with_kv(k, memory::kv_cache_bytes(c, t2));
                if saved > 0 {
                    out.push((
                        saved,
                        format!(
                            "`kv_cache.paging.resident_pages: {pages}` for `{}` ({} resident tokens) saves {} ({})",
                            c.name,
                            t2,
                            self.size(saved),
                            self.verdict(saved)
                        ),
                    ));
                }
                Some(t2)
            }
            _ => {
                let saved = self.saving_with_kv(k, memory::kv_cache_bytes(c, target));
                if saved > 0 {
                    out.push((
                        saved,
                        format!(
                            "`max_seq_len: {target}` on tier `{}` saves {} ({}); or page the cache with `kv_cache.paging` on `{}`",
                            self.tier.name,
                            self.size(saved),
                            self.verdict(saved),
                            c.name
                        ),
                    ));
                }
                Some(target)
            }
        }
    }

    /// Per natively quantized component: the least aggressive smaller weight format that is
    /// enough on its own (else the one saving most), and `compute_units: cpu_and_ne` for Core
    /// ML. Returns the resident bytes each suggestion gives, by component position.
    fn weight_suggestions(&self, out: &mut Vec<(u64, String)>) -> Vec<(usize, u64)> {
        let mut resident = Vec::new();
        for (k, tc) in self.model.comps.iter().enumerate() {
            let c = &self.m.components[tc.index];
            let sizer = &self.sizers[tc.index];
            if !sizer.is_native() || c.resident_memory.is_some() || c.role == Role::Data {
                continue;
            }
            if let Some((f, saved, r)) = self.smaller_weight_format(k, tc, c, sizer) {
                resident.push((k, r));
                // A tier with its own override ignores the component-level list.
                let site = if c.quantization.tiers.contains_key(&self.tier.name) {
                    format!("quantization.tiers.{}.format", self.tier.name)
                } else {
                    "quantization.format".to_string()
                };
                // The smallest plan already uses the smallest variant of the list: a smaller
                // format is one the list does not have.
                out.push((
                    saved,
                    format!(
                        "adding `{f}` to `{site}` of `{}` (it widens the formats the planner may choose) saves {} ({})",
                        c.name,
                        self.size(saved),
                        self.verdict(saved)
                    ),
                ));
            }
            if c.runtime == Runtime::Coreml
                && memory::coreml_decompresses(c.compute_units)
                && sizer.parameters > 0
            {
                let rank = self.ranks[k];
                let w = tc.options[rank].weights_bytes;
                let saved = self.mem.peak_bytes
                    - self.peak_with(k, &|t| t.options[rank].resident_bytes = w);
                if saved > 0 {
                    resident.push((k, w));
                    out.push((
                        saved,
                        format!(
                            "`compute_units: cpu_and_ne` for `{}` keeps its weights compressed: saves {} ({})",
                            c.name,
                            self.size(saved),
                            self.verdict(saved)
                        ),
                    ));
                }
            }
        }
        resident
    }

    /// The format to suggest for component `k`: (format, saving, resident bytes).
    fn smaller_weight_format(
        &self,
        k: usize,
        tc: &TierComponent,
        c: &ResolvedComponent,
        sizer: &ComponentSizer,
    ) -> Option<(Format, u64, u64)> {
        let rank = self.ranks[k];
        let group = c.quantization.for_tier(&self.tier.name).group_size;
        let current = tc.options[rank].resident_bytes;
        let mut candidates: Vec<(Format, u64, u64)> = Vec::new();
        for &f in Format::ALL
            .iter()
            .filter(|f| allowed_natively(c.runtime, **f))
        {
            let Ok(w) = sizer.weights_bytes(f, group) else {
                continue;
            };
            let r = memory::resident_weight_bytes(c, sizer.parameters, w);
            if r < current {
                let saved = self.mem.peak_bytes
                    - self.peak_with(k, &|t| t.options[rank].resident_bytes = r);
                if saved > 0 {
                    candidates.push((f, saved, r));
                }
            }
        }
        candidates
            .iter()
            .filter(|(_, s, _)| *s >= self.over)
            .min_by_key(|(f, s, _)| (*s, *f))
            .or_else(|| {
                candidates
                    .iter()
                    .max_by_key(|(f, s, _)| (*s, std::cmp::Reverse(*f)))
            })
            .copied()
    }

    /// "All of the above together", when no change is enough alone and there are several.
    fn all_together(&self, out: &[String], combined: &TierModel) -> Option<String> {
        let alone = out.iter().any(|l| l.contains("(enough on its own)"));
        if alone || out.len() < 2 {
            return None;
        }
        let saved = self
            .mem
            .peak_bytes
            .saturating_sub(combined.breakdown(self.ranks).peak_bytes);
        Some(format!(
            "all of the above together (the smallest KV format, fewer tokens, the smaller weight formats) save {}: {}",
            size_and_bytes(self.m.size_units, saved),
            if saved >= self.over {
                "enough"
            } else {
                "still not enough"
            }
        ))
    }

    fn smaller_min_headroom(&self, out: &mut Vec<(u64, String)>) {
        let mem = self.mem;
        if mem.min_headroom_bytes >= self.over && mem.min_headroom_bytes > 0 {
            let target = self.size_floor(mem.min_headroom_bytes - self.over);
            out.push((
                mem.min_headroom_bytes - parse_back(&target),
                format!(
                    "`min_headroom: {target}` on tier `{}` (from {}) would fit, with less safety margin",
                    self.tier.name,
                    self.size(mem.min_headroom_bytes)
                ),
            ));
        }
    }

    fn raise_memory_limit(&self) -> String {
        let need = self
            .mem
            .peak_bytes
            .saturating_add(self.mem.min_headroom_bytes);
        format!(
            "raise `memory_limit` of tier `{}` to at least {} ({need} bytes), for devices that allow it",
            self.tier.name,
            self.size(need)
        )
    }
}

/// The suggestions' lines, the largest saving first (ties keep their order).
fn rank_by_saving(mut suggestions: Vec<(u64, String)>) -> Vec<String> {
    suggestions.sort_by_key(|(saved, _)| std::cmp::Reverse(*saved));
    suggestions.into_iter().map(|(_, line)| line).collect()
}

/// The bytes of a size written by [`SizeUnits::format_floor`].
fn parse_back(text: &str) -> u64 {
    omnipack_manifest::parse_size(text).unwrap_or(0)
}

/// Formats omnipack can write natively for `runtime`: MLX takes every format but NF4, a
/// custom runtime every format, the others only float casts.
fn allowed_natively(runtime: Runtime, f: Format) -> bool {
    match runtime {
        Runtime::Mlx => f != Format::Nf4,
        Runtime::Custom => true,
        _ => f.affine_bits().is_none() && f != Format::Nf4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_ranked_by_bytes_saved() {
        let lines = rank_by_saving(vec![
            (10, "small".to_string()),
            (3 << 20, "large".to_string()),
            (10, "small, second".to_string()),
            (1 << 20, "middle".to_string()),
        ]);
        assert_eq!(lines, ["large", "middle", "small", "small, second"]);
    }

    #[test]
    fn suggested_sizes_round_down_and_parse_back() {
        let floor = |n| SizeUnits::Binary.format_floor(n);
        assert_eq!(floor(18_868_480), "17.99 MiB");
        assert!(parse_back(&floor(18_868_480)) <= 18_868_480);
        assert_eq!(floor(64 << 20), "64.00 MiB");
        assert_eq!(parse_back("64.00 MiB"), 64 << 20);
        assert_eq!(floor(1000), "1000");
        for units in [SizeUnits::Binary, SizeUnits::Decimal] {
            for n in [1u64, 999, 1023, 1024, 123_456_789, 5 << 30] {
                let back = parse_back(&units.format_floor(n));
                assert!(
                    back <= n && n - back <= n / 100 + 1,
                    "{units:?} {n} -> {back}"
                );
            }
        }
        // A manifest written in decimal units gets decimal suggestions.
        assert_eq!(SizeUnits::Decimal.format_floor(18_868_480), "18.86 MB");
        assert_eq!(SizeUnits::Decimal.format(18_868_480), "18.87 MB");
    }

    #[test]
    fn the_manifests_units_are_those_most_of_its_sizes_are_whole_in() {
        assert_eq!(
            SizeUnits::of([300 << 20, 3 << 30, 64 << 20]),
            SizeUnits::Binary
        );
        assert_eq!(
            SizeUnits::of([300_000_000, 3_000_000_000, 64_000_000]),
            SizeUnits::Decimal
        );
        // 1.4 GiB is whole in neither; ties stay binary.
        assert_eq!(SizeUnits::of([1_503_238_553]), SizeUnits::Binary);
        assert_eq!(SizeUnits::of([1 << 20, 1_000_000]), SizeUnits::Binary);
    }
}
