//! Line charts as SVG text (plotters' SVG backend). Pure: a `Chart` in, a
//! string out; `record` writes it next to the scenario's JSON.
//!
//! One chart shape serves every scenario: named series of (x, y) points,
//! drawn as lines with a dot per point, either axis linear or logarithmic,
//! and an optional horizontal target line. Text is left to the viewer's
//! fonts (no font files are read).

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

/// A chart of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// A horizontal line at a target value, with its label.
    pub target: Option<(String, f64)>,
}

/// One named line.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from its name and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points }
    }
}

impl Chart {
    /// A linear chart with no series yet.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_log: false,
            y_log: false,
            series: Vec::new(),
            target: None,
        }
    }
}

const SIZE: (u32, u32) = (900, 520);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
const TARGET_COLOR: RGBColor = RGBColor(214, 39, 40);

/// The chart as an SVG document.
pub fn svg(chart: &Chart) -> anyhow::Result<String> {
    let finite = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let keep = |&(x, y): &(f64, f64)| finite(x, chart.x_log) && finite(y, chart.y_log);
    let series = chart.series.iter().map(|s| Series::new(s.name.clone(), s.points.iter().copied().filter(keep).collect())).collect();
    let chart = &Chart { series, ..chart.clone() };
    let points: Vec<(f64, f64)> = chart.series.iter().flat_map(|s| s.points.iter().copied()).collect();
    let mut ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    ys.extend(chart.target.as_ref().map(|t| t.1));
    let (x0, x1) = span(points.iter().map(|p| p.0), chart.x_log, false);
    let (y0, y1) = span(ys.into_iter(), chart.y_log, true);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        match (chart.x_log, chart.y_log) {
            (false, false) => draw(&root, chart, x0..x1, y0..y1)?,
            (true, false) => draw(&root, chart, (x0..x1).log_scale(), y0..y1)?,
            (false, true) => draw(&root, chart, x0..x1, (y0..y1).log_scale())?,
            (true, true) => draw(&root, chart, (x0..x1).log_scale(), (y0..y1).log_scale())?,
        }
        root.present().map_err(fail)?;
    }
    Ok(out)
}

/// The axis range covering `values`, with room above; linear y starts at 0.
fn span(values: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (1.0, 10.0);
    }
    if log {
        return (lo / 1.5, hi * 1.5);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi + (hi - lo) * 0.08)
}

fn fail(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

fn draw<X, Y>(root: &DrawingArea<SVGBackend, Shift>, chart: &Chart, x: X, y: Y) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut c = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(fail)?;
    c.configure_mesh().x_desc(&chart.x_label).y_desc(&chart.y_label).light_line_style(WHITE.mix(0.0)).draw().map_err(fail)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts = s.points.clone();
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(fail)?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        if pts.len() <= 60 {
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(fail)?;
        }
    }
    if let Some((label, value)) = &chart.target {
        let (xa, xb) = (c.x_range().start, c.x_range().end);
        c.draw_series(LineSeries::new(vec![(xa, *value), (xb, *value)], TARGET_COLOR.stroke_width(1)))
            .map_err(fail)?
            .label(label.as_str())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET_COLOR));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_and_series_names() {
        let mut chart = Chart::new("fan-out", "change", "ms");
        chart.series.push(Series::new("read -> last", vec![(1.0, 80.0), (2.0, 95.0)]));
        chart.target = Some(("target 100 ms".into(), 100.0));
        let svg = svg(&chart).expect("draws");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for text in ["fan-out", "read -&gt; last", "target 100 ms"] {
            assert!(svg.contains(text), "missing {text}");
        }
    }

    #[test]
    fn log_axes_and_empty_series_still_draw() {
        let mut chart = Chart::new("cdf", "ms", "share");
        chart.x_log = true;
        chart.series.push(Series::new("push", vec![(0.0, 0.5), (2.0, 1.0)]));
        chart.series.push(Series::new("empty", Vec::new()));
        assert!(svg(&chart).is_ok());
        chart.y_log = true;
        chart.series.clear();
        assert!(svg(&chart).is_ok());
    }
}
