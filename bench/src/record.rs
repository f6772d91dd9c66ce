//! What a scenario leaves behind: its header and tables printed as it goes,
//! then `<out>/<scenario>.json` (header, tables, key figures, chart data)
//! and `<out>/<scenario>.svg` (its chart).
//!
//! Owns the output directory and file names; the numbers come from the
//! scenarios, the table text from `report`, the drawing from `plot`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::plot::Chart;
use crate::report::{self, Table};

/// One scenario's output, filled as it runs.
pub struct Record {
    scenario: &'static str,
    title: String,
    header: Vec<(String, String)>,
    tables: Vec<Value>,
    figures: BTreeMap<String, f64>,
    chart: Option<Chart>,
}

impl Record {
    /// Starts the record and prints the header.
    pub fn new(scenario: &'static str, title: &str, header: Vec<(&str, String)>) -> Record {
        print!("{}", report::header(title, &header));
        Record {
            scenario,
            title: title.to_owned(),
            header: header.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            tables: Vec::new(),
            figures: BTreeMap::new(),
            chart: None,
        }
    }

    /// Prints `table` and keeps it under `name`.
    pub fn table(&mut self, name: &str, table: &Table) {
        print!("{}", table.render());
        self.tables.push(json!({"name": name, "rows": table.to_json()}));
    }

    /// Keeps a key figure (a number with its unit in the name, e.g. `p99_ms`).
    pub fn figure(&mut self, name: &str, value: f64) {
        self.figures.insert(name.to_owned(), value);
    }

    /// Sets the scenario's chart.
    pub fn chart(&mut self, chart: Chart) {
        self.chart = Some(chart);
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "title": self.title,
            "header": self.header.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "figures": self.figures,
            "tables": self.tables,
            "chart": self.chart,
        })
    }

    /// Writes the JSON and the SVG into `dir` (created if missing) and says where.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json_path = self.path(dir, "json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&self.to_json())? + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        let mut wrote = vec![json_path];
        if let Some(chart) = &self.chart {
            let svg_path = self.path(dir, "svg");
            std::fs::write(&svg_path, crate::plot::svg(chart)?).with_context(|| format!("writing {}", svg_path.display()))?;
            wrote.push(svg_path);
        }
        let names: Vec<String> = wrote.iter().map(|p| p.display().to_string()).collect();
        println!("  wrote {}", names.join(", "));
        Ok(())
    }

    fn path(&self, dir: &Path, ext: &str) -> PathBuf {
        dir.join(format!("{}.{ext}", self.scenario))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::Series;

    #[test]
    fn a_record_holds_its_tables_figures_and_chart() {
        let mut r = Record::new("demo", "demo: a test", vec![("machine", "2 cores".into())]);
        let mut t = Table::new(&["measure", "value"]);
        t.row(["p99".into(), "4.0 ms".into()]);
        r.table("summary", &t);
        r.figure("p99_ms", 4.0);
        let mut c = Chart::new("demo", "x", "y");
        c.series.push(Series::new("s", vec![(1.0, 2.0)]));
        r.chart(c);
        let v = r.to_json();
        assert_eq!(v["scenario"], "demo");
        assert_eq!(v["header"]["machine"], "2 cores");
        assert_eq!(v["figures"]["p99_ms"], 4.0);
        assert_eq!(v["tables"][0]["rows"][0]["value"], "4.0 ms");
        assert_eq!(v["chart"]["series"][0]["points"][0], json!([1.0, 2.0]));
        let dir = std::env::temp_dir().join(format!("rowcast-bench-record-{}", std::process::id()));
        r.write(&dir).expect("writes");
        assert!(dir.join("demo.json").is_file() && dir.join("demo.svg").is_file());
        std::fs::remove_dir_all(&dir).ok();
    }
}
