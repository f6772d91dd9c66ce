//! Plain-text output: aligned tables, percentiles and units. Pure.
//!
//! Units: memory in MB (10^6 bytes) or KiB where the brief asks for KiB per
//! socket; times in ms or s with the unit printed beside every number.

/// A table printed with aligned columns: numbers right, text left.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row (missing cells print empty).
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    /// The table as JSON: one object per row, keyed by the column headers.
    pub fn to_json(&self) -> serde_json::Value {
        let rows = self.rows.iter().map(|r| {
            let cells = self.headers.iter().enumerate().map(|(c, h)| (h.clone(), serde_json::json!(r.get(c).cloned().unwrap_or_default())));
            serde_json::Value::Object(cells.collect())
        });
        serde_json::Value::Array(rows.collect())
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| self.rows.iter().chain([&self.headers]).map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        let numeric: Vec<bool> =
            (0..self.headers.len()).map(|c| c > 0 && self.rows.iter().all(|r| r.get(c).is_none_or(|s| looks_numeric(s)))).collect();
        let line = |cells: &Vec<String>| -> String {
            let parts: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    let cell = cells.get(c).map_or("", String::as_str);
                    if numeric[c] {
                        format!("{cell:>w$}")
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            format!("  {}", parts.join("   ").trim_end())
        };
        let rule = format!("  {}", "-".repeat(widths.iter().sum::<usize>() + 3 * widths.len().saturating_sub(1)));
        let mut out = vec![line(&self.headers), rule];
        out.extend(self.rows.iter().map(line));
        out.join("\n") + "\n"
    }
}

/// Short cells that start with a number (or are empty or `-`) align right.
fn looks_numeric(cell: &str) -> bool {
    cell.len() <= 16 && cell.chars().next().is_none_or(|c| c.is_ascii_digit() || c == '-')
}

/// The `q` quantile (0..=1) of `values` by nearest rank; NaN when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The share of `total` at or under each value of `values`, as (value,
/// share) points for a CDF chart: about 200 points, the largest value last.
pub fn cdf(values: &[f64], total: usize) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = total.max(1) as f64;
    let step = (sorted.len() / 200).max(1);
    let mut points: Vec<(f64, f64)> = sorted.iter().enumerate().step_by(step).map(|(i, v)| (*v, (i + 1) as f64 / n)).collect();
    if let Some(last) = sorted.last() {
        points.push((*last, sorted.len() as f64 / n));
    }
    points
}

/// KiB as MB (10^6 bytes).
pub fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// KiB as MB (10^6 bytes), one decimal.
pub fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib_to_mb(kib))
}

/// Microseconds as milliseconds, one decimal.
pub fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Seconds, two decimals; "n/a" for a figure that was not measured (NaN).
pub fn secs(s: f64) -> String {
    if s.is_nan() {
        return "n/a".into();
    }
    format!("{s:.2} s")
}

/// A heading and the parameters a scenario ran with, one per line.
pub fn header(title: &str, lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("\n== {title} ==\n");
    for (k, v) in lines {
        out += &format!("{k:<width$}  {v}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.99), 20.0);
        assert_eq!(percentile(&v, 1.0), 20.0);
        assert_eq!(percentile(&[3.0], 0.5), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn a_table_aligns_its_columns() {
        let mut t = Table::new(&["measure", "value"]);
        t.row(["sockets".into(), "10000".into()]);
        t.row(["RSS after".into(), "1.5 MB".into()]);
        assert_eq!(t.render(), "  measure      value\n  ------------------\n  sockets      10000\n  RSS after   1.5 MB\n");
        t.row(["joined".into(), "reply ok".into()]);
        assert!(t.render().ends_with("  joined      reply ok\n"), "text aligns left:\n{}", t.render());
    }

    #[test]
    fn a_cdf_counts_shares_of_the_total_and_ends_at_the_largest_value() {
        assert_eq!(cdf(&[3.0, 1.0, 2.0], 4), vec![(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (3.0, 0.75)]);
        assert!(cdf(&[], 5).is_empty());
    }

    #[test]
    fn a_table_as_json_keys_each_row_by_its_headers() {
        let mut t = Table::new(&["measure", "value"]);
        t.row(["sockets".into(), "10000".into()]);
        assert_eq!(t.to_json(), serde_json::json!([{"measure": "sockets", "value": "10000"}]));
    }

    #[test]
    fn units_are_printed_beside_the_numbers() {
        assert_eq!(mb(1000), "1.0 MB");
        assert_eq!(ms(12_345), "12.3 ms");
        assert_eq!(secs(1.5), "1.50 s");
    }
}
