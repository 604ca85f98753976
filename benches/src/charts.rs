//! SVG charts of a matrix (plotters): per workload, throughput and p99
//! latency against concurrency (connections x pipeline), one line per
//! server and fsync policy, both servers on one chart, log-scaled values.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// Chart size in pixels.
pub const CHART_SIZE_PX: (u32, u32) = (900, 540);

/// One line of a chart: its label and (shape index, value) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(usize, f64)>,
    /// Index into the palette.
    pub style: usize,
}

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 82, 181),   // corestate every_write
    RGBColor(110, 170, 240), // corestate never
    RGBColor(196, 40, 40),   // rstmdb every_write
    RGBColor(240, 150, 60),  // rstmdb never
];

/// Draws one chart; `shapes` label the x positions.
pub fn line_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    shapes: &[String],
    series: &[Series],
) -> Result<PathBuf, String> {
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi || shapes.is_empty() {
        return Err(format!("{title}: nothing to draw"));
    }
    // Whole decades around the data, so the log axis has readable ticks.
    let y_lo = 10f64.powf(lo.max(1e-3).log10().floor());
    let y_hi = 10f64.powf(hi.max(y_lo * 10.0).log10().ceil());
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, CHART_SIZE_PX).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(
                -0.3f64..(shapes.len() as f64 - 0.7),
                (y_lo..y_hi).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_labels(shapes.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    shapes.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                if *y >= 1000.0 {
                    format!("{:.0}k", y / 1000.0)
                } else {
                    format!("{y:.0}")
                }
            })
            .x_desc("connections x pipeline")
            .y_desc(y_desc)
            .draw()?;
        for s in series {
            let color = PALETTE[s.style % PALETTE.len()];
            let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x as f64, y)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}
