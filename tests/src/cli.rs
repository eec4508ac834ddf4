//! The benchmarks' command-line flags: `--name value` pairs.

/// The value after `name` in `args`, parsed; `default` when absent. A
/// value that does not parse is an error naming the flag.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}")),
    }
}
