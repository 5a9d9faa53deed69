//! The model's thread pool, sized from the CPU's topology.

use crate::error::{Error, Result};

/// At most this many pool threads per CPU the process may use. Past one per core they only
/// compete for the same cores and memory; a huge count (a typo, or a value from outside) would
/// spawn threads for tens of seconds and take as long to join when the model is dropped.
pub const MAX_THREADS_PER_CPU: usize = 4;

pub(crate) fn build_pool(n_threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = match n_threads {
        Some(0) => return Err(Error::Argument("n_threads must be at least 1, got 0".into())),
        Some(n) if n > max_threads() => {
            return Err(Error::Argument(format!(
                "n_threads must be at most {} ({MAX_THREADS_PER_CPU} per CPU this process may use), got {n}",
                max_threads()
            )))
        }
        Some(n) => n,
        None => default_threads(),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("llama2rs-{i}"))
        .build()
        .map_err(|e| Error::Argument(format!("cannot start {n} threads: {e}")))
}

/// The largest `n_threads` a pool may have.
pub fn max_threads() -> usize {
    MAX_THREADS_PER_CPU * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Physical cores this process may use: decoding is bound by memory bandwidth, and a second
/// hyperthread on a core only competes for it. Falls back to the logical count.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    physical_cores().map_or(logical, |p| p.clamp(1, logical))
}

/// Distinct (package, core) pairs in Linux's CPU topology, or None where it is not readable.
fn physical_cores() -> Option<usize> {
    let mut cores = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/sys/devices/system/cpu").ok()? {
        let path = entry.ok()?.path();
        let name = path.file_name()?.to_str()?;
        if !name.starts_with("cpu") || !name[3..].chars().all(|c| c.is_ascii_digit()) || name.len() == 3 {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(path.join("topology").join(f)).ok();
        if let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((package.trim().to_string(), core.trim().to_string()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_threads_is_within_the_logical_count() {
        let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let n = super::default_threads();
        assert!(n >= 1 && n <= logical, "{n} of {logical}");
    }

    #[test]
    fn a_pool_larger_than_the_cap_is_refused_before_any_thread_starts() {
        let cap = super::max_threads();
        assert!(super::build_pool(Some(cap)).is_ok());
        let message = super::build_pool(Some(cap + 1)).unwrap_err().to_string();
        assert!(
            message.contains(&format!("at most {cap}")) && message.contains(&format!("got {}", cap + 1)),
            "{message}"
        );
        assert!(super::build_pool(Some(usize::MAX)).is_err());
    }
}
