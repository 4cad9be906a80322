//! Runs a stage graph on a bounded rayon pool: a stage starts once every stage it depends on
//! has succeeded; a failed stage stops its dependents (transitively) while running stages
//! finish; every failure is reported.
//!
//! At most `jobs` stages run at once (the pool's `jobs` threads also do their inner parallel
//! work). Whenever one finishes, the ready stage heading the most work starts next (each
//! stage's own work estimated by the caller, plus the most work of a chain of stages waiting
//! for it), then plan order.

use std::collections::BTreeMap;
use std::sync::mpsc;

use omnipack_plan::Stage;

/// How one stage ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStatus<T, E> {
    /// It ran (or came from the cache) and produced a value.
    Done(T),
    /// It failed with this error.
    Failed(E),
    /// It did not run: this dependency failed.
    Skipped(String),
}

/// A stage that panicked, with the panic's message: a bug, reported as that stage's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl From<Panicked> for String {
    fn from(p: Panicked) -> String {
        format!("internal error: {}", p.0)
    }
}

/// Errors of the graph itself.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A dependency that is not a stage.
    #[error("stage `{stage}` depends on unknown stage `{dep}`")]
    UnknownDependency { stage: String, dep: String },
    /// A cycle or a duplicate id.
    #[error("the stage graph is not runnable: {0}")]
    Invalid(String),
    /// The thread pool could not start.
    #[error("could not start {0} worker threads")]
    Pool(usize),
}

/// Runs `stages` with at most `jobs` at once (inner rayon parallelism shares the same pool).
/// `run` gets the stage and the values of its dependencies (in `depends_on` order); `work`
/// estimates a stage's own work (any unit), to start long chains first.
pub fn execute<T, E, F>(
    stages: &[Stage],
    jobs: usize,
    work: &dyn Fn(&Stage) -> u64,
    run: F,
) -> Result<Vec<StageStatus<T, E>>, GraphError>
where
    T: Clone + Send + Sync,
    E: Send + From<Panicked>,
    F: Fn(&Stage, Vec<T>) -> Result<T, E> + Sync,
{
    let index: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    if index.len() != stages.len() {
        return Err(GraphError::Invalid("duplicate stage ids".into()));
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(stages.len());
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
    for (i, s) in stages.iter().enumerate() {
        let mut d = Vec::new();
        for dep in &s.depends_on {
            let j = *index
                .get(dep.as_str())
                .ok_or_else(|| GraphError::UnknownDependency {
                    stage: s.id.clone(),
                    dep: dep.clone(),
                })?;
            d.push(j);
            dependents[j].push(i);
        }
        deps.push(d);
    }
    let priority = chain_work(stages, &dependents, work);
    let jobs = jobs.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("omnipack-{i}"))
        .build()
        .map_err(|_| GraphError::Pool(jobs))?;
    let mut status: Vec<Option<StageStatus<T, E>>> = (0..stages.len()).map(|_| None).collect();
    let mut waiting: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let (tx, rx) = mpsc::channel::<(usize, Result<T, E>)>();
    let run = &run;
    pool.in_place_scope(|scope| {
        let mut running = 0usize;
        let mut ready: Vec<usize> = (0..stages.len()).filter(|&i| waiting[i] == 0).collect();
        loop {
            // Start the ready stages heading the most work (then in plan order), `jobs` at most:
            // a stage that becomes ready later may go first.
            ready.sort_unstable_by_key(|&i| (priority[i], std::cmp::Reverse(i)));
            while running < jobs {
                let Some(i) = ready.pop() else { break };
                let inputs: Vec<T> = deps[i]
                    .iter()
                    .filter_map(|&j| match &status[j] {
                        Some(StageStatus::Done(v)) => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                let tx = tx.clone();
                let stage = &stages[i];
                running += 1;
                scope.spawn(move |_| {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run(stage, inputs)
                    }))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(E::from(Panicked(msg)))
                    });
                    let _ = tx.send((i, r));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((i, r)) = rx.recv() else { break };
            running -= 1;
            match r {
                Ok(v) => {
                    status[i] = Some(StageStatus::Done(v));
                    for &k in &dependents[i] {
                        waiting[k] -= 1;
                        if waiting[k] == 0 && status[k].is_none() {
                            ready.push(k);
                        }
                    }
                }
                Err(e) => {
                    status[i] = Some(StageStatus::Failed(e));
                    let mut stack = dependents[i].clone();
                    while let Some(k) = stack.pop() {
                        if status[k].is_none() {
                            status[k] = Some(StageStatus::Skipped(stages[i].id.clone()));
                            stack.extend(dependents[k].iter().copied());
                        }
                    }
                }
            }
        }
    });
    let mut out = Vec::with_capacity(stages.len());
    for (i, s) in status.into_iter().enumerate() {
        match s {
            Some(s) => out.push(s),
            None => {
                return Err(GraphError::Invalid(format!(
                    "stage `{}` never became ready (dependency cycle)",
                    stages[i].id
                )));
            }
        }
    }
    Ok(out)
}

/// Per stage, its own work plus the most work of a chain of stages depending on it (stages
/// that are not in dependency order get their own work only).
fn chain_work(
    stages: &[Stage],
    dependents: &[Vec<usize>],
    work: &dyn Fn(&Stage) -> u64,
) -> Vec<u64> {
    let mut chain = vec![0u64; stages.len()];
    for i in (0..stages.len()).rev() {
        let after = dependents[i]
            .iter()
            .filter(|&&k| k > i)
            .map(|&k| chain[k])
            .max()
            .unwrap_or(0);
        chain[i] = work(&stages[i]).saturating_add(after);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_plan::{ExportParams, ExportSource, StageKind};

    fn st(id: &str, deps: &[&str]) -> Stage {
        Stage {
            id: id.into(),
            kind: StageKind::Export(ExportParams {
                component: id.into(),
                tier: None,
                source: ExportSource::Files { files: Vec::new() },
            }),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn runs_in_dependency_order_and_stops_dependents() {
        let stages = vec![
            st("a", &[]),
            st("b", &["a"]),
            st("c", &["b"]),
            st("d", &[]),
            st("e", &["d"]),
        ];
        for jobs in [1, 4] {
            let r = execute(
                &stages,
                jobs,
                &|_| 0,
                |s, inputs: Vec<String>| -> Result<String, String> {
                    if s.id == "b" {
                        return Err("boom".into());
                    }
                    Ok(format!("{}({})", s.id, inputs.join(",")))
                },
            )
            .unwrap();
            assert_eq!(r[0], StageStatus::Done("a()".into()));
            assert_eq!(r[1], StageStatus::Failed("boom".into()));
            assert_eq!(r[2], StageStatus::Skipped("b".into()));
            assert_eq!(r[4], StageStatus::Done("e(d())".into()));
        }
    }

    #[test]
    fn cycles_and_unknown_deps_are_errors() {
        assert!(
            execute(
                &[st("a", &["b"]), st("b", &["a"])],
                2,
                &|_| 0,
                |_, _: Vec<u8>| { Ok::<_, String>(0) }
            )
            .is_err()
        );
        assert!(
            execute(&[st("a", &["zz"])], 2, &|_| 0, |_, _: Vec<u8>| Ok::<
                _,
                String,
            >(
                0
            ))
            .is_err()
        );
    }

    #[test]
    fn the_ready_stage_heading_the_longest_chain_starts_first() {
        // Chains: a then c (1 + 10), b (5), d (2), e (0). With one job, a starts first although
        // b's own work is larger, and c, ready once a is done, goes before b.
        let stages = vec![
            st("a", &[]),
            st("b", &[]),
            st("c", &["a"]),
            st("d", &[]),
            st("e", &[]),
        ];
        let work = |s: &Stage| match s.id.as_str() {
            "a" => 1,
            "b" => 5,
            "c" => 10,
            "d" => 2,
            _ => 0,
        };
        let order = std::sync::Mutex::new(Vec::new());
        execute(&stages, 1, &work, |s, _: Vec<u8>| {
            order.lock().unwrap().push(s.id.clone());
            Ok::<_, String>(0)
        })
        .unwrap();
        assert_eq!(order.into_inner().unwrap(), ["a", "c", "b", "d", "e"]);
    }
}
