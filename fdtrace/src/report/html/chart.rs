//! HTML report, timeline part: one process's open descriptors over time
//! drawn with `plotters` as an SVG (stacked areas per stack under the
//! total, the soft limit, EMFILE failures and execs), plus the pixel
//! mapping the page's script needs to turn a mouse position into a time.
//!
//! Only numbers reach `plotters`; every name (stack labels, marks) is
//! written by the page as escaped HTML, so nothing from the trace ends up
//! in the SVG unescaped.

use std::io;

use plotters::prelude::*;

use crate::report::timeline::{MarkKind, ProcessTimeline};

/// Chart size in SVG pixels (the page scales it to its width).
pub const WIDTH: u32 = 1200;
const HEIGHT: u32 = 320;

/// Colours of the stacks, in [`ProcessTimeline::stacks`] order (cycled).
pub const STACK_COLORS: [(u8, u8, u8); 10] = [
    (78, 121, 167),
    (242, 142, 43),
    (89, 161, 79),
    (225, 87, 89),
    (118, 183, 178),
    (237, 201, 72),
    (176, 122, 161),
    (255, 157, 167),
    (156, 117, 95),
    (186, 176, 172),
];
/// Descriptors no drawn stack covers (open before tracing, small stacks).
pub const OTHER_COLOR: (u8, u8, u8) = (215, 215, 215);
pub const EMFILE_COLOR: (u8, u8, u8) = (200, 0, 0);
pub const EXEC_COLOR: (u8, u8, u8) = (120, 40, 200);
pub const LIMIT_COLOR: (u8, u8, u8) = (200, 0, 0);

/// A soft limit more than this many times the peak is left off the chart
/// (drawing it would flatten the data to a line at the bottom).
const LIMIT_HEADROOM: u64 = 4;

/// A drawn chart and where its plot area is.
pub struct Chart {
    pub svg: String,
    /// SVG x pixel of `t0` and of `t1`.
    pub px0: i32,
    pub px1: i32,
    /// SVG y pixels of the plot area's top and bottom.
    pub py0: i32,
    pub py1: i32,
    /// The time range drawn, in ms.
    pub t0: f64,
    pub t1: f64,
    pub width: u32,
    pub height: u32,
    /// Whether the soft limit is drawn (it is left off when far above the
    /// peak).
    pub limit_drawn: bool,
}

/// A count as a coordinate.
fn coord(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

/// Draws `p` over `0..duration_ms`.
pub fn draw(p: &ProcessTimeline, duration_ms: f64) -> io::Result<Chart> {
    let last = p
        .points
        .iter()
        .map(|pt| pt.t_ms)
        .chain(p.marks.iter().map(|m| m.t_ms))
        .fold(duration_ms, f64::max);
    let t1 = if last > 0.0 { last } else { 1.0 };
    let high = p
        .points
        .iter()
        .map(|pt| pt.open)
        .max()
        .unwrap_or(0)
        .max(p.peak)
        .max(1);
    let limit = p
        .soft_limit
        .filter(|&l| l <= LIMIT_HEADROOM.saturating_mul(u64::try_from(high).unwrap_or(u64::MAX)));
    let limit_y = limit.map(|l| u32::try_from(l).map_or(f64::from(u32::MAX), f64::from));
    let top = limit_y.map_or(coord(high) * 1.1, |l| l.max(coord(high)) * 1.08);
    let mut svg = String::new();
    let (px0, px1, py0, py1) = {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let geometry = plot(&root, p, t1, top, limit_y).map_err(io::Error::other)?;
        root.present().map_err(io::Error::other)?;
        geometry
    };
    Ok(Chart {
        svg,
        px0,
        px1,
        py0,
        py1,
        t0: 0.0,
        t1,
        width: WIDTH,
        height: HEIGHT,
        limit_drawn: limit.is_some(),
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult<T> =
    Result<T, DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;

/// Draws into `root`; returns the plot area's pixel corners.
fn plot(
    root: &Area<'_>,
    p: &ProcessTimeline,
    t1: f64,
    top: f64,
    limit: Option<f64>,
) -> DrawResult<(i32, i32, i32, i32)> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t1, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("time since the trace began (ms)")
        .y_desc("open descriptors")
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&|t| format!("{t:.0}"))
        .y_label_formatter(&|n| format!("{n:.0}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    // Everything open, then each stack's cumulative share painted over it
    // from the largest sum down: the visible bands are the stacks.
    chart.draw_series(AreaSeries::new(
        p.points.iter().map(|pt| (pt.t_ms, coord(pt.open))),
        0.0,
        rgb(OTHER_COLOR).filled(),
    ))?;
    for i in (0..p.stacks.len()).rev() {
        let color = rgb(STACK_COLORS[i % STACK_COLORS.len()]);
        chart.draw_series(AreaSeries::new(
            p.points
                .iter()
                .map(|pt| (pt.t_ms, coord(pt.by_stack.iter().take(i + 1).sum()))),
            0.0,
            color.filled(),
        ))?;
    }
    chart.draw_series(LineSeries::new(
        p.points.iter().map(|pt| (pt.t_ms, coord(pt.open))),
        BLACK.stroke_width(2),
    ))?;
    if let Some(limit) = limit {
        chart.draw_series(DashedLineSeries::new(
            [(0.0, limit), (t1, limit)],
            8,
            5,
            rgb(LIMIT_COLOR).stroke_width(2),
        ))?;
    }
    for m in &p.marks {
        let (color, dash) = match m.kind {
            MarkKind::Emfile => (rgb(EMFILE_COLOR), 3),
            MarkKind::Exec => (rgb(EXEC_COLOR), 6),
        };
        chart.draw_series(DashedLineSeries::new(
            [(m.t_ms, 0.0), (m.t_ms, top)],
            dash,
            3,
            color.stroke_width(2),
        ))?;
    }
    let spec = chart.as_coord_spec();
    let (px0, py1) = spec.translate(&(0.0, 0.0));
    let (px1, py0) = spec.translate(&(t1, top));
    Ok((px0, px1, py0, py1))
}
