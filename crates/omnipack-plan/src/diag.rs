//! Planning errors: located in the manifest by a path such as `tiers[1].memory_limit`, so the
//! command line can render them at the offending line and column.

use serde::{Deserialize, Serialize};

use omnipack_manifest::{Diagnostic, LoadedManifest, Severity};

use crate::model::Plan;

/// A planning error (or a note attached to one), located by manifest path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDiagnostic {
    /// What is wrong.
    pub message: String,
    /// Manifest path of the offending value, for example `tiers[0].memory_limit`; `None` for
    /// errors about the command line or the whole manifest.
    pub path: Option<String>,
    /// Context lines, for example the memory breakdown of the smallest plan found.
    pub notes: Vec<String>,
    /// How to fix it: one line per concrete suggestion.
    pub help: Vec<String>,
}

impl PlanDiagnostic {
    /// A diagnostic at `path` (or unlocated).
    pub fn new(path: Option<String>, message: impl Into<String>) -> Self {
        PlanDiagnostic {
            message: message.into(),
            path,
            notes: Vec::new(),
            help: Vec::new(),
        }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help.push(help.into());
        self
    }
}

impl std::fmt::Display for PlanDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{p}: ")?;
        }
        f.write_str(&self.message)?;
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        for h in &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// Why planning failed: the errors, and the plan as far as it could be computed (present
/// when the manifest could be sized, for example when only a tier does not fit), so that
/// `omnipack plan` can still show every tier's breakdown.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct PlanFailure {
    /// The errors, in manifest order.
    pub diagnostics: Vec<PlanDiagnostic>,
    /// The partial plan (non-fitting tiers carry the smallest combination found).
    pub plan: Option<Box<Plan>>,
}

impl PlanFailure {
    /// A failure with one diagnostic and no plan.
    pub fn one(d: PlanDiagnostic) -> Self {
        PlanFailure {
            diagnostics: vec![d],
            plan: None,
        }
    }
}

impl PlanDiagnostic {
    /// This error as a diagnostic located in the manifest (at the manifest file itself when it
    /// has no path): the notes first, then the suggested changes, one `- ` line each when
    /// there are several or notes precede them (a lone hint is written as it is).
    pub fn to_diagnostic(&self, loaded: &LoadedManifest) -> Diagnostic {
        let mut lines: Vec<String> = self.notes.clone();
        if !self.help.is_empty() && !self.notes.is_empty() {
            lines.push("changes that lower the peak:".to_string());
        }
        let bullets = self.help.len() > 1 || !self.notes.is_empty();
        lines.extend(
            self.help
                .iter()
                .map(|h| if bullets { format!("- {h}") } else { h.clone() }),
        );
        let help = lines.join("\n");
        locate(
            loaded,
            self.path.as_deref(),
            Severity::Error,
            &self.message,
            (!help.is_empty()).then_some(help),
        )
    }
}

impl crate::model::PlanWarning {
    /// This warning as a diagnostic located in the manifest.
    pub fn to_diagnostic(&self, loaded: &LoadedManifest) -> Diagnostic {
        locate(
            loaded,
            self.path.as_deref(),
            Severity::Warning,
            &self.message,
            None,
        )
    }
}

fn locate(
    loaded: &LoadedManifest,
    path: Option<&str>,
    severity: Severity,
    message: &str,
    help: Option<String>,
) -> Diagnostic {
    match path {
        Some(p) => loaded.diagnostic_at(p, severity, message, help),
        None => {
            Diagnostic::new(severity, loaded.path.to_string_lossy(), message).with_help_opt(help)
        }
    }
}
