//! Line charts as PNG (plotters, with DejaVu Sans embedded so that text renders on machines
//! without system fonts).

use memlayers::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [
    RGBColor(0x55, 0x55, 0x55),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// One line of a chart: its legend label and its points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Format(format!("plot: {e}"))
}

/// An x-axis tick: whole numbers without a decimal point (steps, memory sizes).
fn tick(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let t = format!("{x:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws `series` (y in [0, 1]) against x into a 960x600 PNG at `path`; `log_x` for a
/// logarithmic x axis (memory sizes); the legend in the upper left, or the lower left with
/// `legend_low` (curves that fall from the upper left).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    legend_low: bool,
) -> Result<()> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).ok();
    });
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0_f64.max(hi))
    };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, (FAMILY, 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .x_label_formatter(&|x: &f64| tick(*x))
                .y_desc(y_label)
                .label_style((FAMILY, 18))
                .axis_desc_style((FAMILY, 20))
                .draw()
                .map_err(plot_error)?;
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let style = ShapeStyle::from(&color).stroke_width(3);
                chart
                    .draw_series(LineSeries::new(s.points.iter().cloned(), style))
                    .map_err(plot_error)?
                    .label(&s.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(plot_error)?;
            }
            chart
                .configure_series_labels()
                .position(if legend_low {
                    SeriesLabelPosition::LowerLeft
                } else {
                    SeriesLabelPosition::UpperLeft
                })
                .label_font((FAMILY, 20))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(plot_error)?;
        }};
    }
    if log_x {
        draw!(builder
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
            .map_err(plot_error)?);
    } else {
        draw!(builder.build_cartesian_2d(lo..hi, 0.0..1.0).map_err(plot_error)?);
    }
    root.present().map_err(plot_error)?;
    Ok(())
}
