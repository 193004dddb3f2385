//! What the lane's benchmarks share on the host side: the record lines L1
//! prints (one per VMM and round), medians, and `vmm`'s per-round ratios
//! against another VMM measured in the same round.

/// One measurement as L1 reported it:
/// `<prefix><vmm> <round> <value>...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The VMM measured.
    pub vmm: String,
    /// The round it was measured in (VMMs of one round are paired).
    pub round: u32,
    /// The measured values, in the order of the benchmark's columns.
    pub values: Vec<f64>,
}

impl Record {
    /// Reads a record line with `prefix` and exactly `count` values.
    pub fn parse(prefix: &str, count: usize, line: &str) -> Option<Record> {
        let mut words = line.strip_prefix(prefix)?.split_whitespace();
        let vmm = words.next()?.to_owned();
        let round = words.next()?.parse().ok()?;
        let values = words
            .map(|w| w.parse().ok().filter(|v: &f64| v.is_finite()))
            .collect::<Option<Vec<f64>>>()?;
        (values.len() == count).then_some(Record { vmm, round, values })
    }

    /// The record line of `values` measured by `vmm` in `round`.
    pub fn line(prefix: &str, vmm: &str, round: u32, values: &[f64]) -> String {
        let mut line = format!("{prefix}{vmm} {round}");
        for v in values {
            line.push_str(&format!(" {v:.3}"));
        }
        line
    }
}

/// The records with `prefix` and `count` values in `console`.
pub fn records(console: &str, prefix: &str, count: usize) -> Vec<Record> {
    console
        .lines()
        .filter_map(|l| Record::parse(prefix, count, l.trim_end()))
        .collect()
}

/// The median of `values` (NaN if there are none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The VMMs in `records` in the order they were first seen, with their
/// record count.
pub fn counts(records: &[Record]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in records {
        match counts.iter_mut().find(|(v, _)| *v == r.vmm) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.vmm.clone(), 1)),
        }
    }
    counts
}

/// The median of column `column` over `vmm`'s records.
pub fn median_of(records: &[Record], vmm: &str, column: usize) -> f64 {
    median(
        records
            .iter()
            .filter(|r| r.vmm == vmm)
            .map(|r| r.values[column])
            .collect(),
    )
}

/// `ours`' values of one column divided by `other`'s of the same round:
/// their median and spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The median of the per-round ratios.
    pub median: f64,
    /// The smallest per-round ratio.
    pub low: f64,
    /// The largest per-round ratio.
    pub high: f64,
    /// How many rounds both VMMs were measured in.
    pub rounds: usize,
}

impl Ratio {
    /// The per-round ratios of column `column`, `ours` over `other`.
    pub fn of(records: &[Record], ours: &str, other: &str, column: usize) -> Ratio {
        let ratios: Vec<f64> = records
            .iter()
            .filter(|r| r.vmm == ours)
            .filter_map(|mine| {
                let theirs = records
                    .iter()
                    .find(|r| r.vmm == other && r.round == mine.round)?;
                Some(mine.values[column] / theirs.values[column])
            })
            .collect();
        Ratio {
            median: median(ratios.clone()),
            low: ratios.iter().copied().fold(f64::NAN, f64::min),
            high: ratios.iter().copied().fold(f64::NAN, f64::max),
            rounds: ratios.len(),
        }
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}x (median of {} per-round ratios, {:.2}-{:.2})",
            self.median, self.rounds, self.low, self.high
        )
    }
}

/// The VMMs of `names` with fewer than `runs` records in `counts`.
pub fn short<'a>(names: &[&'a str], counts: &[(String, usize)], runs: u32) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|name| {
            counts
                .iter()
                .find(|(v, _)| v == name)
                .is_none_or(|(_, n)| *n < runs as usize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_and_garbage_is_not() {
        assert_eq!(
            Record::parse("R ", 3, "R vmm 3 1 2 3.5"),
            Some(Record {
                vmm: "vmm".into(),
                round: 3,
                values: vec![1.0, 2.0, 3.5]
            })
        );
        for bad in [
            "R vmm 3 1 2",
            "R vmm 3 1 2 3 4",
            "R vmm x 1 2 3",
            "R vmm 3 1 NaN 3",
            "R vmm 3 1 two 3",
            "vmm 3 1 2 3",
        ] {
            assert_eq!(Record::parse("R ", 3, bad), None, "{bad}");
        }
        let line = Record::line("R ", "qemu-pc", 2, &[1.0, 22.25]);
        assert_eq!(line, "R qemu-pc 2 1.000 22.250");
        assert_eq!(Record::parse("R ", 2, &line).unwrap().values, [1.0, 22.25]);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_middle_mean() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn ratios_pair_the_rounds_and_report_their_spread() {
        let console = "R a 0 2\nR b 0 4\nR b 1 1\nR a 1 3\nR a 2 8\nR b 3 1\n";
        let records = records(console, "R ", 1);
        assert_eq!(counts(&records), [("a".into(), 3), ("b".into(), 3)]);
        // Rounds 0 and 1 are paired: 2/4 and 3/1; round 2 has no b, round 3 no a.
        let r = Ratio::of(&records, "a", "b", 0);
        assert_eq!((r.median, r.low, r.high, r.rounds), (1.75, 0.5, 3.0, 2));
        assert_eq!(
            r.to_string(),
            "1.75x (median of 2 per-round ratios, 0.50-3.00)"
        );
        assert_eq!(median_of(&records, "a", 0), 3.0);
        assert_eq!(short(&["a", "b", "c"], &counts(&records), 3), ["c"]);
        assert_eq!(short(&["a", "b"], &counts(&records), 4), ["a", "b"]);
        assert!(Ratio::of(&records, "a", "c", 0).median.is_nan());
    }
}
