//! A checker for Prometheus text exposition (what `/metrics` serves): every sample belongs to
//! a family declared with `# HELP` and `# TYPE` before it, each family is declared once, and
//! the type matches the name: counters and only counters end in `_total`, histograms have
//! `_bucket`/`_sum`/`_count` samples, everything else is a gauge.

use std::collections::HashMap;

/// The problems found in `text`; empty when it is well-formed.
pub fn lint(text: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            if helps.insert(name.clone(), n).is_some() {
                errors.push(format!("line {n}: HELP of {name} repeated"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap_or("").to_string();
            let ty = it.next().unwrap_or("").to_string();
            if !["counter", "gauge", "histogram"].contains(&ty.as_str()) {
                errors.push(format!("line {n}: {name} has unknown type {ty:?}"));
            }
            let is_total = name.ends_with("_total");
            if (ty == "counter") != is_total {
                errors.push(format!(
                    "line {n}: {name} is a {ty}, but {}",
                    if is_total {
                        "a name ending in _total is a counter"
                    } else {
                        "a counter's name ends in _total"
                    }
                ));
            }
            if !helps.contains_key(&name) {
                errors.push(format!("line {n}: TYPE of {name} without a HELP line"));
            }
            if types.insert(name.clone(), ty).is_some() {
                errors.push(format!("line {n}: TYPE of {name} repeated"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let value = line.rsplit(' ').next().unwrap_or("");
        if value.parse::<f64>().is_err() {
            errors.push(format!(
                "line {n}: {sample}: value {value:?} is not a number"
            ));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample
                    .strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(sample);
        match types.get(family) {
            None => errors.push(format!("line {n}: sample {sample} before any TYPE of it")),
            Some(t) if t == "histogram" && family == sample => {
                errors.push(format!("line {n}: histogram {sample} has a bare sample"));
            }
            Some(_) => {}
        }
    }
    errors
}

/// The TYPE a family is declared with, if any.
pub fn family_type(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("# TYPE ")?;
        let mut it = rest.split_whitespace();
        (it.next()? == name).then(|| it.next().unwrap_or("").to_string())
    })
}

/// The value of the first sample of `name` whose labels contain every `labels` pair
/// (`key="value"` text), if any.
pub fn sample_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (lab, value) = rest.rsplit_once(' ')?;
        labels
            .iter()
            .all(|want| lab.contains(want))
            .then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_exposition_passes() {
        let t = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                 # HELP g G.\n# TYPE g gauge\ng 1.5\n\
                 # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                 h_sum 3\nh_count 2\n";
        assert_eq!(lint(t), Vec::<String>::new());
        assert_eq!(family_type(t, "g").as_deref(), Some("gauge"));
        assert_eq!(sample_value(t, "a_total", &["x=\"1\""]), Some(3.0));
        assert_eq!(sample_value(t, "a_total", &["x=\"2\""]), None);
        assert_eq!(sample_value(t, "g", &[]), Some(1.5));
    }

    #[test]
    fn wrong_types_and_undeclared_samples_are_found() {
        let gauge_as_counter = "# HELP m_ms M.\n# TYPE m_ms counter\nm_ms 3\n";
        assert_eq!(
            lint(gauge_as_counter).len(),
            1,
            "{:?}",
            lint(gauge_as_counter)
        );
        let counter_as_gauge = "# HELP c_total C.\n# TYPE c_total gauge\nc_total 3\n";
        assert_eq!(lint(counter_as_gauge).len(), 1);
        assert_eq!(lint("x 1\n").len(), 1);
        assert_eq!(lint("# TYPE y gauge\ny 1\n").len(), 1, "no HELP");
        assert_eq!(lint("# HELP y Y.\n# TYPE y gauge\ny one\n").len(), 1);
        let twice = "# HELP y Y.\n# TYPE y gauge\n# HELP y Y.\n# TYPE y gauge\ny 1\n";
        assert_eq!(lint(twice).len(), 2);
    }
}
