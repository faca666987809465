//! Flag parsing of the load binaries: `--flag value` pairs, every error a message (the binary
//! prints it with its usage and exits 2) instead of a panic.

use std::str::FromStr;

/// The `--flag value` pairs of `args`, in order; `-h`/`--help` comes back as `("--help", "")`.
pub fn pairs(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = &args[i];
        if flag == "-h" || flag == "--help" {
            out.push(("--help".to_string(), String::new()));
            i += 1;
            continue;
        }
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument {flag:?}"));
        }
        let value = args
            .get(i + 1)
            .ok_or_else(|| format!("{flag} needs a value"))?;
        out.push((flag.clone(), value.clone()));
        i += 2;
    }
    Ok(out)
}

/// Parses one flag's value.
pub fn value<T: FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{flag}: not a valid value: {v:?}"))
}

/// Parses a comma-separated list (`16,64`); empty items are errors.
pub fn list<T: FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',').map(|x| value(flag, x.trim())).collect()
}

/// A positive count.
pub fn count(flag: &str, v: &str) -> Result<usize, String> {
    match value::<usize>(flag, v)? {
        0 => Err(format!("{flag} must be at least 1")),
        n => Ok(n),
    }
}

/// A duration in seconds, finite and not negative.
pub fn seconds(flag: &str, v: &str) -> Result<f64, String> {
    let s: f64 = value(flag, v)?;
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err(format!("{flag}: not a duration in seconds: {v:?}"))
    }
}

/// Ends a benchmark binary on a bad flag: the reason and the usage on stderr, exit code 2.
pub fn usage_error(reason: &str, usage: &str) -> ! {
    eprintln!("{reason}\nusage: {usage}");
    std::process::exit(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_and_refuses() {
        let p = pairs(&s(&["--secs", "5", "-h", "--conns", "16,64"])).expect("valid");
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].0, "--help");
        assert_eq!(list::<usize>("--conns", &p[2].1), Ok(vec![16, 64]));
        assert!(pairs(&s(&["--secs"])).is_err());
        assert!(pairs(&s(&["secs", "5"])).is_err());
        assert!(list::<usize>("--conns", "16,,64").is_err());
        assert!(count("--runs", "0").is_err());
        assert_eq!(count("--runs", "1_000"), Ok(1000));
        assert!(seconds("--secs", "-1").is_err());
        assert!(seconds("--secs", "NaN").is_err());
        assert_eq!(seconds("--secs", "2.5"), Ok(2.5));
    }
}
